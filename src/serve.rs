//! The one HTTP server layer every listener of the daemon runs on (the webhook receiver,
//! `/metrics` + `/healthz`, the action page): an accept loop over hyper's HTTP/1 connections
//! that keeps strangers from holding the process. Each connection has a header-read timeout
//! (also the keep-alive idle limit between requests), a body timeout, and an idle timeout (no
//! byte moved either way); the open connections are capped below the file-descriptor limit and
//! the ones over the cap are closed at once. Every refusal is counted in
//! `cosell_http_rejected{listener,reason}` and logged as one aggregated line per
//! [`LOG_EVERY`], never one line per refusal (a flood must not drown the daemon's own alerts
//! under journald's rate limit).
//!
//! Serving a router with its limits is one call ([`serve`]); several routers may share one
//! address ([`Listeners::mount`] merges them), and [`Listeners::bind`] binds every address
//! before anything else happens, so `run` can turn a bind failure into a configuration error.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// At most one aggregated rejection line per listener and this period.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);
/// File descriptors kept free for everything but served connections (the database, its WAL,
/// outbound HTTPS to both clouds, the alert sinks, the journal).
pub(crate) const RESERVED_FDS: u64 = 256;
/// Open connections over all listeners, at most (less when the fd limit is lower).
pub(crate) const MAX_CONNECTIONS: usize = 4096;
/// The largest request head read (headers beyond it get 431); also bounds each
/// connection's read buffer.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What one set of listeners allows each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From the connection's first byte (or the end of the previous response) to the end of
    /// the request head; a keep-alive connection idle this long is closed too.
    pub header_timeout: Duration,
    /// From the end of the head to the end of the body.
    pub body_timeout: Duration,
    /// No byte read or written for this long: the connection is closed.
    pub idle_timeout: Duration,
    /// Open connections over all the listeners bound together.
    pub max_connections: usize,
}

impl Limits {
    /// The daemon's limits: 10 s for a head, 20 s for a body (a Partner Center event is a
    /// few hundred bytes), 30 s idle, and the connection cap below the fd limit.
    pub(crate) fn daemon() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
            max_connections: connection_cap(fd_limit()),
        }
    }
}

/// The connection cap for a soft fd limit of `nofile`: [`RESERVED_FDS`] stay free.
pub(crate) fn connection_cap(nofile: u64) -> usize {
    (nofile.saturating_sub(RESERVED_FDS) as usize).clamp(16, MAX_CONNECTIONS)
}

/// The process's soft `RLIMIT_NOFILE`.
pub(crate) fn fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 1024;
    }
    limit.rlim_cur
}

/// A listen address that could not be bound; `run` exits 78 with it.
#[derive(Debug, thiserror::Error)]
#[error("{key} {listen}: {message}")]
pub struct BindError {
    pub key: String,
    pub(crate) listen: String,
    pub(crate) message: String,
    kind: std::io::ErrorKind,
}

impl BindError {
    /// Another socket listens at the address already.
    pub(crate) fn in_use(&self) -> bool {
        self.kind == std::io::ErrorKind::AddrInUse
    }

    fn new(key: &str, listen: &str, e: &std::io::Error) -> BindError {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "; another process (or another [section] of this file) listens there".to_string()
            }
            std::io::ErrorKind::PermissionDenied => "; a port below 1024 needs root or CAP_NET_BIND_SERVICE: use a higher port behind the reverse proxy".to_string(),
            _ => String::new(),
        };
        BindError {
            key: key.to_string(),
            listen: listen.to_string(),
            message: format!("cannot listen: {e}{hint}"),
            kind: e.kind(),
        }
    }
}

/// Routers waiting to be bound, by address.
#[derive(Debug)]
pub struct Listeners {
    limits: Limits,
    /// By normalised address: (config keys, names, merged router).
    sites: BTreeMap<String, Site>,
}

#[derive(Debug)]
struct Site {
    listen: String,
    keys: Vec<String>,
    router: Router,
}

impl Site {
    /// The metrics label: the names of what is served here, e.g. `webhook+actions`.
    fn label(&self) -> String {
        self.keys
            .iter()
            .map(|k| k.split('.').next().unwrap_or(k))
            .collect::<Vec<_>>()
            .join("+")
    }
}

impl Listeners {
    pub fn new(limits: Limits) -> Listeners {
        Listeners {
            limits,
            sites: BTreeMap::new(),
        }
    }

    /// Serves `router` on `listen` (named by its config key, e.g. `webhook.listen`). Routers
    /// mounted on the same address are served together by one socket; their routes must not
    /// overlap (axum panics on a duplicate route, at start-up).
    pub fn mount(&mut self, key: &str, listen: &str, router: Router) -> &mut Listeners {
        let normal = listen
            .parse::<SocketAddr>()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| listen.to_string());
        match self.sites.remove(&normal) {
            Some(mut site) => {
                site.keys.push(key.to_string());
                site.router = site.router.merge(router);
                self.sites.insert(normal, site);
            }
            None => {
                self.sites.insert(
                    normal,
                    Site {
                        listen: listen.to_string(),
                        keys: vec![key.to_string()],
                        router,
                    },
                );
            }
        }
        self
    }

    /// Binds every address; the first failure is returned and nothing is served.
    pub async fn bind(self) -> Result<Bound, BindError> {
        let mut sockets = Vec::new();
        for site in self.sites.into_values() {
            let key = site.keys.join(" = ");
            let listener = TcpListener::bind(&site.listen)
                .await
                .map_err(|e| BindError::new(&key, &site.listen, &e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| BindError::new(&key, &site.listen, &e))?;
            sockets.push((site, listener, addr));
        }
        Ok(Bound {
            limits: self.limits,
            sockets,
        })
    }
}

/// Bound sockets, not yet accepting.
#[derive(Debug)]
pub struct Bound {
    limits: Limits,
    sockets: Vec<(Site, TcpListener, SocketAddr)>,
}

impl Bound {
    /// The bound address of the site serving `key` (e.g. `webhook.listen`).
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(site, _, _)| site.keys.iter().any(|k| k == key))
            .map(|(_, _, addr)| *addr)
    }

    /// Accepts on every socket until `shutdown`, all under one connection cap.
    pub fn serve(self, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        start_log_flusher();
        for (site, listener, _) in self.sockets {
            let accept = AcceptLoop {
                label: site.label().into(),
                router: site.router,
                limits: self.limits,
                slots: slots.clone(),
            };
            tokio::spawn(accept.run(listener, shutdown.clone()));
        }
    }
}

/// Serves one router on one address with `limits` until `shutdown`: the whole layer in one
/// call. Returns the bound address.
pub async fn serve(
    key: &str,
    listen: &str,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<SocketAddr, BindError> {
    let mut listeners = Listeners::new(limits);
    listeners.mount(key, listen, router);
    let bound = listeners.bind().await?;
    let addr = bound.addr(key).expect("the mounted key is bound");
    bound.serve(shutdown);
    Ok(addr)
}

struct AcceptLoop {
    label: Arc<str>,
    router: Router,
    limits: Limits,
    slots: Arc<Semaphore>,
}

impl AcceptLoop {
    async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // EMFILE and friends: count, and give the process a moment to close some.
                    record_rejection(&self.label, "accept_failed", Some(&e.to_string()));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                // Closed at once: a queue of waiting sockets is what the cap prevents.
                record_rejection(&self.label, "connection_cap", None);
                drop(stream);
                continue;
            };
            let connection = Connection {
                label: self.label.clone(),
                router: self.router.clone(),
                limits: self.limits,
            };
            tokio::spawn(async move {
                connection.run(stream).await;
                drop(slot);
            });
        }
    }
}

struct Connection {
    label: Arc<str>,
    router: Router,
    limits: Limits,
}

impl Connection {
    async fn run(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let metrics = crate::metrics::global();
        metrics.http_connections(&self.label, 1);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let label = self.label.clone();
        let body_timeout = self.limits.body_timeout;
        let router = self.router;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            let label = label.clone();
            async move { Ok::<_, Infallible>(handle(router, label, body_timeout, request).await) }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES.max(8192));
        let served = http.serve_connection(io, service);
        tokio::pin!(served);
        let idle = self.limits.idle_timeout;
        let outcome = loop {
            let wait = idle.saturating_sub(activity.since());
            tokio::select! {
                r = &mut served => break r.err(),
                _ = tokio::time::sleep(wait) => {
                    if activity.since() >= idle {
                        record_rejection(&self.label, "idle_timeout", None);
                        break None;
                    }
                }
            }
        };
        if let Some(e) = outcome {
            if e.is_timeout() && !activity.idle_after_answer() {
                record_rejection(&self.label, "header_timeout", None);
            } else if e.is_parse_too_large() || e.is_parse() {
                record_rejection(&self.label, "bad_request", Some(&e.to_string()));
            }
        }
        metrics.http_connections(&self.label, -1);
    }
}

/// One request: its body under the body timeout, the router's answer, and refusals counted.
async fn handle(
    router: Router,
    label: Arc<str>,
    body_timeout: Duration,
    request: Request<Incoming>,
) -> Response<Body> {
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(TimedBody {
            inner: body,
            deadline: Box::pin(tokio::time::sleep(body_timeout)),
            expired: expired.clone(),
        })
    });
    let mut router = router;
    let response = match tower_service::Service::call(&mut router, request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if expired.load(Ordering::Relaxed) {
        record_rejection(&label, "body_timeout", None);
        let mut r = Response::new(Body::from("request body too slow\n"));
        *r.status_mut() = StatusCode::REQUEST_TIMEOUT;
        r.headers_mut()
            .insert("connection", axum::http::HeaderValue::from_static("close"));
        return r;
    }
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        record_rejection(&label, "body_too_large", None);
    }
    response
}

/// A request body that fails once its deadline passes.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within its timeout")]
struct BodyTimeout;

impl http_body::Body for TimedBody {
    type Data = axum::body::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// When a connection last moved a byte (milliseconds since it opened), and whether it sent
/// anything since our last write (a keep-alive connection closed while silent after an
/// answer was merely idle, not refused).
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
    written: std::sync::atomic::AtomicBool,
    read_since_write: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            written: Default::default(),
            read_since_write: Default::default(),
        }
    }

    fn touch(&self, read: bool) {
        let now = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
        if read {
            self.read_since_write.store(true, Ordering::Relaxed);
        } else {
            self.written.store(true, Ordering::Relaxed);
            self.read_since_write.store(false, Ordering::Relaxed);
        }
    }

    /// Answered at least once and silent since: an idle keep-alive connection.
    fn idle_after_answer(&self) -> bool {
        self.written.load(Ordering::Relaxed) && !self.read_since_write.load(Ordering::Relaxed)
    }

    /// How long since the last byte moved.
    fn since(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.opened.elapsed().saturating_sub(last)
    }
}

/// A socket that notes every byte moved, for the idle timeout.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch(true);
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch(false);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Refusals waiting for their aggregated log line, per listener.
#[derive(Debug, Default)]
pub(crate) struct RejectionLog {
    pending: BTreeMap<String, Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    counts: BTreeMap<&'static str, u64>,
    last_line: Option<Instant>,
    /// The first refusal's detail since the last line (one example is enough).
    example: Option<String>,
}

impl RejectionLog {
    /// Counts one refusal; returns the line to log now, if one is due: the first refusal
    /// after a quiet [`LOG_EVERY`] is logged at once, the rest wait for [`Self::due`].
    pub(crate) fn record(
        &mut self,
        listener: &str,
        reason: &'static str,
        detail: Option<&str>,
        now: Instant,
    ) -> Option<String> {
        let p = self.pending.entry(listener.to_string()).or_default();
        *p.counts.entry(reason).or_default() += 1;
        if p.example.is_none() {
            p.example = detail.map(|d| d.chars().take(200).collect());
        }
        let quiet = p
            .last_line
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY);
        quiet.then(|| Self::line(listener, p, now))
    }

    /// The lines due at `now`: every listener with refusals counted and no line for
    /// [`LOG_EVERY`].
    pub(crate) fn due(&mut self, now: Instant) -> Vec<String> {
        self.pending
            .iter_mut()
            .filter(|(_, p)| !p.counts.is_empty())
            .filter(|(_, p)| {
                p.last_line
                    .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
            })
            .map(|(listener, p)| Self::line(listener, p, now))
            .collect()
    }

    fn line(listener: &str, p: &mut Pending, now: Instant) -> String {
        let total: u64 = p.counts.values().sum();
        let reasons: Vec<String> = p.counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let example = p
            .example
            .take()
            .map(|e| format!("; e.g. {e}"))
            .unwrap_or_default();
        p.counts.clear();
        p.last_line = Some(now);
        format!(
            "{listener}: refused or cut off {total} (at most one line per {}s): {}{example}",
            LOG_EVERY.as_secs(),
            reasons.join(", ")
        )
    }
}

fn rejection_log() -> &'static Mutex<RejectionLog> {
    static LOG: OnceLock<Mutex<RejectionLog>> = OnceLock::new();
    LOG.get_or_init(Mutex::default)
}

/// Counts a refusal on `listener` in the metrics and the aggregated log.
pub(crate) fn record_rejection(listener: &str, reason: &'static str, detail: Option<&str>) {
    crate::metrics::global().http_rejected(listener, reason);
    log_rejection(listener, reason, detail);
}

/// Counts a refusal in the aggregated log only (for refusals with metrics of their own, like
/// the webhook's signature checks).
pub(crate) fn log_rejection(listener: &str, reason: &'static str, detail: Option<&str>) {
    let line = rejection_log()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .record(listener, reason, detail, Instant::now());
    if let Some(line) = line {
        tracing::warn!("{line}");
    }
}

/// Logs the refusals counted since the last line, every [`LOG_EVERY`] (once per process).
fn start_log_flusher() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(LOG_EVERY);
            loop {
                tick.tick().await;
                let lines = rejection_log()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .due(Instant::now());
                for line in lines {
                    tracing::warn!("{line}");
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_refusals_makes_one_line_per_period_with_every_count() {
        let mut log = RejectionLog::default();
        let t0 = Instant::now();
        let first = log.record("webhook", "header_timeout", Some("slow"), t0);
        assert!(first.unwrap().contains("header_timeout 1"));
        let mut lines = 0;
        for i in 1..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100); // 10 s of refusals
            let reason = if i % 2 == 0 {
                "connection_cap"
            } else {
                "header_timeout"
            };
            lines += usize::from(log.record("webhook", reason, None, now).is_some());
            lines += log.due(now).len();
        }
        assert!(lines <= 1, "{lines} lines");
        let last = log.due(t0 + Duration::from_secs(21));
        assert_eq!(last.len(), 1);
        assert!(last[0].contains("connection_cap"), "{}", last[0]);
        assert!(log.due(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn the_connection_cap_stays_below_the_fd_limit() {
        assert_eq!(connection_cap(1024), 768);
        assert_eq!(connection_cap(8192), MAX_CONNECTIONS);
        assert_eq!(connection_cap(100), 16);
        for nofile in [300u64, 1024, 1280, 4096, 65_536] {
            assert!((connection_cap(nofile) as u64) < nofile);
        }
    }
}
