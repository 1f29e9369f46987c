//! The `cosell-sync` binary: parses the command line and calls into the library.

use clap::Parser;
use cosell_sync::cli::{Cli, Command};
use cosell_sync::config::{config_path, Config, ConfigErrors, LogFormat};
use cosell_sync::{app, demo, exit, scheduler, telemetry};

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cosell-sync: cannot start the async runtime: {e}");
            std::process::exit(exit::CYCLE_FAILED);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Do not wait for detached blocking work (a hung DNS lookup, say) past the command's end.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn dispatch(cli: Cli) -> i32 {
    if let Command::Demo { referrals } = cli.command {
        telemetry::init(LogFormat::Text, "warn");
        return match demo::run(referrals).await {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("cosell-sync demo failed: {e:#}");
                exit::CYCLE_FAILED
            }
        };
    }
    let file = config_path(cli.config.as_deref());
    let loaded = match Config::load(&file) {
        Ok(l) => l,
        Err(errors) => return config_failure(&file, &errors),
    };
    let config = loaded.config;
    telemetry::init(config.log.format, &config.log.level);
    match cli.command {
        Command::CheckConfig => {
            println!("# configuration from {} (secrets redacted)", file.display());
            print!("{}", config.redacted_toml());
            exit::OK
        }
        Command::Status { json, limit } => {
            let store = match cosell_sync::store::Store::open(&config.state.path) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            match app::status(&store, &config, chrono::Utc::now()) {
                Ok(report) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("status serializes")
                    );
                    exit::OK
                }
                Ok(report) => {
                    print!("{}", app::render_status(&report, limit));
                    exit::OK
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Sync => {
            let app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            let report = app.sync_once().await;
            match &report.error {
                None => {
                    println!(
                        "cycle ok: {} pages, {} new, {} changed, {} unchanged, {} unreadable",
                        report.pages,
                        report.counts.new,
                        report.counts.changed,
                        report.counts.unchanged,
                        report.counts.rejected
                    );
                    exit::OK
                }
                Some(e) => fail(&format!("cycle failed: {e}")),
            }
        }
        Command::Run => {
            let app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            let shutdown = tokio_util::sync::CancellationToken::new();
            if let Err(e) = scheduler::cancel_on_signals(shutdown.clone()) {
                return fail(&format!("cannot install signal handlers: {e}"));
            }
            match scheduler::run(app, shutdown).await {
                Ok(()) => exit::OK,
                Err(e) => fail(&format!("daemon stopped: {e:#}")),
            }
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
}

fn config_failure(file: &std::path::Path, errors: &ConfigErrors) -> i32 {
    eprintln!(
        "cosell-sync: configuration {} is not valid:",
        file.display()
    );
    for e in &errors.0 {
        eprintln!("  {e}");
    }
    exit::CONFIG
}

fn fail_app(e: &app::AppError) -> i32 {
    eprintln!("cosell-sync: {e}");
    e.exit_code()
}

fn fail(message: &str) -> i32 {
    eprintln!("cosell-sync: {message}");
    exit::CYCLE_FAILED
}
