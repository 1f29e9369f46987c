//! Liveness and the `/metrics` + `/healthz` endpoint. [`Health`] knows, per lane, whether a
//! run is going on and when one last finished, and how many deadline runs failed in a row;
//! callers hand it plain data (no import of `app` or `sync`). `/healthz` answers 503 when the
//! last `[alerts] failed_cycles` deadline runs failed, or the deadline lane has not finished
//! a run within `[daemon] stuck_after`. `/metrics` renders [`crate::metrics`]; the state
//! gauges are read on the endpoint's own read-only connection, at most once per
//! [`STATE_MAX_AGE`] however many scrapers ask, and the text is rendered at most once per
//! [`RENDER_MAX_AGE`], so scraping does not slow a cycle.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

pub(crate) use crate::metrics::Lane;
use crate::metrics::{self as registry, StateSnapshot};
use crate::store::outbox::State as OutboxState;
use crate::store::{gauges, Store};

/// State gauges older than this are read again at the next scrape.
pub(crate) const STATE_MAX_AGE: Duration = Duration::from_secs(5);

/// Scrapes within this long of the last rendering get the same text (a scraper hammering
/// `/metrics` costs the daemon a copy, not an encoding and four `/proc` reads).
pub(crate) const RENDER_MAX_AGE: Duration = Duration::from_secs(1);

/// How one cycle (the deadline lane's run today) ended, as plain data.
#[derive(Debug, Clone)]
pub struct CycleOutcome {
    pub started_at: SystemTime,
    pub(crate) elapsed: Duration,
    pub(crate) ok: bool,
    pub(crate) writes: WriteCounts,
    pub(crate) alerts_delivered: u64,
    pub(crate) alerts_undelivered: u64,
}

/// Outbox writes one cycle sent, by result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WriteCounts {
    pub(crate) done: u64,
    pub(crate) retried: u64,
    pub(crate) dead: u64,
    pub(crate) quarantined: u64,
}

impl WriteCounts {
    /// The counts under the `result` label of `cosell_writes`: the outbox state a write
    /// ended in, or `retried`.
    fn by_result(&self) -> [(&'static str, u64); 4] {
        [
            (OutboxState::Done.as_str(), self.done),
            ("retried", self.retried),
            (OutboxState::Dead.as_str(), self.dead),
            (OutboxState::Quarantined.as_str(), self.quarantined),
        ]
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct LaneState {
    /// When the lane was first started (the stuck rule counts from here before a finish).
    first_started: Option<Instant>,
    running_since: Option<Instant>,
    last_finished: Option<Instant>,
}

/// The daemon's liveness, shared by the scheduler, the watchdog and `/healthz`.
#[derive(Debug, Default)]
pub(crate) struct Health {
    lanes: Mutex<[LaneState; 2]>,
    /// Deadline runs (cycles) failed in a row.
    failing_in_a_row: AtomicU32,
    /// Why the daemon is stopping for good (its database file is gone): unhealthy until exit.
    fatal: Mutex<Option<String>>,
    /// Whether the running configuration has `[google]`: the metrics endpoint exports the
    /// "without lead" gauges only then. Here, not in the endpoint, because a reload may turn
    /// the Google side on or off and the endpoint is built once.
    google_enabled: AtomicBool,
}

fn index(lane: Lane) -> usize {
    match lane {
        Lane::Deadline => 0,
        Lane::Refresh => 1,
    }
}

impl Health {
    /// The running configuration's `[google]` state (at start and on every reload).
    pub(crate) fn set_google_enabled(&self, on: bool) {
        self.google_enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn google_enabled(&self) -> bool {
        self.google_enabled.load(Ordering::Relaxed)
    }

    fn with_lane<T>(&self, lane: Lane, f: impl FnOnce(&mut LaneState) -> T) -> T {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut lanes[index(lane)])
    }

    /// A lane begins a run.
    pub(crate) fn lane_started(&self, lane: Lane) {
        let now = Instant::now();
        self.with_lane(lane, |s| {
            s.first_started.get_or_insert(now);
            s.running_since = Some(now);
        });
    }

    /// A lane ended a run; a failed deadline run counts towards `failed_cycles`.
    pub(crate) fn lane_finished(&self, lane: Lane, ok: bool, elapsed: Duration) {
        self.with_lane(lane, |s| {
            s.running_since = None;
            s.last_finished = Some(Instant::now());
        });
        if lane == Lane::Deadline {
            if ok {
                self.failing_in_a_row.store(0, Ordering::Relaxed);
            } else {
                self.failing_in_a_row.fetch_add(1, Ordering::Relaxed);
            }
        }
        registry::global().lane(lane, ok, elapsed, SystemTime::now());
    }

    /// The refresh lane's backlog: records due for a read, and how long the oldest of them
    /// has waited past its due time.
    pub(crate) fn set_refresh_backlog(&self, due: u64, oldest_unchecked_age: Option<Duration>) {
        registry::global().refresh_backlog(due, oldest_unchecked_age);
    }

    /// A cycle begins: the deadline lane's run.
    pub(crate) fn cycle_started(&self) {
        self.lane_started(Lane::Deadline);
    }

    /// A cycle ended: its metrics, and the deadline lane's run.
    pub(crate) fn cycle_finished(&self, outcome: &CycleOutcome) {
        registry::global().cycle(
            outcome.started_at,
            outcome.ok,
            outcome.elapsed,
            &outcome.writes.by_result(),
            outcome.alerts_delivered,
            outcome.alerts_undelivered,
        );
        self.lane_finished(Lane::Deadline, outcome.ok, outcome.elapsed);
    }

    /// How long the deadline lane's current run (the cycle) has been going, if one is.
    pub(crate) fn running_for(&self) -> Option<Duration> {
        self.lane_running_for(Lane::Deadline)
    }

    pub(crate) fn lane_running_for(&self, lane: Lane) -> Option<Duration> {
        self.with_lane(lane, |s| s.running_since.map(|t| t.elapsed()))
    }

    /// The daemon stops for good: `/healthz` says why until the process is gone.
    pub(crate) fn set_fatal(&self, why: String) {
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    /// `Ok` when healthy, else why not.
    pub(crate) fn check(&self, failed_cycles: u32, stuck_after: Duration) -> Result<(), Unhealthy> {
        if let Some(why) = self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(Unhealthy::Stopping(why));
        }
        let failing = self.failing_in_a_row.load(Ordering::Relaxed);
        if failing >= failed_cycles {
            return Err(Unhealthy::FailedCycles(failing));
        }
        let deadline = self.with_lane(Lane::Deadline, |s| *s);
        if let Some(running) = deadline
            .running_since
            .map(|t| t.elapsed())
            .filter(|r| *r > stuck_after)
        {
            return Err(Unhealthy::CycleRunning(running.as_secs()));
        }
        // Before its first start the lane is not judged (the daemon may be waiting for its
        // first tick); after it, a finish must come within stuck_after.
        if let Some(since) = deadline.last_finished.or(deadline.first_started) {
            let quiet = since.elapsed();
            if quiet > stuck_after && deadline.running_since.is_none() {
                return Err(Unhealthy::NoFinish(quiet.as_secs()));
            }
        }
        Ok(())
    }
}

/// Why `/healthz` answers 503.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unhealthy {
    /// The daemon stops for good ([`Health::set_fatal`]'s words).
    #[error("{0}")]
    Stopping(String),
    /// The database file was replaced or removed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Deadline runs failed in a row.
    #[error("the last {0} cycles failed")]
    FailedCycles(u32),
    /// Seconds the running cycle has taken.
    #[error("a cycle has been running for {0}s")]
    CycleRunning(u64),
    /// Seconds since the deadline lane last finished (or started) a run.
    #[error("the deadline lane has not finished a run for {0}s")]
    NoFinish(u64),
}

/// The cached state gauges and the read-only connection they come from.
struct StateCache {
    path: PathBuf,
    conn: Option<rusqlite::Connection>,
    read_at: Option<Instant>,
    snapshot: StateSnapshot,
}

/// When the exposition was rendered, and its text.
type Rendered = (Instant, Arc<str>);

#[derive(Clone)]
struct Endpoint {
    health: Arc<Health>,
    /// The daemon's store: `/healthz` checks its file is still the one opened.
    store: Store,
    cache: Arc<tokio::sync::Mutex<StateCache>>,
    /// The last rendered exposition: scrapers within [`RENDER_MAX_AGE`] of it get it as is.
    rendered: Arc<tokio::sync::Mutex<Option<Rendered>>>,
    failed_cycles: u32,
    stuck_after: Duration,
    window: chrono::Duration,
}

/// Whether `[metrics] listen` should be warned about: not loopback and no `allow_remote`.
pub(crate) fn remote_listen_unexplained(addr: &std::net::SocketAddr, allow_remote: bool) -> bool {
    !addr.ip().is_loopback() && !allow_remote
}

/// The start-up lines about a bound endpoint.
pub(crate) fn listening(addr: std::net::SocketAddr, config: &crate::config::Config) {
    if remote_listen_unexplained(&addr, config.metrics.allow_remote) {
        tracing::warn!(
            %addr,
            "metrics.listen is not a loopback address: /metrics and /healthz are open to the network (they show referral counts and error rates); bind 127.0.0.1, or set metrics.allow_remote = true once a firewall or network policy guards it"
        );
    }
    tracing::info!(%addr, "metrics and /healthz listening");
}

/// `/metrics` and `/healthz`, to mount on the server layer.
pub(crate) fn router(health: Arc<Health>, store: Store, config: &crate::config::Config) -> Router {
    registry::global();
    let state = Endpoint {
        health,
        store: store.clone(),
        cache: Arc::new(tokio::sync::Mutex::new(StateCache {
            path: store.path().to_path_buf(),
            conn: None,
            read_at: None,
            snapshot: StateSnapshot::default(),
        })),
        rendered: Arc::new(tokio::sync::Mutex::new(None)),
        failed_cycles: config.alerts.failed_cycles,
        stuck_after: config.daemon.stuck_after.0,
        window: config.alerts.response_window.as_chrono(),
    };
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .with_state(state)
}

async fn healthz(State(e): State<Endpoint>) -> impl IntoResponse {
    let checked = e
        .store
        .check_identity()
        .map_err(Unhealthy::from)
        .and_then(|()| e.health.check(e.failed_cycles, e.stuck_after));
    match checked {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        ),
    }
}

/// Refreshes the state gauges when they are older than [`STATE_MAX_AGE`]. Concurrent
/// scrapers queue on the cache lock and then find it fresh: one database read per period.
async fn refresh_state(e: &Endpoint) {
    let mut cache = e.cache.lock().await;
    if cache.read_at.is_some_and(|t| t.elapsed() < STATE_MAX_AGE) {
        return;
    }
    let path = cache.path.clone();
    let conn = cache.conn.take();
    let window = e.window;
    let google_enabled = e.health.google_enabled();
    let read = tokio::task::spawn_blocking(move || {
        let mut conn = match conn {
            Some(c) => c,
            None => gauges::open_reader(&path)?,
        };
        let snapshot = gauges::read(&mut conn, chrono::Utc::now(), window);
        snapshot.map(|s| {
            let s = StateSnapshot {
                google_enabled,
                ..s
            };
            (conn, s)
        })
    })
    .await;
    match read {
        Ok(Ok((conn, snapshot))) => {
            cache.conn = Some(conn);
            cache.snapshot = snapshot;
            cache.read_at = Some(Instant::now());
            registry::global().set_state(&cache.snapshot);
        }
        Ok(Err(err)) => tracing::warn!(error = %err, "metrics: cannot read the state gauges"),
        Err(err) => tracing::warn!(error = %err, "metrics: the state reader stopped"),
    }
}

/// OpenMetrics when the scraper asks for it (Prometheus does), else the Prometheus text format
/// (`curl`, `promtool check metrics`).
async fn render_metrics(
    State(e): State<Endpoint>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let body = {
        let mut last = e.rendered.lock().await;
        match &*last {
            Some((at, body)) if at.elapsed() < RENDER_MAX_AGE => body.clone(),
            _ => {
                refresh_state(&e).await;
                let healthy = e.health.check(e.failed_cycles, e.stuck_after).is_ok();
                let m = registry::global();
                m.set_healthy(healthy);
                let body: Arc<str> = m.render().into();
                *last = Some((Instant::now(), body.clone()));
                body
            }
        }
    };
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    match registry::wants_openmetrics(accept) {
        true => ([("content-type", registry::CONTENT_TYPE)], body.to_string()),
        false => (
            [("content-type", registry::CLASSIC_CONTENT_TYPE)],
            registry::classic_text(&body),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_deadline_runs_make_it_unhealthy_and_a_success_heals() {
        let h = Health::default();
        let stuck = Duration::from_secs(3600);
        assert!(h.check(2, stuck).is_ok());
        for _ in 0..2 {
            h.lane_started(Lane::Deadline);
            h.lane_finished(Lane::Deadline, false, Duration::from_millis(5));
        }
        assert!(h
            .check(2, stuck)
            .unwrap_err()
            .to_string()
            .contains("2 cycles failed"));
        // Refresh-lane failures do not count towards failed_cycles.
        h.lane_started(Lane::Deadline);
        h.lane_finished(Lane::Deadline, true, Duration::from_millis(5));
        h.lane_started(Lane::Refresh);
        h.lane_finished(Lane::Refresh, false, Duration::from_millis(5));
        h.lane_finished(Lane::Refresh, false, Duration::from_millis(5));
        assert!(h.check(2, stuck).is_ok());
    }

    #[test]
    fn a_fatal_condition_is_unhealthy_until_exit() {
        let h = Health::default();
        assert!(h.check(3, Duration::from_secs(60)).is_ok());
        h.set_fatal("database state.db was deleted".into());
        let why = h.check(3, Duration::from_secs(60)).unwrap_err().to_string();
        assert!(why.contains("was deleted"), "{why}");
    }

    #[test]
    fn a_deadline_lane_that_stops_finishing_is_unhealthy() {
        let h = Health::default();
        let stuck = Duration::from_millis(30);
        h.lane_started(Lane::Deadline);
        h.lane_finished(Lane::Deadline, true, Duration::from_millis(1));
        assert!(h.check(3, stuck).is_ok());
        std::thread::sleep(Duration::from_millis(60));
        let why = h.check(3, stuck).unwrap_err().to_string();
        assert!(why.contains("deadline lane has not finished"), "{why}");
        // A run that starts and hangs is stuck too.
        h.lane_started(Lane::Deadline);
        std::thread::sleep(Duration::from_millis(60));
        assert!(h
            .check(3, stuck)
            .unwrap_err()
            .to_string()
            .contains("running for"));
    }

    #[test]
    fn only_a_loopback_listen_goes_unwarned() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
        assert!(!remote_listen_unexplained(&addr("127.0.0.1:9464"), false));
        assert!(!remote_listen_unexplained(&addr("[::1]:9464"), false));
        assert!(remote_listen_unexplained(&addr("0.0.0.0:9464"), false));
        assert!(!remote_listen_unexplained(&addr("0.0.0.0:9464"), true));
    }
}
