//! The `cosell-sync` binary: parses the command line and calls into the library.

use clap::Parser;
use cosell_sync::cli::{AlertsCommand, AuthCommand, Cli, Command, OutboxCommand};
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
    if let Command::Auth {
        action: AuthCommand::Microsoft,
    } = cli.command
    {
        return auth_microsoft(&file).await;
    }
    let loaded = match Config::load(&file) {
        Ok(l) => l,
        Err(errors) => return config_failure(&file, &errors),
    };
    let mut config = loaded.config;
    config.daemon.dry_run |= cli.dry_run;
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
        Command::Link {
            referral_id,
            google_resource_name,
        } => {
            let app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            match app.link(&referral_id, &google_resource_name).await {
                Ok(message) => {
                    println!("{message}");
                    exit::OK
                }
                Err(e) => fail_app(&e),
            }
        }
        Command::Alerts {
            action: AlertsCommand::Test,
        } => {
            let settings = cosell_sync::alerts::AlertSettings::from_config(&config.alerts);
            if settings.sinks.is_empty() {
                println!("no alert sinks configured ([[alerts.webhook]] or [[alerts.command]]); alerts go to the log only");
                return exit::OK;
            }
            let mut failed = 0;
            for (sink, result) in cosell_sync::alerts::deliver::send_test(&settings).await {
                match result {
                    Ok(()) => println!("ok      {sink}"),
                    Err(e) => {
                        failed += 1;
                        println!("FAILED  {sink}: {e}");
                    }
                }
            }
            if failed == 0 {
                exit::OK
            } else {
                exit::CYCLE_FAILED
            }
        }
        Command::Alerts {
            action:
                AlertsCommand::List {
                    pending,
                    limit,
                    json,
                },
        } => {
            let store = match cosell_sync::store::Store::open(&config.state.path) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            match store.call_blocking(|c| cosell_sync::store::alerts::list(c, pending, limit)) {
                Ok(rows) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).expect("alerts serialize")
                    );
                    exit::OK
                }
                Ok(rows) => {
                    if rows.is_empty() {
                        println!("no alerts");
                    }
                    for row in rows {
                        let a = &row.alert;
                        println!(
                            "{}  {:<9} {:<18} {}",
                            a.created_at, a.severity, a.kind, a.message
                        );
                        for (sink, state) in &row.deliveries {
                            println!("      {sink}: {state}");
                        }
                    }
                    exit::OK
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Auth {
            action: AuthCommand::Microsoft,
        } => unreachable!("handled above"),
        Command::Auth {
            action: AuthCommand::Check,
        } => {
            let app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            let mut failed = false;
            match app.cycle.microsoft.check_auth().await {
                Ok(()) => println!("ok      microsoft: a token for the Referrals API was granted"),
                Err(e) => {
                    failed = true;
                    println!("FAILED  microsoft: {e}");
                }
            }
            match &app.cycle.google {
                None => println!("skip    google: [google] partner_id is not set"),
                Some(g) => match g.client.check_auth().await {
                    Ok(()) => println!(
                        "ok      google: a service-account token for cloudcrmpartners was granted"
                    ),
                    Err(e) => {
                        failed = true;
                        println!("FAILED  google: {e}");
                    }
                },
            }
            if failed {
                exit::CYCLE_FAILED
            } else {
                exit::OK
            }
        }
        Command::Audit {
            referral,
            since,
            limit,
            json,
        } => {
            let since = match since
                .as_deref()
                .map(cosell_sync::microsoft::model::parse_timestamp)
            {
                Some(None) => {
                    eprintln!("cosell-sync: --since: use RFC 3339 (2026-11-22T10:00:00Z) or a date (2026-11-22)");
                    return exit::USAGE;
                }
                Some(Some(t)) => Some(t),
                None => None,
            };
            let store = match cosell_sync::store::Store::open(&config.state.path) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            match store.call_blocking(|c| {
                cosell_sync::store::outbox::audit_rows(c, referral.as_deref(), since, limit)
            }) {
                Ok(rows) if json => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).expect("rows serialize")
                    );
                    exit::OK
                }
                Ok(rows) => {
                    if rows.is_empty() {
                        println!("no remote writes recorded");
                    }
                    for r in rows {
                        println!(
                            "{}  {:<9} {:<19} {:<7} {:>3}  {}  fields: {}  request-id: {}{}",
                            r.at,
                            r.api,
                            r.method,
                            r.outcome,
                            r.status_code
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                            r.resource,
                            r.fields.as_deref().unwrap_or("-"),
                            r.request_id.as_deref().unwrap_or("-"),
                            r.detail.map(|d| format!("  ({d})")).unwrap_or_default()
                        );
                    }
                    exit::OK
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Outbox { action } => {
            let store = match cosell_sync::store::Store::open(&config.state.path) {
                Ok(s) => s,
                Err(e) => return fail(&e.to_string()),
            };
            outbox_command(
                &store,
                action.unwrap_or(OutboxCommand::List {
                    states: vec![],
                    limit: 50,
                    json: false,
                }),
            )
        }
        Command::Sync => {
            let mut app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            if let Err(e) = app.become_worker() {
                return fail_app(&e);
            }
            let cycle = app.sync_once().await;
            let report = &cycle.report;
            match &report.error {
                None => {
                    println!(
                        "cycle ok: {} pages, {} new, {} changed, {} unchanged, {} unreadable; google: {} read, {} queued, {} written, {} to retry, {} dead, {} quarantined; alerts: {} raised, {} delivered, {} undelivered",
                        report.pages,
                        report.counts.new,
                        report.counts.changed,
                        report.counts.unchanged,
                        report.counts.rejected,
                        report.google.fetched,
                        report.planned.queued,
                        report.pushed.done,
                        report.pushed.retried,
                        report.pushed.dead,
                        report.pushed.quarantined,
                        cycle.alerts.raised,
                        cycle.alerts.delivered,
                        cycle.alerts.undelivered
                    );
                    exit::OK
                }
                Some(e) => fail(&format!("cycle failed: {e}")),
            }
        }
        Command::Run => {
            let mut app = match app::App::build(config) {
                Ok(a) => a,
                Err(e) => return fail_app(&e),
            };
            if let Err(e) = app.become_worker() {
                return fail_app(&e);
            }
            let shutdown = tokio_util::sync::CancellationToken::new();
            if let Err(e) = scheduler::cancel_on_signals(shutdown.clone()) {
                return fail(&format!("cannot install signal handlers: {e}"));
            }
            let health = std::sync::Arc::new(cosell_sync::health::Health::default());
            if let Some(listen) = app.config.metrics.listen.clone() {
                if let Err(e) = cosell_sync::health::serve(
                    &listen,
                    health.clone(),
                    app.store.clone(),
                    &app.config,
                    shutdown.clone(),
                )
                .await
                {
                    return fail(&format!("metrics.listen {listen}: {e}"));
                }
            }
            let reload = scheduler::Reload {
                config_file: file.clone(),
                force_dry_run: cli.dry_run,
            };
            match scheduler::run(app, shutdown, reload, health).await {
                Ok(()) => exit::OK,
                Err(e) => fail(&format!("daemon stopped: {e:#}")),
            }
        }
        Command::Webhook { action } => {
            cosell_sync::webhook::registration::command(&config, action).await
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
}

async fn auth_microsoft(file: &std::path::Path) -> i32 {
    let config = match Config::load_for_auth(file) {
        Ok(l) => l.config,
        Err(errors) => return config_failure(file, &errors),
    };
    telemetry::init(config.log.format, &config.log.level);
    let ms = &config.microsoft;
    let http =
        cosell_sync::microsoft::MicrosoftClient::build_http(ms.timeout.0, ms.connect_timeout.0);
    let token_file = config.token_file();
    let result = cosell_sync::microsoft::auth::device_code_flow(
        &http,
        &ms.authority,
        ms.tenant.as_deref().unwrap_or_default(),
        ms.client_id.as_deref().unwrap_or_default(),
        ms.client_secret.as_ref(),
        &token_file,
        |message| println!("{message}"),
    )
    .await;
    match result {
        Ok(()) => {
            println!("Signed in. The refresh token is stored in {} (mode 0600); the daemon rotates it from now on.", token_file.display());
            exit::OK
        }
        Err(e) => fail(&format!("auth microsoft: {e}")),
    }
}

fn outbox_command(store: &cosell_sync::store::Store, command: OutboxCommand) -> i32 {
    use cosell_sync::store::outbox;
    let now = chrono::Utc::now();
    let result = store.call_blocking(|c| {
        Ok(match command {
            OutboxCommand::List {
                states,
                limit,
                json,
            } => {
                let states: Vec<&str> = states.iter().map(String::as_str).collect();
                let rows = outbox::list(c, &states, limit)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows).expect("rows serialize")
                    );
                } else if rows.is_empty() {
                    println!("no actions");
                } else {
                    println!(
                        "{:<7} {:<12} {:<18} {:<38} {:>3}  LAST ERROR / RESULT",
                        "ID", "STATE", "KIND", "REFERRAL", "TRY"
                    );
                    for r in rows {
                        println!(
                            "{:<7} {:<12} {:<18} {:<38} {:>3}  {}",
                            r.id,
                            r.state,
                            r.kind,
                            r.referral_id,
                            r.attempts,
                            r.last_error.or(r.result).unwrap_or_default()
                        );
                    }
                }
                Ok(())
            }
            OutboxCommand::Retry { id } => outbox::retry(c, id, now)?
                .map(|()| println!("action {id} will be sent at the next cycle")),
            OutboxCommand::Drop { id } => {
                outbox::drop_action(c, id, now)?.map(|()| println!("action {id} dropped"))
            }
        })
    });
    match result {
        Ok(Ok(())) => exit::OK,
        Ok(Err(refused)) => fail(&refused),
        Err(e) => fail(&e.to_string()),
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
