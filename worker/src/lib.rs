//! # `spg99 worker`: the compute agent
//!
//! A worker host runs the writers of the databases the control plane places on it, on the
//! control plane's instructions, and reports what happened; the internal API's types are
//! the `spg99-wire` crate's.
//!
//! ## Layout
//! - [`agent`]: the protocol's loops (register, long-polled instructions, heartbeats with
//!   loads, reports), calling the control plane through the internal API's one client
//!   (`spg99_wire::client::Internal`); `agent/books.rs`, the pure state machine of which writer
//!   is at which term and what each instruction still needs.
//! - [`compute`]: the driver trait; [`postgres`] runs real PostgreSQL servers,
//!   [`simulated`] pretends (delays, failures, synthetic load) for the lifecycle's tests.
//! - this file: the flags and [`run`], [`spawn`].

pub mod agent;
pub mod compute;
pub mod metrics;
pub mod postgres;
pub mod simulated;
pub mod storage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tracing::{error, info, warn};

use agent::{Agent, Limits, Token};
use compute::Compute;
use simulated::{parse_cpu, CpuSchedule, Simulated};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ComputeKind {
    /// Real PostgreSQL servers, one per database.
    Postgres,
    /// Writers that only pretend (tests of the lifecycle's failure paths).
    Simulated,
}

/// `spg99 worker`: the flags.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Base URL of the control plane, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "SPG99_URL")]
    pub control_plane: String,
    /// For an `https://` control plane with a private authority or a self-signed
    /// certificate: the authorities (PEM) to trust; otherwise the public roots.
    #[arg(long, env = "SPG99_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<std::path::PathBuf>,
    /// This worker's id, stable across restarts of the same host.
    #[arg(long)]
    pub id: String,
    /// Where to serve `GET /metrics` (Prometheus text format); none unless given.
    #[arg(long, env = "SPG99_WORKER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// The service token the internal API expects (prefer the environment variable).
    #[arg(long, env = "SPG99_SERVICE_TOKEN", hide_env_values = true)]
    pub token: Token,
    /// What runs the writers: `postgres` (the default where PostgreSQL's programs are found)
    /// or `simulated`.
    #[arg(long, env = "SPG99_COMPUTE", value_enum)]
    pub compute: Option<ComputeKind>,
    /// How many writers and candidates this worker can host at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub capacity: u32,
    /// The compute profiles this worker offers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "c0.25,c0.5,c1,c2,c4,c8")]
    pub profiles: Vec<String>,
    /// Heartbeat every this many milliseconds instead of the control plane's suggestion.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub heartbeat_ms: Option<u64>,

    /// PostgreSQL's programs (default: the newest /usr/lib/postgresql/<version>/bin, else
    /// the PATH).
    #[arg(long, env = "SPG99_PG_BIN", help_heading = "PostgreSQL compute")]
    pub pg_bin: Option<PathBuf>,
    /// Where databases' data directories live (one per database, named by its timeline).
    #[arg(
        long,
        env = "SPG99_STORAGE_DIR",
        default_value = "./worker-data",
        help_heading = "PostgreSQL compute"
    )]
    pub storage_dir: PathBuf,
    /// The ports the servers listen on, `LOW-HIGH`: best outside the kernel's range for
    /// outgoing connections (`net.ipv4.ip_local_port_range`, 32768-60999 by default).
    #[arg(long, env = "SPG99_PORT_RANGE", default_value = "20000-20999", value_parser = parse_ports, help_heading = "PostgreSQL compute")]
    pub port_range: (u16, u16),
    /// Where the servers listen.
    #[arg(
        long,
        env = "SPG99_LISTEN_HOST",
        default_value = "127.0.0.1",
        help_heading = "PostgreSQL compute"
    )]
    pub listen_host: String,
    /// The host put in each writer's backend address (default: --listen-host).
    #[arg(
        long,
        env = "SPG99_ADVERTISE_HOST",
        help_heading = "PostgreSQL compute"
    )]
    pub advertise_host: Option<String>,
    /// Data directories kept copied ahead of time (~30 MB each), so that a new database's
    /// first start does not wait for a copy.
    #[arg(
        long,
        env = "SPG99_SPARE_CLUSTERS",
        default_value_t = 4,
        help_heading = "PostgreSQL compute"
    )]
    pub spare_clusters: usize,

    /// The simulated writers' backend address (and the address the worker registers with).
    #[arg(
        long,
        default_value = "127.0.0.1:6432",
        help_heading = "Simulated compute"
    )]
    pub address: String,
    /// Milliseconds a `start` takes before `started` is reported.
    #[arg(long, default_value_t = 0, help_heading = "Simulated compute")]
    pub start_delay_ms: u64,
    /// Milliseconds a `prepare` takes (the candidate catching up) before `prepared`.
    #[arg(long, default_value_t = 0, help_heading = "Simulated compute")]
    pub prepare_delay_ms: u64,
    /// Milliseconds a `promote` takes before `promoted`.
    #[arg(long, default_value_t = 0, help_heading = "Simulated compute")]
    pub promote_delay_ms: u64,
    /// Milliseconds a `stop` of a running writer takes before `stopped`.
    #[arg(long, default_value_t = 0, help_heading = "Simulated compute")]
    pub stop_delay_ms: u64,
    /// Report every `start` as failed ("simulated start failure").
    #[arg(long, help_heading = "Simulated compute")]
    pub fail_start: bool,
    /// Report every `prepare` as failed ("simulated prepare failure").
    #[arg(long, help_heading = "Simulated compute")]
    pub fail_prepare: bool,
    /// On the first `prepare`, exit at once with status 3 without reporting: a candidate's
    /// host dying mid-handoff.
    #[arg(long, help_heading = "Simulated compute")]
    pub die_mid_handoff: bool,
    /// Synthetic CPU load of each serving writer, as a fraction of its profile (0.0 and up).
    #[arg(long, default_value_t = 0.1, value_parser = parse_cpu, help_heading = "Simulated compute")]
    pub cpu: f64,
    /// A repeating CPU schedule of cpu:seconds steps, e.g. "0.9:30,0.1:60" (overrides --cpu;
    /// the clock starts with the process and is the same for every writer).
    #[arg(long, value_parser = CpuSchedule::parse, help_heading = "Simulated compute")]
    pub cpu_schedule: Option<CpuSchedule>,
    /// Synthetic active connections of each serving writer.
    #[arg(long, default_value_t = 0, help_heading = "Simulated compute")]
    pub connections: u32,
}

/// `LOW-HIGH`, a non-empty range of ports.
fn parse_ports(raw: &str) -> Result<(u16, u16), String> {
    let bad = || format!("`{raw}`: expected LOW-HIGH, e.g. 20000-20999");
    let (low, high) = raw.split_once('-').ok_or_else(bad)?;
    let (low, high): (u16, u16) = (
        low.trim().parse().map_err(|_| bad())?,
        high.trim().parse().map_err(|_| bad())?,
    );
    if low == 0 || low > high {
        return Err(bad());
    }
    Ok((low, high))
}

impl WorkerArgs {
    /// The compute asked for, or the default: PostgreSQL where its programs are found.
    pub fn compute_kind(&self) -> ComputeKind {
        match self.compute {
            Some(kind) => kind,
            None if postgres::find_bin(self.pg_bin.as_deref()).is_some() => ComputeKind::Postgres,
            None => {
                warn!(
                    "PostgreSQL's programs are not found (--pg-bin, /usr/lib/postgresql/*/bin, PATH): \
                     running simulated compute. Install PostgreSQL (Debian: apt-get install postgresql) \
                     for real databases."
                );
                ComputeKind::Simulated
            }
        }
    }

    /// The compute driver the flags describe.
    pub fn driver(&self) -> Result<Arc<dyn Compute>, String> {
        Ok(match self.compute_kind() {
            ComputeKind::Simulated => Arc::new(Simulated {
                address: self.address.clone(),
                start_delay: Duration::from_millis(self.start_delay_ms),
                prepare_delay: Duration::from_millis(self.prepare_delay_ms),
                promote_delay: Duration::from_millis(self.promote_delay_ms),
                stop_delay: Duration::from_millis(self.stop_delay_ms),
                fail_start: self.fail_start,
                fail_prepare: self.fail_prepare,
                die_mid_handoff: self.die_mid_handoff,
                cpu: self.cpu,
                cpu_schedule: self.cpu_schedule.clone(),
                connections: self.connections,
                since: Instant::now(),
            }),
            ComputeKind::Postgres => {
                let bin = postgres::find_bin(self.pg_bin.as_deref()).ok_or_else(|| {
                    match &self.pg_bin {
                        Some(dir) => format!("no postgres and initdb in --pg-bin {}", dir.display()),
                        None => "PostgreSQL's programs are not found (/usr/lib/postgresql/*/bin, PATH); \
                                 install PostgreSQL (Debian: apt-get install postgresql) or pass --pg-bin"
                            .into(),
                    }
                })?;
                Arc::new(postgres::Postgres::new(postgres::Config {
                    bin,
                    storage: self.storage_dir.clone(),
                    listen_host: self.listen_host.clone(),
                    advertise_host: self
                        .advertise_host
                        .clone()
                        .unwrap_or_else(|| self.listen_host.clone()),
                    ports: self.port_range,
                    spares: self.spare_clusters,
                })?)
            }
        })
    }

    fn agent_config(&self) -> Result<agent::Config, String> {
        let address = match self.compute_kind() {
            ComputeKind::Postgres => self
                .advertise_host
                .clone()
                .unwrap_or_else(|| self.listen_host.clone()),
            ComputeKind::Simulated => self.address.clone(),
        };
        let http = ureq::AgentBuilder::new()
            .timeout_connect(agent::CONNECT_TIMEOUT)
            .timeout(agent::CALL_TIMEOUT);
        Ok(agent::Config {
            http: spg99_wire::client::agent(http, self.control_plane_ca.as_deref())?,
            control_plane: self.control_plane.clone(),
            id: self.id.clone(),
            token: self.token.clone(),
            address,
            limits: Limits {
                capacity: usize::try_from(self.capacity).unwrap_or(usize::MAX),
                profiles: self.profiles.clone(),
            },
            heartbeat: self.heartbeat_ms.map(Duration::from_millis),
        })
    }
}

/// A worker running inside another process (`spg99 serve`'s local worker).
pub struct Running {
    agent: Arc<Agent>,
}

impl Running {
    /// Stops every writer it started and ends its loops.
    pub fn stop(&self) {
        self.agent.shutdown();
    }
}

/// Starts a worker in this process: its driver, its registration, its loops.
pub fn spawn(args: &WorkerArgs) -> Result<Running, String> {
    let agent = Arc::new(Agent::new(args.agent_config()?, args.driver()?));
    agent::start(&agent)
        .map_err(|code| format!("the worker could not register (status {code})"))?;
    Ok(Running { agent })
}

/// `spg99 worker`: registers, then runs until SIGINT/SIGTERM (its writers are stopped then)
/// or until the control plane refuses it (status 1); `--die-mid-handoff` exits by itself (3).
pub fn run(args: WorkerArgs) -> i32 {
    let kind = args.compute_kind();
    info!(
        id = %args.id,
        control_plane = %args.control_plane,
        compute = ?kind,
        capacity = args.capacity,
        profiles = %args.profiles.join(","),
        "worker starting"
    );
    let driver = match args.driver() {
        Ok(d) => d,
        Err(e) => {
            error!(error = %e, "cannot start the compute");
            return agent::EXIT_REFUSED;
        }
    };
    let config = match args.agent_config() {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "cannot reach the control plane");
            return agent::EXIT_REFUSED;
        }
    };
    if let Some(listen) = &args.metrics_listen {
        match spg99_wire::metrics::serve(listen, metrics::registry()) {
            Ok(addr) => info!(%addr, "metrics on http://{addr}/metrics"),
            Err(e) => {
                error!(error = %e, "cannot serve the metrics");
                return agent::EXIT_REFUSED;
            }
        }
    }
    let agent = Arc::new(Agent::new(config, driver));
    let exited = match agent::start(&agent) {
        Ok(rx) => rx,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot wait for signals");
            return exited.recv().unwrap_or(agent::EXIT_REFUSED);
        }
    };
    let (tx, mut signalled) = tokio::sync::mpsc::channel::<i32>(1);
    std::thread::spawn(move || {
        let code = exited.recv().unwrap_or(agent::EXIT_REFUSED);
        let _ = tx.blocking_send(code);
    });
    let code = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return signalled.recv().await.unwrap_or(agent::EXIT_REFUSED);
        };
        tokio::select! {
            _ = term.recv() => 0,
            _ = int.recv() => 0,
            code = signalled.recv() => code.unwrap_or(agent::EXIT_REFUSED),
        }
    });
    info!("worker stopping: stopping its writers");
    agent.shutdown();
    code
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    /// The required flags, then `extra`.
    fn parse(extra: &[&str]) -> Result<WorkerArgs, clap::Error> {
        let required = ["--control-plane=http://cp", "--id=w1", "--token=secret"];
        let argv = ["spg99"].iter().chain(&required).chain(extra);
        Cli::try_parse_from(argv).map(|cli| cli.worker)
    }

    #[test]
    fn flags_have_their_defaults_and_are_checked() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.profiles, ["c0.25", "c0.5", "c1", "c2", "c4", "c8"]);
        assert_eq!(args.address, "127.0.0.1:6432");
        assert_eq!((args.capacity, args.connections), (64, 0));
        assert_eq!((args.cpu, args.heartbeat_ms), (0.1, None));
        assert_eq!(args.port_range, (20000, 20999));
        assert!(args.cpu_schedule.is_none());
        assert!(!format!("{args:?}").contains("secret"));

        let args = parse(&[
            "--profiles=c1,c2",
            "--cpu-schedule=0.9:30,0.1:60",
            "--compute=simulated",
        ])
        .unwrap();
        assert_eq!(args.profiles, ["c1", "c2"]);
        assert_eq!(args.compute, Some(ComputeKind::Simulated));
        assert_eq!(args.cpu_schedule.map(|s| s.at(Duration::ZERO)), Some(0.9));

        for bad in [
            "--cpu=-1",
            "--capacity=0",
            "--heartbeat-ms=0",
            "--cpu-schedule=1",
            "--port-range=10",
            "--port-range=9-8",
            "--compute=vm",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} accepted");
        }
    }
}
