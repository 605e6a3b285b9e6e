//! The Gateway's calls to the control plane's internal API: roles (verifiers), checkout, renew
//! and release. The calls block (ureq) on tokio's blocking pool: a checkout may wait up to its
//! `wait_ms` for a database to start.
//!
//! Roles are cached: a known user's verifier, and the fact that a user is unknown (briefly,
//! so that guessing names does not reach the control plane each time). A long poll on
//! `GET /internal/v1/roles/changes` drops the cache whenever the log says a tenant's
//! credentials changed (a password reset, a deletion); entries also expire on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use spg99_scram::Verifier;
use spg99_wire as wire;

/// How long a known role is trusted without the change feed saying anything.
const ROLE_TTL: Duration = Duration::from_secs(60);
/// How long "no such user" is remembered.
const UNKNOWN_TTL: Duration = Duration::from_secs(5);
/// Users cached at most (names clients make up count too); past it the cache starts afresh.
const MAX_CACHED_ROLES: usize = 100_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A POST failing within this long is sent once more (see `Control::post`).
const STALE_CONNECTION: Duration = Duration::from_millis(100);

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

/// A role as the control plane serves it.
#[derive(Debug, Clone, Deserialize)]
pub struct Role {
    pub pg_user: String,
    pub verifier: String,
}

#[derive(Debug, Deserialize)]
struct Changes {
    seq: u64,
    changed: bool,
}

pub struct Control {
    http: ureq::Agent,
    base: String,
    auth: String,
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

/// A call's status and response whatever the status, or why nothing answered.
type Answer = Result<(u16, ureq::Response), String>;

fn answer(r: Result<ureq::Response, ureq::Error>) -> Answer {
    match r {
        Ok(resp) | Err(ureq::Error::Status(_, resp)) => Ok((resp.status(), resp)),
        Err(ureq::Error::Transport(e)) => Err(e.to_string()),
    }
}

fn retry_after(resp: &ureq::Response) -> Duration {
    let secs = resp
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 30))
}

impl Control {
    pub fn new(http: ureq::Agent, base: &str, token: &str) -> Arc<Control> {
        Arc::new(Control {
            http,
            base: format!("{}/internal/v1", base.trim_end_matches('/')),
            auth: format!("Bearer {token}"),
            roles: Mutex::new(Roles::default()),
        })
    }

    /// A POST. An `idempotent` one that fails at once for want of an answer is sent once
    /// more, on a new connection: a kept-alive connection the control plane closed just as the
    /// request went out fails like that, and ureq resends only idempotent methods itself.
    fn post(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
        idempotent: bool,
    ) -> Answer {
        let send = || {
            answer(
                self.http
                    .post(&format!("{}{path}", self.base))
                    .timeout(timeout)
                    .set("Authorization", &self.auth)
                    .send_json(body),
            )
        };
        let began = Instant::now();
        match send() {
            Err(_) if idempotent && began.elapsed() < STALE_CONNECTION => send(),
            done => done,
        }
    }

    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Control) -> T + Send + 'static,
    ) -> T {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .expect("a control plane call does not panic")
    }

    /// Drops what is cached of `pg_user`'s role: a backend refused the verifier it held.
    pub fn forget_role(&self, pg_user: &str) {
        let mut roles = self.roles.lock().unwrap();
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
            let roles = self.roles.lock().unwrap();
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
            .blocking(move |c| {
                let (status, resp) = answer(
                    c.http
                        .get(&format!("{}/roles/{user}", c.base))
                        .timeout(CALL_TIMEOUT)
                        .set("Authorization", &c.auth)
                        .call(),
                )?;
                match status {
                    200 => {
                        let role: Role = resp.into_json().map_err(|e| e.to_string())?;
                        Verifier::parse(&role.verifier).map(Some).ok_or_else(|| {
                            format!("the verifier of {} does not parse", role.pg_user)
                        })
                    }
                    404 => Ok(None),
                    s => Err(format!("roles: {s}")),
                }
            })
            .await?;
        let mut roles = self.roles.lock().unwrap();
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

    /// Follows the control plane's role changes and drops the cache at each; runs for ever.
    pub async fn follow_role_changes(self: Arc<Self>) {
        let mut after: Option<u64> = None;
        loop {
            let since = after;
            let answer = self
                .blocking(move |c| -> Result<Changes, String> {
                    let mut req = c
                        .http
                        .get(&format!("{}/roles/changes", c.base))
                        .timeout(Duration::from_secs(40))
                        .set("Authorization", &c.auth)
                        .query("wait_ms", "30000");
                    if let Some(s) = since {
                        req = req.query("after", &s.to_string());
                    }
                    match answer(req.call())? {
                        (200, resp) => resp.into_json().map_err(|e| e.to_string()),
                        (s, _) => Err(format!("role changes: {s}")),
                    }
                })
                .await;
            match answer {
                Ok(c) => {
                    if c.changed || since.is_none() {
                        self.roles.lock().unwrap().drop_all();
                    }
                    after = Some(c.seq);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot follow role changes; retrying");
                    self.roles.lock().unwrap().drop_all();
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
        self.blocking(move |c| {
            let (status, resp) = match c.post("/checkout", &body, wait + CALL_TIMEOUT, false) {
                Ok(answer) => answer,
                Err(e) => return Checkout::Transient(e),
            };
            let after = retry_after(&resp);
            let text = resp.into_string().unwrap_or_default();
            let code = || {
                serde_json::from_str::<wire::ErrorBody>(&text)
                    .map(|b| (b.error.code, b.error.message))
                    .unwrap_or_default()
            };
            match status {
                200 => serde_json::from_str(&text)
                    .map(Checkout::Lease)
                    .unwrap_or_else(|e| Checkout::Transient(format!("checkout answer: {e}"))),
                202 => {
                    let ms = serde_json::from_str::<wire::Pending>(&text)
                        .map_or(250, |p| p.retry_after_ms);
                    Checkout::Pending {
                        retry_after: Duration::from_millis(ms.clamp(10, 5000)),
                    }
                }
                503 => Checkout::Busy {
                    retry_after: after,
                    message: code().1,
                },
                404 if code().0 == "unknown_db" => Checkout::UnknownDb,
                404 => Checkout::UnknownUser,
                409 => Checkout::Refused { message: code().1 },
                s => Checkout::Transient(format!("checkout: {s}: {text}")),
            }
        })
        .await
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
        self.blocking(move |c| {
            match c.post(&format!("/leases/{lease}/renew"), &body, CALL_TIMEOUT, true) {
                Ok((200, _)) => Renewal::Renewed,
                Ok((409, _)) => Renewal::StaleEpoch,
                Ok((404, _)) => Renewal::Gone,
                Ok((s, _)) => Renewal::Transient(format!("renew: {s}")),
                Err(e) => Renewal::Transient(e),
            }
        })
        .await
    }

    pub async fn release(self: &Arc<Self>, lease: uuid::Uuid) {
        self.blocking(move |c| {
            let r = c.post(
                &format!("/leases/{lease}/release"),
                &wire::Release::default(),
                CALL_TIMEOUT,
                true,
            );
            if !matches!(r, Ok((200 | 404, _))) {
                tracing::debug!(%lease, "release not acknowledged; the lease will expire");
            }
        })
        .await
    }
}
