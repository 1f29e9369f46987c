//! The simulator of the partner APIs, a product part used by `demo` and by the tests: the Entra
//! token endpoint and the Partner Center Referrals API, behaving as `partner-apis.md` documents
//! (OData subset, nextLink paging on the documented `/v1.0/referrals?$skiptoken=` shape, PATCH
//! with eTags and 412, status rules), with switchable faults. It listens on 127.0.0.1 only.
//! AWS Partner Central's inbox is [`aws`], a simulator of its own on its own port (`demo` and
//! `cosell-sync sim` start it beside this one).

pub mod aws;
pub mod google;
pub mod microsoft;
pub mod odata;
pub mod sample;
pub mod standalone;
pub mod webhook;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// A fault the simulator can inject into an API answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: lets a script skip requests (`[Pass, Pass, Drop]` hits the third).
    Pass,
    /// 429 with `Retry-After` (and Partner Center's odd 429 body).
    TooManyRequests { retry_after_secs: u64 },
    /// 503 with the standard error body.
    Unavailable,
    /// 500.
    Internal,
    /// The connection is cut after the request was processed (the outcome is unknown).
    Drop,
    /// 200 with a truncated JSON body.
    Malformed,
}

/// Random fault rates (0.0–1.0) applied to every API request, plus a script of faults for the
/// next requests (taken first), plus a fixed delay.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub rate_429: f64,
    pub rate_5xx: f64,
    pub rate_drop: f64,
    pub rate_malformed: f64,
    pub retry_after_secs: u64,
    pub delay: Duration,
    pub script: VecDeque<Fault>,
}

impl Faults {
    fn next_fault(&mut self) -> Option<Fault> {
        if let Some(f) = self.script.pop_front() {
            return Some(f);
        }
        let roll = fastrand::f64();
        let mut edge = self.rate_429;
        if roll < edge {
            return Some(Fault::TooManyRequests {
                retry_after_secs: self.retry_after_secs,
            });
        }
        edge += self.rate_5xx;
        if roll < edge {
            return Some(if fastrand::bool() {
                Fault::Unavailable
            } else {
                Fault::Internal
            });
        }
        edge += self.rate_drop;
        if roll < edge {
            return Some(Fault::Drop);
        }
        edge += self.rate_malformed;
        (roll < edge).then_some(Fault::Malformed)
    }
}

/// Credentials the simulated Entra tenant accepts.
#[derive(Debug, Clone)]
pub struct SimCredentials {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
    /// The first refresh token; every grant rotates it.
    pub refresh_token: String,
}

impl Default for SimCredentials {
    fn default() -> Self {
        SimCredentials {
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "00000000-0000-0000-0000-00000000c0de".into(),
            client_secret: "sim-client-secret".into(),
            refresh_token: "sim-refresh-token-0".into(),
        }
    }
}

#[derive(Debug, Default)]
pub struct TokenState {
    pub refresh_tokens: HashSet<String>,
    pub(crate) access_tokens: HashSet<String>,
    /// Entra may keep an old refresh token valid for a while; the strict default revokes it at
    /// once, so a client that fails to persist the rotated token fails loudly.
    pub(crate) keep_rotated: bool,
    pub(crate) access_token_lifetime_secs: u64,
    /// Device codes handed out, and what the next polls answer (`authorization_pending`,
    /// `slow_down`, `expired_token`; empty = signed in).
    pub(crate) device_codes: HashSet<String>,
    pub(crate) device_script: VecDeque<String>,
}

/// A paging cursor: the ids that matched the first request, and how far the client is.
/// A skiptoken stays valid after use (a retried page must work), like a stateless token.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub ids: Arc<Vec<String>>,
    pub(crate) offset: usize,
    pub(crate) top: usize,
}

/// A referral PATCH as the simulator saw it: what a test checks ("exactly one PATCH").
#[derive(Debug, Clone, PartialEq)]
pub struct SimPatch {
    pub referral_id: String,
    /// The JSON Patch array as sent.
    pub body: Value,
    /// The `If-Match` header, if any.
    pub if_match: Option<String>,
    /// The status the simulator answered.
    pub status: u16,
}

/// Shared state of a running simulator.
#[derive(Debug)]
pub struct SimState {
    pub credentials: SimCredentials,
    pub referrals: Mutex<BTreeMap<String, Value>>,
    pub cursors: Mutex<HashMap<String, Cursor>>,
    pub tokens: Mutex<TokenState>,
    faults: Mutex<Faults>,
    counters: Mutex<BTreeMap<String, u64>>,
    /// The kinds of the last requests, oldest first (bounded), for tests of request order.
    request_log: Mutex<VecDeque<String>>,
    pub google: Mutex<google::GoogleState>,
    pub webhook: Mutex<webhook::WebhookState>,
    /// Every referral PATCH that reached the rules (after faults), oldest first (bounded).
    pub patches: Mutex<VecDeque<SimPatch>>,
    /// `http://127.0.0.1:PORT`, known once the listener is bound.
    pub base_url: Mutex<String>,
    /// Writes being answered now, both clouds together (what one executor bounds).
    pub writes: Mutex<WriteGauge>,
    /// How long a referral PATCH takes to answer (after it is counted on the wire).
    pub patch_latency: Mutex<Duration>,
}

/// Lead creates and referral PATCHes being answered at once, and the most ever: the client
/// promises at most `[sync] concurrency` remote writes on the wire, whatever produced them.
#[derive(Debug, Default)]
pub struct WriteGauge {
    in_flight: usize,
    max: usize,
}

/// One write on the wire, from its arrival until its answer is made (or it is dropped).
pub struct WriteOnWire(Arc<SimState>);

impl WriteOnWire {
    pub fn start(state: &Arc<SimState>) -> WriteOnWire {
        let mut w = lock(&state.writes);
        w.in_flight += 1;
        w.max = w.max.max(w.in_flight);
        WriteOnWire(state.clone())
    }
}

impl Drop for WriteOnWire {
    fn drop(&mut self) {
        lock(&self.0.writes).in_flight -= 1;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimState {
    fn new(credentials: SimCredentials) -> Self {
        let mut tokens = TokenState {
            access_token_lifetime_secs: 3599,
            ..TokenState::default()
        };
        tokens
            .refresh_tokens
            .insert(credentials.refresh_token.clone());
        SimState {
            credentials,
            referrals: Mutex::new(BTreeMap::new()),
            cursors: Mutex::new(HashMap::new()),
            tokens: Mutex::new(tokens),
            faults: Mutex::new(Faults::default()),
            counters: Mutex::new(BTreeMap::new()),
            request_log: Mutex::new(VecDeque::new()),
            google: Mutex::new(google::GoogleState::default()),
            webhook: Mutex::new(webhook::WebhookState::default()),
            patches: Mutex::new(VecDeque::new()),
            base_url: Mutex::new(String::new()),
            writes: Mutex::new(WriteGauge::default()),
            patch_latency: Mutex::new(Duration::ZERO),
        }
    }

    pub(crate) fn count(&self, key: &str) {
        *lock(&self.counters).entry(key.to_string()).or_default() += 1;
        let mut log = lock(&self.request_log);
        if log.len() >= 10_000 {
            log.pop_front();
        }
        log.push_back(key.to_string());
    }

    pub(crate) fn next_fault(&self) -> (Option<Fault>, Duration) {
        let mut faults = lock(&self.faults);
        (faults.next_fault(), faults.delay)
    }
}

/// A running simulator; stops when dropped.
pub struct Simulator {
    pub(crate) addr: SocketAddr,
    pub state: Arc<SimState>,
    stop: CancellationToken,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Simulator {
    /// Starts on an ephemeral port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Simulator> {
        Self::start_with(SimCredentials::default()).await
    }

    pub(crate) async fn start_with(credentials: SimCredentials) -> std::io::Result<Simulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), credentials).await
    }

    /// Starts on `addr` (`cosell-sync sim --listen`, to rehearse an install against it).
    pub(crate) async fn start_on(
        addr: SocketAddr,
        credentials: SimCredentials,
    ) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(credentials));
        *lock(&state.base_url) = format!("http://{addr}");
        let app = microsoft::router()
            .merge(google::router())
            .merge(webhook::router())
            .with_state(state.clone());
        let stop = spawn_server(listener, app);
        Ok(Simulator { addr, state, stop })
    }

    /// `http://127.0.0.1:PORT`: both the API base and the token authority.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces referrals (any JSON, so tests can plant malformed ones).
    pub fn put_referrals(&self, referrals: impl IntoIterator<Item = Value>) {
        let mut changed = Vec::new();
        {
            let mut map = lock(&self.state.referrals);
            for r in referrals {
                let id = r
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("no-id-{}", uuid::Uuid::new_v4()));
                let created = map.insert(id.clone(), r).is_none();
                changed.push((id, created));
            }
        }
        // Partner Center's events, to the registered webhook (if any).
        for (id, created) in changed {
            webhook::notify(&self.state, &id, created);
        }
    }

    pub fn referral(&self, id: &str) -> Option<Value> {
        lock(&self.state.referrals).get(id).cloned()
    }

    /// The referral PATCHes the simulator answered, oldest first.
    pub fn patches(&self) -> Vec<SimPatch> {
        lock(&self.state.patches).iter().cloned().collect()
    }

    /// The PATCHes of one referral that changed it (2xx).
    pub fn applied_patches(&self, referral_id: &str) -> Vec<SimPatch> {
        self.patches()
            .into_iter()
            .filter(|p| p.referral_id == referral_id && p.status < 300)
            .collect()
    }

    /// Every referral PATCH from now on takes `latency` to answer (it is counted at once).
    pub fn set_patch_latency(&self, latency: Duration) {
        *lock(&self.state.patch_latency) = latency;
    }

    /// The most remote writes (lead creates and referral PATCHes together) ever being
    /// answered at once.
    pub fn max_writes_in_flight(&self) -> usize {
        lock(&self.state.writes).max
    }

    pub fn referral_count(&self) -> usize {
        lock(&self.state.referrals).len()
    }

    /// Changes a referral as a person in the portal would: new eTag and `updatedDateTime`.
    pub fn edit_referral(&self, id: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let mut map = lock(&self.state.referrals);
        let Some(r) = map.get_mut(id) else {
            return false;
        };
        edit(r);
        microsoft::touch(r);
        drop(map);
        webhook::notify(&self.state, id, false);
        true
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// Queues faults for the next API requests, in order.
    pub fn script_faults(&self, script: impl IntoIterator<Item = Fault>) {
        lock(&self.state.faults).script.extend(script);
    }

    /// Requests served, by kind (`token`, `list`, `get`, `patch`, `fault:429`, ...).
    pub fn counters(&self) -> BTreeMap<String, u64> {
        lock(&self.state.counters).clone()
    }

    /// The kinds of the last (up to 10,000) counted requests, oldest first.
    pub fn request_log(&self) -> Vec<String> {
        lock(&self.state.request_log).iter().cloned().collect()
    }

    pub fn counter(&self, key: &str) -> u64 {
        lock(&self.state.counters).get(key).copied().unwrap_or(0)
    }

    /// Invalidates every access token (as if revoked), so the next call gets a 401.
    pub fn revoke_access_tokens(&self) {
        lock(&self.state.tokens).access_tokens.clear();
    }

    /// Invalidates every refresh token (the operator must re-authenticate).
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.state.tokens).refresh_tokens.clear();
    }

    /// Keeps a redeemed refresh token valid after rotation, as Entra may for a while (the
    /// default revokes it at once).
    pub fn keep_rotated_refresh_tokens(&self) {
        lock(&self.state.tokens).keep_rotated = true;
    }

    /// Accepts `token` as a valid refresh token (an operator re-authenticated).
    pub fn allow_refresh_token(&self, token: &str) {
        lock(&self.state.tokens)
            .refresh_tokens
            .insert(token.to_string());
    }

    /// What the next device-code polls answer, in order; then the user has signed in.
    pub fn script_device_flow(&self, answers: &[&str]) {
        lock(&self.state.tokens).device_script = answers.iter().map(|a| a.to_string()).collect();
    }
}

/// Serves `app` on `listener` until the returned token is cancelled (a simulator's drop).
pub(crate) fn spawn_server(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await;
    });
    stop
}

/// Which API's error body a fault answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    Microsoft,
    Google,
}

fn fault_error(
    shape: ErrorShape,
    status: StatusCode,
    ms_code: &str,
    google_status: &str,
    message: &str,
) -> Response {
    match shape {
        ErrorShape::Microsoft => microsoft::error(status, ms_code, message),
        ErrorShape::Google => google::error(status, google_status, message),
    }
}

/// A response whose body fails mid-stream: the client sees the connection cut.
pub(crate) fn dropped() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated connection drop",
        ))
    });
    Response::new(Body::from_stream(stream))
}

/// Applies the fault switches before a request is processed. `Ok(true)` asks the handler to
/// process the request and then cut the connection (the outcome is unknown to the client).
pub(crate) async fn before(
    state: &SimState,
    kind: &str,
    shape: ErrorShape,
) -> Result<bool, Response> {
    state.count(kind);
    let (fault, delay) = state.next_fault();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match fault {
        None | Some(Fault::Pass) => Ok(false),
        Some(Fault::Drop) => {
            state.count("fault:drop");
            Ok(true)
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            state.count("fault:429");
            let mut response = match shape {
                // Partner Center's 429 body has its own shape.
                ErrorShape::Microsoft => (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"statusCode": 429, "message": format!("Rate limit is exceeded. Try again in {retry_after_secs} seconds.")})),
                )
                    .into_response(),
                ErrorShape::Google => google::error(StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED", "Quota exceeded."),
            };
            response.headers_mut().insert(
                "Retry-After",
                HeaderValue::from_str(&retry_after_secs.to_string()).expect("digits"),
            );
            Err(response)
        }
        Some(Fault::Unavailable) => {
            state.count("fault:5xx");
            Err(fault_error(
                shape,
                StatusCode::SERVICE_UNAVAILABLE,
                "serviceNotAvailable",
                "UNAVAILABLE",
                "The service is currently unavailable.",
            ))
        }
        Some(Fault::Internal) => {
            state.count("fault:5xx");
            Err(fault_error(
                shape,
                StatusCode::INTERNAL_SERVER_ERROR,
                "generalException",
                "INTERNAL",
                "Internal error encountered.",
            ))
        }
        Some(Fault::Malformed) => {
            state.count("fault:malformed");
            let mut response = Response::new(Body::from("{\"value\": [{\"id\": \"trunc"));
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            Err(response)
        }
    }
}
