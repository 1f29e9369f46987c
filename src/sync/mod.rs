//! One sync cycle: pull Microsoft ([`pull`]), pull the tracked Google records, plan with the
//! pure [`reconcile`] (using [`mapping`] for new leads), and push the outbox ([`push`]).

pub mod mapping;
pub mod pull;
pub mod push;
pub mod reconcile;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::Instrument;

use crate::http::ApiError;
use crate::microsoft::MicrosoftClient;
use crate::store::referrals::UpsertCounts;
use crate::store::{runs, Store, StoreError};

pub use pull::{pull_microsoft, GooglePullStats, PullSettings, PullStats};
pub use push::{GoogleSide, PlanStats, PushStats};

/// Why a cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CycleError {
    /// Authentication refused: the operator has to act (re-run `auth microsoft`).
    pub fn is_auth(&self) -> bool {
        matches!(self, CycleError::Api(e) if e.is_auth())
    }
}

/// What a cycle needs: the store and both clients.
#[derive(Debug, Clone)]
pub struct CycleContext {
    pub store: Store,
    pub microsoft: MicrosoftClient,
    pub pull: PullSettings,
    /// `None` when `[google]` is not configured: the daemon then only pulls Microsoft.
    pub google: Option<GoogleSide>,
    /// Cancelled on SIGTERM: no new remote write starts after it.
    pub stop: tokio_util::sync::CancellationToken,
}

/// What a cycle did, for the log, `status` and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub cycle_id: String,
    pub started_at: DateTime<Utc>,
    pub elapsed: Duration,
    pub pages: u64,
    pub counts: UpsertCounts,
    pub google: GooglePullStats,
    pub planned: PlanStats,
    pub pushed: PushStats,
    pub error: Option<String>,
    /// The failure was an authentication refusal.
    pub auth_failed: bool,
}

impl CycleReport {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs one cycle: records it as running, runs the phases, and records how it ended. A
/// failure is in the report (and the `cycle_runs` row), never a panic.
pub async fn run_cycle(ctx: &CycleContext) -> CycleReport {
    let cycle_id = uuid::Uuid::new_v4().to_string();
    let started_at = Utc::now();
    let started = tokio::time::Instant::now();
    let span = tracing::info_span!("cycle", cycle_id = %cycle_id);
    let mut report = CycleReport {
        cycle_id: cycle_id.clone(),
        started_at,
        elapsed: Duration::ZERO,
        pages: 0,
        counts: UpsertCounts::default(),
        google: GooglePullStats::default(),
        planned: PlanStats::default(),
        pushed: PushStats::default(),
        error: None,
        auth_failed: false,
    };
    let result = phases(ctx, &mut report, started_at)
        .instrument(span.clone())
        .await;
    if let Err(e) = result {
        report.auth_failed = e.is_auth();
        report.error = Some(e.to_string());
    }
    report.elapsed = started.elapsed();
    let (id, pages, counts, err) = (cycle_id, report.pages, report.counts, report.error.clone());
    let actions = (
        report.pushed.done,
        report.pushed.dead + report.pushed.quarantined,
    );
    if let Err(e) = ctx
        .store
        .call(move |c| {
            runs::finish_cycle(c, &id, Utc::now(), pages, counts, actions, err.as_deref())
        })
        .await
    {
        tracing::error!(parent: &span, error = %e, "cannot record the end of the cycle");
    }
    match &report.error {
        None => tracing::info!(parent: &span,
            pages = report.pages,
            new = report.counts.new,
            changed = report.counts.changed,
            unchanged = report.counts.unchanged,
            rejected = report.counts.rejected,
            google_fetched = report.google.fetched,
            queued = report.planned.queued,
            written = report.pushed.done,
            retried = report.pushed.retried,
            dead = report.pushed.dead,
            quarantined = report.pushed.quarantined,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "cycle finished"
        ),
        Some(e) => tracing::error!(parent: &span, error = %e, pages = report.pages, "cycle failed"),
    }
    report
}

async fn phases(
    ctx: &CycleContext,
    report: &mut CycleReport,
    now: DateTime<Utc>,
) -> Result<(), CycleError> {
    let id = report.cycle_id.clone();
    ctx.store
        .call(move |c| runs::start_cycle(c, &id, now))
        .await?;
    let pulled = pull_microsoft(&ctx.store, &ctx.microsoft, &ctx.pull, now).await;
    let stats = match &pulled {
        Ok(s) | Err((s, _)) => *s,
    };
    report.pages = stats.pages;
    report.counts = stats.counts;
    pulled.map_err(|(_, e)| e)?;
    let Some(google) = &ctx.google else {
        return Ok(());
    };
    report.google = pull::pull_google(&ctx.store, google).await?;
    report.planned = push::plan_all(&ctx.store, &google.policy, Utc::now()).await?;
    report.pushed = push::push_due(
        &ctx.store,
        &ctx.microsoft,
        google,
        &report.cycle_id,
        &ctx.stop,
    )
    .await?;
    Ok(())
}
