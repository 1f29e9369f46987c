//! Raising and delivering alerts after each cycle. Alerts are recorded (with one pending
//! delivery per sink) before anything is sent; each delivery is retried with backoff within
//! the cycle, and what is still undelivered is retried next cycle — also after a restart.
//! Delivered is recorded per sink, so nothing delivered is ever sent again. A sink that keeps
//! failing is skipped for the rest of the cycle and noted once in the log; it never blocks or
//! fails the sync. The log is always a sink.
//!
//! Each sink takes only the alerts its route lets through ([`super::route`]): a delivery is
//! recorded only for those, so an alert a sink does not take is never "undelivered" for it.
//! Chat sinks get at most [`CHAT_MESSAGES_PER_CYCLE`] messages per cycle, then a digest
//! ([`super::digest`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use tokio::io::AsyncWriteExt;

use super::digest::{Digest, CHAT_MESSAGES_PER_CYCLE};
use super::due::{
    expiry_alert, forward_blocked_alert, health_alert, link_key_alert, vanished_alert,
    HealthEpisode, RecordLinks,
};
use super::route::Route;
use super::{format, Alert};
use crate::config::{AlertFormat, AlertsConfig, CommandConfig, WebhookConfig};
use crate::deadline;
use crate::store::{
    alerts as astore, google as gstore, invitations, outbox, referrals, Store, StoreError,
};

/// A place alerts go besides the log.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Webhook(WebhookConfig),
    Command(CommandConfig),
}

impl Sink {
    /// The name deliveries are recorded under.
    pub(crate) fn key(&self) -> String {
        match self {
            Sink::Webhook(w) => w.sink_key(),
            Sink::Command(c) => format!("command:{}", c.argv.join(" ")),
        }
    }

    /// Which alerts this sink takes.
    pub(crate) fn route(&self) -> Route {
        match self {
            Sink::Webhook(w) => Route::new(&w.kinds, w.min_severity, &w.thresholds),
            Sink::Command(c) => Route::new(&c.kinds, c.min_severity, &c.thresholds),
        }
    }

    /// A chat sink (Slack, Teams) is read by people: it gets digests instead of floods.
    pub(crate) fn is_chat(&self) -> bool {
        matches!(self, Sink::Webhook(w) if w.format != AlertFormat::Json)
    }

    /// Posts a rendered message (an alert or a digest) to a webhook.
    async fn post(&self, http: &reqwest::Client, body: serde_json::Value) -> Result<(), SinkError> {
        let Sink::Webhook(w) = self else {
            return Err(SinkError::NotWebhook);
        };
        let mut request = http.post(&w.url).timeout(w.timeout.0).json(&body);
        for (name, value) in &w.headers {
            request = request.header(name, value.expose_secret());
        }
        // reqwest names the URL in its errors: the URL is a secret.
        let response = request
            .send()
            .await
            .map_err(|e| SinkError::Unreachable(crate::http::error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            // The receiver's reason (Slack's `invalid_blocks`, say) goes in the log; only its
            // start is read (streamed, never the whole of a huge answer).
            let body = crate::http::read_at_most(response, SINK_ERROR_BYTES)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            Err(SinkError::Rejected {
                status: status.as_u16(),
                body,
            })
        }
    }

    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
        alert: &Alert,
    ) -> Result<(), SinkError> {
        match self {
            Sink::Webhook(w) => self.post(http, format::render(w.format, alert)).await,
            Sink::Command(c) => run_command(c, alert).await,
        }
    }
}

/// Why a sink did not take an alert; its text goes in the log, the store and `alerts test`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error("only webhooks take posts")]
    NotWebhook,
    /// The request did not get an answer (the chain of causes, the URL left out: a secret).
    #[error("{0}")]
    Unreachable(String),
    /// The receiver answered with an error status.
    #[error("{}", sink_error(*status, body))]
    Rejected { status: u16, body: String },
    #[error("cannot start {program}: {error}")]
    Start {
        program: String,
        error: std::io::Error,
    },
    #[error("stdin: {0}")]
    Stdin(std::io::Error),
    #[error("{0}")]
    Wait(std::io::Error),
    #[error("timed out after {0}")]
    TimedOut(crate::config::HumanDuration),
    #[error("{status} ({stderr})")]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// A sink's error answer longer than this is not read (its reason is in the first lines).
const SINK_ERROR_BYTES: usize = 16 * 1024;

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

async fn run_command(c: &CommandConfig, alert: &Alert) -> Result<(), SinkError> {
    let body =
        serde_json::to_vec(&format::render(AlertFormat::Json, alert)).expect("alerts serialize");
    let mut child = tokio::process::Command::new(&c.argv[0])
        .args(&c.argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| SinkError::Start {
            program: c.argv[0].clone(),
            error,
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let run = async {
        stdin.write_all(&body).await.map_err(SinkError::Stdin)?;
        drop(stdin);
        child.wait_with_output().await.map_err(SinkError::Wait)
    };
    let output = tokio::time::timeout(c.timeout.0, run)
        .await
        .map_err(|_| SinkError::TimedOut(c.timeout))??;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(SinkError::Failed {
            status: output.status,
            stderr: stderr.lines().next().unwrap_or("").to_string(),
        })
    }
}

/// What alerting needs, built once from `[alerts]`.
#[derive(Debug, Clone)]
pub(crate) struct AlertSettings {
    pub(crate) window: chrono::Duration,
    pub(crate) thresholds: Vec<chrono::Duration>,
    /// The same thresholds as alerts name them (`"72h"`), for describing routes.
    pub(crate) threshold_labels: Vec<String>,
    pub(crate) failed_cycles: u32,
    pub(crate) referral_url: String,
    /// `[aws] invitation_url` (with `{id}`): the link of an AWS invitation's alerts; none
    /// when unset (a Partner Center link would be wrong).
    pub(crate) invitation_url: Option<String>,
    /// For the deadline in alert texts (log and command sinks; chat sinks show local time).
    pub(crate) timezone: crate::timefmt::Zone,
    pub(crate) attempts: usize,
    pub(crate) sinks: Vec<Sink>,
    pub(crate) http: reqwest::Client,
    /// `[actions]`: signs the `action_url` of `referral_expiring` alerts.
    pub(crate) links: Option<std::sync::Arc<crate::links::LinkSigner>>,
    /// `{public_url}/inbox` when the inbox is on (`[actions] actor_header`): digests link to it.
    pub(crate) inbox_url: Option<String>,
    /// Health alerts the store could not record yet (see [`super::unrecorded`]).
    pub(crate) unrecorded: super::unrecorded::Memory,
}

impl AlertSettings {
    /// The links of alerts about one referral or invitation.
    pub(crate) fn record_links(&self) -> RecordLinks<'_> {
        RecordLinks {
            referral_url: &self.referral_url,
            invitation_url: self.invitation_url.as_deref(),
        }
    }

    /// The keys of the sinks that take this alert (its deliveries are recorded for these).
    /// Alerts about no referral's expiry.
    pub(crate) fn sinks_taking(&self, alert: &Alert) -> Vec<String> {
        self.sinks
            .iter()
            .filter(|s| s.route().takes(alert, &[]))
            .map(Sink::key)
            .collect()
    }

    /// [`Self::sinks_taking`] for any alert, reading what a sink limited to thresholds needs
    /// (the thresholds already alerted for the referral) from the store.
    pub(crate) fn sinks_taking_in(
        &self,
        conn: &rusqlite::Connection,
        alert: &Alert,
    ) -> Result<Vec<String>, StoreError> {
        let alerted = alerted_before(conn, &self.sinks, alert)?;
        Ok(self
            .sinks
            .iter()
            .filter(|s| s.route().takes(alert, &alerted))
            .map(Sink::key)
            .collect())
    }

    /// What reaches each sink (`check-config`, `alerts test`): its key and
    /// [`Route::describe`].
    pub(crate) fn routes(&self) -> Vec<(String, String)> {
        self.sinks
            .iter()
            .map(|s| (s.key(), s.route().describe(&self.threshold_labels)))
            .collect()
    }

    /// The warning when some threshold's `referral_expiring` alerts reach no webhook or
    /// command sink, only the log (none without sinks: the log is then the choice).
    pub(crate) fn routing_warning(&self) -> Option<String> {
        if self.sinks.is_empty() {
            return None;
        }
        let routes: Vec<Route> = self.sinks.iter().map(Sink::route).collect();
        let lost = super::route::unreached_thresholds(&routes, &self.threshold_labels);
        (!lost.is_empty()).then(|| {
            format!(
                "warning: referral_expiring at {} reaches no webhook or command sink, only the log (add it to a sink's thresholds, or widen one)",
                lost.join(", ")
            )
        })
    }

    pub(crate) fn from_config(config: &AlertsConfig) -> Self {
        let mut sinks: Vec<Sink> = config.webhook.iter().cloned().map(Sink::Webhook).collect();
        sinks.extend(config.command.iter().cloned().map(Sink::Command));
        AlertSettings {
            window: config.response_window.as_chrono(),
            thresholds: config.thresholds.iter().map(|t| t.as_chrono()).collect(),
            threshold_labels: config.thresholds.iter().map(|t| t.to_string()).collect(),
            failed_cycles: config.failed_cycles,
            referral_url: config.referral_url.clone(),
            invitation_url: None,
            // Validated at load; UTC only for a config that never went through validation.
            timezone: crate::timefmt::parse_zone(&config.timezone)
                .unwrap_or_else(crate::timefmt::Zone::utc),
            attempts: config.delivery_attempts.max(1),
            sinks,
            http: crate::http::client_builder()
                .connect_timeout(Duration::from_secs(5))
                // A redirect to another host would re-POST the alert with its secret headers.
                .redirect(crate::http::same_origin_redirects())
                .user_agent(concat!("cosell-sync/", env!("CARGO_PKG_VERSION")))
                .build()
                .expect("reqwest client builds"),
            links: None,
            inbox_url: None,
            unrecorded: Default::default(),
        }
    }
}

/// The thresholds already alerted for the alert's referral, when a sink's route needs them
/// (a `referral_expiring` alert and a sink limited to thresholds); empty otherwise.
fn alerted_before(
    conn: &rusqlite::Connection,
    sinks: &[Sink],
    alert: &Alert,
) -> Result<Vec<String>, StoreError> {
    match (
        &alert.referral_id,
        sinks.iter().any(|s| s.route().needs_history(alert)),
    ) {
        (Some(referral), true) => astore::expiring_thresholds(conn, referral),
        _ => Ok(Vec::new()),
    }
}

/// What the alert phase did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct AlertStats {
    pub raised: u64,
    pub(crate) delivered: u64,
    pub(crate) undelivered: u64,
}

impl AlertStats {
    pub(crate) fn add(&mut self, o: AlertStats) {
        self.raised += o.raised;
        self.delivered += o.delivered;
        self.undelivered = o.undelivered;
    }
}

/// Which alerts to raise now.
#[derive(Debug, Clone)]
pub(crate) enum Raise {
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

/// What the alert phases of one cycle share.
#[derive(Debug, Default)]
pub(crate) struct CycleDelivery {
    /// Sinks that failed earlier in this cycle: not tried again until the next cycle (their
    /// deliveries wait, recorded).
    broken: HashSet<String>,
    /// Messages each chat sink got in this cycle (at most [`CHAT_MESSAGES_PER_CYCLE`]).
    chat_sent: HashMap<String, usize>,
    /// Alerts raised in this cycle, by kind and threshold (for the log's summary line).
    raised: std::collections::BTreeMap<String, u64>,
}

impl CycleDelivery {
    /// Messages this chat sink may still get in this cycle.
    fn chat_room(&self, key: &str) -> usize {
        CHAT_MESSAGES_PER_CYCLE.saturating_sub(self.chat_sent.get(key).copied().unwrap_or(0))
    }

    /// One line in the log when a cycle raised a flood (a first sync over a full inbox): the
    /// log keeps one line per alert, and this says what they add up to.
    fn log_summary(&self, awaiting: Option<u64>, chat: bool) {
        let total: u64 = self.raised.values().sum();
        if total <= CHAT_MESSAGES_PER_CYCLE as u64 {
            return;
        }
        let parts: Vec<String> = self
            .raised
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        let awaiting = awaiting
            .map(|n| format!("; {n} incoming referrals await an answer"))
            .unwrap_or_default();
        tracing::warn!(
            raised = total,
            "ALERT SUMMARY: {total} alerts raised in this cycle ({}){awaiting}{}; `{}` lists them",
            parts.join(", "),
            if chat {
                "; chat sinks got a digest"
            } else {
                ""
            },
            super::digest::LIST_COMMAND
        );
    }
}

/// Raises the alerts asked for and delivers everything pending. Errors are logged; this
/// never fails the cycle. [`Raise::All`] is the cycle's last phase: chat sinks get what the
/// earlier phases held back (one digest when it is too much).
pub(crate) async fn raise_and_deliver(
    store: &Store,
    settings: &AlertSettings,
    raise: Raise,
    now: DateTime<Utc>,
    dry_run: bool,
    cycle: &mut CycleDelivery,
) -> AlertStats {
    let mut stats = AlertStats::default();
    let last = matches!(raise, Raise::All { .. });
    match raise_due(store, settings, raise.clone(), now).await {
        Ok((raised, tally)) => {
            stats.raised = raised;
            for (k, n) in tally {
                *cycle.raised.entry(k).or_default() += n;
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot record alerts");
            // The health alert still goes out, from memory (a full disk must not silence it).
            if let Raise::All { error, auth_failed } = &raise {
                stats.raised =
                    super::unrecorded::raise(store, settings, error.as_deref(), *auth_failed, now)
                        .await;
            }
        }
    }
    if last && cycle.raised.values().sum::<u64>() > CHAT_MESSAGES_PER_CYCLE as u64 {
        let awaiting = store
            .call(crate::store::responses::count_awaiting)
            .await
            .ok();
        cycle.log_summary(awaiting, settings.sinks.iter().any(Sink::is_chat));
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
    let (delivered, undelivered) = super::unrecorded::deliver(settings, &mut cycle.broken).await;
    stats.delivered = delivered;
    stats.undelivered = undelivered;
    match deliver_pending(store, settings, cycle, last).await {
        Ok((delivered, undelivered)) => {
            stats.delivered += delivered;
            stats.undelivered += undelivered;
        }
        Err(e) => tracing::error!(error = %e, "cannot deliver alerts"),
    }
    stats
}

/// `referral_expiring at 4h`, `referral_expired`, `conflict`: how the summary counts alerts.
fn tally_key(alert: &Alert) -> String {
    match &alert.threshold {
        Some(t) => format!("{} at {t}", alert.kind),
        None => alert.kind.clone(),
    }
}

async fn raise_due(
    store: &Store,
    settings: &AlertSettings,
    which: Raise,
    now: DateTime<Utc>,
) -> Result<(u64, std::collections::BTreeMap<String, u64>), StoreError> {
    let settings = settings.clone();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            let mut count = 0;
            let mut tally = std::collections::BTreeMap::<String, u64>::new();
            // Records each alert as it is found (never a list of them: a large inbox can
            // cross thresholds by the thousand) and logs the new ones: the log is a sink.
            let mut raise = |tx: &rusqlite::Connection, alert: Alert| -> Result<(), StoreError> {
                if astore::raise_routed(tx, &alert, now, |c| settings.sinks_taking_in(c, &alert))? {
                    count += 1;
                    *tally.entry(tally_key(&alert)).or_default() += 1;
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
                let mut alert = expiry_alert(&r, settings.window, &settings.thresholds, settings.record_links(), settings.timezone, now)?;
                // What the triage rules decided (best effort: an alert never waits on it).
                if let Ok(Some(d)) = crate::store::triage::decision_of(&tx, &r.id) {
                    crate::triage::annotate(&mut alert, &d);
                }
                Some(alert)
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
                // An invitation AWS marked EXPIRED before a cycle saw its deadline pass
                // (the pull read it after it left the PENDING list) still gets its alert.
                for r in invitations::recently_expired(&tx, now - chrono::Duration::days(7))? {
                    let past = now.max(deadline::deadline(r.created_at, r.expires_at, settings.window) + chrono::Duration::seconds(1));
                    if let Some(mut alert) = expiry_alert(&r, settings.window, &settings.thresholds, settings.record_links(), settings.timezone, past) {
                        alert.created_at = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                        raise(&tx, alert)?;
                    }
                }
            }
            let Raise::All { error, auth_failed } = which else {
                tx.commit()?;
                return Ok((count, tally));
            };
            // Health: memory's episode when the store fell behind (see `unrecorded`).
            let stored: Option<HealthEpisode> = astore::get_health(&tx, "sync")?
                .and_then(|v| serde_json::from_str(&v).ok());
            let mut health = super::unrecorded::episode(&settings.unrecorded, stored);
            let held = super::unrecorded::record(&tx, &settings, now)?;
            if let Some(alert) = health_alert(&mut health, error.as_deref(), auth_failed, settings.failed_cycles, now) {
                raise(&tx, alert)?;
            }
            astore::set_health(&tx, "sync", &serde_json::to_string(&health).expect("health serializes"), now)?;
            if let Some(links) = &settings.links {
                let current = links.fingerprint();
                let previous = astore::get_health(&tx, "link_key")?;
                if let Some(alert) = link_key_alert(previous.as_deref(), &current, now) {
                    raise(&tx, alert)?;
                }
                if previous.as_deref() != Some(current.as_str()) {
                    astore::set_health(&tx, "link_key", &current, now)?;
                }
            }
            // Writes that need a person, referrals that can never be forwarded as they are,
            // conflicts the manual policy left.
            for alert in attention_alerts(&tx, settings.record_links(), now)? {
                raise(&tx, alert)?;
            }
            tx.commit()?;
            super::unrecorded::forget(&settings.unrecorded, &held);
            Ok((count, tally))
        })
        .await
}

/// The alerts for what needs a person: dead or quarantined writes, referrals that cannot be
/// forwarded, manual-policy conflicts (each raised once: their ids are stable).
fn attention_alerts(
    tx: &rusqlite::Connection,
    links: RecordLinks<'_>,
    now: DateTime<Utc>,
) -> Result<Vec<Alert>, StoreError> {
    let referral_url = links.referral_url;
    let about = |mut alert: Alert, referral_id: &str| -> Result<Alert, StoreError> {
        // An answer to an invitation never pulled (`accept engi-…` before a cycle saw it)
        // has no stored row: its id says which cloud it is.
        let source = invitations::source_of(tx, referral_id)?.unwrap_or_else(|| {
            match crate::aws::client::is_invitation_id(referral_id) {
                true => invitations::AWS.into(),
                false => invitations::MICROSOFT.into(),
            }
        });
        alert.referral_id = Some(referral_id.to_string());
        alert.link = links.link(&source, referral_id);
        alert.source = Some(source);
        Ok(alert)
    };
    let mut alerts = Vec::new();
    for row in outbox::list(tx, &[outbox::State::Dead, outbox::State::Quarantined], 1000)? {
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
        alerts.push(about(alert, &row.referral_id)?);
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
        alerts.push(about(alert, &conflict.referral_id)?);
    }
    for row in invitations::vanished(tx)? {
        alerts.push(vanished_alert(&row, links, now));
    }
    Ok(alerts)
}

/// Delivers every pending (alert, sink) pair whose sink is still configured, sink by sink.
/// `last`: the cycle's last phase, where a chat sink gets what earlier phases held back.
pub(crate) async fn deliver_pending(
    store: &Store,
    settings: &AlertSettings,
    cycle: &mut CycleDelivery,
    last: bool,
) -> Result<(u64, u64), StoreError> {
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
    let mut by_sink: HashMap<String, Vec<(Alert, u32)>> = HashMap::new();
    for (mut alert, sink_key, attempts) in store.call(|c| astore::pending(c, 10_000)).await? {
        // Signed at delivery, never stored: the link is a capability.
        alert.action_url = action_url(settings, &alert);
        // A sink removed from the config: its old deliveries wait, unsent.
        by_sink.entry(sink_key).or_default().push((alert, attempts));
    }
    let (mut delivered, mut undelivered) = (0, 0);
    for sink in &settings.sinks {
        let key = sink.key();
        let Some(items) = by_sink.remove(&key) else {
            continue;
        };
        let items = keep_routed(store, sink, &key, items).await?;
        if items.is_empty() {
            continue;
        }
        if cycle.broken.contains(&key) {
            undelivered += items.len() as u64;
            continue;
        }
        let (d, u) = match sink.is_chat() {
            true => deliver_to_chat(store, settings, sink, &key, items, cycle, last).await?,
            false => deliver_each(store, settings, sink, &key, items, cycle).await?,
        };
        delivered += d;
        undelivered += u;
    }
    close_recovered_episodes(store, settings, &cycle.broken).await?;
    Ok((delivered, undelivered))
}

/// The deliveries this sink still takes; those its route no longer lets through (the config
/// changed since they were raised) are dropped, not sent and not counted as undelivered.
async fn keep_routed(
    store: &Store,
    sink: &Sink,
    key: &str,
    items: Vec<(Alert, u32)>,
) -> Result<Vec<(Alert, u32)>, StoreError> {
    let route = sink.route();
    let mut kept = Vec::with_capacity(items.len());
    let mut dropped = Vec::new();
    for (alert, attempts) in items {
        let alerted = match route.needs_history(&alert) {
            true => {
                let referral = alert.referral_id.clone().unwrap_or_default();
                store
                    .call(move |c| astore::expiring_thresholds(c, &referral))
                    .await?
            }
            false => Vec::new(),
        };
        match route.takes(&alert, &alerted) {
            true => kept.push((alert, attempts)),
            false => dropped.push((alert, attempts)),
        }
    }
    if !dropped.is_empty() {
        let ids: Vec<String> = dropped.into_iter().map(|(a, _)| a.id).collect();
        tracing::info!(sink = %key, alerts = ids.len(), "alerts this sink no longer takes (its routing changed) are not sent to it");
        let key = key.to_string();
        store
            .call(move |c| astore::drop_unrouted(c, &ids, &key))
            .await?;
    }
    Ok(kept)
}

/// A chat sink: one message per alert while the cycle's budget allows, else one digest in
/// the cycle's last phase. An earlier phase keeps one message in hand for that digest and
/// holds back what does not fit (recorded, pending: nothing is lost).
async fn deliver_to_chat(
    store: &Store,
    settings: &AlertSettings,
    sink: &Sink,
    key: &str,
    items: Vec<(Alert, u32)>,
    cycle: &mut CycleDelivery,
    last: bool,
) -> Result<(u64, u64), StoreError> {
    let room = cycle.chat_room(key);
    let in_hand = usize::from(!last);
    if items.len() + in_hand <= room {
        return deliver_each(store, settings, sink, key, items, cycle).await;
    }
    if !last || room == 0 {
        return Ok((0, 0)); // Held back for the last phase (or the next cycle).
    }
    let Sink::Webhook(w) = sink else {
        return deliver_each(store, settings, sink, key, items, cycle).await;
    };
    let alerts: Vec<&Alert> = items.iter().map(|(a, _)| a).collect();
    let body = Digest::of(&alerts)
        .with_inbox(settings.inbox_url.clone())
        .render(w.format, Utc::now());
    let ids: Vec<String> = items.iter().map(|(a, _)| a.id.clone()).collect();
    let result = (|| sink.post(&settings.http, body.clone()))
        .retry(backoff(settings))
        .await;
    let sink_key = key.to_string();
    match result {
        Ok(()) => {
            *cycle.chat_sent.entry(sink_key.clone()).or_default() += 1;
            tracing::info!(sink = %key, alerts = ids.len(), "alert digest delivered (one message instead of {})", ids.len());
            let n = ids.len() as u64;
            store
                .call(move |c| astore::delivered_many(c, &ids, &sink_key, Utc::now()))
                .await?;
            Ok((n, 0))
        }
        Err(error) => {
            cycle.broken.insert(sink_key.clone());
            tracing::warn!(sink = %key, alerts = ids.len(), %error, "alert digest not delivered; its alerts are kept and retried next cycle");
            let n = ids.len() as u64;
            let logged = error.to_string();
            store
                .call(move |c| astore::failed_many(c, &ids, &sink_key, &logged))
                .await?;
            note_failing_sink(store, key, &error.to_string()).await?;
            Ok((0, n))
        }
    }
}

fn backoff(settings: &AlertSettings) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(settings.attempts.saturating_sub(1))
        .with_jitter()
}

/// One call per alert, oldest first; the first failure marks the sink broken for the cycle.
async fn deliver_each(
    store: &Store,
    settings: &AlertSettings,
    sink: &Sink,
    key: &str,
    items: Vec<(Alert, u32)>,
    cycle: &mut CycleDelivery,
) -> Result<(u64, u64), StoreError> {
    let (mut delivered, mut undelivered) = (0, 0);
    for (alert, attempts_before) in items {
        if cycle.broken.contains(key) {
            undelivered += 1;
            continue;
        }
        let result = (|| sink.send(&settings.http, &alert))
            .retry(backoff(settings))
            .await;
        let (id, sink_key) = (alert.id.clone(), key.to_string());
        match result {
            Ok(()) => {
                delivered += 1;
                if sink.is_chat() {
                    *cycle.chat_sent.entry(sink_key.clone()).or_default() += 1;
                }
                store
                    .call(move |c| astore::delivered(c, &id, &sink_key, Utc::now()))
                    .await?;
            }
            Err(error) => {
                undelivered += 1;
                cycle.broken.insert(sink_key.clone());
                if attempts_before == 0 {
                    tracing::warn!(sink = %key, alert_id = %alert.id, %error, "alert not delivered; it is kept and retried next cycle");
                }
                let logged = error.to_string();
                store
                    .call(move |c| astore::failed(c, &id, &sink_key, &logged))
                    .await?;
                note_failing_sink(store, key, &error.to_string()).await?;
            }
        }
    }
    Ok((delivered, undelivered))
}

/// A sink that works again closes its failing episode.
async fn close_recovered_episodes(
    store: &Store,
    settings: &AlertSettings,
    broken: &HashSet<String>,
) -> Result<(), StoreError> {
    for key in settings
        .sinks
        .iter()
        .map(Sink::key)
        .filter(|k| !broken.contains(k))
    {
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
    Ok(())
}

/// The signed link of a `referral_expiring` alert, valid until the referral's deadline.
pub(crate) fn action_url(settings: &AlertSettings, alert: &Alert) -> Option<String> {
    let signer = settings.links.as_ref()?;
    if alert.kind != "referral_expiring" {
        return None;
    }
    let deadline = DateTime::parse_from_rfc3339(alert.deadline.as_deref()?).ok()?;
    Some(signer.url(alert.referral_id.as_deref()?, deadline.with_timezone(&Utc)))
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

/// One sink's `alerts test` line: its key, what it gets, and how the test went.
#[derive(Debug)]
pub(crate) struct SinkTest {
    pub(crate) key: String,
    /// `referral_expiring at 4h; referral_expired` ([`Route::describe`]).
    pub(crate) gets: String,
    pub(crate) result: Result<(), SinkError>,
}

/// `alerts test`: one test alert to every sink, each result reported; nothing recorded.
pub(crate) async fn send_test(settings: &AlertSettings) -> Vec<SinkTest> {
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
        results.push(SinkTest {
            key: sink.key(),
            gets: sink.route().describe(&settings.threshold_labels),
            result: sink.send(&settings.http, &alert).await,
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::outbox;
    use crate::store::Store;

    /// A dead answer to an invitation no cycle pulled (no `referrals` row) still links to
    /// `[aws] invitation_url` and says `source = "aws"`: its id names the cloud.
    #[test]
    fn an_action_failed_alert_of_an_unpulled_invitation_links_to_aws() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        let links = RecordLinks {
            referral_url: "https://partner.microsoft.example/{id}",
            invitation_url: Some("https://partnercentral.aws.example/invitations/{id}"),
        };
        let alerts = store
            .call_blocking(|c| {
                for id in ["engi-0000000000abc", "5a3e0001-7c1e-4f0e-9d8a-000000000001"] {
                    outbox::enqueue(
                        c,
                        id,
                        outbox::AWS_DECLINE,
                        None,
                        &serde_json::json!({}),
                        now,
                    )?;
                }
                c.execute("UPDATE outbox SET state = 'dead'", [])?;
                attention_alerts(c, links, now)
            })
            .unwrap();
        let of = |id: &str| {
            alerts
                .iter()
                .find(|a| a.referral_id.as_deref() == Some(id))
                .unwrap()
        };
        let aws = of("engi-0000000000abc");
        assert_eq!(aws.source.as_deref(), Some("aws"));
        assert_eq!(
            aws.link.as_deref(),
            Some("https://partnercentral.aws.example/invitations/engi-0000000000abc")
        );
        let microsoft = of("5a3e0001-7c1e-4f0e-9d8a-000000000001");
        assert_eq!(microsoft.source.as_deref(), Some("microsoft"));
    }
}
