//! Abuse limits on the HTTP API (docs/api.md, "Limits"): failed authentication per client
//! address and per key id, requests per key, stream tickets per key, open event streams per
//! key. Over a limit: 429 with `Retry-After` and a stable code. Soft state in memory (the
//! `spg99-limits` crate); a restart forgets it.
//!
//! A key id's failure limit would let anybody who knows the key's id (it is not secret) lock
//! its owner out; so, over that limit, the addresses the key was recently used from
//! successfully still get through, while every other address is refused without its secret
//! being checked.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use spg99_limits::{Known, Slot, Slots, Window};

use crate::auth::{AuthError, Principal, Token};
use crate::http::ApiError;

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Failed authentications from one client address per minute before it is refused
    /// (429 `too_many_auth_failures`) for the rest of the minute; 0: no limit.
    #[arg(
        long,
        env = "SPG99_LIMIT_AUTH_FAILURES_PER_ADDRESS",
        default_value_t = 100
    )]
    pub auth_failures_per_address: u32,
    /// Failed authentications naming one key id per minute before other addresses than its
    /// recent good ones are refused; 0: no limit.
    #[arg(long, env = "SPG99_LIMIT_AUTH_FAILURES_PER_KEY", default_value_t = 20)]
    pub auth_failures_per_key: u32,
    /// Requests per key per second (429 `rate_limited`); 0: no limit.
    #[arg(long, env = "SPG99_LIMIT_REQUESTS_PER_KEY", default_value_t = 2_000)]
    pub requests_per_key: u32,
    /// Event streams one key holds open at once (429 `too_many_streams`); 0: no limit.
    #[arg(long, env = "SPG99_LIMIT_STREAMS_PER_KEY", default_value_t = 100)]
    pub streams_per_key: u32,
    /// Stream tickets one key gets per minute (429 `too_many_tickets`); 0: no limit.
    #[arg(long, env = "SPG99_LIMIT_TICKETS_PER_KEY", default_value_t = 120)]
    pub tickets_per_key: u32,
}

const MINUTE: Duration = Duration::from_secs(60);

pub struct Limits {
    failures_by_address: Window<IpAddr>,
    failures_by_key: Window<String>,
    good: Known<String>,
    requests: Window<String>,
    tickets: Window<String>,
    streams: Slots<String>,
}

fn too_many(code: &'static str, message: String, wait: Duration) -> ApiError {
    ApiError::too_many_requests(code, message, wait.as_secs().max(1) as u32)
}

impl Limits {
    pub fn new(args: &LimitArgs) -> Limits {
        Limits {
            failures_by_address: Window::new(args.auth_failures_per_address, MINUTE),
            failures_by_key: Window::new(args.auth_failures_per_key, MINUTE),
            good: Known::new(),
            requests: Window::new(args.requests_per_key, Duration::from_secs(1)),
            tickets: Window::new(args.tickets_per_key, MINUTE),
            streams: Slots::new(args.streams_per_key),
        }
    }

    /// Authenticates the `Authorization` header's value (if any) from `addr` with `check`,
    /// under the failure limits; counts the request against its key.
    pub fn authenticate(
        &self,
        addr: Option<IpAddr>,
        header: Option<&str>,
        check: impl FnOnce() -> Result<Principal, AuthError>,
    ) -> Result<Principal, ApiError> {
        let key_id = header
            .and_then(crate::auth::bearer)
            .and_then(Token::parse)
            .filter(|t| !t.is_service())
            .map(|t| t.key_id().to_owned());
        self.address_allowed(addr)?;
        if let Some(id) = &key_id {
            // Whether the address is one of the key's own is asked only of a key over its limit.
            let stranger = || !addr.is_some_and(|a| self.good.knows(id, a));
            if let Some(wait) = self.failures_by_key.blocked(id).filter(|_| stranger()) {
                return Err(too_many(
                    "too_many_auth_failures",
                    format!(
                        "too many failed authentications for key {id}; wait before trying again"
                    ),
                    wait,
                ));
            }
        }
        match check() {
            Ok(principal) => {
                if let Principal::Key(k) = &principal {
                    if let Some(a) = addr {
                        self.good.remember(&k.id, a);
                    }
                    if let Err(wait) = self.requests.hit(&k.id) {
                        return Err(too_many(
                            "rate_limited",
                            format!("key {} is over its request rate; slow down", k.id),
                            wait,
                        ));
                    }
                }
                Ok(principal)
            }
            Err(e) => {
                if !matches!(e, AuthError::Missing) {
                    if let Some(a) = addr {
                        let _ = self.failures_by_address.hit(&a);
                    }
                    if let Some(id) = &key_id {
                        let _ = self.failures_by_key.hit(id);
                    }
                }
                Err(e.into())
            }
        }
    }

    /// A failed ticket redemption from `addr` counts as a failed authentication.
    pub fn failed_ticket(&self, addr: Option<IpAddr>) {
        if let Some(a) = addr {
            let _ = self.failures_by_address.hit(&a);
        }
    }

    /// Whether `addr` may try to authenticate at all (with a token or a ticket).
    pub fn address_allowed(&self, addr: Option<IpAddr>) -> Result<(), ApiError> {
        match addr.and_then(|a| self.failures_by_address.blocked(&a)) {
            Some(wait) => Err(too_many(
                "too_many_auth_failures",
                "too many failed authentications from this address; wait before trying again"
                    .into(),
                wait,
            )),
            None => Ok(()),
        }
    }

    /// One more stream ticket for `key_id`.
    pub fn ticket(&self, key_id: &str) -> Result<(), ApiError> {
        self.tickets.hit(&key_id.to_owned()).map_err(|wait| {
            too_many(
                "too_many_tickets",
                format!("key {key_id} asked for too many stream tickets this minute"),
                wait,
            )
        })
    }

    /// An open-stream slot for `key_id`, held as long as the stream is open.
    pub fn stream(&self, key_id: &str) -> Result<Slot<String>, ApiError> {
        self.streams.take(&key_id.to_owned()).ok_or_else(|| {
            too_many(
                "too_many_streams",
                format!("key {key_id} holds the most event streams it may open; close one"),
                Duration::from_secs(1),
            )
        })
    }
}
