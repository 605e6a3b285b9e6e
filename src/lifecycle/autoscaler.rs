//! The autoscaler: a writer's load band (with hysteresis), the connection counts describe
//! shows, and the handoff a sustained load calls for.

use std::time::Duration;

use spg99_events::{Event, LoadBand};
use spg99_projections::{Db, DbState, State};
use uuid::Uuid;

use super::scheduler::{place, Placement};
use super::{after, Context};
use crate::catalog;
use crate::decision::{Draft, Subject};

/// The autoscaler's policy. CPU is the fraction of the writer's profile in use, in
/// thousandths (1000 = the whole profile).
#[derive(Debug, Clone)]
pub struct Autoscaler {
    /// At or above this, the load is `high`.
    pub high_cpu_milli: u32,
    /// At or below this, the load is `low`.
    pub low_cpu_milli: u32,
    /// `high` this long moves the writer one profile up (within the size).
    pub up_sustain: Duration,
    /// `low` this long moves it one profile down.
    pub down_sustain: Duration,
    /// No new handoff for this long after one ends (completed or failed).
    pub cooldown: Duration,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Autoscaler {
            high_cpu_milli: 800,
            low_cpu_milli: 200,
            up_sustain: Duration::from_secs(60),
            down_sustain: Duration::from_secs(300),
            cooldown: Duration::from_secs(300),
        }
    }
}

/// How far past a threshold the load must come back to leave its band (thousandths).
pub const HYSTERESIS_MILLI: u32 = 50;

impl Autoscaler {
    /// The band of a CPU reading, given the band the database is in: entering `high` takes
    /// the high threshold, leaving it takes [`HYSTERESIS_MILLI`] less (and the other way
    /// round for `low`), so that a load hovering at a threshold does not flap.
    pub fn band(&self, current: LoadBand, cpu_milli: u32) -> LoadBand {
        let (high, low) = match current {
            LoadBand::High => (
                self.high_cpu_milli.saturating_sub(HYSTERESIS_MILLI),
                self.low_cpu_milli,
            ),
            LoadBand::Low => (self.high_cpu_milli, self.low_cpu_milli + HYSTERESIS_MILLI),
            LoadBand::Normal => (self.high_cpu_milli, self.low_cpu_milli),
        };
        if cpu_milli >= high {
            LoadBand::High
        } else if cpu_milli <= low {
            LoadBand::Low
        } else {
            LoadBand::Normal
        }
    }
}

/// Whether a connection count moved enough from the one recorded to be recorded again: any
/// change while either is below [`EXACT_CONNECTIONS`], else a change of a tenth or more. So
/// describe's count is exact for small numbers and within 10 % for large ones, and a busy
/// database's churn does not fill the log.
fn connections_moved(recorded: u32, now: u32) -> bool {
    if recorded.min(now) < EXACT_CONNECTIONS {
        return recorded != now;
    }
    now.abs_diff(recorded).saturating_mul(10) >= recorded
}

/// Below this many connections, every change is recorded.
const EXACT_CONNECTIONS: u32 = 32;

/// A `db.load_changed` event if the database's load left its band, or its connection count
/// moved enough (see [`connections_moved`]).
pub(super) fn load_change(state: &State, cx: &Context<'_>, db_id: Uuid) -> Option<Draft> {
    let db = state
        .dbs
        .get(&db_id)
        .filter(|d| d.state == DbState::Running)?;
    let gateway: u32 = db
        .live
        .leases
        .iter()
        .filter_map(|l| cx.runtime.leases.get(l))
        .map(|(_, n)| *n)
        .sum();
    let (cpu, writer_conns) = cx
        .runtime
        .writer_load
        .get(&db_id)
        .copied()
        .unwrap_or((db.live.cpu_milli, 0));
    let conns = gateway.max(writer_conns);
    let band = cx.settings.autoscaler.band(db.live.load_band, cpu);
    if band == db.live.load_band && !connections_moved(db.live.active_connections, conns) {
        return None;
    }
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db_id),
        Event::DbLoadChanged {
            db_id,
            cpu_milli: cpu,
            active_connections: conns,
            band,
        },
    ))
}

/// One handoff decision for one database: a sustained high load moves it a profile up, a
/// sustained low load a profile down, within its size, outside the cooldown.
pub(super) fn autoscale(state: &State, cx: &Context<'_>, db: &Db) -> Option<Draft> {
    let policy = &cx.settings.autoscaler;
    let now = cx.now;
    let writer = db.live.writer.as_ref()?;
    let steady = db.state == DbState::Running && !db.live.scale.stage.in_progress();
    let cooled = db.live.autoscale_cooldown_until.is_none_or(|c| c <= now);
    if !steady || !cooled {
        return None;
    }
    let profiles = catalog::profiles_of(&db.size);
    let at = profiles.iter().position(|p| *p == writer.profile)?;
    let target = match db.live.load_band {
        LoadBand::High if after(db.live.load_band_since, policy.up_sustain) <= now => {
            profiles.get(at + 1)?
        }
        LoadBand::Low if after(db.live.load_band_since, policy.down_sustain) <= now && at > 0 => {
            profiles.get(at - 1)?
        }
        _ => return None,
    };
    let candidate = match db.data_on.as_deref() {
        // The data is on this worker's own storage: the candidate takes it over in place.
        Some(home) => place(state, cx, target, Placement::Only(home))?,
        None => place(state, cx, target, Placement::Avoid(&writer.worker_id))
            .or_else(|| place(state, cx, target, Placement::Anywhere))?,
    };
    let t = state.tenants.get(&db.tenant)?;
    Some(Draft::new(
        Subject::db(t, db.id),
        Event::DbScaleStarted {
            db_id: db.id,
            target_profile: (*target).to_owned(),
            candidate_worker_id: candidate,
            candidate_writer_term: db.writer_term + 1,
            deadline: after(now, cx.settings.phase_deadline),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_hovering_at_a_threshold_keeps_its_band() {
        let policy = Autoscaler::default();
        assert_eq!(policy.band(LoadBand::Normal, 800), LoadBand::High);
        assert_eq!(policy.band(LoadBand::Normal, 799), LoadBand::Normal);
        assert_eq!(policy.band(LoadBand::High, 760), LoadBand::High);
        assert_eq!(policy.band(LoadBand::High, 749), LoadBand::Normal);
        assert_eq!(policy.band(LoadBand::Normal, 200), LoadBand::Low);
        assert_eq!(policy.band(LoadBand::Low, 240), LoadBand::Low);
        assert_eq!(policy.band(LoadBand::Low, 251), LoadBand::Normal);
    }

    #[test]
    fn connection_counts_are_exact_when_small_and_within_a_tenth_when_large() {
        assert!(connections_moved(0, 1) && connections_moved(5, 0) && connections_moved(3, 4));
        assert!(connections_moved(31, 32) && connections_moved(32, 31));
        assert!(
            !connections_moved(7, 7) && !connections_moved(32, 35) && !connections_moved(100, 91)
        );
        assert!(
            connections_moved(100, 90) && connections_moved(100, 110) && connections_moved(40, 0)
        );
    }
}
