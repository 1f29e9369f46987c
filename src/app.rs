//! Wiring: builds the store and the clients from a validated [`Config`], and the commands on
//! top of them — one cycle (`sync`), the daemon (`run`, via [`crate::scheduler`]) and `status`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::deadline;
use crate::http::RateLimiter;
use crate::microsoft::{MicrosoftClient, TokenSource};
use crate::store::referrals::{self, ReferralSummary};
use crate::store::runs::{self, CycleRun};
use crate::store::{Store, StoreError};
use crate::sync::{self, CycleReport, PullSettings};

/// Why a command could not run, mapped to an exit code by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => crate::exit::CONFIG,
            AppError::Store(_) => crate::exit::CYCLE_FAILED,
        }
    }
}

/// Everything a cycle needs, built once per process.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub microsoft: MicrosoftClient,
    pub pull: PullSettings,
}

impl App {
    pub fn build(config: Config) -> Result<App, AppError> {
        let store = Store::open(&config.state.path)?;
        let interrupted = store.call_blocking(|c| runs::mark_interrupted(c, Utc::now()))?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "cycles of a stopped process were left running; marked interrupted"
            );
        }
        let ms = &config.microsoft;
        let http = MicrosoftClient::build_http(ms.timeout.0, ms.connect_timeout.0);
        let tokens = TokenSource::new(
            http.clone(),
            &ms.authority,
            ms.tenant.as_deref().unwrap_or_default(),
            ms.client_id.clone().unwrap_or_default(),
            ms.client_secret.clone(),
            ms.refresh_token.clone(),
            config.token_file(),
        )
        .map_err(AppError::Config)?;
        let microsoft = MicrosoftClient::new(
            http,
            &ms.api_base,
            Arc::new(tokens),
            Arc::new(RateLimiter::new(ms.requests_per_second)),
        )
        .map_err(AppError::Config)?;
        let pull = PullSettings {
            page_size: ms.page_size,
            retry: ms.retry.policy(),
            overlap: ms.incremental_overlap.0,
            initial_lookback: ms.initial_lookback.0,
        };
        Ok(App {
            config: Arc::new(config),
            store,
            microsoft,
            pull,
        })
    }

    /// One full cycle.
    pub async fn sync_once(&self) -> CycleReport {
        sync::run_cycle(&self.store, &self.microsoft, &self.pull).await
    }
}

/// A referral still waiting for an answer, with its deadline.
#[derive(Debug, Clone, Serialize)]
pub struct Expiring {
    #[serde(flatten)]
    pub referral: ReferralSummary,
    pub deadline: DateTime<Utc>,
    pub remaining_hours: f64,
    /// The tightest alert threshold already crossed, as configured (`"24h"`).
    pub threshold: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StateCount {
    pub status: String,
    pub substatus: String,
    pub count: u64,
}

/// What the daemon knows, as `status` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    pub database: String,
    pub referrals_by_state: Vec<StateCount>,
    /// Incoming referrals still New, nearest deadline first.
    pub awaiting_response: Vec<Expiring>,
    pub rejected_records: u64,
    pub last_cycles: Vec<CycleRun>,
}

pub fn status(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<StatusReport, StoreError> {
    let window = config.alerts.response_window.as_chrono();
    let thresholds: Vec<_> = config
        .alerts
        .thresholds
        .iter()
        .map(|t| t.as_chrono())
        .collect();
    store.call_blocking(|c| {
        let mut awaiting: Vec<Expiring> = referrals::awaiting_response(c)?
            .into_iter()
            .map(|r| {
                let due = deadline::deadline(r.created_at, r.expires_at, window);
                let remaining = due - now;
                let threshold = deadline::tightest_crossed(remaining, &thresholds)
                    .and_then(|t| t.to_std().ok())
                    .map(|t| crate::config::HumanDuration(t).to_string());
                Expiring {
                    referral: r,
                    deadline: due,
                    remaining_hours: (remaining.num_minutes() as f64 / 60.0 * 10.0).round() / 10.0,
                    threshold,
                }
            })
            .collect();
        awaiting.sort_by(|a, b| {
            a.deadline
                .cmp(&b.deadline)
                .then(a.referral.id.cmp(&b.referral.id))
        });
        Ok(StatusReport {
            generated_at: now,
            database: store.path().display().to_string(),
            referrals_by_state: referrals::counts_by_state(c)?
                .into_iter()
                .map(|(status, substatus, count)| StateCount {
                    status,
                    substatus,
                    count,
                })
                .collect(),
            awaiting_response: awaiting,
            rejected_records: referrals::count_rejected(c)?,
            last_cycles: runs::recent_cycles(c, 5)?,
        })
    })
}

/// `status` for a terminal: the referrals closest to expiry first.
pub fn render_status(report: &StatusReport, limit: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "cosell-sync status — {}", report.database);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Awaiting response ({} incoming referrals still New), nearest deadline first:",
        report.awaiting_response.len()
    );
    if report.awaiting_response.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let _ = writeln!(
            out,
            "  {:<9} {:<9} {:<28} {:<20} {:<9} REFERRAL",
            "LEFT", "ALERT", "CUSTOMER", "DEADLINE (UTC)", "SUBSTATUS"
        );
        for e in report.awaiting_response.iter().take(limit) {
            let left = if e.remaining_hours <= 0.0 {
                "EXPIRED".to_string()
            } else if e.remaining_hours < 48.0 {
                format!("{:.1}h", e.remaining_hours)
            } else {
                format!("{:.1}d", e.remaining_hours / 24.0)
            };
            let _ = writeln!(
                out,
                "  {:<9} {:<9} {:<28} {:<20} {:<9} {}",
                left,
                e.threshold.as_deref().unwrap_or("-"),
                truncate(e.referral.customer.as_deref().unwrap_or("?"), 28),
                e.deadline.format("%Y-%m-%d %H:%M"),
                e.referral.substatus.as_deref().unwrap_or("?"),
                e.referral.id
            );
        }
        if report.awaiting_response.len() > limit {
            let _ = writeln!(
                out,
                "  … and {} more (status --json lists all)",
                report.awaiting_response.len() - limit
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Referrals by state:");
    if report.referrals_by_state.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for s in &report.referrals_by_state {
        let _ = writeln!(out, "  {:<8} {:<10} {:>6}", s.status, s.substatus, s.count);
    }
    if report.rejected_records > 0 {
        let _ = writeln!(
            out,
            "  ({} records could not be read; see the rejected_records table)",
            report.rejected_records
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Last cycles:");
    if report.last_cycles.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for c in &report.last_cycles {
        let _ = writeln!(
            out,
            "  {}  {:<11} pages {:>4}  new {:>5}  changed {:>5}  rejected {:>3}{}",
            c.started_at.format("%Y-%m-%d %H:%M:%S"),
            c.outcome,
            c.pages,
            c.referrals_new,
            c.referrals_changed,
            c.records_rejected,
            c.error
                .as_deref()
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        );
    }
    out
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}
