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

/// Whitespace as Unicode's `White_Space` (what `str::trim` removes), as a regex class body.
/// (`\uXXXX` escapes: the form both ECMA-262 and Python regular expressions read.)
const WHITE_SPACE: &str = r"\t-\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters (`char::is_control`: Unicode's Cc), likewise.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// A display name for an account: 1 to 100 characters, no control characters, no
/// whitespace at either end (refused rather than trimmed, so that what is stored is what
/// was sent, and the API document can say exactly what is accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountName(String);

impl AccountName {
    pub const MAX_CHARS: usize = 100;

    /// What [`AccountName::parse`] accepts (with `MAX_CHARS`), as a regular expression.
    pub fn pattern() -> String {
        let inner = format!("[^{CONTROL}]");
        let edge = format!("[^{CONTROL}{WHITE_SPACE}]");
        format!("^{edge}({inner}*{edge})?$")
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if raw.trim() != raw {
            return Err(invalid(field, "must not start or end with whitespace"));
        }
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(invalid(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err(invalid(field, "must not contain control characters"));
        }
        Ok(AccountName(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A contact e-mail address: `local@domain`, at most 254 characters, no whitespace or
/// control characters, a dot inside the domain. Deliverability is not checked; the shape is,
/// so that typos like a missing `@` are caught.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_CHARS: usize = 254;

    /// What [`Email::parse`] accepts (with `MAX_CHARS`), as a regular expression.
    pub fn pattern() -> String {
        let part = format!("[^@{CONTROL}{WHITE_SPACE}]");
        let edge = format!("[^@.{CONTROL}{WHITE_SPACE}]");
        format!(r"^{part}+@{edge}{part}*\.{part}*{edge}$")
    }

    pub fn parse(field: &'static str, raw: &str) -> Result<Self, Invalid> {
        let bad = || invalid(field, "must be an e-mail address like name@example.com");
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(invalid(
                field,
                format!("must be at most {} characters", Self::MAX_CHARS),
            ));
        }
        let (local, domain) = raw.split_once('@').ok_or_else(bad)?;
        let ok = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Email(raw.to_owned()))
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
    /// What [`ResourceName::parse`] accepts, as a regular expression (for the API document).
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_-]{0,62}$";

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
            AccountName::parse("name", "Acme Ltd").unwrap().as_str(),
            "Acme Ltd"
        );
        for bad in ["", "   ", "  Acme", "Acme\n", "Acme\u{3000}"] {
            assert!(AccountName::parse("name", bad).is_err(), "{bad:?}");
        }
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
            " ops@acme.io",
        ] {
            assert!(Email::parse("email", bad).is_err(), "{bad}");
        }
    }
}
