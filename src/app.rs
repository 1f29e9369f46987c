//! Wiring: builds the store and the clients from a validated [`Config`], and the commands on
//! top of them — one cycle (`sync`), the daemon (`run`, via [`crate::scheduler`]) and `status`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::alerts::deliver::{AlertSettings, AlertStats};
use crate::config::Config;
use crate::deadline;
use crate::google::{GoogleAuth, GoogleClient};
use crate::http::RateLimiter;
use crate::microsoft::{MicrosoftClient, TokenSource};
use crate::store::google::{self as gstore, ConflictRow};
use crate::store::outbox::{self, OutboxRow};
use crate::store::referrals::{self, ReferralSummary};
use crate::store::runs::{self, CycleRun};
use crate::store::{Store, StoreError};
use crate::sync::reconcile::Policy;
use crate::sync::{self, CycleContext, CycleReport, GoogleSide, PullSettings};

/// Why a command could not run, mapped to an exit code by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process holds the worker lock of this database.
    #[error("{0}")]
    Busy(String),
    /// The command was refused (bad argument, remote check failed).
    #[error("{0}")]
    Refused(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) => crate::exit::CONFIG,
            AppError::Store(_) | AppError::Busy(_) | AppError::Refused(_) => {
                crate::exit::CYCLE_FAILED
            }
        }
    }
}

/// Everything a cycle needs, built once per process.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub cycle: CycleContext,
    pub alerts: AlertSettings,
    /// Held by the process that runs cycles (`run`, `sync`); see [`App::become_worker`].
    worker_lock: Option<Arc<std::fs::File>>,
    /// Dry run: the directory of the throw-away database copy (removed on drop).
    dry_run_dir: Option<Arc<tempfile::TempDir>>,
}

impl App {
    /// Builds the store and the clients. No cycle may run until [`App::become_worker`].
    pub fn build(config: Config) -> Result<App, AppError> {
        let (store, dry_run_dir) = if config.daemon.dry_run {
            let (store, dir) = dry_run_copy(&config.state.path)?;
            tracing::warn!(copy = %store.path().display(), "DRY RUN: no remote write is sent; state changes go to a throw-away copy of the database");
            (store, Some(Arc::new(dir)))
        } else {
            (Store::open(&config.state.path)?, None)
        };
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
        let google = if config.google_enabled() {
            Some(google_side(&config)?)
        } else {
            tracing::info!("[google] partner_id is not set: only the Microsoft side runs");
            None
        };
        Ok(App {
            alerts: AlertSettings::from_config(&config.alerts),
            cycle: CycleContext {
                store: store.clone(),
                microsoft,
                pull,
                google,
            },
            config: Arc::new(config),
            store,
            worker_lock: None,
            dry_run_dir,
        })
    }

    /// Takes the worker lock (one process runs cycles on a database at a time), then
    /// recovers what a stopped process left: cycles marked interrupted, in-flight lead
    /// creates quarantined (they may have reached Google), other in-flight writes re-queued.
    pub fn become_worker(&mut self) -> Result<(), AppError> {
        let lock_path = self.store.path().with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| {
                AppError::Busy(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        if let Err(e) = file.try_lock() {
            return Err(AppError::Busy(format!(
                "another cosell-sync process is running cycles on {} ({e}); stop it or wait",
                self.config.state.path.display()
            )));
        }
        self.worker_lock = Some(Arc::new(file));
        let now = Utc::now();
        let (interrupted, (quarantined, requeued)) = self.store.call_blocking(|c| {
            Ok((
                runs::mark_interrupted(c, now)?,
                outbox::recover_in_flight(c, now)?,
            ))
        })?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "cycles of a stopped process were left running; marked interrupted"
            );
        }
        if quarantined > 0 {
            tracing::error!(quarantined, "lead creates of a stopped process may have reached Google; quarantined for a person (cosell-sync outbox list)");
        }
        if requeued > 0 {
            tracing::info!(requeued, "writes of a stopped process queued again");
        }
        Ok(())
    }

    /// A reloaded app keeps the worker lock of the one it replaces (and skips recovery:
    /// the old app's writes may still be in flight).
    pub fn inherit_worker(&mut self, from: &App) {
        self.worker_lock = from.worker_lock.clone();
    }

    /// One full cycle, then its alerts (raised and delivered; never failing the cycle).
    pub async fn sync_once(&self) -> Cycle {
        debug_assert!(
            self.worker_lock.is_some(),
            "cycles run only in the worker process"
        );
        let report = sync::run_cycle(&self.cycle).await;
        let alerts = crate::alerts::deliver::after_cycle(
            &self.store,
            &self.alerts,
            &report,
            chrono::Utc::now(),
            self.dry_run_dir.is_some(),
        )
        .await;
        Cycle { report, alerts }
    }

    /// `link REFERRAL_ID RESOURCE`: tracks an existing lead or opportunity for a referral,
    /// after checking with a `get` that it exists.
    pub async fn link(&self, referral_id: &str, resource: &str) -> Result<String, AppError> {
        use crate::google::model::{resource_kind, ResourceKind};
        let google = self.cycle.google.as_ref().ok_or_else(|| {
            AppError::Config("google.partner_id: is missing; linking needs the Google side".into())
        })?;
        let kind = resource_kind(resource).ok_or_else(|| {
            AppError::Refused(format!(
                "{resource:?} is not a Google resource name (partners/P/leads/L or partners/P/opportunities/O)"
            ))
        })?;
        let (id, res) = (referral_id.to_string(), resource.to_string());
        let (known, owner, existing) = self
            .store
            .call(move |c| {
                let known: bool = c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM referrals WHERE id = ?1)",
                    [&id],
                    |r| r.get(0),
                )?;
                Ok((
                    known,
                    gstore::linked_referral(c, &res)?,
                    gstore::link(c, &id)?,
                ))
            })
            .await?;
        if !known {
            return Err(AppError::Refused(format!(
                "referral {referral_id} is not in the database yet; run `cosell-sync sync` first"
            )));
        }
        if let Some(other) = owner.filter(|o| o != referral_id) {
            return Err(AppError::Refused(format!(
                "{resource} is already linked to referral {other}"
            )));
        }
        let current = existing.as_ref().and_then(|l| match kind {
            ResourceKind::Lead => l.lead_name.clone(),
            ResourceKind::Opportunity => l.opportunity_name.clone(),
        });
        if let Some(current) = current.filter(|c| c != resource) {
            return Err(AppError::Refused(format!(
                "referral {referral_id} is already linked to {current}"
            )));
        }
        let retry = google.retry;
        let now = Utc::now();
        let (id, res) = (referral_id.to_string(), resource.to_string());
        let message = match kind {
            ResourceKind::Lead => {
                let lead = crate::http::with_retry(&retry, "get lead", || {
                    google.client.get_lead(resource)
                })
                .await
                .map_err(|e| AppError::Refused(format!("cannot link {resource}: {e}")))?
                .value;
                let note = external_id_note(lead.external_system_id.as_deref(), referral_id);
                self.store
                    .call(move |c| {
                        let tx = c.transaction()?;
                        gstore::set_link(&tx, &id, Some(&res), None, "operator", now)?;
                        gstore::save_lead(&tx, &lead, Some(&id), now)?;
                        outbox::resolve_quarantined_create(&tx, &id, &res, now)?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await?;
                format!("linked {referral_id} to lead {resource}{note}")
            }
            ResourceKind::Opportunity => {
                let opp = crate::http::with_retry(&retry, "get opportunity", || {
                    google.client.get_opportunity(resource)
                })
                .await
                .map_err(|e| AppError::Refused(format!("cannot link {resource}: {e}")))?
                .value;
                let note = external_id_note(opp.external_system_id.as_deref(), referral_id);
                self.store
                    .call(move |c| {
                        let tx = c.transaction()?;
                        gstore::set_link(&tx, &id, None, Some(&res), "operator", now)?;
                        gstore::save_opportunity(&tx, &opp, Some(&id), now)?;
                        tx.commit()?;
                        Ok(())
                    })
                    .await?;
                format!("linked {referral_id} to opportunity {resource}{note}")
            }
        };
        Ok(message)
    }
}

fn external_id_note(found: Option<&str>, referral_id: &str) -> String {
    match found {
        Some(id) if id == referral_id => String::new(),
        Some(other) => format!(" (its externalSystemId is {other}; the next cycle sets it to {referral_id} where the API allows)"),
        None => " (it has no externalSystemId yet)".into(),
    }
}

/// A copy of the database (or a new one) in a temporary directory, for a dry run.
fn dry_run_copy(real: &std::path::Path) -> Result<(Store, tempfile::TempDir), AppError> {
    let dir = tempfile::tempdir().map_err(|e| {
        AppError::Refused(format!("dry run: cannot make a temporary directory: {e}"))
    })?;
    let copy = dir.path().join("dry-run.db");
    if real.exists() {
        let conn =
            rusqlite::Connection::open_with_flags(real, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|source| StoreError::Open {
                    path: real.to_path_buf(),
                    source,
                })?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(StoreError::from)?;
        // A consistent snapshot, even while a daemon writes.
        conn.execute("VACUUM INTO ?1", [copy.display().to_string()])
            .map_err(StoreError::from)?;
    }
    Ok((Store::open(&copy)?, dir))
}

/// The Google client and the sync policy, from configuration.
fn google_side(config: &Config) -> Result<GoogleSide, AppError> {
    let g = &config.google;
    let key = g
        .credentials_file
        .as_ref()
        .ok_or_else(|| AppError::Config("google.credentials_file is missing".into()))?;
    let auth = GoogleAuth::from_key_file(key)
        .map_err(|e| AppError::Config(format!("google.credentials_file: {e}")))?;
    let http = MicrosoftClient::build_http(
        config.microsoft.timeout.0,
        config.microsoft.connect_timeout.0,
    );
    let client = GoogleClient::new(
        http,
        &g.api_base,
        Arc::new(auth),
        Arc::new(RateLimiter::new(g.requests_per_second)),
    )
    .map_err(AppError::Config)?;
    let sync = &config.sync;
    Ok(GoogleSide {
        client,
        policy: Policy {
            partner_id: g.partner_id.clone().unwrap_or_default(),
            conflict: sync.conflict,
            lost_stages: sync.lost_stages.clone(),
            won_stages: sync.won_stages.clone(),
            close_google_on_microsoft_close: sync.close_google_on_microsoft_close,
            forward: config.forward.clone(),
            lead: g.lead.clone(),
        },
        schedule: sync::push::Schedule {
            max_attempts: sync.max_attempts,
            min: sync.retry_min.0,
            max: sync.retry_max.0,
        },
        concurrency: sync.concurrency,
        retry: config.microsoft.retry.policy(),
        dry_run: config.daemon.dry_run,
    })
}

/// A cycle's report and what its alert phase did.
#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    pub report: CycleReport,
    pub alerts: AlertStats,
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
    /// Outbox actions by kind and state.
    pub outbox: Vec<OutboxCount>,
    /// Actions that need a person (dead or quarantined) and open ones, newest first.
    pub actions_needing_attention: Vec<OutboxRow>,
    pub open_actions: Vec<OutboxRow>,
    pub conflicts: Vec<ConflictRow>,
    /// Referrals the forward rules chose that cannot make a valid lead.
    pub cannot_forward: Vec<Blocked>,
    pub links: LinkCounts,
    /// Partner Center events (present when `[webhook]` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<crate::store::webhook::WebhookStats>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutboxCount {
    pub kind: String,
    pub state: String,
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Blocked {
    pub referral_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinkCounts {
    pub leads: u64,
    pub opportunities: u64,
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
            outbox: outbox::counts_by_state(c)?
                .into_iter()
                .map(|(kind, state, count)| OutboxCount { kind, state, count })
                .collect(),
            actions_needing_attention: outbox::list(c, &["dead", "quarantined"], 50)?,
            open_actions: outbox::list(c, &["pending", "in_flight"], 50)?,
            conflicts: gstore::conflicts(c)?,
            webhooks: match config.webhook {
                Some(_) => Some(crate::store::webhook::stats(c)?),
                None => None,
            },
            cannot_forward: gstore::forward_blocked(c)?
                .into_iter()
                .map(|(referral_id, reason)| Blocked {
                    referral_id,
                    reason,
                })
                .collect(),
            links: c.query_row(
                "SELECT COUNT(lead_name), COUNT(opportunity_name) FROM links",
                [],
                |r| {
                    Ok(LinkCounts {
                        leads: r.get::<_, i64>(0)? as u64,
                        opportunities: r.get::<_, i64>(1)? as u64,
                    })
                },
            )?,
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
    let _ = writeln!(
        out,
        "Google: {} leads and {} opportunities tracked",
        report.links.leads, report.links.opportunities
    );
    if !report.outbox.is_empty() {
        let summary: Vec<String> = report
            .outbox
            .iter()
            .map(|o| format!("{} {} {}", o.count, o.kind, o.state))
            .collect();
        let _ = writeln!(out, "Outbox: {}", summary.join(", "));
    }
    if !report.actions_needing_attention.is_empty() {
        let _ = writeln!(
            out,
            "Needs a person (dead or quarantined; cosell-sync outbox retry|drop ID):"
        );
        for a in report.actions_needing_attention.iter().take(limit) {
            let _ = writeln!(
                out,
                "  #{:<6} {:<12} {:<18} {}  {}",
                a.id,
                a.state,
                a.kind,
                a.referral_id,
                a.last_error.as_deref().unwrap_or("")
            );
        }
    }
    if !report.open_actions.is_empty() {
        let _ = writeln!(out, "Open writes: {}", report.open_actions.len());
        for a in report.open_actions.iter().take(5) {
            let _ = writeln!(
                out,
                "  #{:<6} {:<10} {:<18} {} attempts {}{}",
                a.id,
                a.state,
                a.kind,
                a.referral_id,
                a.attempts,
                a.last_error
                    .as_deref()
                    .map(|e| format!("  last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !report.conflicts.is_empty() {
        let _ = writeln!(
            out,
            "Conflicts ([sync] conflict = \"manual\"; fix one side, the next cycle follows):"
        );
        for c in &report.conflicts {
            let _ = writeln!(
                out,
                "  {} {}: Microsoft {} / Google {} (last agreed {})",
                c.referral_id,
                c.field,
                c.microsoft_value.as_deref().unwrap_or("-"),
                c.google_value.as_deref().unwrap_or("-"),
                c.base_value.as_deref().unwrap_or("-")
            );
        }
    }
    if !report.cannot_forward.is_empty() {
        let _ = writeln!(out, "Cannot become a Google lead:");
        for b in report.cannot_forward.iter().take(limit) {
            let _ = writeln!(out, "  {}: {}", b.referral_id, b.reason);
        }
    }
    if let Some(w) = &report.webhooks {
        let _ = writeln!(out, "{}", crate::webhook::status_line(w));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Last cycles:");
    if report.last_cycles.is_empty() {
        let _ = writeln!(out, "  none yet");
    }
    for c in &report.last_cycles {
        let _ = writeln!(
            out,
            "  {}  {:<11} pages {:>4}  new {:>5}  changed {:>5}  rejected {:>3}  written {:>5}  failed {:>3}{}",
            c.started_at.format("%Y-%m-%d %H:%M:%S"),
            c.outcome,
            c.pages,
            c.referrals_new,
            c.referrals_changed,
            c.records_rejected,
            c.actions_done,
            c.actions_failed,
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
