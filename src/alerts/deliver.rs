//! Raising and delivering alerts after each cycle. Alerts are recorded (with one pending
//! delivery per sink) before anything is sent; each delivery is retried with backoff within
//! the cycle, and what is still undelivered is retried next cycle — also after a restart.
//! Delivered is recorded per sink, so nothing delivered is ever sent again. A sink that keeps
//! failing is skipped for the rest of the cycle and noted once in the log; it never blocks or
//! fails the sync. The log is always a sink.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

use super::due::{expiry_alert, forward_blocked_alert, health_alert, HealthEpisode};
use super::{format, Alert};
use crate::config::{AlertFormat, AlertsConfig, CommandConfig, WebhookConfig};
use crate::store::{alerts as astore, google as gstore, outbox, referrals, Store, StoreError};

/// A place alerts go besides the log.
#[derive(Debug, Clone)]
pub enum Sink {
    Webhook(WebhookConfig),
    Command(CommandConfig),
}

impl Sink {
    /// The name deliveries are recorded under.
    pub fn key(&self) -> String {
        match self {
            Sink::Webhook(w) => w.sink_key(),
            Sink::Command(c) => format!("command:{}", c.argv.join(" ")),
        }
    }

    async fn send(&self, http: &reqwest::Client, alert: &Alert) -> Result<(), String> {
        match self {
            Sink::Webhook(w) => {
                let mut request = http
                    .post(&w.url)
                    .timeout(w.timeout.0)
                    .json(&format::render(w.format, alert));
                for (name, value) in &w.headers {
                    request = request.header(name, value.expose_secret());
                }
                // reqwest names the URL in its errors: the URL is a secret.
                let response = request
                    .send()
                    .await
                    .map_err(|e| crate::http::error_chain(&e.without_url()))?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    // The receiver's reason (Slack's `invalid_blocks`, say) goes in the log.
                    let body = response.text().await.unwrap_or_default();
                    Err(sink_error(status.as_u16(), &body))
                }
            }
            Sink::Command(c) => run_command(c, alert).await,
        }
    }
}

/// `HTTP 400: invalid_blocks`: the status and the start of the body, on one line.
fn sink_error(status: u16, body: &str) -> String {
    let body: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if body.is_empty() {
        return format!("HTTP {status}");
    }
    let cut: String = body.chars().take(300).collect();
    let more = if cut.len() < body.len() { "…" } else { "" };
    format!("HTTP {status}: {cut}{more}")
}

async fn run_command(c: &CommandConfig, alert: &Alert) -> Result<(), String> {
    let body =
        serde_json::to_vec(&format::render(AlertFormat::Json, alert)).expect("alerts serialize");
    let mut child = tokio::process::Command::new(&c.argv[0])
        .args(&c.argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", c.argv[0]))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let run = async {
        stdin
            .write_all(&body)
            .await
            .map_err(|e| format!("stdin: {e}"))?;
        drop(stdin);
        child.wait_with_output().await.map_err(|e| e.to_string())
    };
    let output = tokio::time::timeout(c.timeout.0, run)
        .await
        .map_err(|_| format!("timed out after {}", c.timeout))??;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(format!(
            "{} ({})",
            output.status,
            stderr.lines().next().unwrap_or("")
        ))
    }
}

/// What alerting needs, built once from `[alerts]`.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    pub window: chrono::Duration,
    pub thresholds: Vec<chrono::Duration>,
    pub failed_cycles: u32,
    pub referral_url: String,
    /// For the deadline in alert texts (log and command sinks; chat sinks show local time).
    pub timezone: chrono::FixedOffset,
    pub attempts: usize,
    pub sinks: Vec<Sink>,
    pub http: reqwest::Client,
}

impl AlertSettings {
    pub fn from_config(config: &AlertsConfig) -> Self {
        let mut sinks: Vec<Sink> = config.webhook.iter().cloned().map(Sink::Webhook).collect();
        sinks.extend(config.command.iter().cloned().map(Sink::Command));
        AlertSettings {
            window: config.response_window.as_chrono(),
            thresholds: config.thresholds.iter().map(|t| t.as_chrono()).collect(),
            failed_cycles: config.failed_cycles,
            referral_url: config.referral_url.clone(),
            timezone: crate::timefmt::parse_offset(&config.timezone)
                .unwrap_or_else(|| chrono::FixedOffset::east_opt(0).expect("UTC is an offset")),
            attempts: config.delivery_attempts.max(1),
            sinks,
            http: crate::http::client_builder()
                .connect_timeout(Duration::from_secs(5))
                // A redirect to another host would re-POST the alert with its secret headers.
                .redirect(crate::http::same_origin_redirects())
                .user_agent(concat!("cosell-sync/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("reqwest client builds"),
        }
    }
}

/// What the alert phase did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AlertStats {
    pub raised: u64,
    pub delivered: u64,
    pub undelivered: u64,
}

impl AlertStats {
    pub fn add(&mut self, o: AlertStats) {
        self.raised += o.raised;
        self.delivered += o.delivered;
        self.undelivered = o.undelivered;
    }
}

/// Which alerts to raise now.
#[derive(Debug, Clone)]
pub enum Raise {
    /// Expiry alerts only: they need nothing but Microsoft data, so they go out right after
    /// the pull, before any Google work.
    Expiry,
    /// Expiry alerts of these referrals only (a page that just arrived): the cost follows
    /// the page, not the inbox.
    ExpiryOf(Vec<String>),
    /// Everything, with how the cycle ended (for `sync_unhealthy` and its recovery).
    All {
        error: Option<String>,
        auth_failed: bool,
    },
}

/// Raises the alerts asked for and delivers everything pending. Errors are logged; this
/// never fails the cycle.
///
/// `broken` holds the sinks that failed earlier in this cycle: they are not tried again until
/// the next cycle (their deliveries wait, recorded).
pub async fn raise_and_deliver(
    store: &Store,
    settings: &AlertSettings,
    raise: Raise,
    now: DateTime<Utc>,
    dry_run: bool,
    broken: &mut HashSet<String>,
) -> AlertStats {
    let mut stats = AlertStats::default();
    match raise_due(store, settings, raise, now).await {
        Ok(raised) => stats.raised = raised,
        Err(e) => tracing::error!(error = %e, "cannot record alerts"),
    }
    if dry_run {
        if !settings.sinks.is_empty() && stats.raised > 0 {
            tracing::warn!(
                raised = stats.raised,
                "DRY RUN: alerts not delivered to the sinks"
            );
        }
        return stats;
    }
    match deliver_pending(store, settings, broken).await {
        Ok((delivered, undelivered)) => {
            stats.delivered = delivered;
            stats.undelivered = undelivered;
        }
        Err(e) => tracing::error!(error = %e, "cannot deliver alerts"),
    }
    stats
}

async fn raise_due(
    store: &Store,
    settings: &AlertSettings,
    which: Raise,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let settings = settings.clone();
    store
        .call(move |c| {
            let sinks: Vec<String> = settings.sinks.iter().map(Sink::key).collect();
            let tx = c.transaction()?;
            let mut count = 0;
            // Records each alert as it is found (never a list of them: a large inbox can
            // cross thresholds by the thousand) and logs the new ones: the log is a sink.
            let mut raise = |tx: &rusqlite::Connection, alert: Alert| -> Result<(), StoreError> {
                if astore::raise(tx, &alert, &sinks, now)? {
                    count += 1;
                    let referral = alert.referral_id.as_deref().unwrap_or("-");
                    match alert.severity.as_str() {
                        "critical" => tracing::error!(alert_id = %alert.id, kind = %alert.kind, referral_id = referral, "ALERT: {}", alert.message),
                        "warning" => tracing::warn!(alert_id = %alert.id, kind = %alert.kind, referral_id = referral, "ALERT: {}", alert.message),
                        _ => tracing::info!(alert_id = %alert.id, kind = %alert.kind, "ALERT: {}", alert.message),
                    }
                }
                Ok(())
            };
            // Expiry, for every incoming referral still New (or those of one page).
            let expiry = |r: referrals::ReferralSummary| {
                expiry_alert(&r, settings.window, &settings.thresholds, &settings.referral_url, settings.timezone, now)
            };
            if let Raise::ExpiryOf(ids) = &which {
                for id in ids {
                    if let Some(alert) = referrals::awaiting_response_one(&tx, id)?.and_then(expiry) {
                        raise(&tx, alert)?;
                    }
                }
            } else {
                referrals::each_awaiting_response(&tx, |r| match expiry(r) {
                    Some(alert) => raise(&tx, alert),
                    None => Ok(()),
                })?;
            }
            let Raise::All { error, auth_failed } = which else {
                tx.commit()?;
                return Ok(count);
            };
            // Health.
            let mut health: HealthEpisode = astore::get_health(&tx, "sync")?
                .and_then(|v| serde_json::from_str(&v).ok())
                .unwrap_or_default();
            if let Some(alert) = health_alert(&mut health, error.as_deref(), auth_failed, settings.failed_cycles, now) {
                raise(&tx, alert)?;
            }
            astore::set_health(&tx, "sync", &serde_json::to_string(&health).expect("health serializes"), now)?;
            // Writes that need a person, referrals that can never be forwarded as they are,
            // conflicts the manual policy left.
            for alert in attention_alerts(&tx, &settings.referral_url, now)? {
                raise(&tx, alert)?;
            }
            tx.commit()?;
            Ok(count)
        })
        .await
}

/// The alerts for what needs a person: dead or quarantined writes, referrals that cannot be
/// forwarded, manual-policy conflicts (each raised once: their ids are stable).
fn attention_alerts(
    tx: &rusqlite::Connection,
    referral_url: &str,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, StoreError> {
    let about = |mut alert: Alert, referral_id: &str| {
        alert.referral_id = Some(referral_id.to_string());
        alert.link = Some(referral_url.replace("{id}", referral_id));
        alert
    };
    let mut alerts = Vec::new();
    for row in outbox::list(tx, &["dead", "quarantined"], 1000)? {
        let alert = Alert::general(
            format!("action_failed:{}:{}", row.id, row.state),
            "action_failed",
            "critical",
            format!(
                "{} for referral {} is {}: {}",
                row.kind,
                row.referral_id,
                row.state,
                row.last_error.as_deref().unwrap_or("no error recorded")
            ),
            now,
        );
        alerts.push(about(alert, &row.referral_id));
    }
    for (referral_id, reason) in gstore::forward_blocked(tx)? {
        alerts.push(forward_blocked_alert(
            &referral_id,
            &reason,
            referral_url,
            now,
        ));
    }
    for conflict in gstore::conflicts(tx)? {
        let alert = Alert::general(
            format!("conflict:{}:{}:{}", conflict.referral_id, conflict.field, conflict.detected_at),
            "conflict",
            "warning",
            format!(
                "{} of referral {} changed on both sides: {}. Nothing was written; change one side to settle it.",
                conflict.field,
                conflict.referral_id,
                conflict.values()
            ),
            now,
        );
        alerts.push(about(alert, &conflict.referral_id));
    }
    Ok(alerts)
}

/// The alert phase for one referral that just arrived (a webhook event): its expiry alert, if
/// a threshold is crossed, then delivery of everything pending. Health alerts stay with the
/// cycle. Errors are logged; this never fails the caller.
pub async fn for_referral(
    store: &Store,
    settings: &AlertSettings,
    referral_id: &str,
    now: DateTime<Utc>,
    dry_run: bool,
) -> AlertStats {
    let mut stats = AlertStats::default();
    let (s, id) = (settings.clone(), referral_id.to_string());
    let raised = store
        .call(move |c| {
            let Some(r) = referrals::awaiting_response_one(c, &id)? else {
                return Ok(0);
            };
            let Some(alert) =
                expiry_alert(&r, s.window, &s.thresholds, &s.referral_url, s.timezone, now)
            else {
                return Ok(0);
            };
            let sinks: Vec<String> = s.sinks.iter().map(Sink::key).collect();
            let tx = c.transaction()?;
            let new = astore::raise(&tx, &alert, &sinks, now)?;
            tx.commit()?;
            if new {
                tracing::warn!(alert_id = %alert.id, kind = %alert.kind, referral_id = %id, "ALERT: {}", alert.message);
            }
            Ok(u64::from(new))
        })
        .await;
    match raised {
        Ok(n) => stats.raised = n,
        Err(e) => tracing::error!(error = %e, "cannot record alerts"),
    }
    if dry_run || stats.raised == 0 {
        return stats;
    }
    match deliver_pending(store, settings, &mut HashSet::new()).await {
        Ok((delivered, undelivered)) => {
            stats.delivered = delivered;
            stats.undelivered = undelivered;
        }
        Err(e) => tracing::error!(error = %e, "cannot deliver alerts"),
    }
    stats
}

/// Delivers every pending (alert, sink) pair whose sink is still configured.
pub async fn deliver_pending(
    store: &Store,
    settings: &AlertSettings,
    broken: &mut HashSet<String>,
) -> Result<(u64, u64), StoreError> {
    let sinks: HashMap<String, &Sink> = settings.sinks.iter().map(|s| (s.key(), s)).collect();
    // Databases of earlier versions keyed webhook deliveries by the URL itself (a secret).
    let renames: Vec<(String, String)> = settings
        .sinks
        .iter()
        .filter_map(|s| match s {
            Sink::Webhook(w) => Some((format!("webhook:{}", w.url), s.key())),
            Sink::Command(_) => None,
        })
        .collect();
    store
        .call(move |c| astore::rename_sinks(c, &renames))
        .await?;
    let (mut delivered, mut undelivered) = (0, 0);
    let pending = store.call(|c| astore::pending(c, 10_000)).await?;
    for (alert, sink_key, attempts_before) in pending {
        let Some(sink) = sinks.get(&sink_key) else {
            continue; // A sink removed from the config: its old deliveries wait, unsent.
        };
        if broken.contains(&sink_key) {
            undelivered += 1;
            continue;
        }
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(settings.attempts.saturating_sub(1))
            .with_jitter();
        let result = (|| sink.send(&settings.http, &alert)).retry(backoff).await;
        let (id, key) = (alert.id.clone(), sink_key.clone());
        match result {
            Ok(()) => {
                delivered += 1;
                store
                    .call(move |c| astore::delivered(c, &id, &key, Utc::now()))
                    .await?;
            }
            Err(error) => {
                undelivered += 1;
                broken.insert(sink_key.clone());
                if attempts_before == 0 {
                    tracing::warn!(sink = %sink_key, alert_id = %alert.id, %error, "alert not delivered; it is kept and retried next cycle");
                }
                let logged = error.clone();
                store
                    .call(move |c| astore::failed(c, &id, &key, &logged))
                    .await?;
                note_failing_sink(store, &sink_key, &error).await?;
            }
        }
    }
    // A sink that works again closes its failing episode.
    for key in sinks.keys().filter(|k| !broken.contains(*k)) {
        let key = key.clone();
        let was_failing = store
            .call({
                let key = key.clone();
                move |c| astore::get_health(c, &format!("sink:{key}"))
            })
            .await?;
        if was_failing.is_some_and(|v| v == "failing") {
            tracing::info!(sink = %key, "alert sink works again");
            store
                .call(move |c| astore::set_health(c, &format!("sink:{key}"), "ok", Utc::now()))
                .await?;
        }
    }
    Ok((delivered, undelivered))
}

/// One notice in the log per episode of a failing sink.
async fn note_failing_sink(store: &Store, key: &str, error: &str) -> Result<(), StoreError> {
    let health_key = format!("sink:{key}");
    let state = store
        .call({
            let k = health_key.clone();
            move |c| astore::get_health(c, &k)
        })
        .await?;
    if state.as_deref() != Some("failing") {
        tracing::error!(sink = %key, %error, "sync_unhealthy: alert sink is failing; alerts are kept and retried every cycle (the sync goes on)");
        store
            .call(move |c| astore::set_health(c, &health_key, "failing", Utc::now()))
            .await?;
    }
    Ok(())
}

/// `alerts test`: one test alert to every sink, each result reported; nothing recorded.
pub async fn send_test(settings: &AlertSettings) -> Vec<(String, Result<(), String>)> {
    let now = Utc::now();
    let mut alert = Alert::general(
        format!("test:{}", now.timestamp()),
        "test",
        "info",
        "This is a test alert from cosell-sync: this sink works.".into(),
        now,
    );
    alert.customer = Some("Test Customer".into());
    let mut results = Vec::new();
    for sink in &settings.sinks {
        results.push((sink.key(), sink.send(&settings.http, &alert).await));
    }
    results
}
