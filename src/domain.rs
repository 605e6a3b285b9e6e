//! Values that are checked once, at the edge, so that an invalid one cannot exist further in.

use std::fmt;

/// Why a value was refused: the field it came from and what is wrong, for a 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// A display name for an account: 1 to 100 characters, no control characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountName(String);

impl AccountName {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        let name = raw.trim();
        if name.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if name.chars().count() > Self::MAX_CHARS {
            return Err(invalid(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid(field, "must not contain control characters"));
        }
        Ok(AccountName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A contact e-mail address: `local@domain`, at most 254 characters, no spaces. Deliverability
/// is not checked; the shape is, so that typos like a missing `@` are caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        let email = raw.trim();
        let bad = || invalid(field, "must be an e-mail address like name@example.com");
        if email.len() > Self::MAX_LEN {
            return Err(invalid(
                field,
                format!("must be at most {} bytes", Self::MAX_LEN),
            ));
        }
        let (local, domain) = email.split_once('@').ok_or_else(bad)?;
        let ok = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && !email.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Email(email.to_owned()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tenant or database name: `^[a-z][a-z0-9_-]{0,62}$`, so it is safe in a DSN, a URL path
/// and a PostgreSQL identifier without quoting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceName(String);

impl ResourceName {
    pub const MAX_LEN: usize = 63;

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        let bytes = raw.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if ok {
            Ok(ResourceName(raw.to_owned()))
        } else {
            Err(invalid(
                field,
                "must start with a lowercase letter and hold at most 63 lowercase letters, digits, '_' or '-'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key's optional label: 1 to 100 characters, no control characters.
pub fn parse_label(field: &'static str, raw: &str) -> Result<String, Invalid> {
    AccountName::parse(field, raw).map(|n| n.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        assert_eq!(
            AccountName::parse("name", "  Acme  ").unwrap().as_str(),
            "Acme"
        );
        assert!(AccountName::parse("name", "   ").is_err());
        assert!(AccountName::parse("name", &"x".repeat(101)).is_err());
        assert!(AccountName::parse("name", "a\u{0}b").is_err());
        assert!(AccountName::parse("name", "Ünïcode Ltd").is_ok());
    }

    #[test]
    fn resource_names() {
        for good in ["a", "app", "shop-eu_1", &format!("a{}", "b".repeat(62))] {
            assert!(ResourceName::parse("name", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "App",
            "1app",
            "-app",
            "ünï",
            "a b",
            "a;drop table",
            "a'--",
            &format!("a{}", "b".repeat(63)),
        ] {
            assert!(ResourceName::parse("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert!(Email::parse("email", "ops@acme.io").is_ok());
        for bad in [
            "",
            "ops",
            "@acme.io",
            "ops@acme",
            "ops@.io",
            "a b@acme.io",
            "a@b@c.io",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }
}
