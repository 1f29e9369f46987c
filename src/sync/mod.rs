//! One sync cycle and its parts. Today: the Microsoft pull ([`pull`]) with cycle bookkeeping;
//! the Google pull, the pure reconcile planner and the outbox push join here.

pub mod pull;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::http::ApiError;
use crate::store::referrals::UpsertCounts;
use crate::store::{runs, Store, StoreError};

pub use pull::{pull_microsoft, PullSettings, PullStats};

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

/// What a cycle did, for the log, `status` and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    pub cycle_id: String,
    pub started_at: DateTime<Utc>,
    pub elapsed: Duration,
    pub pages: u64,
    pub counts: UpsertCounts,
    pub error: Option<String>,
}

impl CycleReport {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs one cycle: records it as running, pulls, and records how it ended. A failure is in
/// the report (and the `cycle_runs` row), never a panic.
pub async fn run_cycle(
    store: &Store,
    client: &crate::microsoft::MicrosoftClient,
    settings: &PullSettings,
) -> CycleReport {
    let cycle_id = uuid::Uuid::new_v4().to_string();
    let started_at = Utc::now();
    let started = tokio::time::Instant::now();
    let span = tracing::info_span!("cycle", cycle_id = %cycle_id);
    let id = cycle_id.clone();
    let begin = store
        .call(move |c| runs::start_cycle(c, &id, started_at))
        .await;
    let result = match begin {
        Ok(()) => {
            use tracing::Instrument;
            pull_microsoft(store, client, settings, started_at)
                .instrument(span.clone())
                .await
        }
        Err(e) => Err((PullStats::default(), CycleError::Store(e))),
    };
    let (stats, error) = match result {
        Ok(stats) => (stats, None),
        Err((stats, e)) => (stats, Some(e.to_string())),
    };
    let report = CycleReport {
        cycle_id: cycle_id.clone(),
        started_at,
        elapsed: started.elapsed(),
        pages: stats.pages,
        counts: stats.counts,
        error,
    };
    let (id, pages, counts, err) = (cycle_id, report.pages, report.counts, report.error.clone());
    if let Err(e) = store
        .call(move |c| runs::finish_cycle(c, &id, Utc::now(), pages, counts, err.as_deref()))
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
            elapsed_ms = report.elapsed.as_millis() as u64,
            "cycle finished"
        ),
        Some(e) => tracing::error!(parent: &span, error = %e, pages = report.pages, "cycle failed"),
    }
    report
}
