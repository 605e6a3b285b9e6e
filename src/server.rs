//! `spg99 serve`: open the log, rebuild the state, bootstrap, then serve HTTP until a signal.
//!
//! [`Application::build`] binds the listener (port 0 works, for tests) and returns before
//! serving, so callers learn the address; [`Application::run_until_stopped`] serves until
//! SIGINT/SIGTERM, then stops the committer after the last request was answered.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{middleware, web, App};
use spg99_events::Actor;

use crate::auth::Token;
use crate::cli::ServeArgs;
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::commands::Command;
use crate::committer::{self, CommitHandle, Shared};
use crate::decision::CommandMeta;
use crate::http::{self, front, request_id, AppState};
use crate::lifecycle::Settings;
use crate::log::{Bid, Location, Log, LogError};
use crate::recovery::recover;
use crate::replica::{self, Replica, Role};
use crate::secrets::{SecretBox, SecretError};

/// How long open connections (event streams included) may hold a shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Pending connections the HTTP listener queues (the standard library's default is 128).
const BACKLOG: u32 = 4096;

/// Everything `serve` needs, resolved from flags and environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Where the command log is: sled in `data_dir`, or a PostgreSQL database.
    pub log: Location,
    pub listen: String,
    /// The embedded Gateway's address; `None`: no Gateway in this process.
    pub gateway_listen: Option<String>,
    /// The host put in `dsn_template`; `None`: the embedded Gateway's address.
    pub gateway_host: Option<String>,
    /// The embedded Gateway's pooler's address; `None`: no pooler.
    pub pooler_listen: Option<String>,
    /// The host put in `pooled_dsn_template`; `None`: the embedded pooler's address.
    pub pooler_host: Option<String>,
    /// The embedded Gateway's HTTP front door's address; `None`: none.
    pub http_listen: Option<String>,
    /// The host put in `http_sql_url` and `websocket_url`; `None`: the embedded address.
    pub http_host: Option<String>,
    /// The embedded worker's compute (`postgres`, `simulated`); `None`: no local worker.
    pub compute: Option<spg99_worker::ComputeKind>,
    pub lifecycle: Settings,
    pub reconcile_interval: Duration,
    /// A manual clock instead of the wall clock (`SPG99_CLOCK=manual`).
    pub manual_clock: bool,
    pub http_workers: usize,
    /// `SPG99_BOOTSTRAP_TOKEN`: the first global key's token, on the first start only.
    pub bootstrap_token: Option<String>,
    /// `SPG99_SERVICE_TOKEN`: the internal API's token.
    pub service_token: Option<String>,
    /// `SPG99_SECRET_KEY`: the key sealing secrets in the log (else `secret.key` in the data
    /// directory).
    pub secret_key: Option<String>,
    pub snapshots: crate::snapshot::Policy,
    pub limits: crate::limits::LimitArgs,
    /// The HTTP API's certificate and key (PEM): TLS only.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Plain HTTP on an address that is not loopback.
    pub allow_plaintext: bool,
    /// The URL other replicas pass writes to; `None`: this process's own listen address.
    pub advertise_url: Option<String>,
    /// How long the lead of a shared log lasts unless renewed.
    pub leader_ttl: Duration,
}

impl Config {
    pub fn from_args(args: ServeArgs) -> Result<Config, StartError> {
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        use spg99_worker::ComputeKind;
        let compute = match args.compute.as_deref() {
            Some("postgres") => Some(ComputeKind::Postgres),
            Some("simulated") => Some(ComputeKind::Simulated),
            Some("none") => None,
            None if spg99_worker::postgres::find_bin(None).is_some() => Some(ComputeKind::Postgres),
            None => {
                tracing::warn!(
                    "PostgreSQL is not installed here: the local worker runs simulated compute \
                     (nothing to connect to). Install it with scripts/install-engines.sh (Debian: \
                     apt-get install postgresql) and start again for real databases."
                );
                Some(ComputeKind::Simulated)
            }
            Some(other) => {
                return Err(StartError::Config(format!(
                    "--compute {other:?}: expected postgres, simulated or none"
                )))
            }
        };
        let log = match &args.log {
            Some(url) => {
                Location::postgres(url).map_err(|e| StartError::Config(format!("--log {e}")))?
            }
            None => Location::Sled(args.data_dir.clone()),
        };
        let storage = storage(&args, &env)?;
        let secret_key = env("SPG99_SECRET_KEY");
        if matches!(log, Location::Postgres(_)) && secret_key.is_none() {
            return Err(StartError::Config(
                "a log on PostgreSQL may be served by several replicas, which must all seal \
                 secrets with one key: set SPG99_SECRET_KEY (64 hex digits, the same on every \
                 replica)"
                    .into(),
            ));
        }
        Ok(Config {
            log,
            data_dir: args.data_dir,
            listen: args.listen,
            gateway_listen: Some(args.gateway_listen).filter(|g| g != "none"),
            gateway_host: args.gateway_host,
            pooler_listen: Some(args.pooler_listen).filter(|p| p != "none"),
            pooler_host: args.pooler_host,
            http_listen: Some(args.http_listen).filter(|p| p != "none"),
            http_host: args.http_host,
            compute,
            lifecycle: Settings {
                idle_timeout: Duration::from_secs(args.idle_timeout),
                lease_ttl: Duration::from_millis(args.lease_ttl_ms.max(1)),
                worker_timeout: Duration::from_millis(args.worker_timeout_ms.max(1)),
                ha_worker_timeout: Duration::from_millis(args.ha_worker_timeout_ms.max(1)),
                standby_timeout: Duration::from_millis(args.standby_timeout_ms.max(1)),
                heartbeat_interval: Duration::from_millis(
                    (args.worker_timeout_ms / 3)
                        .min(args.ha_worker_timeout_ms / 4)
                        .max(1),
                ),
                phase_deadline: Duration::from_secs(args.phase_deadline.max(1)),
                restore_deadline: Duration::from_secs(args.restore_deadline.max(1)),
                storage,
                ..Settings::default()
            },
            reconcile_interval: Duration::from_millis(args.reconcile_interval_ms.max(10)),
            manual_clock: args.clock == "manual",
            http_workers: args
                .http_workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            bootstrap_token: env("SPG99_BOOTSTRAP_TOKEN"),
            service_token: env("SPG99_SERVICE_TOKEN"),
            secret_key,
            snapshots: crate::snapshot::Policy {
                every_events: args.snapshot_every_events.max(1),
                every: Duration::from_secs(args.snapshot_every_secs.max(1)),
            },
            limits: args.limits,
            tls: args.tls_cert.zip(args.tls_key),
            allow_plaintext: args.allow_plaintext,
            advertise_url: args.advertise_url,
            leader_ttl: Duration::from_millis(args.leader_ttl_ms.max(100)),
        })
    }
}

/// The repository the workers keep databases in (`--storage`), checked as far as the control
/// plane can: its form, and the keys of an object store being set. The default, a directory
/// in the data directory, is one the `postgres` user can reach (or one of the service's own,
/// as for the local worker's data).
fn storage(
    args: &ServeArgs,
    env: &dyn Fn(&'static str) -> Option<String>,
) -> Result<Option<spg99_wire::storage::Storage>, StartError> {
    use spg99_wire::storage::Repository;
    let repository = match args.storage.as_deref() {
        Some("none") => return Ok(None),
        Some(raw) => {
            Repository::parse(raw).map_err(|e| StartError::Config(format!("--storage {e}")))?
        }
        None => Repository::Posix(
            spg99_worker::postgres::reachable_repository(&args.data_dir.join("storage"))
                .map_err(|e| StartError::Config(format!("the storage repository: {e}")))?,
        ),
    };
    if matches!(repository, Repository::S3(_))
        && (env("SPG99_STORAGE_ACCESS_KEY").is_none() || env("SPG99_STORAGE_SECRET_KEY").is_none())
    {
        return Err(StartError::Config(
            "an S3 repository needs its keys: set SPG99_STORAGE_ACCESS_KEY and \
             SPG99_STORAGE_SECRET_KEY (the same on every worker; they are never logged nor \
             written anywhere)"
                .into(),
        ));
    }
    if args.archive_timeout == 0 {
        return Err(StartError::Config(
            "--archive-timeout: at least 1 second".into(),
        ));
    }
    Ok(Some(spg99_wire::storage::Storage {
        repository: repository.to_string(),
        archive_timeout_secs: args.archive_timeout,
        history_window_secs: args.history_window.as_secs(),
    }))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the command log cannot be used: {0}")]
    Log(#[from] LogError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("bootstrap failed: {0}")]
    Bootstrap(String),
    #[error("{0}")]
    Secret(#[from] SecretError),
}

pub struct Application {
    addr: SocketAddr,
    /// The API is served over TLS.
    tls: bool,
    server: actix_web::dev::Server,
    replica: Replica,
    gateway: Option<spg99_gateway::Running>,
    /// The local worker, once it has registered (it registers in the background).
    worker: LocalSlot,
    /// Why the local worker could not start, if it could not: the service stops then.
    worker_failed: Option<tokio::sync::oneshot::Receiver<String>>,
}

impl Application {
    pub async fn build(config: Config) -> Result<Application, StartError> {
        // On a blocking thread: the log's store may be a database, and its client blocks.
        let (at, data_dir) = (config.log.clone(), config.data_dir.clone());
        let (log, snapshots_dir, recovered) = tokio::task::spawn_blocking(move || {
            let log = Arc::new(Log::at(&at, false)?);
            // Snapshots of a log kept elsewhere go in a directory of their own.
            let snapshots_dir = log.local_dir(&data_dir);
            let recovered = recover(&log, &snapshots_dir, true)?;
            // The snapshot's bytes and the replay's envelopes are free now.
            crate::heap::give_back();
            Ok::<_, LogError>((log, snapshots_dir, recovered))
        })
        .await
        .expect("opening the log does not panic")?;
        tracing::info!(
            seq = recovered.state.last_seq,
            snapshot = recovered.snapshot,
            replayed = recovered.replayed,
            millis = recovered.elapsed.as_millis() as u64,
            "state rebuilt from the log"
        );
        let secrets = Arc::new(SecretBox::load(
            &config.data_dir,
            config.secret_key.as_deref(),
        )?);
        // A key that does not open what the log sealed would serve broken credentials.
        if let Some(t) = recovered.state.tenants.values().next() {
            secrets.open(t.id.as_bytes(), &t.pg_password)?;
        }
        let clock: Arc<dyn Clock> = if config.manual_clock {
            tracing::warn!("manual clock: time stands still until /internal/v1/clock/advance");
            Arc::new(ManualClock::starting_now())
        } else {
            Arc::new(SystemClock)
        };
        let settings = Arc::new(config.lifecycle.clone());
        let snapshot_seq = recovered.state.last_seq;
        let (commits, queue) = committer::channel(Shared::new(recovered.state));

        let bind_error = |source| StartError::Bind {
            addr: config.listen.clone(),
            source,
        };
        let tls = match &config.tls {
            Some((cert, key)) => Some(
                spg99_gateway::tls::server_config(cert, key, &[b"http/1.1"])
                    .map_err(StartError::Config)?
                    .0,
            ),
            None => None,
        };
        let listener = front::listener(&config.listen, BACKLOG).map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        if tls.is_none() && !addr.ip().is_loopback() && !config.allow_plaintext {
            return Err(StartError::Config(format!(
                "{addr} is not a loopback address, and plain HTTP would carry tokens in the \
                 clear there: give --tls-cert and --tls-key (or --allow-plaintext behind a \
                 trusted network or a TLS-terminating proxy)"
            )));
        }
        let mut listeners = vec![front::Listener {
            socket: listener,
            tls: tls.clone(),
        }];
        let scheme = if tls.is_some() { "https" } else { "http" };
        let role = Arc::new(Role::default());
        let replica = Replica::start(
            replica::Parts {
                log: log.clone(),
                commits: commits.clone(),
                clock: clock.clone(),
                secrets: secrets.clone(),
                settings: settings.clone(),
                config: Arc::new(config.clone()),
                bid: Bid {
                    holder: uuid::Uuid::new_v4().to_string(),
                    address: config
                        .advertise_url
                        .clone()
                        .unwrap_or_else(|| format!("{scheme}://{addr}")),
                    ttl: config.leader_ttl,
                },
                role: role.clone(),
            },
            queue,
        )
        .await?;
        actix_web::rt::spawn(crate::snapshot::run(
            commits.shared().clone(),
            snapshots_dir.clone(),
            config.snapshots,
            snapshot_seq,
        ));
        actix_web::rt::spawn(crate::heap::trim_when_quiet(commits.shared().clone()));
        // The embedded Gateway and worker reach the internal API with a token of this process
        // alone, which is never written anywhere (with replicas, one derived from the secret
        // key, so that the leader accepts what a follower passes on); over TLS, on a plain
        // listener of their own on loopback (so they need neither the certificate's name nor
        // its authority).
        let local = if log.shared() {
            Token::service_from(&secrets.derive(b"spg99 replicas' service token"))
        } else {
            Token::generate_service()
        };
        let internal_addr = if tls.is_some() {
            let own = front::listener("127.0.0.1:0", BACKLOG).map_err(bind_error)?;
            let own_addr = own.local_addr().map_err(bind_error)?;
            listeners.push(front::Listener {
                socket: own,
                tls: None,
            });
            own_addr
        } else {
            addr
        };
        let control_plane = format!("http://{internal_addr}");
        let gateway = match &config.gateway_listen {
            Some(listen) => Some(embedded_gateway(&config, listen, &control_plane, &local)?),
            None => None,
        };
        // What each front door is advertised as: the host given, else where the embedded one
        // listens, else its default port on localhost.
        let advertised = |host: &Option<String>, addr: Option<SocketAddr>, default: &str| {
            host.clone()
                .or_else(|| addr.map(|a| a.to_string()))
                .unwrap_or_else(|| default.to_owned())
        };
        let g = gateway.as_ref();
        let hosts = crate::routes::tenants::Hosts {
            gateway: advertised(&config.gateway_host, g.map(|g| g.addr), "localhost:5432"),
            pooler: advertised(
                &config.pooler_host,
                g.and_then(|g| g.pooler_addr),
                "localhost:6432",
            ),
            http: advertised(
                &config.http_host,
                g.and_then(|g| g.http_addr),
                "localhost:4444",
            ),
        };
        let state = web::Data::new(AppState {
            shared: commits.shared().clone(),
            commits,
            clock,
            secrets,
            log,
            tickets: Default::default(),
            limits: crate::limits::Limits::new(&config.limits),
            snapshots_dir,
            hosts,
            settings,
            local_service: local.secret_hash(),
            role,
            more_metrics: [
                gateway
                    .as_ref()
                    .map(|_| spg99_gateway::metrics::registry as fn() -> _),
                config
                    .compute
                    .map(|_| spg99_worker::metrics::registry as fn() -> _),
            ]
            .into_iter()
            .flatten()
            .collect(),
            archived: Default::default(),
            replication_lag: Default::default(),
        });
        let settings = front::Settings {
            workers: config.http_workers,
            backlog: BACKLOG,
            shutdown_timeout: SHUTDOWN_GRACE,
        };
        let server = front::serve(listeners, &settings, move || {
            App::new()
                .app_data(state.clone())
                .wrap(middleware::from_fn(http::forward::middleware))
                .wrap(middleware::from_fn(request_id::middleware))
                .configure(http::configure)
        })
        .map_err(bind_error)?;
        let worker = LocalSlot::default();
        let worker_failed = match config.compute {
            Some(kind) => Some(embedded_worker(
                &config,
                kind,
                &control_plane,
                &local,
                worker.clone(),
            )?),
            None => None,
        };
        Ok(Application {
            addr,
            tls: config.tls.is_some(),
            server,
            replica,
            gateway,
            worker,
            worker_failed,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API's base URL, as clients reach it.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The embedded Gateway's address, if it runs one.
    pub fn gateway_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(|g| g.addr)
    }

    /// The embedded Gateway's pooler's address, if it runs one.
    pub fn pooler_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(|g| g.pooler_addr)
    }

    /// The embedded Gateway's HTTP front door's address, if it runs one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(|g| g.http_addr)
    }

    /// Serves until SIGINT/SIGTERM (or until the local worker turns out unable to start: an
    /// error then), then stops the Gateway (its connections end) and the local worker (its
    /// PostgreSQL servers stop) while the API still answers them, then the API (after its
    /// last request) and the committer.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = self.server;
        let worker_failed = async {
            match self.worker_failed.take() {
                Some(failed) => failed.await.ok(),
                None => None,
            }
        };
        let mut failure = None;
        let served = tokio::select! {
            served = &mut server => Some(served),
            _ = stop_signal() => None,
            Some(why) = worker_failed => {
                failure = Some(why);
                None
            }
        };
        if let Some(mut g) = self.gateway.take() {
            g.stop();
        }
        if let Some(w) = self.worker.stop() {
            let _ = web::block(move || w.stop()).await;
        }
        let served = match served {
            Some(served) => served,
            // The server answers the stop while it is polled: both at once.
            None => tokio::join!(handle.stop(true), server).1,
        };
        self.replica.stop().await;
        tracing::info!("stopped");
        match failure {
            Some(why) => Err(std::io::Error::other(why)),
            None => served,
        }
    }
}

/// The first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

/// A path as the embedded Gateway's and worker's flags take it.
fn utf8(path: &std::path::Path) -> Result<&str, StartError> {
    path.to_str().ok_or_else(|| {
        StartError::Config(format!(
            "{} is not valid UTF-8: choose a data directory whose path is",
            path.display()
        ))
    })
}

/// The Gateway inside `spg99 serve`: its certificate kept in the data directory.
fn embedded_gateway(
    config: &Config,
    listen: &str,
    control_plane: &str,
    token: &Token,
) -> Result<spg99_gateway::Running, StartError> {
    let tls_dir = config.data_dir.join("gateway-tls");
    let pooler = config.pooler_listen.as_deref().unwrap_or("none");
    let http = config.http_listen.as_deref().unwrap_or("none");
    // The names clients are told to use: the certificate (if it is made now) is for them, and
    // connection strings sent over HTTP name them.
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    for host in [&config.gateway_host, &config.pooler_host, &config.http_host]
        .into_iter()
        .flatten()
    {
        let name = spg99_gateway::http::host_name(host);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let names = names.join(",");
    let args = [
        "gateway",
        "--control-plane",
        control_plane,
        "--listen",
        listen,
        "--pooler-listen",
        pooler,
        "--http-listen",
        http,
        "--tls-dir",
        utf8(&tls_dir)?,
        "--tls-names",
        &names,
        "--token",
        &token.reveal(),
    ];
    let args = embedded::<spg99_gateway::GatewayArgs>(&args)?;
    spg99_gateway::spawn(&args).map_err(|e| {
        StartError::Config(format!(
            "{e} (choose other addresses with --gateway-listen, --pooler-listen and --http-listen, or `none` for none)"
        ))
    })
}

/// Where the local worker's thread puts it once it has registered; a worker that registers
/// after the service began to stop is stopped at once (its servers must not outlive it).
#[derive(Clone, Default)]
struct LocalSlot(Arc<std::sync::Mutex<Local>>);

#[derive(Default)]
struct Local {
    stopping: bool,
    running: Option<spg99_worker::Running>,
}

impl LocalSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Local> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The worker, for the caller to stop; one that arrives later is stopped by `put`.
    fn stop(&self) -> Option<spg99_worker::Running> {
        let mut local = self.lock();
        local.stopping = true;
        local.running.take()
    }

    fn put(&self, running: spg99_worker::Running) {
        let mut local = self.lock();
        if local.stopping {
            drop(local);
            running.stop();
        } else {
            local.running = Some(running);
        }
    }
}

/// The local worker: its storage in the data directory (or, where the postgres user cannot
/// reach that, in a directory of the service's own: [`spg99_worker::postgres::reachable_storage`]).
/// It registers through this process's own HTTP listener, so it starts in the background once
/// that serves; why it could not start, if it could not, comes out of the receiver.
fn embedded_worker(
    config: &Config,
    kind: spg99_worker::ComputeKind,
    control_plane: &str,
    token: &Token,
    slot: LocalSlot,
) -> Result<tokio::sync::oneshot::Receiver<String>, StartError> {
    let storage = config.data_dir.join("compute");
    let (storage, compute) = match kind {
        spg99_worker::ComputeKind::Postgres => (
            spg99_worker::postgres::reachable_storage(&storage)
                .map_err(|e| StartError::Config(format!("the local worker's storage: {e}")))?,
            "postgres",
        ),
        spg99_worker::ComputeKind::Simulated => (storage, "simulated"),
    };
    let args = [
        "worker",
        "--control-plane",
        control_plane,
        "--id",
        "local",
        "--compute",
        compute,
        "--storage-dir",
        utf8(&storage)?,
        "--token",
        &token.reveal(),
    ];
    let args = embedded::<spg99_worker::WorkerArgs>(&args)?;
    let (failed, failure) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("spg99-local-worker".into())
        .spawn(move || match spg99_worker::spawn(&args) {
            Ok(running) => slot.put(running),
            Err(e) => {
                let why = format!(
                    "the local worker cannot start, so no database could run: {e} (fix that, \
                     or run with --compute none and workers of their own)"
                );
                tracing::error!("{why}");
                let _ = failed.send(why);
            }
        })
        .map_err(|e| StartError::Config(format!("cannot start the local worker: {e}")))?;
    Ok(failure)
}

/// A component's flags, parsed as if given on its own command line (so its defaults apply).
fn embedded<A: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> Result<A, StartError> {
    let command = A::augment_args(clap::Command::new("spg99"));
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|e| StartError::Config(e.to_string()))?;
    A::from_arg_matches(&matches).map_err(|e| StartError::Config(e.to_string()))
}

/// What a replica does first in each term it leads: the bootstrap (of a fresh log), and
/// verifiers for tenants made before there were any.
pub async fn begin_term(
    commits: &CommitHandle,
    config: &Config,
    secrets: &SecretBox,
) -> Result<(), StartError> {
    bootstrap(commits, config).await?;
    give_old_tenants_verifiers(commits, secrets).await
}

/// Tenants created before verifiers existed get theirs, once, by an event (derived here from
/// their password; never by replay).
async fn give_old_tenants_verifiers(
    commits: &CommitHandle,
    secrets: &SecretBox,
) -> Result<(), StartError> {
    let missing: Vec<(uuid::Uuid, spg99_events::Sealed)> = commits
        .shared()
        .read()
        .tenants
        .values()
        .filter(|t| t.verifier.is_none())
        .map(|t| (t.id, t.pg_password.clone()))
        .collect();
    for (tenant_id, sealed) in missing {
        let password = crate::credentials::open_password(secrets, tenant_id, &sealed)?;
        let (_, verifier) = crate::credentials::seal(secrets, tenant_id, &password);
        let meta = CommandMeta {
            actor: Actor::System,
            request_id: "verifiers".into(),
        };
        commits
            .submit(
                meta,
                Command::SetTenantVerifier {
                    tenant_id,
                    verifier,
                },
            )
            .await
            .map_err(|e| StartError::Bootstrap(e.to_string()))?;
    }
    Ok(())
}

/// First start: the first global key. Every start: the service token.
async fn bootstrap(commits: &CommitHandle, config: &Config) -> Result<(), StartError> {
    let meta = CommandMeta {
        actor: Actor::System,
        request_id: "bootstrap".into(),
    };
    let submit = |command| {
        let meta = meta.clone();
        async move {
            commits
                .submit(meta, command)
                .await
                .map_err(|e| StartError::Bootstrap(e.to_string()))
        }
    };

    let fresh = commits.shared().head() == 0;
    if fresh {
        let (token, given) = match &config.bootstrap_token {
            Some(raw) => match Token::parse(raw) {
                Some(t) if !t.is_service() => (t, true),
                _ => return Err(StartError::Config(
                    "SPG99_BOOTSTRAP_TOKEN must look like spg99_<16 hex digits>_<48 hex digits>"
                        .into(),
                )),
            },
            None => (Token::generate_api_key(), false),
        };
        submit(Command::Bootstrap {
            key_id: token.key_id().to_owned(),
            secret_hash: token.secret_hash(),
        })
        .await?;
        if !given {
            println!(
                "bootstrap global API key (shown once, store it now): {}",
                token.reveal()
            );
        }
        tracing::info!(key_id = token.key_id(), "bootstrap global key created");
    }

    match &config.service_token {
        Some(raw) => {
            let token = Token::parse(raw).filter(Token::is_service).ok_or_else(|| {
                StartError::Config(
                    "SPG99_SERVICE_TOKEN must look like spg99_svc_<48 hex digits>".into(),
                )
            })?;
            submit(Command::SetServiceToken {
                secret_hash: token.secret_hash(),
            })
            .await?;
        }
        None if commits.shared().read().service_token.is_none() => {
            let token = Token::generate_service();
            submit(Command::SetServiceToken {
                secret_hash: token.secret_hash(),
            })
            .await?;
            println!(
                "service token for the Gateway and workers (shown once, store it now): {}",
                token.reveal()
            );
        }
        None => {}
    }
    Ok(())
}
