//! The daemon loop, two lanes (see [`crate::lanes`]) and the answer sender:
//! - the **deadline lane**: one task runs ticks one after another, never two at once, each
//!   running the one executor of remote writes. The tokio-cron-scheduler job on `[schedule]
//!   sync` only *asks* for a tick (a stored permit: a tick asked for while one runs starts
//!   right after it, and asks coalesce), and so do the other producers: the refresh lane when
//!   a Google record changed and the webhook forwarder ("no pull needed": the work is
//!   stored). The first tick runs at start-up.
//! - the **answer sender**: the same executor for answers only, run when the action page
//!   rings its doorbell or a look every quarter second finds answers the command line queued
//!   from another process; no cycle, no alert evaluation; the same `[sync] concurrency`.
//! - the **refresh lane**: one task re-reads due Google records pass after pass, at
//!   background priority, and runs the periodic full plan. It never holds the deadline lane.
//!
//! systemd notifications (READY once config, database and the first token are good; STATUS
//! after each tick; WATCHDOG while no tick is stuck; STOPPING); SIGHUP reloads the
//! configuration when it validates; SIGTERM/SIGINT stop the lanes: no new tick starts, the
//! refresh lane stops at once (its reads are idempotent), and a running tick gets
//! `[daemon] shutdown_grace` to finish, then `run` returns (exit 0).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::App;
use crate::config::Config;
use crate::health::Health;
use crate::systemd::{watchdog_interval, Notifier};
use crate::wake::DeadlineWake;

/// What a reload needs to rebuild the app the way `main` built it.
#[derive(Debug, Clone)]
pub(crate) struct Reload {
    pub(crate) config_file: PathBuf,
    /// `--dry-run` given on the command line stays in force across reloads.
    pub(crate) force_dry_run: bool,
}

/// Shared between the lanes, the cron job, the watchdog, the reload handler and shutdown.
struct Daemon {
    app: RwLock<Arc<App>>,
    /// Held while a deadline tick runs: what shutdown waits for.
    running: Arc<Mutex<()>>,
    /// Asks the deadline lane for a tick (permits coalesce: never a queue of ticks); the
    /// webhook forwarder and the action page ask through it too, "no pull needed".
    wake: DeadlineWake,
    /// The next tick plans every referral (start-up, a reloaded policy).
    full_plan_due: AtomicBool,
    notifier: Notifier,
    health: Arc<Health>,
    shutdown: CancellationToken,
    /// Set when the database file is gone: `run` stops and returns it (its own exit code).
    store_lost: std::sync::Mutex<Option<crate::store::StoreError>>,
    /// What `STATUS=` says between and during cycles.
    status_line: std::sync::Mutex<super::status_line::StatusLine>,
}

impl Daemon {
    fn app(&self) -> Arc<App> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Checks that the database file is still the one opened; if not, stops the daemon
    /// (no more ticks, passes or writes) and returns false.
    fn store_still_there(&self, app: &App) -> bool {
        match app.store.check_identity() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "database file gone; stopping");
                self.health.set_fatal(e.to_string());
                self.notifier.status(&format!("stopping: {e}"));
                let mut lost = self.store_lost.lock().unwrap_or_else(|p| p.into_inner());
                lost.get_or_insert(e);
                self.shutdown.cancel();
                false
            }
        }
    }
}

/// Runs cycles on the schedule until `shutdown` is cancelled. `wake` is the deadline lane's
/// doorbell, already handed to the action page (bound before start-up).
pub(crate) async fn run(
    app: App,
    shutdown: CancellationToken,
    reload: Reload,
    health: Arc<Health>,
    webhook_events: Option<crate::webhook::Events>,
    wake: DeadlineWake,
) -> anyhow::Result<()> {
    // A reload during start-up (before the first token) is taken after it, never fatal.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut app = app;
    // SIGTERM stops new remote writes inside a running cycle too, not only new cycles.
    app.cycle.stop = shutdown.clone();
    wait_for_first_token(&app, &shutdown).await?;
    let daemon = Arc::new(Daemon {
        app: RwLock::new(Arc::new(app)),
        running: Arc::new(Mutex::new(())),
        wake,
        full_plan_due: AtomicBool::new(true),
        notifier: Notifier::from_env(),
        health,
        shutdown: shutdown.clone(),
        store_lost: std::sync::Mutex::new(None),
        status_line: Default::default(),
    });
    let mut scheduler = JobScheduler::new().await?;
    let job_id = add_job(&mut scheduler, &daemon).await?;
    scheduler.start().await?;
    let app = daemon.app();
    // Partner Center events (off without [webhook]): the receiver was bound and serves since
    // start-up; the forwarder runs beside the scheduled cycles.
    let webhook = match (app.config.webhook.as_ref(), webhook_events) {
        (Some(w), Some(events)) => {
            let d = daemon.clone();
            let handoff = move || d.app().webhook_handoff(&d.wake);
            Some(crate::webhook::start_forwarder(
                w,
                handoff,
                events,
                shutdown.clone(),
            ))
        }
        _ => None,
    };
    tracing::info!(schedule = %app.config.schedule.sync, dry_run = app.config.daemon.dry_run, "daemon started");
    daemon.notifier.ready();
    daemon
        .notifier
        .status("started; waiting for the first cycle");
    if app.config.daemon.sync_on_start {
        daemon.wake.ask_with_pull();
    }
    let deadline = tokio::spawn(deadline_lane(daemon.clone()));
    let refresh = tokio::spawn(refresh_lane(daemon.clone()));
    // Answers (queued by the page, or by the command line in another process) are sent by
    // the one executor at once, without a cycle.
    let answers = tokio::spawn(super::answer::send_queued(
        {
            let d = daemon.clone();
            move || d.app()
        },
        shutdown.clone(),
    ));
    if let Some(interval) = watchdog_interval() {
        tokio::spawn(feed_watchdog(daemon.clone(), interval));
    }

    serve_reloads(&daemon, &mut scheduler, job_id, &mut hangup, &reload).await?;
    tracing::info!("shutdown requested; no new cycles will start");
    daemon.notifier.stopping();
    let lanes = Lanes {
        deadline,
        refresh,
        answers,
        webhook,
    };
    stop(&daemon, &mut scheduler, lanes).await;
    let lost = daemon
        .store_lost
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    match lost {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// SIGHUP reloads until shutdown.
async fn serve_reloads(
    daemon: &Arc<Daemon>,
    scheduler: &mut JobScheduler,
    mut job_id: Uuid,
    hangup: &mut tokio::signal::unix::Signal,
    reload: &Reload,
) -> anyhow::Result<()> {
    loop {
        tokio::select! {
            _ = daemon.shutdown.cancelled() => return Ok(()),
            _ = hangup.recv() => {
                let outcome = reload_app(daemon, reload);
                crate::reload::record(
                    &daemon.app().config.state.path,
                    &outcome.as_ref().map(|_| ()),
                );
                match outcome {
                    Ok(schedule_changed) => {
                        if schedule_changed {
                            if let Err(e) = scheduler.remove(&job_id).await {
                                tracing::warn!(error = %e, "cannot remove the old schedule");
                            }
                            job_id = add_job(scheduler, daemon).await?;
                        }
                        tracing::info!(schedule = %daemon.app().config.schedule.sync, "configuration reloaded");
                    }
                    Err(e) => tracing::error!("configuration reload refused; keeping the running configuration:\n{e}"),
                }
            }
        }
    }
}

/// The running tasks shutdown waits for.
struct Lanes {
    deadline: tokio::task::JoinHandle<()>,
    refresh: tokio::task::JoinHandle<()>,
    /// The answer sender (the one executor, answers only).
    answers: tokio::task::JoinHandle<()>,
    webhook: Option<tokio::task::JoinHandle<()>>,
}

/// Stops everything within `[daemon] shutdown_grace`: the refresh lane at once (reads
/// only), then the cron job, the webhook forwarder, the answer sender and the running
/// deadline tick (a write being sent finishes; no new one starts after SIGTERM).
async fn stop(daemon: &Daemon, scheduler: &mut JobScheduler, lanes: Lanes) {
    let grace = daemon.app().config.daemon.shutdown_grace.0;
    let stop_by = Instant::now() + grace;
    lanes.refresh.abort();
    if tokio::time::timeout_at(stop_by, scheduler.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("the cron scheduler did not stop in time");
    }
    if let Some(forwarder) = lanes.webhook {
        // The forwarder stops between events; a forward in flight gets the grace period.
        let _ = tokio::time::timeout_at(stop_by, forwarder).await;
    }
    let _ = tokio::time::timeout_at(stop_by, lanes.answers).await;
    match tokio::time::timeout_at(stop_by, lanes.deadline).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!(
            grace_s = grace.as_secs(),
            "a cycle was still running after the grace period; exiting (every committed step is kept, the rest is done next time)"
        ),
    }
}

async fn add_job(scheduler: &mut JobScheduler, daemon: &Arc<Daemon>) -> anyhow::Result<Uuid> {
    let schedule = daemon.app().config.schedule.sync.clone();
    let d = daemon.clone();
    let job = Job::new_async(schedule.as_str(), move |_, _| {
        let d = d.clone();
        Box::pin(async move {
            if d.running.try_lock().is_err() {
                tracing::debug!(
                    "a deadline tick is still running; the next one starts when it ends"
                );
            }
            d.wake.ask_with_pull();
        })
    })?;
    Ok(scheduler.add(job).await?)
}

/// Why a reload was refused (the running configuration stays); the text goes to `reload`.
#[derive(Debug, thiserror::Error)]
enum ReloadRefused {
    #[error(transparent)]
    Invalid(#[from] crate::config::ConfigErrors),
    /// The database file was replaced or removed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Keys read only at start changed.
    #[error("{}", crate::reload::needs_restart_message(.0))]
    RestartNeeded(Vec<String>),
    #[error(transparent)]
    Build(#[from] super::AppError),
}

/// Rebuilds the app from the file; the old one stays when the new config is not valid.
/// Returns whether the schedule changed.
fn reload_app(daemon: &Daemon, reload: &Reload) -> Result<bool, ReloadRefused> {
    let loaded = Config::load(&reload.config_file)?;
    let mut config = loaded.config;
    config.daemon.dry_run |= reload.force_dry_run;
    let current = daemon.app();
    // A reload never opens a new file where the database was: the next tick stops instead.
    current.store.check_identity()?;
    // All or nothing: a key read only at start refuses the whole reload.
    let restart = crate::reload::restart_needed(&current.config, &config);
    if !restart.is_empty() {
        return Err(ReloadRefused::RestartNeeded(restart));
    }
    let mut app = App::build(config)?;
    app.inherit_worker(&current);
    let changed = app.config.schedule.sync != current.config.schedule.sync;
    daemon
        .health
        .set_google_enabled(app.config.google_enabled());
    *daemon.app.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(app);
    // The forward rules or the sync policy may have changed: plan everything once.
    daemon.full_plan_due.store(true, Ordering::SeqCst);
    daemon.wake.ask_with_pull();
    Ok(changed)
}

/// READY=1 waits for a working token: a few tries (the network may still be coming up),
/// then the daemon gives up with the error, so a bad credential is visible at once.
async fn wait_for_first_token(app: &App, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if !app.cycle.microsoft_on {
        tracing::info!("[microsoft] is not configured: Microsoft is off; no token is asked for");
        return Ok(());
    }
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

/// The deadline lane: one tick per wake-up, never two at once, until shutdown.
async fn deadline_lane(daemon: Arc<Daemon>) {
    loop {
        tokio::select! {
            _ = daemon.wake.asked() => {}
            _ = daemon.shutdown.cancelled() => return,
        }
        if daemon.shutdown.is_cancelled() {
            return;
        }
        let _guard = daemon.running.lock().await;
        let app = daemon.app();
        if !daemon.store_still_there(&app) {
            return;
        }
        let ask = daemon.wake.begin();
        let full_plan = daemon.full_plan_due.swap(false, Ordering::SeqCst);
        daemon.health.cycle_started();
        let progress = tokio::spawn(show_progress(daemon.clone(), app.clone()));
        let cycle = app.asked_tick(full_plan, ask).await;
        progress.abort();
        daemon.wake.finish();
        daemon.health.cycle_finished(&cycle.outcome());
        let line = lock(&daemon.status_line).finished(&cycle);
        daemon.notifier.status(&line);
        if !cycle.report.ok() && full_plan {
            // Not planned after all: the next tick tries again.
            daemon.full_plan_due.store(true, Ordering::SeqCst);
        }
    }
}

/// The refresh lane: Google reads on their schedule, the periodic full plan, until shutdown.
async fn refresh_lane(daemon: Arc<Daemon>) {
    let mut last_full_plan = Instant::now();
    let mut last_changes: Option<Instant> = None;
    let mut last_backlog: Option<Instant> = None;
    let mut last_prune: Option<Instant> = None;
    loop {
        let app = daemon.app();
        if !daemon.store_still_there(&app) {
            return;
        }
        if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            prune(&app).await;
        }
        if last_changes.is_none_or(|at| at.elapsed() >= app.config.schedule.changes_every.0) {
            last_changes = Some(Instant::now());
            read_changes(&daemon, &app).await;
        }
        if app.cycle.google.is_none() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                _ = daemon.shutdown.cancelled() => return,
            }
        }
        if last_backlog.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            last_backlog = Some(Instant::now());
            report_backlog(&daemon, &app).await;
        }
        let pass = refresh_pass(&daemon, &app).await;
        if last_full_plan.elapsed() >= app.config.schedule.full_plan_every.0 {
            match crate::lanes::full_plan(&app.cycle).await {
                Ok(planned) if planned.queued > 0 => daemon.wake.ask_with_pull(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "periodic full plan failed: {e}"),
            }
            last_full_plan = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::lanes::refresh_pause(&pass)) => {}
            _ = daemon.shutdown.cancelled() => return,
        }
    }
}

/// How often retention runs (in the background lane, in small batches).
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Retention: what is old and finished leaves the database (`[state] retention`).
async fn prune(app: &App) {
    let state = &app.config.state;
    let cutoffs = crate::store::retention::Cutoffs::from(
        chrono::Utc::now(),
        state.retention.0,
        state.audit_retention.0,
    );
    match crate::store::retention::prune(&app.store, cutoffs).await {
        Ok(pruned) if pruned.total() > 0 => {
            tracing::info!(?pruned, "retention: old finished rows removed")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retention failed; trying again in an hour"),
    }
}

/// The changes to known referrals; any change wakes the deadline lane to plan it.
async fn read_changes(daemon: &Daemon, app: &App) {
    match crate::lanes::changes_once(&app.cycle).await {
        Ok(pulled) if pulled.counts.new + pulled.counts.changed > 0 => {
            tracing::info!(
                changed = pulled.counts.changed,
                new = pulled.counts.new,
                "referrals changed in Partner Center; asking the deadline lane to plan them"
            );
            daemon.wake.ask_with_pull();
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "reading the changes to known referrals failed; trying again shortly")
        }
    }
}

/// The refresh backlog for the metrics.
async fn report_backlog(daemon: &Daemon, app: &App) {
    match crate::lanes::refresh_backlog(&app.cycle).await {
        Ok(b) => {
            let age = b
                .oldest_unchecked
                .as_ref()
                .and_then(|o| o.last_checked_at)
                .and_then(|at| (chrono::Utc::now() - at).to_std().ok());
            daemon.health.set_refresh_backlog(b.due, age);
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the refresh backlog"),
    }
}

/// One refresh pass, measured as the refresh lane's run; a changed record wakes the
/// deadline lane.
async fn refresh_pass(
    daemon: &Daemon,
    app: &App,
) -> Result<crate::sync::RefreshStats, crate::sync::CycleError> {
    let started = Instant::now();
    daemon.health.lane_started(crate::health::Lane::Refresh);
    let pass = crate::lanes::refresh_once(&app.cycle).await;
    daemon.health.lane_finished(
        crate::health::Lane::Refresh,
        pass.is_ok(),
        started.elapsed(),
    );
    match &pass {
        Ok(stats) if stats.changed > 0 => {
            tracing::info!(
                changed = stats.changed,
                read = stats.read,
                "Google records changed; asking the deadline lane to plan them"
            );
            daemon.wake.ask_with_pull();
        }
        Ok(stats) if stats.read + stats.failed > 0 => {
            tracing::debug!(read = stats.read, failed = stats.failed, "refresh pass")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "refresh pass failed; trying again shortly"),
    }
    pass
}

/// `STATUS=` while a tick runs: at once, then every few seconds, how far it got (aborted
/// when the tick ends).
async fn show_progress(daemon: Arc<Daemon>, app: Arc<App>) {
    let started = chrono::Utc::now();
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let (writes_done, writes_open) = app
            .store
            .call(move |c| crate::store::runs::writes_since(c, started))
            .await
            .unwrap_or_default();
        let progress = super::status_line::Progress {
            pages: crate::progress::cycle_pages(),
            writes_done,
            writes_open,
        };
        let line = lock(&daemon.status_line).running(started, chrono::Utc::now(), progress);
        daemon.notifier.status(&line);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// Cancels `token` on SIGTERM or SIGINT. SIGHUP's handler is installed here too, with
/// SIGTERM's, so a reload sent while the daemon starts never kills it (its default action);
/// [`run`] takes the reload once it is up.
pub(crate) fn cancel_on_signals(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Installing the handler is what matters; tokio keeps it for the life of the process.
    drop(signal(SignalKind::hangup())?);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}
