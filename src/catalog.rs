//! The size catalog: what `size` a database may have, and the compute profiles the
//! autoscaler may move its writer between.
//!
//! A size is a ceiling the customer chooses (and is billed against); the profiles inside it
//! are the steps the autoscaler uses. A database starts on its size's smallest profile.

use serde::Serialize;

use crate::domain::Invalid;

pub use spg99_wire::profiles::{profile, Profile, PROFILES};

/// One size of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SizeSpec {
    pub name: &'static str,
    /// The profiles the autoscaler may use, smallest first.
    pub profiles: &'static [&'static str],
    pub description: &'static str,
}

pub const SIZES: &[SizeSpec] = &[
    SizeSpec {
        name: "L1",
        profiles: &["c0.25", "c0.5", "c1"],
        description: "small: development, previews, light production (up to 1 vCPU)",
    },
    SizeSpec {
        name: "L2",
        profiles: &["c0.5", "c1", "c2"],
        description: "medium: production services (up to 2 vCPU)",
    },
    SizeSpec {
        name: "L4",
        profiles: &["c1", "c2", "c4"],
        description: "large: busy production (up to 4 vCPU)",
    },
    SizeSpec {
        name: "L8",
        profiles: &["c2", "c4", "c8"],
        description: "extra large: heavy workloads (up to 8 vCPU)",
    },
];

/// A size from the catalog.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Size(&'static SizeSpec);

impl Size {
    pub fn parse(field: &'static str, raw: &str) -> Result<Size, Invalid> {
        SIZES
            .iter()
            .find(|s| s.name == raw)
            .map(Size)
            .ok_or_else(|| Invalid {
                field,
                message: format!(
                    "unknown size {raw:?}; the catalog has {} (GET /v2/sizes)",
                    SIZES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
                ),
            })
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }
}

/// The profiles the autoscaler may use for a size, smallest first (none for a size the
/// catalog no longer has).
pub fn profiles_of(size: &str) -> &'static [&'static str] {
    SIZES
        .iter()
        .find(|s| s.name == size)
        .map_or(&[], |s| s.profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_names_known_profiles_smallest_first() {
        for size in SIZES {
            let cpus: Vec<f32> = size
                .profiles
                .iter()
                .map(|p| profile(p).expect("known profile").vcpu)
                .collect();
            assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{}", size.name);
        }
        assert!(Size::parse("size", "L1").is_ok());
        assert!(Size::parse("size", "l1").is_err());
    }
}
