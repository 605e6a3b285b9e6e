use clap::Parser;
use spg99::cli::{Cli, Commands};
use spg99::server::{Application, Config};

fn main() {
    let cli = Cli::parse();
    spg99::telemetry::init();
    let code = match cli.command {
        Commands::Serve(args) => serve(Config::from_args(args)),
    };
    std::process::exit(code);
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
        println!("spg99 listening on http://{}", app.local_addr());
        match app.run_until_stopped().await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("spg99: {e}");
                1
            }
        }
    })
}
