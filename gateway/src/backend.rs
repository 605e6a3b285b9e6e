//! The route and the backend: a client's database's lease (checked out, which starts a stopped
//! database), then a login to that database's PostgreSQL with the key the client's proof
//! revealed. Both front doors use it: the session port for each client, the pooler for each
//! backend connection of a pool.

use std::time::{Duration, Instant};

use spg99_scram::{Client, Keys, SCRAM_SHA_256};
use tokio::net::TcpStream;

use crate::leases::{NoRoute, Ticket};
use crate::pgwire::{self, Message, Out, MAX_BACKEND};
use crate::session::{bad_password, error, nonce, End, Gateway, Login};

/// The client's database's lease, into `ticket` if it holds none (or a closed one), then a
/// backend logged in to through it, with `settings` as startup parameters. A backend that
/// cannot be reached (a writer just retired by a cutover, or still starting) sends the
/// connection back for a fresh route, until the connect timeout; the client only waits longer.
pub(crate) async fn login(
    gw: &Gateway,
    who: &Login,
    settings: &[(String, String)],
    ticket: &mut Option<Ticket>,
) -> Result<(TcpStream, Ready, String), End> {
    let (user, database) = (who.user.as_str(), who.database.as_str());
    let deadline = Instant::now() + gw.leases.connect_timeout();
    let mut pause = Duration::from_millis(25);
    loop {
        if ticket.as_ref().is_some_and(|t| *t.closed.borrow()) {
            *ticket = None;
        }
        let t = match ticket {
            Some(t) => t,
            None => ticket.insert(
                gw.leases
                    .acquire(user, database, deadline)
                    .await
                    .map_err(|e| no_route(gw, who, e))?,
            ),
        };
        let backend_addr = t.held.backend_addr();
        let attempt = connect_backend(&backend_addr, user, database, settings, &who.keys);
        let attempt = tokio::time::timeout_at(deadline.into(), attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Backend::Retry {
                    why: "no answer in time".into(),
                    moved: true,
                    password: false,
                })
            });
        match attempt {
            Ok((backend, ready)) => return Ok((backend, ready, backend_addr)),
            Err(Backend::Refused(m)) => return Err(End::Backend(m)),
            Err(Backend::Retry {
                why,
                moved,
                password,
            }) => {
                // The proof was checked against a cached verifier: a fresh one that differs
                // means the password changed since (a reset), and the client's is the old one.
                if password {
                    gw.control.forget_role(user);
                    if let Ok(Some(fresh)) = gw.control.role(user).await {
                        if fresh.server_key != who.keys.server_key {
                            return Err(bad_password(gw, user, who.addr));
                        }
                    }
                }
                if Instant::now() + pause >= deadline {
                    return Err(error(
                        "08006",
                        format!("the database's server cannot be reached: {why}"),
                    ));
                }
                tracing::debug!(db = database, backend = %backend_addr, why = %why, "backend not reachable; routing again");
                if moved {
                    gw.leases.forget(&t.key, &t.held).await;
                    *ticket = None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// What the client hears when its database cannot be routed to.
pub(crate) fn no_route(gw: &Gateway, who: &Login, e: NoRoute) -> End {
    match e {
        NoRoute::UnknownUser => bad_password(gw, &who.user, who.addr),
        NoRoute::UnknownDb => error(
            "3D000",
            format!("database \"{}\" does not exist", who.database),
        ),
        NoRoute::Unavailable(why) => error("57P03", why),
        NoRoute::ControlPlane(e) => {
            tracing::warn!(error = %e, "the control plane cannot be reached");
            error(
                "57P03",
                "the platform cannot start the database right now; retry",
            )
        }
    }
}

/// A backend logged in to, up to its ReadyForQuery.
pub(crate) struct Ready {
    pub pid: u32,
    pub secret: u32,
    pub status: [u8; 1],
    /// Its ParameterStatus and notice messages, for the client.
    pub said: Out,
}

/// Why a backend login failed.
enum Backend {
    /// The backend refused the login itself (its ErrorResponse, for the client).
    Refused(Message),
    /// Worth another try: unreachable, shutting down or starting up (`moved`: route afresh,
    /// the writer may have changed), or refusing the password the Gateway accepted
    /// (`password`): its role has not had an update yet, or the Gateway's cached verifier is
    /// older than the backend's.
    Retry {
        why: String,
        moved: bool,
        password: bool,
    },
}

/// SQLSTATEs of a backend that is going away or not there yet.
const GOING_OR_COMING: [&str; 3] = ["57P01", "57P02", "57P03"];

/// Logs in to the backend as `user` with `keys`.
async fn connect_backend(
    addr: &str,
    user: &str,
    database: &str,
    forwarded: &[(String, String)],
    keys: &Keys,
) -> Result<(TcpStream, Ready), Backend> {
    let lost = |why: String| Backend::Retry {
        why,
        moved: true,
        password: false,
    };
    let mut backend = TcpStream::connect(addr)
        .await
        .map_err(|e| lost(e.to_string()))?;
    let _ = backend.set_nodelay(true);
    let mut params = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    params.extend_from_slice(forwarded);
    Out::default()
        .startup(&params)
        .send(&mut backend)
        .await
        .map_err(|e| lost(e.to_string()))?;
    let mut scram: Option<Client> = None;
    let mut ready = Ready {
        pid: 0,
        secret: 0,
        status: [b'I'],
        said: Out::default(),
    };
    loop {
        let m = pgwire::read_message(&mut backend, MAX_BACKEND)
            .await
            .map_err(|e| lost(e.to_string()))?;
        match m.tag {
            b'R' => {
                let kind = m
                    .body
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
                let data = std::str::from_utf8(m.body.get(4..).unwrap_or_default()).unwrap_or("");
                let mut out = Out::default();
                match kind {
                    Some(0) => continue,
                    Some(10) if data.split('\0').any(|mech| mech == SCRAM_SHA_256) => {
                        let (c, first) = Client::start(keys.clone(), &nonce());
                        scram = Some(c);
                        out.sasl(Some(SCRAM_SHA_256), &first);
                    }
                    Some(11) => {
                        let c = scram
                            .as_mut()
                            .ok_or_else(|| lost("SASL out of order".into()))?;
                        let answer = c.respond(data).map_err(|e| lost(e.to_string()))?;
                        out.sasl(None, &answer);
                    }
                    Some(12) => {
                        let c = scram
                            .take()
                            .ok_or_else(|| lost("SASL out of order".into()))?;
                        c.finish(data)
                            .map_err(|e| lost(format!("it is not the server it claims: {e}")))?;
                        continue;
                    }
                    _ => {
                        return Err(lost(
                            "it asks for an authentication the Gateway does not do".into(),
                        ))
                    }
                }
                out.send(&mut backend)
                    .await
                    .map_err(|e| lost(e.to_string()))?;
            }
            b'K' if m.body.len() == 8 => {
                ready.pid = u32::from_be_bytes(m.body[..4].try_into().unwrap());
                ready.secret = u32::from_be_bytes(m.body[4..].try_into().unwrap());
            }
            b'Z' => {
                ready.status = [m.body.first().copied().unwrap_or(b'I')];
                return Ok((backend, ready));
            }
            b'E' => {
                let fields = pgwire::fields(&m.body);
                let code = fields
                    .iter()
                    .find(|(f, _)| *f == b'C')
                    .map(|(_, c)| c.as_str())
                    .unwrap_or("");
                let message = fields
                    .iter()
                    .find(|(f, _)| *f == b'M')
                    .map(|(_, c)| c.clone())
                    .unwrap_or_default();
                return Err(match code {
                    c if GOING_OR_COMING.contains(&c) => lost(message),
                    "28P01" => Backend::Retry {
                        why: message,
                        moved: false,
                        password: true,
                    },
                    _ => Backend::Refused(m),
                });
            }
            b'S' | b'N' => {
                ready.said.raw(&m);
            }
            b'v' => {}
            _ => return Err(lost(format!("unexpected message '{}'", m.tag as char))),
        }
    }
}
