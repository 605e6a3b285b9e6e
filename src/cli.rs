//! The `spg99` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "spg99", version, about = "SPG99 control plane")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the control plane: API v2, the internal API and the reconciler, in one process.
    Serve(ServeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where the command log (and everything derived from it) lives.
    #[arg(long, env = "SPG99_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP listen address; port 0 picks a free port (the address is printed).
    #[arg(long, env = "SPG99_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Host (and port) of the Gateway, put into every tenant's `dsn_template`.
    #[arg(long, env = "SPG99_GATEWAY_HOST", default_value = "localhost:5432")]
    pub gateway_host: String,
    /// Stop a database after this many seconds without connections.
    #[arg(long, env = "SPG99_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "SPG99_HTTP_WORKERS")]
    pub http_workers: Option<usize>,
    /// Write a snapshot of the state after this many events...
    #[arg(long, env = "SPG99_SNAPSHOT_EVERY_EVENTS", default_value_t = 100_000)]
    pub snapshot_every_events: u64,
    /// ...or after this many seconds with new events, whichever comes first.
    #[arg(long, env = "SPG99_SNAPSHOT_EVERY_SECS", default_value_t = 300)]
    pub snapshot_every_secs: u64,
}
