//! What every remote client shares: the error taxonomy that decides retries (`is_transient`),
//! `Retry-After` parsing, the bounded jittered backoff policy (backon), and the request rate limit.
//!
//! Clients do not retry on their own (except the documented 401 → refresh → retry once); callers
//! wrap a call in [`with_retry`] with a [`RetryPolicy`] taken from configuration.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio::sync::Mutex;
use tokio::time::Instant;

/// An error from a remote API call, classified so that the caller can decide to retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The server answered with a non-success status.
    #[error("{api} {method} {path}: HTTP {status}{code}: {message}{rid}",
        code = code.as_deref().map(|c| format!(" {c}")).unwrap_or_default(),
        rid = request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    Status {
        api: &'static str,
        method: String,
        path: String,
        status: u16,
        /// The API's own error code (`preconditionFailed`, `INVALID_ARGUMENT`, ...).
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
    /// No usable answer: connection refused, reset, timed out, or cut mid-body.
    #[error("{api} {method} {path}: {message}")]
    Transport {
        api: &'static str,
        method: String,
        path: String,
        message: String,
        /// Whether the request may have reached the server (matters for non-idempotent creates).
        maybe_sent: bool,
    },
    /// The server answered 2xx but the body is not what the API documents.
    #[error("{api} {method} {path}: malformed response body: {message}{rid}",
        rid = request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    Malformed {
        api: &'static str,
        method: String,
        path: String,
        message: String,
        request_id: Option<String>,
    },
    /// The client refused to do what the answer asked: follow a link to another origin (the
    /// credential would go with it), follow a link it already followed, or read past a cap.
    /// Never transient: asking again gets the same answer.
    #[error("{api}: {message}")]
    Refused { api: &'static str, message: String },
    /// Getting an access token failed.
    #[error("{api} authentication failed: {message}")]
    Auth {
        api: &'static str,
        message: String,
        /// The identity provider's error code, e.g. `invalid_grant`.
        code: Option<String>,
        transient: bool,
    },
    /// An API that names its errors (AWS JSON: `__type` or `x-amzn-errortype`), classified by
    /// that name and never by the HTTP status, which differs between services for one error.
    #[error("{api} {operation}: {name} (HTTP {status}): {message}{detail}{rid}",
        detail = detail.as_deref().map(|d| format!("; {d}")).unwrap_or_default(),
        rid = request_id.as_deref().map(|r| format!(" (request-id {r})")).unwrap_or_default())]
    Named {
        api: &'static str,
        operation: String,
        status: u16,
        /// The error's name without its namespace, e.g. `ThrottlingException`.
        name: String,
        class: ErrorClass,
        message: String,
        /// What the operator needs beyond the message: the missing IAM action, the fields a
        /// validation refused, the quota that is spent.
        detail: Option<String>,
        retry_after: Option<Duration>,
        request_id: Option<String>,
    },
}

/// What a named error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth another try after a pause (throttling, an internal error, 5xx).
    Transient,
    /// The credentials are refused or lack a permission: the operator has to act.
    Auth,
    /// Asking again gets the same answer (validation, a spent quota, an unknown error).
    Permanent,
    /// The resource changed under the request: read it again and decide again.
    Conflict,
    /// The resource does not exist (any more).
    NotFound,
}

impl ApiError {
    /// 408, 429, 5xx, transport errors and malformed bodies (a truncated answer) are worth
    /// another try; every other 4xx is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            ApiError::Transport { .. } | ApiError::Malformed { .. } => true,
            ApiError::Refused { .. } => false,
            ApiError::Auth { transient, .. } => *transient,
            ApiError::Named { class, .. } => *class == ErrorClass::Transient,
        }
    }

    /// The class of a named error (AWS); `None` for the other variants.
    pub fn named_class(&self) -> Option<ErrorClass> {
        match self {
            ApiError::Named { class, .. } => Some(*class),
            _ => None,
        }
    }

    /// The server's requested pause before the next try, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::Status { retry_after, .. } | ApiError::Named { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } | ApiError::Named { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_auth(&self) -> bool {
        match self {
            ApiError::Auth { .. } => true,
            ApiError::Named { class, .. } => *class == ErrorClass::Auth,
            _ => matches!(self.status(), Some(401 | 403)),
        }
    }

    /// Builds a transport error from a reqwest error, keeping whether the request may have
    /// reached the server: a connect failure certainly did not, anything later might have.
    pub fn transport(api: &'static str, method: &str, path: &str, err: &reqwest::Error) -> Self {
        let maybe_sent = !err.is_connect();
        let kind = if err.is_timeout() {
            "timed out"
        } else if err.is_connect() {
            "connection failed"
        } else if err.is_body() || err.is_decode() {
            "connection lost while reading the answer"
        } else {
            "request failed"
        };
        ApiError::Transport {
            api,
            method: method.to_string(),
            path: path.to_string(),
            message: format!("{kind}: {}", error_chain(err)),
            maybe_sent,
        }
    }
}

/// The full cause chain of an error on one line (reqwest hides the useful part in `source`).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The longest pause any server may ask for. A longer `Retry-After` is clamped to it, so a
/// hostile or broken number can neither overflow time arithmetic nor park a write for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Parses `Retry-After` as delta-seconds or an HTTP date; falls back to the "Try again in N
/// seconds" sentence of Partner Center's 429 body, whose shape differs from its other errors.
/// The answer is clamped to [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(header: Option<&str>, body: &str) -> Option<Duration> {
    parse_retry_after_unclamped(header, body).map(|d| d.min(MAX_RETRY_AFTER))
}

fn parse_retry_after_unclamped(header: Option<&str>, body: &str) -> Option<Duration> {
    if let Some(value) = header.map(str::trim) {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            // All digits but too large for u64: as long as it gets.
            return Some(value.parse().map_or(Duration::MAX, Duration::from_secs));
        }
        if let Ok(when) = chrono::DateTime::parse_from_rfc2822(value) {
            let delta = when
                .with_timezone(&chrono::Utc)
                .signed_duration_since(chrono::Utc::now());
            return Some(delta.to_std().unwrap_or(Duration::ZERO));
        }
    }
    let lower = body.to_ascii_lowercase();
    let rest = &lower[lower.find("try again in ")? + "try again in ".len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() {
        return None;
    }
    Some(digits.parse().map_or(Duration::MAX, Duration::from_secs))
}

/// The largest answer body read from any API (a referral page of 100 is well under 1 MiB);
/// a longer one is cut off and reported as malformed, so a hostile server cannot exhaust memory.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Whether two URLs share scheme, host and port: a credential goes only to its own origin.
pub fn same_origin(a: &reqwest::Url, b: &reqwest::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Every HTTP client starts here: rustls with ring, the one crypto provider in the tree
/// (reqwest is built with `rustls-no-provider`, so the provider is installed before the first
/// client; installing it again is a no-op), trusting the system's roots read once per process.
#[allow(clippy::disallowed_methods)] // the one place a client is begun
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let roots = system_roots()
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok());
    // The same roots reqwest's platform verifier reads on Linux, but that verifier read and
    // parsed every file of /etc/ssl/certs again for each client: four times per `sync`, the
    // largest part of a command's start-up. (A caller may still add its own roots.)
    reqwest::Client::builder().tls_certs_only(roots)
}

/// The system's trust roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else the distribution's
/// store), read on first use; unreadable ones are logged and left out.
pub(crate) fn system_roots() -> &'static [rustls_pki_types::CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<rustls_pki_types::CertificateDer<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system trust root could not be read");
        }
        found.certs
    })
}

/// The redirect policy of every client: follow a few redirects within one origin, never to
/// another (reqwest would re-send custom headers such as a webhook's `X-Api-Key` there).
pub fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let first = attempt.previous().first().cloned();
        match first {
            _ if attempt.previous().len() >= 5 => attempt.error("too many redirects"),
            Some(first) if same_origin(&first, attempt.url()) => attempt.follow(),
            _ => attempt.stop(),
        }
    })
}

/// Bounded exponential backoff with full jitter, for short blips inside one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Upper bound on the summed sleeps; once spent the last error is returned.
    pub max_total: Duration,
    /// Longest `Retry-After` honoured; a longer one ends the retries (the cycle tries next time).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        crate::config::RetryConfig::default().policy()
    }
}

/// Runs `op` until it succeeds, fails permanently, or the policy is spent. A transient error
/// with `Retry-After` waits exactly that long (when within `max_retry_after`).
pub async fn with_retry<T, F, Fut>(policy: &RetryPolicy, what: &str, op: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries)
        .with_total_delay(Some(policy.max_total))
        .with_jitter();
    let max_retry_after = policy.max_retry_after;
    op.retry(backoff)
        .when(|e: &ApiError| {
            e.is_transient() && e.retry_after().is_none_or(|d| d <= max_retry_after)
        })
        .adjust(|e: &ApiError, planned| planned.map(|d| e.retry_after().unwrap_or(d)))
        .notify(|e: &ApiError, wait| {
            crate::metrics::global().retry(what);
            tracing::warn!(what, error = %e, wait_ms = wait.as_millis() as u64, "transient error, retrying: {e}");
        })
        .await
}

/// A token bucket: at most `rate` requests per second on average, bursts up to `burst`.
/// Every client holds one per API so the daemon stays under the quota it was told.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    burst: u32,
    /// The theoretical arrival time of the next request (GCRA); `None` until first use.
    next_free: Mutex<Option<Instant>>,
}

impl RateLimiter {
    pub fn new(requests_per_second: f64) -> Self {
        let rate = if requests_per_second.is_finite() && requests_per_second > 0.0 {
            requests_per_second
        } else {
            f64::MAX
        };
        RateLimiter {
            interval: Duration::from_secs_f64((1.0 / rate).min(3600.0)),
            burst: (rate.floor() as u32).clamp(1, 100),
            next_free: Mutex::new(None),
        }
    }

    /// At most `requests_per_second` in any sliding second, evenly spaced, with no burst: the
    /// form a quota counted per second needs (AWS Partner Central: 1 write a second).
    pub fn evenly(requests_per_second: f64) -> Self {
        RateLimiter {
            burst: 1,
            ..RateLimiter::new(requests_per_second)
        }
    }

    /// Waits until one more request fits under the rate.
    pub(crate) async fn acquire(&self) {
        let wait_until = {
            let mut next = self.next_free.lock().await;
            let now = Instant::now();
            let tat = next.unwrap_or(now).max(now);
            // Allow `burst` requests to go at once, then one per interval.
            let allowance = self.interval * (self.burst - 1);
            let start = if tat > now + allowance {
                tat - allowance
            } else {
                now
            };
            *next = Some(tat + self.interval);
            start
        };
        tokio::time::sleep_until(wait_until).await;
    }

    /// Waits for a slot that is free *now*, never reserving one ahead: a background request
    /// (a refresh read) goes only when no foreground request holds the coming slots, and it
    /// leaves half the burst to them. Foreground requests ([`acquire`](Self::acquire)) reserve
    /// their slot at once, so they always go first.
    pub(crate) async fn acquire_background(&self) {
        let allowance = self.interval * (self.burst - 1);
        let reserve = self.interval * (self.burst / 2);
        loop {
            let wait = {
                let mut next = self.next_free.lock().await;
                let now = Instant::now();
                let tat = next.unwrap_or(now).max(now);
                if tat + reserve <= now + allowance {
                    *next = Some(tat + self.interval);
                    return;
                }
                (tat + reserve - allowance - now).max(Duration::from_millis(1))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// An HTTP answer read in full, before the API-specific client interprets it.
#[derive(Debug)]
pub(crate) struct RawAnswer {
    pub(crate) status: reqwest::StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) text: String,
}

impl RawAnswer {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// `Retry-After`, or the "Try again in N seconds" of the body.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        parse_retry_after(self.header("retry-after").as_deref(), &self.text)
    }
}

/// Sends a request and reads its whole answer, counting it in the metrics. A failure to
/// send or to read becomes a transport error (with whether the request may have been sent).
pub(crate) async fn send_and_read(
    api: &'static str,
    method: &str,
    path: &str,
    request: reqwest::RequestBuilder,
) -> Result<RawAnswer, ApiError> {
    let started = std::time::Instant::now();
    let metrics = crate::metrics::global();
    let response = request.send().await.map_err(|e| {
        metrics.api_request(api, method, None, started.elapsed());
        ApiError::transport(api, method, path, &e)
    })?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = read_capped(api, method, path, response).await;
    // Counted once the whole body is read, so the duration is the request's full time.
    metrics.api_request(api, method, Some(status.as_u16()), started.elapsed());
    let text = text?;
    Ok(RawAnswer {
        status,
        headers,
        text,
    })
}

/// Reads a body up to [`MAX_BODY_BYTES`]; a longer one is an error, not an allocation.
pub(crate) async fn read_capped(
    api: &'static str,
    method: &str,
    path: &str,
    response: reqwest::Response,
) -> Result<String, ApiError> {
    match read_at_most(response, MAX_BODY_BYTES).await {
        Ok(body) => Ok(String::from_utf8_lossy(&body).into_owned()),
        Err(CappedReadError::Transport(e)) => Err(ApiError::transport(api, method, path, &e)),
        Err(e @ CappedReadError::TooLarge(_)) => Err(ApiError::Malformed {
            api,
            method: method.to_string(),
            path: path.to_string(),
            message: format!("{e}; not read"),
            request_id: None,
        }),
    }
}

/// Why [`read_at_most`] stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CappedReadError {
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
    #[error("{}", error_chain(.0))]
    Transport(reqwest::Error),
}

/// Reads a body chunk by chunk as it streams, and stops (dropping the connection) as soon as
/// it would pass `cap` bytes: a declared Content-Length over the cap is refused unread, and a
/// chunked answer with no length is never buffered past the cap.
pub(crate) async fn read_at_most(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, CappedReadError> {
    if response.content_length().is_some_and(|n| n > cap as u64) {
        return Err(CappedReadError::TooLarge(cap));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(CappedReadError::Transport)? {
        if body.len() + chunk.len() > cap {
            return Err(CappedReadError::TooLarge(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A fresh correlation id for one request (`client-request-id`).
pub(crate) fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The HTTP client every API client uses (Microsoft, Google, the webhook registration): rustls,
/// bounded connect and total timeouts, same-origin redirects only. The one place it is built.
pub fn client(timeout: Duration, connect_timeout: Duration) -> reqwest::Client {
    client_builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .redirect(same_origin_redirects())
        .user_agent(concat!("cosell-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("reqwest client with rustls builds")
}

/// `[microsoft.retry]` and `[google.retry]` as the policy [`with_retry`] follows (kept here so
/// the configuration imports nothing from the clients).
impl crate::config::RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            min_delay: self.min_delay.0,
            max_delay: self.max_delay.0,
            max_total: self.max_total.0,
            max_retry_after: self.max_retry_after.0,
        }
    }
}

/// An `api_base` setting that is not a URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {setting} {text:?}: {error}")]
pub struct BadApiBase {
    setting: &'static str,
    text: String,
    /// The URL parser's words.
    error: String,
}

impl BadApiBase {
    /// `text` (a trailing `/` dropped) as the base URL `setting` names.
    pub(crate) fn parse(setting: &'static str, text: &str) -> Result<reqwest::Url, BadApiBase> {
        reqwest::Url::parse(text.trim_end_matches('/')).map_err(|e| BadApiBase {
            setting,
            text: text.to_string(),
            error: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(code: u16, retry_after: Option<Duration>) -> ApiError {
        ApiError::Status {
            api: "test",
            method: "GET".into(),
            path: "/x".into(),
            status: code,
            code: None,
            message: "m".into(),
            retry_after,
            request_id: None,
        }
    }

    #[test]
    fn taxonomy_separates_transient_from_permanent() {
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(status(code, None).is_transient(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 412, 422] {
            assert!(!status(code, None).is_transient(), "{code}");
        }
    }

    #[test]
    fn retry_after_reads_header_date_and_partner_center_body() {
        assert_eq!(
            parse_retry_after(Some("7"), ""),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            parse_retry_after(
                None,
                r#"{"statusCode":429,"message":"Rate limit is exceeded. Try again in 57 seconds."}"#
            ),
            Some(Duration::from_secs(57))
        );
        let past = parse_retry_after(Some("Wed, 21 Oct 2015 07:28:00 GMT"), "");
        assert_eq!(past, Some(Duration::ZERO));
        assert_eq!(parse_retry_after(Some("soon"), "{}"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_honours_retry_after_and_stops_on_permanent() {
        let calls = AtomicUsize::new(0);
        let started = Instant::now();
        let policy = RetryPolicy::default();
        let result = with_retry(&policy, "t", || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    Err(status(429, Some(Duration::from_secs(9))))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 1);
        assert!(started.elapsed() >= Duration::from_secs(9));

        calls.store(0, Ordering::SeqCst);
        let result: Result<(), _> = with_retry(&policy, "t", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(status(400, None)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a 400 is never retried");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_is_bounded_in_attempts() {
        let calls = AtomicUsize::new(0);
        let policy = RetryPolicy {
            max_retries: 3,
            ..RetryPolicy::default()
        };
        let result: Result<(), _> = with_retry(&policy, "t", || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(status(503, None)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(2.0);
        let started = Instant::now();
        for _ in 0..6 {
            limiter.acquire().await;
        }
        // Burst of 2, then one every 500 ms: the 6th goes at 2 s.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn an_even_limiter_never_lets_two_requests_into_one_second() {
        let limiter = RateLimiter::evenly(1.0);
        let mut sent = Vec::new();
        let started = Instant::now();
        for _ in 0..5 {
            limiter.acquire().await;
            sent.push(started.elapsed());
        }
        for pair in sent.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_secs(1), "{sent:?}");
        }
        // Ten a second, no burst: 11 requests span a full second.
        let limiter = RateLimiter::evenly(10.0);
        let started = Instant::now();
        for _ in 0..11 {
            limiter.acquire().await;
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn named_errors_are_classified_by_name_not_status() {
        let named = |status, class| ApiError::Named {
            api: "aws",
            operation: "GetEngagementInvitation".into(),
            status,
            name: "X".into(),
            class,
            message: "m".into(),
            detail: None,
            retry_after: None,
            request_id: None,
        };
        assert!(named(400, ErrorClass::Transient).is_transient());
        assert!(!named(500, ErrorClass::Permanent).is_transient());
        assert!(!named(403, ErrorClass::Transient).is_auth());
        assert!(named(400, ErrorClass::Auth).is_auth());
        assert_eq!(
            named(400, ErrorClass::Conflict).named_class(),
            Some(ErrorClass::Conflict)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn background_requests_wait_for_every_foreground_one() {
        use std::sync::Arc;
        let limiter = Arc::new(RateLimiter::new(10.0));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // A background read asks first, then 30 foreground requests arrive at once.
        for (i, background) in std::iter::once(true)
            .chain(std::iter::repeat_n(false, 30))
            .enumerate()
        {
            let (limiter, order) = (limiter.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                if background {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    limiter.acquire_background().await;
                } else {
                    limiter.acquire().await;
                }
                order.lock().unwrap().push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap();
        assert_eq!(
            order.last(),
            Some(&0),
            "the background request went last: {order:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn background_requests_alone_keep_the_rate() {
        let limiter = RateLimiter::new(4.0);
        let started = Instant::now();
        for _ in 0..9 {
            limiter.acquire_background().await;
        }
        // Never faster than the rate: 9 reads at 4/s (half the burst kept free) take ≥ 1.5 s.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
