//! # `spg99 gateway`: the PostgreSQL front door
//!
//! Applications connect here with the tenant's `dsn_template`. The Gateway terminates TLS,
//! authenticates the client with SCRAM-SHA-256 against the tenant's verifier (it never knows
//! a password), checks the database out from the control plane (which starts it if it is
//! stopped), logs in to the database's PostgreSQL with the key the client's proof revealed,
//! and relays bytes both ways. It holds no state of its own but leases and cancel keys, and
//! speaks to the control plane only through the internal API (`spg99-wire`).
//!
//! A second front door, the pooler (`--pooler-listen`), shares a pool of backend connections
//! per database among its clients, transaction by transaction. A third, HTTP
//! (`--http-listen`), serves SQL over HTTP and PostgreSQL over WebSockets as the Neon
//! serverless driver speaks them, on the same pools.
//!
//! ## Layout, by phase
//! - [`pgwire`]: the wire protocol's messages, bounded reads.
//! - [`tls`]: the certificate (given or self-signed and kept), ALPN, channel binding data.
//! - [`session`]: one connection's handshake and authentication, and the SQLSTATEs of their
//!   failures; then one of the relays.
//! - [`backend`]: the route (the database's lease) and the login to its PostgreSQL.
//! - [`relay`]: the session port's relay, a backend per client.
//! - [`pooled`]: the pooler's relay, a backend per transaction, prepared statements carried.
//! - [`pool`]: the pooler's backend connections per database.
//! - [`sql`]: what the pooler reads of a client's SQL.
//! - [`http`]: the HTTP front door: `POST /sql` and WebSockets.
//! - [`password`]: passwords sent in clear inside TLS, checked against verifiers.
//! - [`control`]: calls to the control plane (through the internal API's one client in
//!   `spg99-wire`), and the cache of roles (verifiers).
//! - [`leases`]: one lease per database, renewed, released, fenced by its epoch.
//! - [`cancel`]: the Gateway's own cancel keys, forwarded to the right backend.

pub mod backend;
pub mod cancel;
pub mod control;
pub mod http;
pub mod leases;
pub mod metrics;
pub mod password;
pub mod pgwire;
pub mod pool;
pub mod pooled;
pub mod relay;
pub mod session;
pub mod sql;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sha2::Digest;
use tokio::net::TcpListener;

use session::{Gateway, Port};

/// `spg99 gateway`: the flags.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Base URL of the control plane, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SPG99_URL")]
    pub control_plane: String,
    /// For an `https://` control plane with a private authority or a self-signed
    /// certificate: the authorities (PEM) to trust; otherwise the public roots.
    #[arg(long, env = "SPG99_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// Where clients connect.
    #[arg(long, env = "SPG99_GATEWAY_LISTEN", default_value = "127.0.0.1:5432")]
    pub listen: String,
    /// Where pooled clients connect (transaction pooling); `none`: no pooler.
    #[arg(long, env = "SPG99_POOLER_LISTEN", default_value = "127.0.0.1:6432")]
    pub pooler_listen: String,
    /// How long a pooled client waits for a backend when every one of its database's pool is
    /// busy (seconds); then 53300.
    #[arg(long, env = "SPG99_POOL_TIMEOUT", default_value_t = 30)]
    pub pool_timeout: u64,
    /// How long a pooled client may keep a transaction open without sending anything
    /// (seconds); then 25P03, and its transaction is rolled back.
    #[arg(
        long,
        env = "SPG99_POOL_IDLE_IN_TRANSACTION_TIMEOUT",
        default_value_t = 60
    )]
    pub pool_idle_in_transaction_timeout: u64,
    /// Where HTTP clients connect (`POST /sql`, WebSockets), with TLS; `none`: no HTTP.
    #[arg(long, env = "SPG99_HTTP_LISTEN", default_value = "127.0.0.1:4444")]
    pub http_listen: String,
    /// The longest `POST /sql` body taken (bytes); beyond, 413.
    #[arg(long, env = "SPG99_HTTP_MAX_REQUEST_BYTES", default_value_t = 10 << 20)]
    pub http_max_request_bytes: usize,
    /// The longest `POST /sql` answer given (bytes of JSON); beyond, the query is cancelled
    /// and the answer is a 54000 error.
    #[arg(long, env = "SPG99_HTTP_MAX_RESPONSE_BYTES", default_value_t = 10 << 20)]
    pub http_max_response_bytes: usize,
    /// How long a `POST /sql` may run once it has its backend (seconds); then it is cancelled
    /// (57014).
    #[arg(long, env = "SPG99_HTTP_STATEMENT_TIMEOUT", default_value_t = 15)]
    pub http_statement_timeout: u64,
    /// HTTP requests (and WebSocket opens) from one client address per minute; beyond, 429.
    /// 0: no limit.
    #[arg(
        long,
        env = "SPG99_HTTP_REQUESTS_PER_ADDRESS",
        default_value_t = 60_000
    )]
    pub http_requests_per_address: u32,
    /// How long a database's HTTP clients keep its lease and pool membership after their last
    /// request (seconds): the next request finds its backend warm.
    #[arg(long, env = "SPG99_HTTP_LINGER", default_value_t = 15)]
    pub http_linger: u64,
    /// WebSockets open at most; beyond, 503.
    #[arg(long, env = "SPG99_HTTP_MAX_WEBSOCKETS", default_value_t = 10_000)]
    pub http_max_websockets: usize,
    /// The certificate (PEM) clients see; without it, a self-signed one made once and kept.
    #[arg(long, env = "SPG99_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SPG99_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Where the self-signed certificate and its key (0600) are kept.
    #[arg(long, env = "SPG99_TLS_DIR", default_value = "./gateway-tls")]
    pub tls_dir: PathBuf,
    /// The names clients reach the Gateway by, comma-separated: the self-signed certificate is
    /// made for them, and a connection string sent to `POST /sql` must name one of them (or
    /// the host the request was sent to).
    #[arg(
        long,
        env = "SPG99_TLS_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub tls_names: Vec<String>,
    /// Accept clients without TLS (never outside a trusted network).
    #[arg(long)]
    pub allow_plaintext: bool,
    /// How long a connection may wait for its database to start (seconds); then 57P03.
    #[arg(long, env = "SPG99_GATEWAY_CONNECT_TIMEOUT", default_value_t = 30)]
    pub connect_timeout: u64,
    /// Client connections at most, both ports together; beyond, 53300. Each takes a file
    /// descriptor (a session port's two): the process's limit must be above it.
    #[arg(long, env = "SPG99_GATEWAY_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,
    /// How long a client may take for each step of its handshake (seconds).
    #[arg(long, env = "SPG99_GATEWAY_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Failed password attempts for one PostgreSQL user per minute; past them, addresses other
    /// than the user's last good ones are refused (28000) for the rest of the minute. 0: no limit.
    #[arg(
        long,
        env = "SPG99_GATEWAY_AUTH_FAILURES_PER_USER",
        default_value_t = 10
    )]
    pub auth_failures_per_user: u32,
    /// Failed password attempts from one client address per minute; past them, the address is
    /// refused (53300) for the rest of the minute. 0: no limit.
    #[arg(
        long,
        env = "SPG99_GATEWAY_AUTH_FAILURES_PER_ADDRESS",
        default_value_t = 100
    )]
    pub auth_failures_per_address: u32,
    /// Where to serve `GET /metrics` (Prometheus text format); none unless given.
    #[arg(long, env = "SPG99_GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// The service token the internal API expects (prefer the environment variable).
    #[arg(long, env = "SPG99_SERVICE_TOKEN", hide_env_values = true)]
    pub token: String,
}

impl GatewayArgs {
    fn gateway(&self) -> Result<Arc<Gateway>, String> {
        let source = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => tls::Source::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => tls::Source::SelfSigned {
                dir: self.tls_dir.clone(),
                names: self.tls_names.clone(),
            },
        };
        let http = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(2));
        let http = spg99_wire::client::agent(http, self.control_plane_ca.as_deref())?;
        let control = control::Control::new(http, &self.control_plane, &self.token);
        let mock_secret =
            sha2::Sha256::digest(format!("spg99 mock verifiers\0{}", self.token)).to_vec();
        Ok(Arc::new(Gateway {
            tls: tls::Tls::load(&source)?,
            allow_plaintext: self.allow_plaintext,
            leases: leases::Leases::new(control.clone(), Duration::from_secs(self.connect_timeout)),
            control,
            cancels: Default::default(),
            mock_secret,
            max_connections: self.max_connections,
            open: Default::default(),
            handshake_timeout: Duration::from_secs(self.handshake_timeout.max(1)),
            failures: session::Failures::new(
                self.auth_failures_per_user,
                self.auth_failures_per_address,
            ),
            pools: pool::Pools::new(
                Duration::from_secs(self.pool_timeout.max(1)),
                Duration::from_secs(self.pool_idle_in_transaction_timeout.max(1)),
            ),
            passwords: Default::default(),
            http: http::Http::new(
                self.http_max_request_bytes,
                self.http_max_response_bytes,
                Duration::from_secs(self.http_statement_timeout.max(1)),
                self.http_requests_per_address,
                self.http_max_websockets,
                Duration::from_secs(self.http_linger),
                self.tls_names.clone(),
            ),
        }))
    }
}

/// The listeners: the session port's, and the pooler's and HTTP's if they are on.
struct Listeners {
    session: TcpListener,
    pooler: Option<TcpListener>,
    http: Option<TcpListener>,
}

/// Accepts clients until the listener fails; each connection in a task of its own.
async fn accept(listeners: Listeners, gw: Arc<Gateway>) {
    let leases = gw.leases.clone();
    tokio::spawn(gw.control.clone().follow_changes(move |fenced| {
        let leases = leases.clone();
        async move { leases.fence(&fenced).await }
    }));
    if let Some(pooler) = listeners.pooler {
        tokio::spawn(accept_on(pooler, gw.clone(), Port::Pooled));
    }
    if let Some(http) = listeners.http {
        tokio::spawn(http::accept(http, gw.clone()));
    }
    accept_on(listeners.session, gw, Port::Session).await
}

async fn accept_on(listener: TcpListener, gw: Arc<Gateway>, port: Port) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                tokio::spawn(session::serve(gw.clone(), tcp, port));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A Gateway running inside another process (`spg99 serve`'s), on a runtime of its own.
pub struct Running {
    pub addr: SocketAddr,
    /// The pooler's address, if it has one.
    pub pooler_addr: Option<SocketAddr>,
    /// The HTTP front door's address, if it has one.
    pub http_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, releases its leases and closes every connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a stopping Gateway spends releasing its leases at most.
const RELEASE_AT_STOP: Duration = Duration::from_secs(2);

/// Binds the first address `listen` resolves to that accepts, with a deep backlog (a burst of
/// clients must queue, not be refused).
fn bind(listen: &str) -> std::io::Result<TcpListener> {
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in listen.to_socket_addrs()? {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(4096)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolves to nothing")))
}

/// Binds and starts a Gateway in this process; returns once it listens.
pub fn spawn(args: &GatewayArgs) -> Result<Running, String> {
    let gw = args.gateway()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("spg99-gateway")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the Gateway's runtime: {e}"))?;
    let bound = {
        // Entered, not blocked on: the caller may be driving a runtime of its own.
        let _in = runtime.enter();
        let optional = |listen: &str, what: &str| match listen {
            "none" => Ok(None),
            l => bind(l)
                .map(Some)
                .map_err(|e| format!("the Gateway's {what} cannot listen on {l}: {e}")),
        };
        bind(&args.listen)
            .map_err(|e| format!("the Gateway cannot listen on {}: {e}", args.listen))
            .and_then(|session| {
                Ok(Listeners {
                    session,
                    pooler: optional(&args.pooler_listen, "pooler")?,
                    http: optional(&args.http_listen, "HTTP front door")?,
                })
            })
    };
    let listeners = match bound {
        Ok(l) => l,
        Err(e) => {
            // Not dropped where it would block: the caller may be inside a runtime.
            runtime.shutdown_background();
            return Err(e);
        }
    };
    let local = |l: &Option<TcpListener>| -> Result<Option<SocketAddr>, String> {
        l.as_ref()
            .map(|l| l.local_addr().map_err(|e| e.to_string()))
            .transpose()
    };
    let addr = listeners.session.local_addr().map_err(|e| e.to_string())?;
    let pooler_addr = local(&listeners.pooler)?;
    let http_addr = local(&listeners.http)?;
    if let Some(p) = pooler_addr {
        let _ = gw.http.pooler_port.set(p.port());
    }
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("spg99-gateway".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = accept(listeners, gw.clone()) => {}
                    _ = stopped => {}
                }
                // Bounded: a control plane gone first (as in `spg99 serve`) leaves them to
                // expire.
                let _ = tokio::time::timeout(RELEASE_AT_STOP, gw.leases.end_all()).await;
            });
            // Dropping the runtime ends every connection's task.
            runtime.shutdown_timeout(Duration::from_millis(100));
        })
        .map_err(|e| e.to_string())?;
    Ok(Running {
        addr,
        pooler_addr,
        http_addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// `spg99 gateway`: serves until SIGINT/SIGTERM.
pub fn run(args: GatewayArgs) -> i32 {
    let mut running = match spawn(&args) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the Gateway");
            return 1;
        }
    };
    println!("spg99 gateway listening on {}", running.addr);
    if let Some(p) = running.pooler_addr {
        println!("spg99 gateway pooler listening on {p}");
    }
    if let Some(h) = running.http_addr {
        println!("spg99 gateway http listening on {h}");
    }
    if let Some(listen) = &args.metrics_listen {
        match spg99_wire::metrics::serve(listen, metrics::registry()) {
            Ok(addr) => println!("spg99 gateway metrics on http://{addr}/metrics"),
            Err(e) => {
                tracing::error!(error = %e, "cannot serve the metrics");
                running.stop();
                return 1;
            }
        }
    }
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(rt) = signals {
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
        });
    }
    running.stop();
    0
}

/// A mutex's data even if a thread panicked while holding it: what the Gateway keeps under
/// its locks (cancel keys, leases, the role cache) stays consistent at every step, so one
/// panicking connection must not turn into a Gateway whose every connection panics.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
