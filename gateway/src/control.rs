//! The Gateway's calls to the control plane's internal API: roles (verifiers), checkout, renew
//! and release, through the internal API's one client ([`Internal`]). The calls block (ureq)
//! on tokio's blocking pool: a checkout may wait up to its `wait_ms` for a database to start.
//!
//! Roles are cached: a known user's verifier, and the fact that a user is unknown (briefly,
//! so that guessing names does not reach the control plane each time). A long poll on
//! `GET /internal/v1/roles/changes` drops the cache whenever the log says a tenant's
//! credentials changed (a password reset, a deletion); entries also expire on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use spg99_scram::Verifier;
use spg99_wire as wire;
use spg99_wire::client::{CallError, CheckedOut, Internal};
use spg99_wire::Code;

/// How long a known role is trusted without the change feed saying anything.
const ROLE_TTL: Duration = Duration::from_secs(60);
/// How long "no such user" is remembered.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Users cached at most (names clients make up count too); past it the cache starts afresh.
const MAX_CACHED_ROLES: usize = 100_000;

/// What a checkout answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkout {
    Lease(wire::Lease),
    /// Not running yet (202).
    Pending {
        retry_after: Duration,
    },
    /// 503: frozen (a cutover), no worker live, no capacity, or the data's worker away (the
    /// control plane's message says which): ask again after this.
    Busy {
        retry_after: Duration,
        message: String,
    },
    /// 404: no such user, or no such database.
    UnknownUser,
    UnknownDb,
    /// 409: deleting or failed, with the control plane's message.
    Refused {
        message: String,
    },
    /// The control plane could not be reached or failed.
    Transient(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Renewal {
    Renewed,
    /// 409 `stale_epoch`: the database moved (a cutover).
    StaleEpoch,
    /// 404: the lease is gone (expired, released, its database stopped).
    Gone,
    Transient(String),
}

pub struct Control {
    internal: Internal,
    roles: Mutex<Roles>,
}

/// The cache of verifiers by user name (`None`: no tenant has it).
#[derive(Default)]
struct Roles {
    entries: HashMap<String, (Option<Verifier>, Instant)>,
    /// Counts the role changes seen, so that a fetch that overlapped one is not kept.
    generation: u64,
}

impl Roles {
    fn drop_all(&mut self) {
        self.entries.clear();
        self.generation += 1;
    }
}

impl Control {
    pub fn new(http: ureq::Agent, base: &str, token: &str) -> Arc<Control> {
        Arc::new(Control {
            internal: Internal::new(http, base, token),
            roles: Mutex::new(Roles::default()),
        })
    }

    fn roles(&self) -> MutexGuard<'_, Roles> {
        crate::lock(&self.roles)
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Internal) -> T + Send + 'static,
    ) -> Result<T, CallError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me.internal))
            .await
            .map_err(|e| CallError::Unreachable(format!("the call did not complete: {e}")))
    }

    /// Drops what is cached of `pg_user`'s role: a backend refused the verifier it held.
    pub fn forget_role(&self, pg_user: &str) {
        let mut roles = self.roles();
        roles.entries.remove(pg_user);
        roles.generation += 1;
    }

    /// The verifier of `pg_user`; `None` for a user no tenant has.
    pub async fn role(self: &Arc<Self>, pg_user: &str) -> Result<Option<Verifier>, String> {
        // The platform's user names are `u_` and hex: anything else is no tenant's, and never
        // goes into a URL.
        let plausible = pg_user.len() <= 63
            && pg_user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !plausible {
            return Ok(None);
        }
        let generation = {
            let roles = self.roles();
            if let Some((v, at)) = roles.entries.get(pg_user) {
                let ttl = if v.is_some() { ROLE_TTL } else { UNKNOWN_TTL };
                if at.elapsed() < ttl {
                    return Ok(v.clone());
                }
            }
            roles.generation
        };
        let user = pg_user.to_owned();
        let fetched = self
            .blocking(move |c| c.role(&user))
            .await
            .and_then(|r| r)
            .map_err(|e| format!("roles: {e}"))?;
        let fetched = match fetched {
            None => None,
            Some(role) => Some(
                Verifier::parse(&role.verifier)
                    .ok_or_else(|| format!("the verifier of {} does not parse", role.pg_user))?,
            ),
        };
        let mut roles = self.roles();
        // A role change seen while this was fetched may postdate the answer: not kept then.
        if roles.generation == generation {
            if roles.entries.len() >= MAX_CACHED_ROLES {
                roles.entries.clear();
            }
            roles
                .entries
                .insert(pg_user.to_owned(), (fetched.clone(), Instant::now()));
        }
        Ok(fetched)
    }

    /// Follows the control plane's changes, for ever: the role cache is dropped at each role
    /// change (and whenever the feed is lost), and `fence` is given the databases whose
    /// leases were fenced.
    pub async fn follow_changes<F, Fut>(self: Arc<Self>, fence: F)
    where
        F: Fn(Vec<uuid::Uuid>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut after: Option<u64> = None;
        loop {
            let since = after;
            let answer = self
                .blocking(move |c| c.role_changes(since, Duration::from_secs(30)))
                .await
                .and_then(|r| r);
            match answer {
                Ok(c) => {
                    if c.changed || since.is_none() {
                        self.roles().drop_all();
                    }
                    if !c.fenced.is_empty() {
                        fence(c.fenced).await;
                    }
                    after = Some(c.seq);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow role changes; retrying");
                    self.roles().drop_all();
                    after = None;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// A checkout of `db` for `pg_user`, waiting up to `wait`.
    pub async fn checkout(self: &Arc<Self>, pg_user: &str, db: &str, wait: Duration) -> Checkout {
        let body = wire::Checkout {
            pg_user: pg_user.to_owned(),
            db: db.to_owned(),
            wait_ms: Some(wait.as_millis() as u64),
        };
        let answer = self
            .blocking(move |c| c.checkout(&body))
            .await
            .and_then(|r| r);
        match answer {
            Ok(CheckedOut::Lease(lease)) => Checkout::Lease(lease),
            Ok(CheckedOut::Pending(p)) => Checkout::Pending {
                retry_after: Duration::from_millis(p.retry_after_ms.clamp(10, 5000)),
            },
            Err(CallError::Refused {
                status,
                code,
                message,
                retry_after,
            }) => match (status, code) {
                (503, _) => Checkout::Busy {
                    retry_after: retry_after
                        .unwrap_or(Duration::from_secs(1))
                        .clamp(Duration::from_secs(1), Duration::from_secs(30)),
                    message,
                },
                (404, Some(Code::UnknownDb)) => Checkout::UnknownDb,
                (404, _) => Checkout::UnknownUser,
                (409, _) => Checkout::Refused { message },
                _ => Checkout::Transient(format!("checkout: {status}: {message}")),
            },
            Err(e) => Checkout::Transient(e.to_string()),
        }
    }

    pub async fn renew(
        self: &Arc<Self>,
        lease: uuid::Uuid,
        epoch: u64,
        connections: u32,
    ) -> Renewal {
        let body = wire::Renew {
            active_connections: connections,
            lease_control_epoch: epoch,
        };
        match self
            .blocking(move |c| c.renew(lease, &body))
            .await
            .and_then(|r| r)
        {
            Ok(_) => Renewal::Renewed,
            Err(e) if e.code() == Some(Code::StaleEpoch) => Renewal::StaleEpoch,
            Err(e) if e.status() == Some(404) => Renewal::Gone,
            Err(e) => Renewal::Transient(format!("renew: {e}")),
        }
    }

    pub async fn release(self: &Arc<Self>, lease: uuid::Uuid) {
        let released = self
            .blocking(move |c| c.release(lease))
            .await
            .and_then(|r| r);
        if released.is_err_and(|e| e.status() != Some(404)) {
            tracing::debug!(%lease, "release not acknowledged; the lease will expire");
        }
    }
}
