//! The daemon loop: a tokio-cron-scheduler job on `[schedule] sync`, guarded so two cycles never
//! overlap (a tick that finds a cycle running is skipped and logged), and a shutdown path:
//! SIGTERM/SIGINT cancel one token, no new cycle starts, the running one gets
//! `[daemon] shutdown_grace` to finish, then `run` returns (exit 0).

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// Runs cycles on the schedule until `shutdown` is cancelled.
pub async fn run(app: App, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = Arc::new(app);
    let running = Arc::new(Mutex::new(()));
    let mut scheduler = JobScheduler::new().await?;
    let job = {
        let schedule = app.config.schedule.sync.clone();
        let (app, running, shutdown) = (app.clone(), running.clone(), shutdown.clone());
        Job::new_async(schedule.as_str(), move |_, _| {
            let (app, running, shutdown) = (app.clone(), running.clone(), shutdown.clone());
            Box::pin(async move { guarded_cycle(&app, &running, &shutdown, "cron").await })
        })?
    };
    scheduler.add(job).await?;
    scheduler.start().await?;
    tracing::info!(schedule = %app.config.schedule.sync, "daemon started");
    if app.config.daemon.sync_on_start {
        let (app, running, shutdown) = (app.clone(), running.clone(), shutdown.clone());
        tokio::spawn(async move { guarded_cycle(&app, &running, &shutdown, "start").await });
    }

    shutdown.cancelled().await;
    tracing::info!("shutdown requested; no new cycles will start");
    if let Err(e) = scheduler.shutdown().await {
        tracing::warn!(error = %e, "scheduler did not stop cleanly");
    }
    let grace = app.config.daemon.shutdown_grace.0;
    match tokio::time::timeout(grace, running.lock()).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!(
            grace_s = grace.as_secs(),
            "a cycle was still running after the grace period; exiting (every committed page is kept, the rest is read again next time)"
        ),
    }
    Ok(())
}

/// Runs one cycle unless one is already running or shutdown has begun.
async fn guarded_cycle(
    app: &App,
    running: &Arc<Mutex<()>>,
    shutdown: &CancellationToken,
    trigger: &str,
) {
    if shutdown.is_cancelled() {
        return;
    }
    let Ok(_guard) = running.clone().try_lock_owned() else {
        tracing::warn!(trigger, "previous cycle still running; skipping this tick");
        return;
    };
    app.sync_once().await;
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
