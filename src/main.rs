use std::io::Write;

use clap::Parser;
use spg99::cli::{Cli, Commands, Format, LogCommand, SourceArgs};
use spg99::client::commands::{ClientArgs, Command, EventsArgs};
use spg99::client::render::Output;
use spg99::server::{Application, Config};
use spg99::tools::{self, DumpArgs, Source, ToolError};

fn main() {
    let cli = Cli::parse();
    spg99::telemetry::init();
    // Built with `--features failpoints` (tests that inject defects): FAILPOINTS configures them.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let code = match cli.command {
        Commands::Serve(args) => match Config::from_args(args) {
            Ok(config) => serve(config),
            Err(e) => {
                eprintln!("spg99: {e}");
                1
            }
        },
        Commands::Worker(args) => spg99_worker::run(args),
        Commands::Gateway(args) => spg99_gateway::run(args),
        // The event stream followed from now on (or --since), as `spg99 events --follow -o json`.
        Commands::Log(LogCommand::Tail {
            url,
            since,
            tenant,
            db,
            types,
        }) => client_command(
            Command::Events(EventsArgs {
                follow: true,
                since,
                tenant,
                db: db.map(|d| d.to_string()),
                types,
            }),
            &ClientArgs {
                url: Some(url),
                profile: None,
                output: Output::Json,
            },
        ),
        Commands::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "spg99", &mut std::io::stdout());
            0
        }
        Commands::Login { client } => client_command(
            Command::Login {
                profile: client.profile.clone().unwrap_or_else(|| "default".into()),
            },
            &client,
        ),
        Commands::Accounts { client, command } => {
            client_command(Command::Accounts(command), &client)
        }
        Commands::Keys { client, command } => client_command(Command::Keys(command), &client),
        Commands::Tenants { client, command } => client_command(Command::Tenants(command), &client),
        Commands::Dbs { client, command } => client_command(Command::Dbs(command), &client),
        Commands::Events { client, args } => client_command(Command::Events(args), &client),
        Commands::Billing {
            client,
            period,
            account,
        } => client_command(Command::Billing { period, account }, &client),
        Commands::Connect {
            client,
            tenant,
            db,
            pooled,
            psql_args,
        } => client_command(
            Command::Connect {
                tenant,
                db,
                pooled,
                psql_args,
            },
            &client,
        ),
        other => match run_tool(other) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("spg99: {e}");
                e.exit_code()
            }
        },
    };
    std::process::exit(code);
}

/// A client command; its exit code (docs/cli.md).
fn client_command(command: Command, client: &ClientArgs) -> i32 {
    match spg99::client::commands::run(command, client) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("spg99: {e}");
            e.exit_code()
        }
    }
}

fn serve(config: Config) -> i32 {
    actix_web::rt::System::new().block_on(async move {
        let app = match Application::build(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("spg99: {e}");
                return 1;
            }
        };
        if let Some(gateway) = app.gateway_addr() {
            println!("spg99 gateway listening on {gateway}");
        }
        if let Some(pooler) = app.pooler_addr() {
            println!("spg99 gateway pooler listening on {pooler}");
        }
        if let Some(http) = app.http_addr() {
            println!("spg99 gateway http listening on {http}");
        }
        println!("spg99 listening on {}", app.url());
        match app.run_until_stopped().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("spg99: {e}");
                1
            }
        }
    })
}

fn token() -> Result<String, ToolError> {
    std::env::var("SPG99_TOKEN").map_err(|_| {
        ToolError::Cannot("set SPG99_TOKEN to a global key's token to use --url".into())
    })
}

fn source(args: SourceArgs) -> Result<Source, ToolError> {
    Ok(match args.url {
        Some(base) => Source::Url {
            base: base.trim_end_matches('/').to_owned(),
            token: token()?,
        },
        None => Source::Dir(tools::Local {
            data_dir: args.data_dir,
            log: args.log,
        }),
    })
}

fn run_tool(command: Commands) -> Result<(), ToolError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match command {
        Commands::Serve(_)
        | Commands::Worker(_)
        | Commands::Gateway(_)
        | Commands::Log(LogCommand::Tail { .. })
        | Commands::Completions { .. }
        | Commands::Login { .. }
        | Commands::Accounts { .. }
        | Commands::Keys { .. }
        | Commands::Tenants { .. }
        | Commands::Dbs { .. }
        | Commands::Events { .. }
        | Commands::Billing { .. }
        | Commands::Connect { .. } => unreachable!("handled by main"),
        Commands::Log(LogCommand::Dump {
            from,
            to,
            tenant,
            db,
            types,
            format,
            source: s,
        }) => {
            let args = DumpArgs {
                from,
                to,
                tenant,
                db,
                types,
                pretty: format == Format::Pretty,
            };
            tools::dump(&source(s)?, &args, &mut out)
        }
        Commands::Log(LogCommand::Migrate { data_dir, to }) => {
            tools::migrate(&data_dir, &to, &mut out)
        }
        Commands::Rebuild {
            verify,
            source: SourceArgs { data_dir, log, url },
        } => {
            let token = url.as_ref().map(|_| token()).transpose()?;
            let local = tools::Local { data_dir, log };
            match (url.as_deref(), token) {
                // No log here: the server rebuilds from its own and compares.
                (Some(base), Some(token)) if !local.has_log() => {
                    let source = Source::Url {
                        base: base.trim_end_matches('/').to_owned(),
                        token,
                    };
                    tools::verify(&source, &mut out)
                }
                (url, token) => {
                    let live = url.zip(token.as_deref());
                    tools::rebuild(&local, verify, live, &mut out)
                }
            }
        }
        Commands::State {
            at,
            tenant,
            format,
            source: s,
        } => tools::state(
            &source(s)?,
            &at,
            tenant.as_deref(),
            format == Format::Pretty,
            &mut out,
        ),
        Commands::Verify { source: s } => tools::verify(&source(s)?, &mut out),
    };
    let _ = out.flush();
    result
}
