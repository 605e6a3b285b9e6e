//! The `spg99` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::client::commands::{
    AccountsCommand, ClientArgs, DbsCommand, EventsArgs, KeysCommand, TenantsCommand,
};

#[derive(Debug, Parser)]
#[command(
    name = "spg99",
    version,
    about = "SPG99: a serverless PostgreSQL platform"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the control plane: API v2, the internal API and the reconciler, in one process.
    Serve(ServeArgs),
    /// Read the command log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Replay the whole log into fresh projections: counts, speed and state fingerprint.
    /// With --url, compares with that server's state (and, without a log in --data-dir,
    /// has the server rebuild from its own).
    Rebuild {
        /// Compare with the newest snapshot, and with the server at --url (if given).
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// The state as it was at a point of the log (time travel for audits).
    State {
        /// A seq, or an RFC 3339 time (the last event at or before it).
        #[arg(long)]
        at: String,
        /// Only this tenant and its databases.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Pretty)]
        format: Format,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Check the log's integrity: gapless seq, every record decodes, every checksum holds.
    Verify {
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Run a Gateway, the PostgreSQL front door, against a control plane's internal API (token
    /// in SPG99_SERVICE_TOKEN).
    Gateway(spg99_gateway::GatewayArgs),
    /// Run a compute worker against a control plane's internal API (token in
    /// SPG99_SERVICE_TOKEN): PostgreSQL for each database placed on it (or a simulation),
    /// on the control plane's instructions.
    Worker(spg99_worker::WorkerArgs),
    /// Save a profile (--profile, default `default`): the API's URL and a token, read from
    /// SPG99_TOKEN or stdin and checked against the API first.
    Login {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Accounts (global keys).
    Accounts {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: AccountsCommand,
    },
    /// API keys: issue, list, me, rotate, revoke.
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Tenants: create, list, get, delete, credentials, reset-password.
    Tenants {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Databases: create, list, get (the describe), delete.
    Dbs {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: DbsCommand,
    },
    /// The event stream: the log so far, or with --follow live (resuming by itself).
    Events {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        args: EventsArgs,
    },
    /// Compute seconds by profile and by database.
    Billing {
        #[command(flatten)]
        client: ClientArgs,
        /// `YYYY-MM` (default: this month).
        #[arg(long)]
        period: Option<String>,
        /// The account (global keys).
        #[arg(long)]
        account: Option<String>,
    },
    /// Run psql on a database through the Gateway (arguments after `--` go to psql).
    Connect {
        #[command(flatten)]
        client: ClientArgs,
        tenant: String,
        db: String,
        /// Through the Gateway's transaction pooler (`pooled_dsn_template`).
        #[arg(long)]
        pooled: bool,
        #[arg(last = true)]
        psql_args: Vec<String>,
    },
    /// Print a shell's completion script (`spg99 completions bash > /etc/bash_completion.d/spg99`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Every event with its envelope, secrets redacted.
    Dump {
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long)]
        to: Option<u64>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        db: Option<uuid::Uuid>,
        /// Comma-separated event types.
        #[arg(long)]
        types: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Jsonl)]
        format: Format,
        #[command(flatten)]
        source: SourceArgs,
    },
    /// Copy the sled log in --data-dir into an empty PostgreSQL log, then check that both
    /// replay to the same state (fingerprint). The server must be stopped.
    Migrate {
        #[arg(long, env = "SPG99_DATA_DIR", default_value = "./data")]
        data_dir: PathBuf,
        /// The PostgreSQL log to make (`postgres://user:password@host:port/db`).
        #[arg(long)]
        to: String,
    },
    /// Follow the log live through the API, like the Console (token in SPG99_TOKEN): the
    /// same as `spg99 events --follow -o json`, resuming after a dropped connection.
    Tail {
        #[arg(long, env = "SPG99_URL")]
        url: String,
        /// Start after this seq (default: from now on).
        #[arg(long)]
        since: Option<u64>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        db: Option<uuid::Uuid>,
        #[arg(long)]
        types: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Pretty,
}

/// Offline on a data directory, or online with --url (token in SPG99_TOKEN).
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    #[arg(long, env = "SPG99_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The log in a PostgreSQL database (`postgres://...`) instead of sled in --data-dir
    /// (read only; its snapshots are still looked for in --data-dir).
    #[arg(long, env = "SPG99_LOG")]
    pub log: Option<String>,
    /// A running server's base URL; reads go through its admin API.
    #[arg(long, env = "SPG99_URL")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where the command log (and everything derived from it) lives.
    #[arg(long, env = "SPG99_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The command log in a PostgreSQL database instead (`postgres://user:password@host/db`;
    /// its schema is made on first use), which several replicas may serve: one leads it, the
    /// others follow and pass writes to it. Snapshots stay in --data-dir; every replica needs
    /// the same SPG99_SECRET_KEY.
    #[arg(long, env = "SPG99_LOG")]
    pub log: Option<String>,
    /// The URL at which other replicas reach this one's API to pass it writes while it leads
    /// (default: the listen address).
    #[arg(long, env = "SPG99_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// A replica that leads a shared log and does not renew its lead for this many
    /// milliseconds is replaced by another.
    #[arg(long, env = "SPG99_LEADER_TTL_MS", default_value_t = 3_000)]
    pub leader_ttl_ms: u64,
    /// HTTP listen address; port 0 picks a free port (the address is printed).
    #[arg(long, env = "SPG99_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the embedded Gateway listens for PostgreSQL clients; `none`: no Gateway.
    #[arg(long, env = "SPG99_GATEWAY_LISTEN", default_value = "127.0.0.1:5432")]
    pub gateway_listen: String,
    /// Host (and port) of the Gateway, put into every tenant's `dsn_template` (default: the
    /// embedded Gateway's address, else localhost:5432).
    #[arg(long, env = "SPG99_GATEWAY_HOST")]
    pub gateway_host: Option<String>,
    /// Where the embedded Gateway's transaction pooler listens; `none`: no pooler.
    #[arg(long, env = "SPG99_POOLER_LISTEN", default_value = "127.0.0.1:6432")]
    pub pooler_listen: String,
    /// Host (and port) of the pooler, put into every tenant's `pooled_dsn_template` (default:
    /// the embedded pooler's address, else localhost:6432).
    #[arg(long, env = "SPG99_POOLER_HOST")]
    pub pooler_host: Option<String>,
    /// Where the embedded Gateway's HTTP front door listens (`POST /sql`, WebSockets, with
    /// TLS); `none`: no HTTP.
    #[arg(long, env = "SPG99_HTTP_LISTEN", default_value = "127.0.0.1:4444")]
    pub http_listen: String,
    /// Host (and port) of the HTTP front door, put into every tenant's `http_sql_url` and
    /// `websocket_url` (default: the embedded address, else localhost:4444).
    #[arg(long, env = "SPG99_HTTP_HOST")]
    pub http_host: Option<String>,
    /// The embedded worker's compute: `postgres` (the default where PostgreSQL's programs are
    /// found), `simulated`, or `none` (no local worker).
    #[arg(long, env = "SPG99_COMPUTE")]
    pub compute: Option<String>,
    /// The storage repository every database is kept in, by pgBackRest: a directory (one
    /// machine, or a filesystem every worker shares), an S3-compatible object store
    /// (`s3://BUCKET/PREFIX?endpoint=https://HOST:PORT&region=R&ca=PEM-PATH`, its keys in
    /// SPG99_STORAGE_ACCESS_KEY and SPG99_STORAGE_SECRET_KEY), or `none` (each database's data
    /// stays on the worker that serves it). Handed to every worker when it registers.
    /// Default: `storage` in the data directory.
    #[arg(long, env = "SPG99_STORAGE")]
    pub storage: Option<String>,
    /// A writing database's WAL is archived at least this often (seconds): the most a running
    /// database can lose with its worker's disk.
    #[arg(long, env = "SPG99_ARCHIVE_TIMEOUT", default_value_t = 5)]
    pub archive_timeout: u64,
    /// How far back every point of a database's history can be restored: `7d`, `36h`, `90m`
    /// (backups are kept by whole days: a part of a day keeps a whole one).
    #[arg(long, env = "SPG99_HISTORY_WINDOW", default_value = "7d", value_parser = parse_window)]
    pub history_window: std::time::Duration,
    /// Stop a database after this many seconds without connections.
    #[arg(long, env = "SPG99_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,
    /// A Gateway lease not renewed for this many milliseconds expires.
    #[arg(long, env = "SPG99_LEASE_TTL_MS", default_value_t = 30_000)]
    pub lease_ttl_ms: u64,
    /// A worker silent for this many milliseconds is declared lost.
    #[arg(long, env = "SPG99_WORKER_TIMEOUT_MS", default_value_t = 15_000)]
    pub worker_timeout_ms: u64,
    /// ...or this many, if it holds a writer or a standby of a database with high
    /// availability: its failover waits this long (workers heartbeat four times as often).
    #[arg(long, env = "SPG99_HA_WORKER_TIMEOUT_MS", default_value_t = 1_500)]
    pub ha_worker_timeout_ms: u64,
    /// A standby its writer has not seen streaming for this many milliseconds is given up:
    /// the writer's commits stop waiting for it, and a new one is built.
    #[arg(long, env = "SPG99_STANDBY_TIMEOUT_MS", default_value_t = 3_000)]
    pub standby_timeout_ms: u64,
    /// Each lifecycle phase (start, stop, prepare candidate, cutover) must finish within
    /// this many seconds, or it fails.
    #[arg(long, env = "SPG99_PHASE_DEADLINE", default_value_t = 60)]
    pub phase_deadline: u64,
    /// A start that first restores the database from the storage repository (onto a worker
    /// without its newest copy, or to a point in time) must finish within this many seconds:
    /// the copy takes as long as the database's size asks.
    #[arg(long, env = "SPG99_RESTORE_DEADLINE", default_value_t = 1800)]
    pub restore_deadline: u64,
    /// How often the reconciler runs, in milliseconds.
    #[arg(long, env = "SPG99_RECONCILE_INTERVAL_MS", default_value_t = 1_000)]
    pub reconcile_interval_ms: u64,
    /// `system` (default) or `manual`: a clock that stands still until
    /// `POST /internal/v1/clock/advance` moves it (tests and demos of time-driven behaviour).
    #[arg(long, env = "SPG99_CLOCK", default_value = "system")]
    pub clock: String,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SPG99_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Write a snapshot of the state after this many events...
    #[arg(long, env = "SPG99_SNAPSHOT_EVERY_EVENTS", default_value_t = 100_000)]
    pub snapshot_every_events: u64,
    /// ...or after this many seconds with new events, whichever comes first.
    #[arg(long, env = "SPG99_SNAPSHOT_EVERY_SECS", default_value_t = 300)]
    pub snapshot_every_secs: u64,
    /// The HTTP API's certificate chain (PEM); with `--tls-key`, the API (public and internal)
    /// is served over TLS only.
    #[arg(long, env = "SPG99_API_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SPG99_API_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address that is not loopback (only behind a trusted network or
    /// a TLS-terminating proxy); without TLS, plain HTTP is otherwise refused there.
    #[arg(long, env = "SPG99_API_ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,
}

/// A history window: a number and `d`, `h` or `m`; at least a minute.
fn parse_window(raw: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("`{raw}`: expected a number and d, h or m, e.g. 7d or 36h");
    let unit = raw.chars().last().ok_or_else(bad)?;
    let n: u64 = raw[..raw.len() - unit.len_utf8()]
        .trim()
        .parse()
        .map_err(|_| bad())?;
    let secs = match unit {
        'd' => n.checked_mul(86_400),
        'h' => n.checked_mul(3_600),
        'm' => n.checked_mul(60),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs < 60 {
        return Err(format!("`{raw}`: at least a minute"));
    }
    Ok(std::time::Duration::from_secs(secs))
}
