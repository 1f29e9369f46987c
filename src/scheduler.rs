//! The daemon loop: a tokio-cron-scheduler job on `[schedule] sync`, guarded so two cycles never
//! overlap (a tick that finds a cycle running is skipped and logged); systemd notifications
//! (READY once config, database and the first token are good; STATUS after each cycle;
//! WATCHDOG while the scheduler lives and no cycle is stuck; STOPPING); SIGHUP reloads the
//! configuration when it validates; SIGTERM/SIGINT stop new cycles and give the running one
//! `[daemon] shutdown_grace` to finish, then `run` returns (exit 0).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::app::{App, Cycle};
use crate::config::Config;
use crate::health::Health;
use crate::systemd::{watchdog_interval, Notifier};

/// What a reload needs to rebuild the app the way `main` built it.
#[derive(Debug, Clone)]
pub struct Reload {
    pub config_file: PathBuf,
    /// `--dry-run` given on the command line stays in force across reloads.
    pub force_dry_run: bool,
}

/// Shared between the cron job, the watchdog, the reload handler and shutdown.
struct Daemon {
    app: RwLock<Arc<App>>,
    /// Held while a cycle runs: the no-overlap guard, and what shutdown waits for.
    running: Arc<Mutex<()>>,
    notifier: Notifier,
    health: Arc<Health>,
    shutdown: CancellationToken,
}

impl Daemon {
    fn app(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs cycles on the schedule until `shutdown` is cancelled.
pub async fn run(
    app: App,
    shutdown: CancellationToken,
    reload: Reload,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    wait_for_first_token(&app, &shutdown).await?;
    let daemon = Arc::new(Daemon {
        app: RwLock::new(Arc::new(app)),
        running: Arc::new(Mutex::new(())),
        notifier: Notifier::from_env(),
        health,
        shutdown: shutdown.clone(),
    });
    let mut scheduler = JobScheduler::new().await?;
    let mut job_id = add_job(&mut scheduler, &daemon).await?;
    scheduler.start().await?;
    let app = daemon.app();
    // Partner Center events (off without [webhook]): a receiver and the forwarder beside the
    // scheduled cycles.
    let webhook = match app.config.webhook.clone() {
        Some(w) => {
            let d = daemon.clone();
            let (_, forwarder) = crate::webhook::start(&w, move || d.app(), shutdown.clone())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            Some(forwarder)
        }
        None => None,
    };
    tracing::info!(schedule = %app.config.schedule.sync, dry_run = app.config.daemon.dry_run, "daemon started");
    daemon.notifier.ready();
    daemon
        .notifier
        .status("started; waiting for the first cycle");
    if app.config.daemon.sync_on_start {
        let d = daemon.clone();
        tokio::spawn(async move { guarded_cycle(&d, "start").await });
    }
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(feed_watchdog(daemon.clone(), interval));
    }

    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangup.recv() => {
                match reload_app(&daemon, &reload) {
                    Ok(schedule_changed) => {
                        if schedule_changed {
                            if let Err(e) = scheduler.remove(&job_id).await {
                                tracing::warn!(error = %e, "cannot remove the old schedule");
                            }
                            job_id = add_job(&mut scheduler, &daemon).await?;
                        }
                        tracing::info!(schedule = %daemon.app().config.schedule.sync, "configuration reloaded");
                    }
                    Err(e) => tracing::error!("configuration reload refused; keeping the running configuration:\n{e}"),
                }
            }
        }
    }

    tracing::info!("shutdown requested; no new cycles will start");
    daemon.notifier.stopping();
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    let grace = daemon.app().config.daemon.shutdown_grace.0;
    if let Some(forwarder) = webhook {
        // The forwarder stops between events; a forward in flight gets the grace period.
        let _ = tokio::time::timeout(grace, forwarder).await;
    }
    match tokio::time::timeout(grace, daemon.running.lock()).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!(
            grace_s = grace.as_secs(),
            "a cycle was still running after the grace period; exiting (every committed step is kept, the rest is done next time)"
        ),
    }
    Ok(())
}

async fn add_job(scheduler: &mut JobScheduler, daemon: &Arc<Daemon>) -> anyhow::Result<Uuid> {
    let schedule = daemon.app().config.schedule.sync.clone();
    let d = daemon.clone();
    let job = Job::new_async(schedule.as_str(), move |_, _| {
        let d = d.clone();
        Box::pin(async move { guarded_cycle(&d, "cron").await })
    })?;
    Ok(scheduler.add(job).await?)
}

/// Rebuilds the app from the file; the old one stays when the new config is not valid.
/// Returns whether the schedule changed.
fn reload_app(daemon: &Daemon, reload: &Reload) -> Result<bool, String> {
    let loaded = Config::load(&reload.config_file).map_err(|e| e.to_string())?;
    let mut config = loaded.config;
    config.daemon.dry_run |= reload.force_dry_run;
    let current = daemon.app();
    if config.state.path != current.config.state.path {
        return Err(format!(
            "state.path cannot change while running ({} → {}); restart instead",
            current.config.state.path.display(),
            config.state.path.display()
        ));
    }
    let mut app = App::build(config).map_err(|e| e.to_string())?;
    app.inherit_worker(&current);
    let changed = app.config.schedule.sync != current.config.schedule.sync;
    *daemon.app.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(app);
    Ok(changed)
}

/// READY=1 waits for a working token: a few tries (the network may still be coming up),
/// then the daemon gives up with the error, so a bad credential is visible at once.
async fn wait_for_first_token(app: &App, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut delay = Duration::from_secs(1);
    for attempt in 1..=6 {
        match app.cycle.microsoft.check_auth().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt < 6 => {
                tracing::warn!(error = %e, attempt, "first token not available yet; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
                delay = (delay * 2).min(Duration::from_secs(20));
            }
            Err(e) => anyhow::bail!("cannot get a Microsoft token: {e}"),
        }
    }
    Ok(())
}

/// Runs one cycle unless one is already running or shutdown has begun.
async fn guarded_cycle(daemon: &Daemon, trigger: &str) {
    if daemon.shutdown.is_cancelled() {
        return;
    }
    let Ok(_guard) = daemon.running.clone().try_lock_owned() else {
        tracing::warn!(trigger, "previous cycle still running; skipping this tick");
        return;
    };
    let app = daemon.app();
    daemon.health.cycle_started();
    let cycle = app.sync_once().await;
    daemon.health.cycle_finished(&cycle);
    daemon.notifier.status(&status_line(&cycle));
}

fn status_line(cycle: &Cycle) -> String {
    let r = &cycle.report;
    let at = r.started_at.format("%Y-%m-%d %H:%M UTC");
    match &r.error {
        None => format!(
            "last cycle ok at {at}: {} new, {} changed, {} written, {} alerts",
            r.counts.new, r.counts.changed, r.pushed.done, cycle.alerts.raised
        ),
        Some(e) => format!("last cycle FAILED at {at}: {e}"),
    }
}

/// Pings the watchdog while the daemon is not shutting down and no cycle is stuck, so
/// systemd restarts a daemon that hangs.
async fn feed_watchdog(daemon: Arc<Daemon>, interval: Duration) {
    let mut tick = tokio::time::interval(interval / 3);
    loop {
        tick.tick().await;
        if daemon.shutdown.is_cancelled() {
            return;
        }
        let stuck_after = daemon.app().config.daemon.stuck_after.0;
        match daemon.health.running_for() {
            Some(running) if running > stuck_after => {
                tracing::error!(
                    running_s = running.as_secs(),
                    "a cycle looks stuck; no longer feeding the watchdog"
                );
            }
            _ => daemon.notifier.watchdog(),
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}
