//! Pagination of lists: `?limit=` (default 100, at most 1000) and an opaque `?cursor=`; a
//! page carries `next_cursor` (null on the last page). Lists are ordered by name, and a cursor
//! is the last name of the page, encoded, so pages stay stable while objects are added.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::http::ApiError;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
const CURSOR_PREFIX: &str = "n1.";
/// What a cursor looks like, for the API document (it is still to be used as given).
pub const CURSOR_PATTERN: &str = "^n1\\.([0-9a-f]{2}){1,64}$";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// A validated page request.
#[derive(Debug, Clone)]
pub struct Page {
    pub limit: usize,
    /// Items strictly after this name.
    pub after: Option<String>,
}

impl PageQuery {
    pub fn parse(&self) -> Result<Page, ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::from(crate::domain::Invalid {
                        field: "limit",
                        message: format!("must be a whole number from 1 to {MAX_LIMIT}"),
                    })
                })?,
        };
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(decode(c).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_cursor",
                    "cursor is not one this API returned; start again without it",
                )
                .with_field("cursor")
            })?),
        };
        Ok(Page { limit, after })
    }
}

fn encode(name: &str) -> String {
    let mut s = String::from(CURSOR_PREFIX);
    s.push_str(&crate::auth::hex(name.as_bytes()));
    s
}

fn decode(cursor: &str) -> Option<String> {
    let hex = cursor.strip_prefix(CURSOR_PREFIX)?;
    let lower_hex = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !lower_hex || hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * 64 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    // Any position is a position: names are ASCII, and a cursor holding other bytes simply
    // sorts where its lossy decoding does.
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Listed<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl Page {
    /// Takes one page from `items`, name-ordered and already past the cursor.
    pub fn collect<K: AsRef<str>, T>(&self, items: impl Iterator<Item = (K, T)>) -> Listed<T> {
        let mut out = Vec::new();
        let mut last = None;
        let mut more = false;
        for (name, item) in items {
            if out.len() == self.limit {
                more = true;
                break;
            }
            last = Some(name);
            out.push(item);
        }
        Listed {
            items: out,
            next_cursor: if more {
                last.map(|n| encode(n.as_ref()))
            } else {
                None
            },
        }
    }
}
