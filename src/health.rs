//! Observability: the daemon's liveness (is a cycle running, for how long, how many failed in
//! a row), process-wide counters (API requests, retries, cycles, deliveries), and the HTTP
//! endpoint serving them as Prometheus text on `/metrics` plus `/healthz` (503 when the last
//! cycles failed or a cycle is stuck). Gauges about state (outbox depth, referrals by time
//! left, alerts) are read from the database at scrape time, so they are never stale.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::app::Cycle;
use crate::store::{outbox, referrals, Store};

type Labels = Vec<(&'static str, String)>;

/// Counters that only grow, keyed by metric name and labels.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), f64>>,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

impl Metrics {
    pub fn add(&self, name: &'static str, labels: Labels, value: f64) {
        *self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((name, labels))
            .or_default() += value;
    }

    /// One answered (or failed) API request.
    pub fn api_request(&self, api: &'static str, method: &str, status: Option<u16>) {
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "error".into());
        self.add(
            "cosell_api_requests_total",
            vec![
                ("api", api.into()),
                ("method", method.into()),
                ("status", status),
            ],
            1.0,
        );
    }

    pub fn retry(&self, what: &str) {
        self.add("cosell_retries_total", vec![("what", what.into())], 1.0);
    }

    fn render(&self, out: &mut String) {
        let counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = "";
        for ((name, labels), value) in counters.iter() {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{} {value}", render_labels(labels));
        }
    }
}

fn render_labels(labels: &[(&'static str, String)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The daemon's liveness, shared by the scheduler, the watchdog and `/healthz`.
#[derive(Debug, Default)]
pub struct Health {
    running_since: Mutex<Option<Instant>>,
    failing_in_a_row: AtomicU32,
    last_cycle: Mutex<Option<(chrono::DateTime<chrono::Utc>, bool, f64)>>,
}

impl Health {
    pub fn cycle_started(&self) {
        *self.running_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    pub fn cycle_finished(&self, cycle: &Cycle) {
        *self.running_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let r = &cycle.report;
        let ok = r.ok();
        if ok {
            self.failing_in_a_row.store(0, Ordering::Relaxed);
        } else {
            self.failing_in_a_row.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = r.elapsed.as_secs_f64();
        *self.last_cycle.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((r.started_at, ok, seconds));
        let m = metrics();
        let outcome = if ok { "ok" } else { "failed" };
        m.add(
            "cosell_cycles_total",
            vec![("outcome", outcome.into())],
            1.0,
        );
        m.add("cosell_cycle_duration_seconds_sum", vec![], seconds);
        m.add("cosell_cycle_duration_seconds_count", vec![], 1.0);
        m.add(
            "cosell_alerts_delivered_total",
            vec![("result", "delivered".into())],
            cycle.alerts.delivered as f64,
        );
        m.add(
            "cosell_alerts_delivered_total",
            vec![("result", "undelivered".into())],
            cycle.alerts.undelivered as f64,
        );
        for (state, n) in [
            ("done", r.pushed.done),
            ("retried", r.pushed.retried),
            ("dead", r.pushed.dead),
            ("quarantined", r.pushed.quarantined),
        ] {
            m.add(
                "cosell_writes_total",
                vec![("result", state.into())],
                n as f64,
            );
        }
    }

    /// How long the current cycle has been running, if one is.
    pub fn running_for(&self) -> Option<Duration> {
        self.running_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed())
    }

    /// `Ok` when healthy, else why not.
    pub fn check(&self, failed_cycles: u32, stuck_after: Duration) -> Result<(), String> {
        let failing = self.failing_in_a_row.load(Ordering::Relaxed);
        if failing >= failed_cycles {
            return Err(format!("the last {failing} cycles failed"));
        }
        if let Some(running) = self.running_for().filter(|r| *r > stuck_after) {
            return Err(format!(
                "a cycle has been running for {}s",
                running.as_secs()
            ));
        }
        Ok(())
    }
}

#[derive(Clone)]
struct Endpoint {
    health: std::sync::Arc<Health>,
    store: Store,
    failed_cycles: u32,
    stuck_after: Duration,
    window: chrono::Duration,
}

/// Serves `/metrics` and `/healthz` on `listen` until `shutdown`.
pub async fn serve(
    listen: &str,
    health: std::sync::Arc<Health>,
    store: Store,
    config: &crate::config::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let state = Endpoint {
        health,
        store,
        failed_cycles: config.alerts.failed_cycles,
        stuck_after: config.daemon.stuck_after.0,
        window: config.alerts.response_window.as_chrono(),
    };
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    tracing::info!(%addr, "metrics and /healthz listening");
    Ok(addr)
}

async fn healthz(State(e): State<Endpoint>) -> impl IntoResponse {
    match e.health.check(e.failed_cycles, e.stuck_after) {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

async fn render_metrics(State(e): State<Endpoint>) -> impl IntoResponse {
    let mut out = String::new();
    metrics().render(&mut out);
    if let Some((at, ok, seconds)) = *e
        .health
        .last_cycle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
    {
        let _ = writeln!(
            out,
            "# TYPE cosell_last_cycle_success gauge\ncosell_last_cycle_success {}",
            ok as u8
        );
        let _ = writeln!(out, "# TYPE cosell_last_cycle_timestamp_seconds gauge\ncosell_last_cycle_timestamp_seconds {}", at.timestamp());
        let _ = writeln!(out, "# TYPE cosell_last_cycle_duration_seconds gauge\ncosell_last_cycle_duration_seconds {seconds}");
    }
    let healthy = e.health.check(e.failed_cycles, e.stuck_after).is_ok();
    let _ = writeln!(
        out,
        "# TYPE cosell_healthy gauge\ncosell_healthy {}",
        healthy as u8
    );
    let window = e.window;
    let state = e
        .store
        .call(move |c| {
            let mut s = String::new();
            let _ = writeln!(s, "# TYPE cosell_outbox_actions gauge");
            for (kind, state, n) in outbox::counts_by_state(c)? {
                let _ = writeln!(
                    s,
                    "cosell_outbox_actions{{kind=\"{kind}\",state=\"{state}\"}} {n}"
                );
            }
            let now = chrono::Utc::now();
            let mut buckets: BTreeMap<&str, u64> =
                ["expired", "lt_4h", "lt_24h", "lt_72h", "gte_72h"]
                    .into_iter()
                    .map(|b| (b, 0))
                    .collect();
            referrals::each_awaiting_response(c, |r| {
                let left = crate::deadline::deadline(r.created_at, r.expires_at, window) - now;
                let bucket = if left <= chrono::Duration::zero() {
                    "expired"
                } else if left < chrono::Duration::hours(4) {
                    "lt_4h"
                } else if left < chrono::Duration::hours(24) {
                    "lt_24h"
                } else if left < chrono::Duration::hours(72) {
                    "lt_72h"
                } else {
                    "gte_72h"
                };
                *buckets.entry(bucket).or_default() += 1;
                Ok(())
            })?;
            let _ = writeln!(s, "# TYPE cosell_referrals_awaiting_response gauge");
            for (bucket, n) in buckets {
                let _ = writeln!(
                    s,
                    "cosell_referrals_awaiting_response{{time_left=\"{bucket}\"}} {n}"
                );
            }
            let _ = writeln!(s, "# TYPE cosell_alerts gauge");
            let mut stmt = c.prepare(
                "SELECT a.kind, COALESCE(d.state, 'log_only'), COUNT(*) FROM alerts a
                 LEFT JOIN alert_deliveries d ON d.alert_id = a.id GROUP BY 1, 2 ORDER BY 1, 2",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (kind, state, n) = row?;
                let _ = writeln!(
                    s,
                    "cosell_alerts{{kind=\"{kind}\",delivery=\"{state}\"}} {n}"
                );
            }
            Ok(s)
        })
        .await;
    match state {
        Ok(s) => out.push_str(&s),
        Err(err) => {
            let _ = writeln!(out, "# database unavailable: {err}");
        }
    }
    ([("content-type", "text/plain; version=0.0.4")], out)
}
