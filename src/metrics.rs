//! The Prometheus metrics registry (the `prometheus-client` crate, OpenMetrics text): a leaf
//! module that imports nothing from this crate, so any module may record into it. Callers pass
//! plain data; [`Metrics::render`] encodes everything, process metrics read from `/proc` at
//! scrape time included.
//!
//! Names carry their unit (`_seconds`, `_bytes`, `_records`); counters get `_total` from the
//! encoder. Durations are real histograms.

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output.
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format (0.0.4), for a scraper that does not ask for OpenMetrics:
/// `curl`, `promtool check metrics` (Prometheus itself asks for OpenMetrics).
pub(crate) const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request's `Accept` header asks for OpenMetrics (as Prometheus does).
pub(crate) fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// The OpenMetrics text as the Prometheus text format: a counter family is named with its
/// `_total` samples' name (OpenMetrics names it without), and the `# EOF` and `# UNIT` lines
/// go. What stays (gauges, histograms, samples) reads the same in both.
pub(crate) fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The daemon's two lanes: `deadline` (Microsoft inbox, leads for new referrals, expiry
/// alerts; must never wait) and `refresh` (re-reading Google records in the background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Deadline,
    Refresh,
}

impl Lane {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Lane::Deadline => "deadline",
            Lane::Refresh => "refresh",
        }
    }
}

type Labels = Vec<(&'static str, String)>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

/// Remote writes of one cycle, by result.
/// Gauges about the database's state, read by the caller (see `store::gauges`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StateSnapshot {
    /// (kind, state, count) of outbox actions.
    pub(crate) outbox: Vec<(String, String, u64)>,
    /// (time-left bucket, has a Google lead or opportunity, count) of referrals awaiting a
    /// response.
    pub(crate) awaiting: Vec<(&'static str, bool, u64)>,
    /// (kind, delivery state, count) of alerts.
    pub(crate) alerts: Vec<(String, String, u64)>,
    /// Google records due for a refresh read, and how long the longest-unchecked one has
    /// gone unread (`None` without a refresh schedule).
    pub(crate) refresh_backlog: Option<(u64, Option<Duration>)>,
    /// Whether the Google side runs. Without it, "awaiting a response without a Google
    /// lead" is every referral by design, not a problem: that family then has no series.
    pub(crate) google_enabled: bool,
}

/// Every metric family of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    api_requests: Family<Labels, Counter>,
    api_request_duration: HistogramFamily,
    retries: Family<Labels, Counter>,
    cycles: Family<Labels, Counter>,
    cycle_duration: Histogram,
    last_cycle_success: Gauge,
    last_cycle_timestamp: FloatGauge,
    last_success_timestamp: FloatGauge,
    writes: Family<Labels, Counter>,
    alerts_delivered: Family<Labels, Counter>,
    lane_runs: Family<Labels, Counter>,
    lane_duration: HistogramFamily,
    lane_last_run: Family<Labels, FloatGauge>,
    lane_last_success: Family<Labels, FloatGauge>,
    refresh_backlog: Gauge,
    refresh_oldest_unchecked_age: FloatGauge,
    healthy: Gauge,
    outbox: Family<Labels, Gauge>,
    awaiting: Family<Labels, Gauge>,
    awaiting_without_lead: Family<Labels, Gauge>,
    alerts: Family<Labels, Gauge>,
    webhook_events: Family<Labels, Counter>,
    webhook_rejected: Family<Labels, Counter>,
    webhook_event_to_lead: Histogram,
    webhook_certificate_fetches: Family<Labels, Counter>,
    http_rejected: Family<Labels, Counter>,
    http_connections: Family<Labels, Gauge>,
    referral_response: HistogramFamily,
    referrals_expired_unanswered: Counter,
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// API requests: 5 ms to ~80 s.
fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Time to answer a referral: 15 min to the 14-day window (the alert thresholds among them).
fn response_buckets() -> Histogram {
    const HOUR: f64 = 3600.0;
    Histogram::new(
        [0.25, 1.0, 4.0, 12.0, 24.0, 48.0, 72.0, 168.0, 240.0, 336.0]
            .into_iter()
            .map(|h| h * HOUR),
    )
}

/// Cycles and lanes: 50 ms to ~14 h.
fn cycle_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 20))
}

impl Metrics {
    /// Every family, created and registered with its help text, in the order of the `/metrics`
    /// page it makes: API requests, webhook, HTTP servers, cycles and lanes, then the state
    /// read from the database. Help texts end without a period: `Registry::register` appends
    /// one.
    fn new() -> Metrics {
        let m = Metrics::unregistered();
        let mut r = Registry::default();
        r.register(
            "cosell_build_info",
            "The running build (always 1)",
            build_info(),
        );
        m.register_api(&mut r);
        m.register_webhook(&mut r);
        m.register_http(&mut r);
        m.register_cycles(&mut r);
        m.register_lanes(&mut r);
        m.register_state(&mut r);
        // Both outcomes from the start, so dashboards and rules see the series before the
        // first answer.
        for outcome in ["accepted", "declined"] {
            let _ = m
                .referral_response
                .get_or_create(&vec![("outcome", outcome.to_string())]);
        }
        r.register_collector(Box::new(ProcessCollector::new()));
        Metrics { registry: r, ..m }
    }

    /// Every family created, none registered yet (`registry` is an empty placeholder).
    fn unregistered() -> Metrics {
        Metrics {
            api_requests: Family::default(),
            api_request_duration: Family::new_with_constructor(request_buckets),
            retries: Family::default(),
            webhook_events: Family::default(),
            webhook_rejected: Family::default(),
            webhook_event_to_lead: request_buckets(),
            webhook_certificate_fetches: Family::default(),
            http_rejected: Family::default(),
            http_connections: Family::default(),
            cycles: Family::default(),
            cycle_duration: cycle_buckets(),
            last_cycle_success: Gauge::default(),
            last_cycle_timestamp: FloatGauge::default(),
            last_success_timestamp: FloatGauge::default(),
            writes: Family::default(),
            alerts_delivered: Family::default(),
            lane_runs: Family::default(),
            lane_duration: Family::new_with_constructor(cycle_buckets),
            lane_last_run: Family::default(),
            lane_last_success: Family::default(),
            refresh_backlog: Gauge::default(),
            refresh_oldest_unchecked_age: FloatGauge::default(),
            healthy: Gauge::default(),
            outbox: Family::default(),
            awaiting: Family::default(),
            awaiting_without_lead: Family::default(),
            alerts: Family::default(),
            referral_response: Family::new_with_constructor(response_buckets),
            referrals_expired_unanswered: Counter::default(),
            registry: Registry::default(),
        }
    }

    /// API requests, their duration and retries.
    fn register_api(&self, r: &mut Registry) {
        r.register(
            "cosell_api_requests",
            "API requests answered (status) or failed before an answer (status=\"error\")",
            self.api_requests.clone(),
        );
        r.register(
            "cosell_api_request_duration_seconds",
            "Time from sending an API request to its whole answer read",
            self.api_request_duration.clone(),
        );
        r.register(
            "cosell_retries",
            "Retries of transient API failures",
            self.retries.clone(),
        );
    }

    /// The Partner Center webhook receiver.
    fn register_webhook(&self, r: &mut Registry) {
        r.register(
            "cosell_webhook_events",
            "Partner Center events received, by outcome (verified, rejected, duplicate)",
            self.webhook_events.clone(),
        );
        r.register(
            "cosell_webhook_rejected",
            "Partner Center events refused (401), by reason",
            self.webhook_rejected.clone(),
        );
        r.register(
            "cosell_webhook_event_to_lead_seconds",
            "Time from a Partner Center event to the Google lead of its referral",
            self.webhook_event_to_lead.clone(),
        );
        r.register(
            "cosell_webhook_certificate_fetches",
            "Signing-certificate fetches made by the webhook receiver, by outcome (ok, failed)",
            self.webhook_certificate_fetches.clone(),
        );
    }

    /// The daemon's HTTP servers.
    fn register_http(&self, r: &mut Registry) {
        r.register(
            "cosell_http_rejected",
            "Connections and requests the daemon's HTTP servers cut off or refused, by listener and reason (connection_cap, header_timeout, body_timeout, idle_timeout, body_too_large, signature)",
            self.http_rejected.clone(),
        );
        r.register(
            "cosell_http_connections",
            "Open connections per listener of the daemon's HTTP servers",
            self.http_connections.clone(),
        );
    }

    /// Sync cycles, outbox writes and alert deliveries.
    fn register_cycles(&self, r: &mut Registry) {
        r.register(
            "cosell_cycles",
            "Sync cycles run, by outcome",
            self.cycles.clone(),
        );
        r.register(
            "cosell_cycle_duration_seconds",
            "Wall time of a sync cycle",
            self.cycle_duration.clone(),
        );
        r.register(
            "cosell_last_cycle_success",
            "1 when the last cycle succeeded, 0 when it failed",
            self.last_cycle_success.clone(),
        );
        r.register(
            "cosell_last_cycle_timestamp_seconds",
            "When the last cycle started (Unix time)",
            self.last_cycle_timestamp.clone(),
        );
        r.register(
            "cosell_last_success_timestamp_seconds",
            "When the last successful cycle started (Unix time); 0 before the first",
            self.last_success_timestamp.clone(),
        );
        r.register(
            "cosell_writes",
            "Remote writes sent from the outbox, by result",
            self.writes.clone(),
        );
        r.register(
            "cosell_alerts_delivered",
            "Alert deliveries to sinks, by result",
            self.alerts_delivered.clone(),
        );
    }

    /// The lanes (deadline, refresh) and the refresh backlog.
    fn register_lanes(&self, r: &mut Registry) {
        r.register(
            "cosell_lane_runs",
            "Runs of each lane (deadline, refresh), by outcome",
            self.lane_runs.clone(),
        );
        r.register(
            "cosell_lane_duration_seconds",
            "Wall time of one run of a lane",
            self.lane_duration.clone(),
        );
        r.register(
            "cosell_lane_last_run_timestamp_seconds",
            "When a lane last finished a run (Unix time)",
            self.lane_last_run.clone(),
        );
        r.register(
            "cosell_lane_last_success_timestamp_seconds",
            "When a lane last finished a successful run (Unix time)",
            self.lane_last_success.clone(),
        );
        r.register(
            "cosell_refresh_backlog_records",
            "Google records due for a refresh read and not yet read",
            self.refresh_backlog.clone(),
        );
        r.register(
            "cosell_refresh_oldest_unchecked_age_seconds",
            "Age of the oldest due Google record not yet re-read (0 when none)",
            self.refresh_oldest_unchecked_age.clone(),
        );
    }

    /// Health and the state read from the database: outbox, referrals, alerts.
    fn register_state(&self, r: &mut Registry) {
        r.register(
            "cosell_healthy",
            "1 when /healthz answers 200",
            self.healthy.clone(),
        );
        r.register(
            "cosell_outbox_actions",
            "Outbox actions by kind and state (quarantined: a lead create whose outcome is unknown)",
            self.outbox.clone(),
        );
        r.register(
            "cosell_referrals_awaiting_response",
            "Incoming referrals nobody accepted or declined yet, by time left to the deadline",
            self.awaiting.clone(),
        );
        r.register(
            "cosell_referrals_awaiting_response_without_lead",
            "Referrals awaiting a response that have no Google lead or opportunity, by time left",
            self.awaiting_without_lead.clone(),
        );
        r.register(
            "cosell_alerts",
            "Alerts raised, by kind and delivery state",
            self.alerts.clone(),
        );
        r.register(
            "cosell_referral_response_seconds",
            "Time from a referral's creation to its first answer, by outcome (accepted, declined)",
            self.referral_response.clone(),
        );
        r.register(
            "cosell_referrals_expired_unanswered",
            "Incoming referrals whose deadline passed unanswered (each counted once, from the database)",
            self.referrals_expired_unanswered.clone(),
        );
    }

    /// One API request: answered with `status`, or failed before an answer (`None`).
    pub(crate) fn api_request(
        &self,
        api: &'static str,
        method: &str,
        status: Option<u16>,
        elapsed: Duration,
    ) {
        let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
        self.api_requests
            .get_or_create(&vec![
                ("api", api.into()),
                ("method", method.into()),
                ("status", status),
            ])
            .inc();
        self.api_request_duration
            .get_or_create(&vec![("api", api.into()), ("method", method.into())])
            .observe(elapsed.as_secs_f64());
    }

    /// A Partner Center event received: `verified`, `rejected`, `duplicate`, ...
    pub(crate) fn webhook_event(&self, outcome: &'static str) {
        self.webhook_events
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
    }

    pub(crate) fn webhook_rejected(&self, reason: &str) {
        self.webhook_rejected
            .get_or_create(&vec![("reason", reason.into())])
            .inc();
    }

    /// A signing-certificate fetch ended: `ok` or `failed`.
    pub(crate) fn webhook_certificate_fetch(&self, outcome: &'static str) {
        self.webhook_certificate_fetches
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
    }

    /// The HTTP server layer refused or cut off a connection or request.
    pub(crate) fn http_rejected(&self, listener: &str, reason: &'static str) {
        self.http_rejected
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("reason", reason.into()),
            ])
            .inc();
    }

    /// Open connections of one listener, up (`+1`) or down (`-1`).
    pub(crate) fn http_connections(&self, listener: &str, delta: i64) {
        self.http_connections
            .get_or_create(&vec![("listener", listener.to_string())])
            .inc_by(delta);
    }

    pub(crate) fn webhook_event_to_lead(&self, elapsed: Duration) {
        self.webhook_event_to_lead.observe(elapsed.as_secs_f64());
    }

    /// A referral answered (`accepted` or `declined`) this long after it was created.
    pub(crate) fn referral_answered(&self, outcome: &str, seconds: f64) {
        self.referral_response
            .get_or_create(&vec![("outcome", outcome.to_string())])
            .observe(seconds);
    }

    /// Referrals that just passed their deadline unanswered.
    pub(crate) fn referrals_expired_unanswered(&self, n: u64) {
        self.referrals_expired_unanswered.inc_by(n);
    }

    pub(crate) fn retry(&self, what: &str) {
        self.retries
            .get_or_create(&vec![("what", what.into())])
            .inc();
    }

    /// A finished cycle: `started_at` is when it started.
    pub(crate) fn cycle(
        &self,
        started_at: SystemTime,
        ok: bool,
        elapsed: Duration,
        writes: &[(&'static str, u64)],
        alerts_delivered: u64,
        alerts_undelivered: u64,
    ) {
        let outcome = if ok { "ok" } else { "failed" };
        self.cycles
            .get_or_create(&vec![("outcome", outcome.into())])
            .inc();
        self.cycle_duration.observe(elapsed.as_secs_f64());
        self.last_cycle_success.set(ok as i64);
        self.last_cycle_timestamp.set(unix_seconds(started_at));
        if ok {
            self.last_success_timestamp.set(unix_seconds(started_at));
        }
        for &(result, n) in writes {
            self.writes
                .get_or_create(&vec![("result", result.into())])
                .inc_by(n);
        }
        for (result, n) in [
            ("delivered", alerts_delivered),
            ("undelivered", alerts_undelivered),
        ] {
            self.alerts_delivered
                .get_or_create(&vec![("result", result.into())])
                .inc_by(n);
        }
    }

    /// A lane finished a run at `finished_at`.
    pub(crate) fn lane(&self, lane: Lane, ok: bool, elapsed: Duration, finished_at: SystemTime) {
        let outcome = if ok { "ok" } else { "failed" };
        let labels = vec![("lane", lane.as_str().to_string())];
        self.lane_runs
            .get_or_create(&vec![
                ("lane", lane.as_str().into()),
                ("outcome", outcome.into()),
            ])
            .inc();
        self.lane_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.lane_last_run
            .get_or_create(&labels)
            .set(unix_seconds(finished_at));
        if ok {
            self.lane_last_success
                .get_or_create(&labels)
                .set(unix_seconds(finished_at));
        }
    }

    pub(crate) fn refresh_backlog(&self, due: u64, oldest_unchecked_age: Option<Duration>) {
        self.refresh_backlog
            .set(i64::try_from(due).unwrap_or(i64::MAX));
        self.refresh_oldest_unchecked_age
            .set(oldest_unchecked_age.map_or(0.0, |d| d.as_secs_f64()));
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.set(healthy as i64);
    }

    /// Replaces the state gauges (label sets no longer present disappear).
    pub(crate) fn set_state(&self, state: &StateSnapshot) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.outbox.clear();
        for (kind, st, n) in &state.outbox {
            self.outbox
                .get_or_create(&vec![("kind", kind.clone()), ("state", st.clone())])
                .set(count(*n));
        }
        self.awaiting.clear();
        self.awaiting_without_lead.clear();
        for bucket in TIME_LEFT_BUCKETS {
            let labels = vec![("time_left", bucket.to_string())];
            let of = |lead: Option<bool>| {
                state
                    .awaiting
                    .iter()
                    .filter(|(b, l, _)| *b == bucket && lead.is_none_or(|want| *l == want))
                    .map(|(_, _, n)| n)
                    .sum::<u64>()
            };
            self.awaiting.get_or_create(&labels).set(count(of(None)));
            // Microsoft-only: no series rather than 0. Absent says "does not apply" (0 would
            // claim every referral has a lead), and the CosellReferralsExpiringWithoutLead
            // rule, a `> 0` over this family, has nothing to fire on.
            if state.google_enabled {
                self.awaiting_without_lead
                    .get_or_create(&labels)
                    .set(count(of(Some(false))));
            }
        }
        if let Some((due, oldest)) = state.refresh_backlog {
            self.refresh_backlog(due, oldest);
        }
        self.alerts.clear();
        for (kind, delivery, n) in &state.alerts {
            self.alerts
                .get_or_create(&vec![
                    ("kind", kind.clone()),
                    ("delivery", delivery.clone()),
                ])
                .set(count(*n));
        }
    }

    /// Everything, in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            out = format!("# metrics encoding failed: {e}\n# EOF\n");
        }
        out
    }
}

/// `cosell_build_info{version} 1`: a gauge, not OpenMetrics' `info` type, which Prometheus'
/// own parser (`promtool check metrics`, Debian's 2.42) refuses as "unknown metric type
/// info". The series name is the same.
fn build_info() -> Family<Labels, Gauge> {
    let build: Family<Labels, Gauge> = Family::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
        .set(1);
    build
}

/// The time-left buckets of referrals awaiting a response, always all exported.
pub const TIME_LEFT_BUCKETS: [&str; 5] = ["expired", "lt_4h", "lt_24h", "lt_72h", "gte_72h"];

/// `process_*` metrics as the Prometheus client libraries name them, read from `/proc/self`
/// at scrape time (`ProcSubset=pid` in the unit leaves `/proc/self` readable).
#[derive(Debug)]
struct ProcessCollector {
    start_time: f64,
}

impl ProcessCollector {
    /// The registry is built at start-up (`run` touches it before the first cycle), so its
    /// creation time is the process start to within milliseconds: `/proc/stat`'s boot time,
    /// which `/proc/self/stat`'s start ticks are relative to, is hidden by `ProcSubset=pid`.
    fn new() -> ProcessCollector {
        ProcessCollector {
            start_time: unix_seconds(SystemTime::now()),
        }
    }
}

/// Linux's `USER_HZ`, the unit of `/proc/self/stat` times: 100 on every architecture Linux
/// exposes to user space.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) from `/proc/self/stat`.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after "pid (comm)".
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / CLOCK_TICKS_PER_SECOND)
}

/// A `kB` line of `/proc/self/status`, in bytes.
fn status_bytes(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            let c = ConstCounter::new(cpu);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent.",
                None,
                c.metric_type(),
            )?)?;
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size.",
                status_bytes(&status, "VmRSS:"),
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size.",
                status_bytes(&status, "VmSize:"),
            ),
            ("process_open_fds", "Open file descriptors.", open_fds()),
            (
                "process_max_fds",
                "Limit of open file descriptors.",
                max_fds(),
            ),
            (
                "process_start_time_seconds",
                "Start time of the process (Unix time).",
                Some(self.start_time),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_counters_with_total_and_drops_eof() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            classic_text(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
        assert!(wants_openmetrics(Some(
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        assert!(cpu_seconds().is_some_and(|s| s >= 0.0));
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status_bytes(&status, "VmRSS:").is_some_and(|b| b > 1024.0 * 1024.0));
        assert!(open_fds().is_some_and(|n| n >= 3.0));
        assert!(max_fds().is_some_and(|n| n >= 64.0));
    }

    #[test]
    fn the_state_gauges_replace_what_was_there() {
        let m = Metrics::new();
        m.set_state(&StateSnapshot {
            outbox: vec![("create_lead".into(), "pending".into(), 3)],
            awaiting: vec![("lt_4h", false, 2), ("lt_4h", true, 5)],
            alerts: vec![],
            refresh_backlog: Some((7, Some(Duration::from_secs(90)))),
            google_enabled: true,
        });
        assert!(m
            .render()
            .contains("cosell_referrals_awaiting_response_without_lead{time_left=\"lt_4h\"} 2"));
        m.set_state(&StateSnapshot {
            outbox: vec![("create_lead".into(), "done".into(), 3)],
            ..StateSnapshot::default()
        });
        let text = m.render();
        // Microsoft-only (the default snapshot): no "without lead" series at all.
        assert!(
            !text.contains("cosell_referrals_awaiting_response_without_lead{"),
            "{text}"
        );
        assert!(text.contains("cosell_outbox_actions{kind=\"create_lead\",state=\"done\"} 3"));
        assert!(!text.contains("state=\"pending\""), "{text}");
        assert!(text.contains("cosell_referrals_awaiting_response{time_left=\"lt_4h\"} 0"));
        assert!(text.contains("cosell_refresh_backlog_records 7"), "{text}");
        assert!(
            text.contains("cosell_refresh_oldest_unchecked_age_seconds 90"),
            "{text}"
        );
    }
}
