//! One client connection, in phases (as Neon's proxy has them): the handshake (TLS by
//! SSLRequest or PostgreSQL 17's direct TLS, GSSENC declined, cancels forwarded, protocol
//! versions negotiated), authentication (SCRAM-SHA-256, or -PLUS over TLS, against the
//! tenant's verifier), then the relay of the port the client came in by: the session port's
//! ([`crate::relay`]: the route and a backend of its own, bytes both ways untouched) or the
//! pooler's ([`crate::pooled`]: a backend of its database's pool per transaction).
//!
//! What the client hears on failure is an ErrorResponse with PostgreSQL's SQLSTATE: `28000`
//! (TLS required, no user), `28P01` (a wrong password or an unknown user, alike), `3D000` (no
//! such database), `57P03` (not available in time), `08006` (the backend is lost), `53300` (too
//! many connections, or too many failed passwords from the client's address), `08P01` (a
//! protocol violation, a SASL mechanism not offered), `0A000` (replication); and `28000` for a
//! user whose password failed too often lately, to any address it did not log in from.

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use spg99_scram::{Channel, Keys, Server, Verifier, SCRAM_SHA_256, SCRAM_SHA_256_PLUS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cancel::Cancels;
use crate::control::Control;
use crate::leases::Leases;
use crate::pgwire::{self, Message, Out, Startup, MAX_AUTH};
use crate::tls::{Tls, ALPN};

/// Everything a connection needs.
pub struct Gateway {
    pub tls: Tls,
    pub allow_plaintext: bool,
    pub control: Arc<Control>,
    pub leases: Arc<Leases>,
    pub cancels: Cancels,
    /// Derives unknown users' mock verifiers (stable across restarts and Gateways).
    pub mock_secret: Vec<u8>,
    pub max_connections: usize,
    /// Client connections open now.
    pub open: AtomicUsize,
    /// How long the client may take for each step of its handshake.
    pub handshake_timeout: Duration,
    pub failures: Failures,
    pub pools: crate::pool::Pools,
    /// Passwords sent in clear (WebSockets, SQL over HTTP), checked against verifiers.
    pub passwords: crate::password::Passwords,
    /// The HTTP front door's limits and state.
    pub http: crate::http::Http,
}

/// Failed password attempts per user and per client address, in one-minute windows. As for
/// API keys, a user's limit spares the addresses that logged in as it lately: a PostgreSQL
/// user name is no secret, and its applications must not be locked out by a guesser.
pub struct Failures {
    by_user: spg99_limits::Window<String>,
    by_address: spg99_limits::Window<IpAddr>,
    good: spg99_limits::Known<String>,
}

impl Failures {
    pub fn new(per_user: u32, per_address: u32) -> Failures {
        const MINUTE: Duration = Duration::from_secs(60);
        Failures {
            by_user: spg99_limits::Window::new(per_user, MINUTE),
            by_address: spg99_limits::Window::new(per_address, MINUTE),
            good: spg99_limits::Known::new(),
        }
    }

    /// Whether `user` may try a password from `addr` now.
    fn admit(&self, user: &str, addr: Option<IpAddr>) -> Result<(), End> {
        let secs = |d: Duration| d.as_secs().max(1);
        if let Some(d) = addr.and_then(|a| self.by_address.blocked(&a)) {
            return Err(error(
                "53300",
                format!(
                    "too many failed password attempts from this address; try again in {} s",
                    secs(d)
                ),
            ));
        }
        let user = user.to_owned();
        let stranger = || !addr.is_some_and(|a| self.good.knows(&user, a));
        if let Some(d) = self.by_user.blocked(&user).filter(|_| stranger()) {
            return Err(error(
                "28000",
                format!(
                    "too many failed password attempts for user \"{user}\"; try again in {} s",
                    secs(d)
                ),
            ));
        }
        Ok(())
    }

    fn failed(&self, user: &str, addr: Option<IpAddr>) {
        let _ = self.by_user.hit(&user.to_owned());
        if let Some(a) = addr {
            let _ = self.by_address.hit(&a);
        }
    }

    pub(crate) fn succeeded(&self, user: &str, addr: Option<IpAddr>) {
        if let Some(a) = addr {
            self.good.remember(&user.to_owned(), a);
        }
    }
}

/// How a connection ended: with an error for the client, or silently.
pub(crate) enum End {
    /// Tell the client, then close.
    Error(&'static str, String),
    /// The backend's own refusal of a login (too many clients, say), for the client.
    Backend(Message),
    /// Close without a word (a cancel, a client gone, garbage before any protocol).
    Quiet,
}

impl From<io::Error> for End {
    fn from(_: io::Error) -> Self {
        End::Quiet
    }
}

pub(crate) fn error(code: &'static str, message: impl Into<String>) -> End {
    End::Error(code, message.into())
}

/// A byte stream to the client: TCP, or TLS over it.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A client connection counted open (toward `--max-connections` and the metrics) while it
/// lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gw: &'a Gateway) -> Counted<'a> {
        gw.open.fetch_add(1, Ordering::AcqRel);
        let m = crate::metrics::get();
        m.connections.inc();
        m.open.inc();
        Counted(&gw.open)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::get().open.dec();
    }
}

pub(crate) fn nonce() -> String {
    use base64::Engine;
    let mut b = [0u8; 18];
    getrandom::fill(&mut b).expect("the operating system's random generator is unavailable");
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Which front door a client came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// A backend connection of its own for the whole session.
    Session,
    /// A backend from the database's pool for each transaction.
    Pooled,
}

/// Serves one client connection to its end.
pub async fn serve(gw: Arc<Gateway>, tcp: TcpStream, port: Port) {
    let _ = tcp.set_nodelay(true);
    let _counted = Counted::new(&gw);
    let _ = handshake(&gw, tcp, port).await;
}

/// Serves one PostgreSQL session carried by a WebSocket (its TLS, if any, ended by the HTTP
/// listener): the startup message (an SSLRequest is declined: the socket is the channel),
/// the password in clear, then the relay of `port`.
pub(crate) async fn serve_carried<S: Stream>(
    gw: &Gateway,
    mut client: S,
    port: Port,
    addr: Option<IpAddr>,
) {
    let _counted = Counted::new(gw);
    loop {
        let startup = match timed(gw, pgwire::read_startup(&mut client)).await {
            Ok(s) => s,
            Err(_) => return,
        };
        match startup {
            Startup::Ssl | Startup::GssEnc => {
                let declined = async {
                    client.write_all(b"N").await?;
                    client.flush().await
                };
                if declined.await.is_err() {
                    return;
                }
            }
            Startup::Cancel { pid, secret } => {
                gw.cancels.cancel(pid, secret).await;
                return;
            }
            Startup::Start { minor, params } => {
                let _ = session(gw, client, port, Auth::Cleartext, addr, minor, params).await;
                return;
            }
        }
    }
}

async fn timed<T>(
    gw: &Gateway,
    f: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(gw.handshake_timeout, f)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// TLS (direct, or after an SSLRequest) or plaintext, then the startup message.
async fn handshake(gw: &Gateway, mut tcp: TcpStream, port: Port) -> io::Result<()> {
    let addr = tcp.peer_addr().ok().map(|a| a.ip());
    let acceptor = tokio_rustls::TlsAcceptor::from(gw.tls.config.clone());
    let mut first = [0u8; 1];
    if timed(gw, tcp.peek(&mut first)).await? == 0 {
        return Ok(());
    }
    let direct = first[0] == 0x16;
    if !direct {
        loop {
            match timed(gw, pgwire::read_startup(&mut tcp)).await? {
                Startup::Ssl => {
                    tcp.write_all(b"S").await?;
                    break;
                }
                Startup::GssEnc => tcp.write_all(b"N").await?,
                Startup::Cancel { pid, secret } => {
                    gw.cancels.cancel(pid, secret).await;
                    return Ok(());
                }
                Startup::Start { minor, params } if gw.allow_plaintext => {
                    let auth = Auth::Scram(Channel::Plain);
                    return session(gw, tcp, port, auth, addr, minor, params).await;
                }
                Startup::Start { .. } => {
                    Out::default()
                        .error(
                            "28000",
                            "SSL is required: connect with sslmode=require (or stronger)",
                        )
                        .send(&mut tcp)
                        .await?;
                    return Ok(());
                }
            }
        }
    }
    let mut tls = timed(gw, acceptor.accept(tcp)).await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    // Direct TLS must say it speaks PostgreSQL (PostgreSQL 17 refuses it otherwise too).
    if direct && alpn.as_deref() != Some(ALPN) {
        return Ok(());
    }
    let auth = Auth::Scram(Channel::Tls {
        end_point: gw.tls.end_point.clone(),
    });
    match timed(gw, pgwire::read_startup(&mut tls)).await? {
        Startup::Cancel { pid, secret } => {
            gw.cancels.cancel(pid, secret).await;
            Ok(())
        }
        Startup::Start { minor, params } => session(gw, tls, port, auth, addr, minor, params).await,
        Startup::Ssl | Startup::GssEnc => {
            Out::default()
                .error("08P01", "an encryption request inside TLS")
                .send(&mut tls)
                .await
        }
    }
}

/// How a client proves who it is.
pub(crate) enum Auth {
    /// SCRAM-SHA-256 (and -PLUS over TLS): the password never reaches the Gateway.
    Scram(Channel),
    /// The password in clear, inside TLS (WebSockets: the serverless driver sends it before it
    /// is asked), checked against the verifier.
    Cleartext,
}

async fn session<S: Stream>(
    gw: &Gateway,
    mut client: S,
    port: Port,
    auth: Auth,
    addr: Option<IpAddr>,
    minor: u16,
    params: Vec<(String, String)>,
) -> io::Result<()> {
    let routed = match authenticate(gw, &mut client, &auth, addr, minor, &params).await {
        Ok(login) => match port {
            Port::Session => crate::relay::serve(gw, &mut client, login).await,
            Port::Pooled => crate::pooled::serve(gw, &mut client, login).await,
        },
        Err(e) => Err(e),
    };
    match routed {
        Ok(()) => Ok(()),
        Err(End::Backend(m)) => Out::default().raw(&m).send(&mut client).await,
        Err(End::Error(code, message)) => {
            crate::metrics::get()
                .refused
                .get_or_create(&crate::metrics::Refusal {
                    sqlstate: code.to_owned(),
                })
                .inc();
            Out::default().error(code, &message).send(&mut client).await
        }
        Err(End::Quiet) => Ok(()),
    }
}

async fn authenticate<S: Stream>(
    gw: &Gateway,
    client: &mut S,
    auth: &Auth,
    addr: Option<IpAddr>,
    minor: u16,
    params: &[(String, String)],
) -> Result<Login, End> {
    let param = |k: &str| {
        params
            .iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.as_str())
    };
    let unknown: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unknown.is_empty() {
        Out::default().negotiate(0, &unknown).send(client).await?;
    }
    let user = param("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        error(
            "28000",
            "no PostgreSQL user name specified in the startup packet",
        )
    })?;
    let database = param("database").filter(|d| !d.is_empty()).unwrap_or(user);
    if param("replication").is_some_and(|r| !matches!(r, "false" | "0" | "off" | "no")) {
        return Err(error(
            "0A000",
            "replication connections are not supported through the Gateway",
        ));
    }
    if gw.open.load(Ordering::Acquire) > gw.max_connections {
        return Err(error("53300", "sorry, too many clients already"));
    }
    let (verifier, known) = role(gw, user, addr).await?;
    let server_key = verifier.server_key;
    // What the client hears on success: SCRAM's final message, then AuthenticationOk.
    let mut ok = Out::default();
    let client_key = match auth {
        Auth::Scram(channel) => {
            let (key, server_final) =
                scram(gw, client, channel, verifier, known, user, addr).await?;
            ok.auth_sasl_final(&server_final);
            key
        }
        Auth::Cleartext => {
            Out::default().auth_cleartext().send(client).await?;
            let m = timed(gw, pgwire::read_message(client, MAX_AUTH)).await?;
            if m.tag != b'p' {
                return Err(error("08P01", "expected a password message"));
            }
            let password = m.body.strip_suffix(b"\0").unwrap_or(&m.body);
            let key = gw.passwords.check(user, &verifier, password).await;
            match key.filter(|_| known) {
                Some(key) => key,
                None => return Err(bad_password(gw, user, addr)),
            }
        }
    };
    gw.failures.succeeded(user, addr);
    ok.auth_ok().send(client).await?;

    let forwarded: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect();
    Ok(Login {
        user: user.to_owned(),
        database: database.to_owned(),
        keys: Keys {
            client_key,
            server_key,
        },
        forwarded,
        addr,
    })
}

/// The user's verifier, if `addr` may try a password for it now; for an unknown user a mock
/// one (`false`), so that both take the same exchange and fail the same way.
pub(crate) async fn role(
    gw: &Gateway,
    user: &str,
    addr: Option<IpAddr>,
) -> Result<(Verifier, bool), End> {
    gw.failures.admit(user, addr)?;
    let verifier = gw.control.role(user).await.map_err(|e| {
        tracing::warn!(error = %e, "cannot fetch a role");
        error(
            "57P03",
            "the platform cannot check credentials right now; retry",
        )
    })?;
    Ok(match verifier {
        Some(v) => (v, true),
        None => (Verifier::mock(&gw.mock_secret, user), false),
    })
}

/// A SCRAM-SHA-256 exchange against `verifier`, up to the server's final message: the
/// client's key, and that message (for the caller to send).
async fn scram<S: Stream>(
    gw: &Gateway,
    client: &mut S,
    channel: &Channel,
    verifier: Verifier,
    known: bool,
    user: &str,
    addr: Option<IpAddr>,
) -> Result<(spg99_scram::Key, String), End> {
    let mechanisms: &[&str] = match channel {
        Channel::Tls { .. } => &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256],
        Channel::Plain => &[SCRAM_SHA_256],
    };
    Out::default().auth_sasl(mechanisms).send(client).await?;
    // Every way a proof can fail counts as a failed password.
    let bad = || bad_password(gw, user, addr);
    let first = timed(gw, pgwire::read_message(client, MAX_AUTH)).await?;
    let (mechanism, client_first) = match first.tag {
        b'p' => pgwire::sasl_initial(&first.body)
            .ok_or_else(|| error("08P01", "malformed SASLInitialResponse"))?,
        _ => return Err(error("08P01", "expected a SASL response")),
    };
    if !mechanisms.contains(&mechanism.as_str()) {
        return Err(error(
            "08P01",
            format!("SASL mechanism {mechanism} is not offered"),
        ));
    }
    let (scram, server_first) =
        Server::start(verifier, &mechanism, &client_first, &nonce(), channel).map_err(|_| bad())?;
    Out::default()
        .auth_sasl_continue(&server_first)
        .send(client)
        .await?;
    let last = timed(gw, pgwire::read_message(client, MAX_AUTH)).await?;
    if last.tag != b'p' {
        return Err(error("08P01", "expected a SASL response"));
    }
    let client_final = std::str::from_utf8(&last.body).map_err(|_| bad())?;
    match scram.finish(client_final) {
        Ok(done) if known => Ok(done),
        _ => Err(bad()),
    }
}

/// A client that proved who it is: where it goes, and the key that logs it in there.
pub(crate) struct Login {
    pub user: String,
    pub database: String,
    pub keys: Keys,
    /// Its startup parameters for the backend (`application_name`, `options`, ...).
    pub forwarded: Vec<(String, String)>,
    pub addr: Option<IpAddr>,
}

/// A wrong password (or an unknown user): counted against the user and the address.
pub(crate) fn bad_password(gw: &Gateway, user: &str, addr: Option<IpAddr>) -> End {
    gw.failures.failed(user, addr);
    crate::metrics::get().auth_failures.inc();
    error(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}
