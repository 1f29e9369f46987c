//! The simulated Partner Center webhooks (partner-apis.md A.5): the registration API
//! (`/webhooks/v1/registration`, `…/validationEvents`), a test CA whose leaf certificate
//! (issued to `pcnotifications-dispatch.microsoft.com`) is served under `/cert/`, and signed
//! event delivery to the registered URL when a referral is created or changed — retried on a
//! failed delivery (Partner Center retries up to 10 times), and switchable to repeat, delay,
//! drop or forge events.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SigningKey, PKCS_RSA_SHA256,
};
use serde_json::{json, Value};

use super::{lock, SimState};
use crate::timefmt::db_timestamp;

type Shared = Arc<SimState>;

/// The subject the simulator's signing certificate is issued to (the real one's name [I]).
pub(crate) const SUBJECT: &str = "pcnotifications-dispatch.microsoft.com";
/// File name of the signing certificate under `/cert/`.
pub(crate) const CERT_FILE: &str = "pcnotifications-dispatch.microsoft.com.cer";
/// A certificate with the right name from a CA nobody trusts.
pub(crate) const UNTRUSTED_CERT_FILE: &str = "untrusted.cer";

/// A way to forge an event, for tests that every forgery is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forgery {
    /// Signed with the right key, but the body is changed after signing.
    TamperedBody,
    /// No `Authorization` header.
    Unsigned,
    /// `X-MS-Signature-Algorithm: hmac-sha256`.
    WrongAlgorithm,
    /// The certificate URL points to another host (which serves the genuine certificate).
    ForeignHost,
    /// Signed by a key whose certificate chains to an untrusted CA.
    UntrustedCertificate,
}

/// How events are delivered.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// Extra copies of every event (Partner Center may deliver more than once).
    pub repeat: u32,
    /// Wait before the first delivery.
    pub delay: Duration,
    /// Drop every event (nothing is sent).
    pub drop_all: bool,
    /// Forge every event this way.
    pub forge: Option<Forgery>,
}

#[derive(Debug, Default)]
pub struct WebhookState {
    pub registration: Option<(String, Vec<String>, String)>,
    pub(crate) delivery: Delivery,
}

/// The simulator's signing material: a root CA, a leaf under it, and an untrusted pair.
struct Signer {
    ca_pem: String,
    leaf_der: Vec<u8>,
    leaf_key: KeyPair,
    untrusted_der: Vec<u8>,
    untrusted_key: KeyPair,
}

/// One per process: every simulator may share it.
fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let (ca_pem, leaf_der, leaf_key) = chain(
            "cosell-sync simulated Microsoft root",
            include_str!("keys/webhook-root.pem"),
            include_str!("keys/webhook-leaf.pem"),
        );
        let (_, untrusted_der, untrusted_key) = chain(
            "an untrusted root",
            include_str!("keys/untrusted-root.pem"),
            include_str!("keys/untrusted-leaf.pem"),
        );
        Signer {
            ca_pem,
            leaf_der,
            leaf_key,
            untrusted_der,
            untrusted_key,
        }
    })
}

/// A CA (PEM) and a leaf certificate (DER) issued to [`SUBJECT`], with the leaf's key. The
/// keys are fixed 2048-bit test keys (PKCS#8 PEM): ring signs with RSA but does not generate it.
fn chain(ca_name: &str, ca_key: &str, leaf_key: &str) -> (String, Vec<u8>, KeyPair) {
    let rsa = |pem: &str| {
        KeyPair::from_pkcs8_pem_and_sign_algo(pem, &PKCS_RSA_SHA256).expect("a PKCS#8 RSA key")
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(ca, rsa(ca_key)).expect("CA signs itself");
    let mut leaf = CertificateParams::new(vec![SUBJECT.to_string()]).expect("leaf params");
    leaf.distinguished_name.push(DnType::CommonName, SUBJECT);
    leaf.distinguished_name
        .push(DnType::OrganizationName, "Microsoft Corporation");
    let leaf_key = rsa(leaf_key);
    let cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("CA signs the leaf");
    (issuer.pem(), cert.der().to_vec(), leaf_key)
}

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route(
            "/webhooks/v1/registration",
            get(show).post(create).put(replace).delete(remove),
        )
        .route(
            "/webhooks/v1/registration/validationEvents",
            post(validation),
        )
        .route("/cert/{file}", get(certificate))
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"code": status.as_u16(), "description": message})),
    )
        .into_response()
}

fn registration_json(r: &(String, Vec<String>, String)) -> Value {
    json!({"SubscriberId": r.2, "WebhookUrl": r.0, "WebhookEvents": r.1})
}

async fn show(State(state): State<Shared>, headers: HeaderMap) -> Response {
    state.count("webhook:registration");
    if let Err(r) = super::microsoft::authorized(&state, &headers) {
        return r;
    }
    match &lock(&state.webhook).registration {
        Some(r) => Json(registration_json(r)).into_response(),
        None => error(StatusCode::NOT_FOUND, "No registration found."),
    }
}

fn read_registration(body: &Value) -> Result<(String, Vec<String>), Response> {
    let url = body
        .get("WebhookUrl")
        .or_else(|| body.get("webhookUrl"))
        .and_then(Value::as_str)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "WebhookUrl is required."))?;
    let events: Vec<String> = body
        .get("WebhookEvents")
        .or_else(|| body.get("webhookEvents"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if events.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "WebhookEvents is required."));
    }
    Ok((url.to_string(), events))
}

async fn create(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    write_registration(&state, &headers, &body, false)
}

async fn replace(
    State(state): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    write_registration(&state, &headers, &body, true)
}

fn write_registration(
    state: &SimState,
    headers: &HeaderMap,
    body: &Value,
    replace: bool,
) -> Response {
    state.count("webhook:registration");
    if let Err(r) = super::microsoft::authorized(state, headers) {
        return r;
    }
    let (url, events) = match read_registration(body) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut w = lock(&state.webhook);
    // [I] One registration per tenant: POST on an existing one is refused, PUT replaces.
    match (&w.registration, replace) {
        (Some(_), false) => {
            return error(
                StatusCode::CONFLICT,
                "A registration already exists; use PUT.",
            )
        }
        (None, true) => return error(StatusCode::NOT_FOUND, "No registration found."),
        _ => {}
    }
    let subscriber = w
        .registration
        .as_ref()
        .map(|r| r.2.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let registration = (url, events, subscriber);
    let answer = registration_json(&registration);
    w.registration = Some(registration);
    Json(answer).into_response()
}

async fn remove(State(state): State<Shared>, headers: HeaderMap) -> Response {
    state.count("webhook:registration");
    if let Err(r) = super::microsoft::authorized(&state, &headers) {
        return r;
    }
    match lock(&state.webhook).registration.take() {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "No registration found."),
    }
}

async fn validation(State(state): State<Shared>, headers: HeaderMap) -> Response {
    state.count("webhook:validation");
    if let Err(r) = super::microsoft::authorized(&state, &headers) {
        return r;
    }
    let subscribed = lock(&state.webhook)
        .registration
        .as_ref()
        .is_some_and(|r| r.1.iter().any(|e| e == crate::webhook::TEST_EVENT));
    if !subscribed {
        return error(
            StatusCode::BAD_REQUEST,
            "The registration has no test-created event.",
        );
    }
    let correlation = uuid::Uuid::new_v4().to_string();
    let uri = format!("https://api.partnercenter.microsoft.com/webhooks/v1/registration/validationEvents/{correlation}");
    send(&state, crate::webhook::TEST_EVENT, uri);
    Json(json!({"correlationId": correlation})).into_response()
}

async fn certificate(State(state): State<Shared>, Path(file): Path<String>) -> Response {
    state.count("webhook:certificate");
    let der = match file.as_str() {
        CERT_FILE => signer().leaf_der.clone(),
        UNTRUSTED_CERT_FILE => signer().untrusted_der.clone(),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let mut r = der.into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/pkix-cert"),
    );
    r
}

/// A referral was created or changed: an event to the registered URL, if subscribed.
pub(crate) fn notify(state: &SimState, referral_id: &str, created: bool) {
    let name = if created {
        "referral-created"
    } else {
        "referral-updated"
    };
    let uri =
        format!("https://api.partnercenter.microsoft.com/engagements/v1/referrals/{referral_id}");
    send(state, name, uri);
}

/// Builds, signs (or forges) and delivers one event in the background.
fn send(state: &SimState, event_name: &str, resource_uri: String) {
    let (target, delivery) = {
        let w = lock(&state.webhook);
        let Some((url, events, _)) = &w.registration else {
            return;
        };
        if !events.iter().any(|e| e == event_name) {
            return;
        }
        (url.clone(), w.delivery.clone())
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    state.count("webhook:event");
    if delivery.drop_all {
        state.count("webhook:dropped");
        return;
    }
    let resource_name = if event_name == crate::webhook::TEST_EVENT {
        "test"
    } else {
        "referral"
    };
    let body = json!({
        "EventName": event_name,
        "ResourceUri": resource_uri,
        "ResourceName": resource_name,
        "AuditUri": null,
        "ResourceChangeUtcDate": db_timestamp(chrono::Utc::now()),
    })
    .to_string();
    let base = lock(&state.base_url).clone();
    let request = signed_request(&base, &body, delivery.forge);
    runtime.spawn(deliver(target, request, delivery));
}

/// What is sent: the body as sent, and its headers.
#[derive(Debug, Clone)]
struct SignedRequest {
    body: String,
    headers: Vec<(&'static str, String)>,
}

fn signed_request(base: &str, body: &str, forge: Option<Forgery>) -> SignedRequest {
    let s = signer();
    let key = if forge == Some(Forgery::UntrustedCertificate) {
        &s.untrusted_key
    } else {
        &s.leaf_key
    };
    let signature = key.sign(body.as_bytes()).expect("RSA signs");
    let encoded = base64::engine::general_purpose::STANDARD.encode(signature);
    let cert_url = match forge {
        Some(Forgery::UntrustedCertificate) => format!("{base}/cert/{UNTRUSTED_CERT_FILE}"),
        // The same server under another name: the genuine certificate, a foreign host.
        Some(Forgery::ForeignHost) => format!(
            "{}/cert/{CERT_FILE}",
            base.replace("127.0.0.1", "localhost")
        ),
        _ => format!("{base}/cert/{CERT_FILE}"),
    };
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("x-ms-certificate-url", cert_url),
    ];
    if forge != Some(Forgery::Unsigned) {
        headers.push(("authorization", format!("Signature {encoded}")));
    }
    let algorithm = if forge == Some(Forgery::WrongAlgorithm) {
        "hmac-sha256"
    } else {
        "rsa-sha256"
    };
    headers.push(("x-ms-signature-algorithm", algorithm.into()));
    let body = if forge == Some(Forgery::TamperedBody) {
        body.replace("referral-", "referral-x-")
    } else {
        body.to_string()
    };
    SignedRequest { body, headers }
}

/// Delivers with Partner Center's persistence: up to 10 attempts until a 2xx; `repeat` extra
/// copies after the first success.
async fn deliver(target: String, request: SignedRequest, delivery: Delivery) {
    if !delivery.delay.is_zero() {
        tokio::time::sleep(delivery.delay).await;
    }
    let client = crate::http::client_builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("reqwest client builds");
    for _copy in 0..=delivery.repeat {
        for attempt in 0..10u32 {
            let mut r = client.post(&target).body(request.body.clone());
            for (k, v) in &request.headers {
                r = r.header(*k, v);
            }
            match r.send().await {
                Ok(answer) if answer.status().is_success() => break,
                // A refused forgery stays refused; no point in sending it 10 times.
                Ok(answer) if answer.status() == StatusCode::UNAUTHORIZED => break,
                _ => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await,
            }
        }
    }
}

impl super::Simulator {
    /// The simulator's root CA (PEM), for `webhook.ca_file`.
    pub fn webhook_ca_pem(&self) -> String {
        signer().ca_pem.clone()
    }

    /// The prefix under which the simulator serves its signing certificate.
    pub fn webhook_certificate_prefix(&self) -> String {
        format!("{}/cert/", self.base_url())
    }

    /// How events are delivered from now on.
    pub fn set_webhook_delivery(&self, delivery: Delivery) {
        lock(&self.state.webhook).delivery = delivery;
    }

    /// The registration (URL, events), as `webhook register` left it.
    pub fn webhook_registration(&self) -> Option<(String, Vec<String>)> {
        lock(&self.state.webhook)
            .registration
            .as_ref()
            .map(|r| (r.0.clone(), r.1.clone()))
    }

    /// Registers a URL directly (tests that do not exercise `webhook register`).
    pub fn register_webhook(&self, url: &str) {
        lock(&self.state.webhook).registration = Some((
            url.to_string(),
            crate::config::webhook::DEFAULT_EVENTS
                .iter()
                .map(|e| e.to_string())
                .collect(),
            uuid::Uuid::new_v4().to_string(),
        ));
    }

    /// The headers Partner Center would send with `body` (signed with the genuine key), for
    /// tests that tamper with them.
    pub fn sign_event(&self, body: &str) -> Vec<(&'static str, String)> {
        signed_request(&self.base_url(), body, None).headers
    }

    /// Sends an event about a referral now, as Partner Center would after a change.
    pub fn send_referral_event(&self, referral_id: &str, created: bool) {
        notify(&self.state, referral_id, created);
    }
}

/// The genuine signing key's signature of `body`, base64: forged-URL floods in the tests and
/// the flood bench pair it with certificate URLs of their own.
pub fn sign(body: &[u8]) -> String {
    let signature = signer().leaf_key.sign(body).expect("RSA signs");
    base64::engine::general_purpose::STANDARD.encode(signature)
}

/// The CA (PEM) and the leaf (DER) the simulator signs with, for unit tests of the verifier.
#[cfg(test)]
pub fn material() -> (String, Vec<u8>, Vec<u8>) {
    let s = signer();
    (
        s.ca_pem.clone(),
        s.leaf_der.clone(),
        s.untrusted_der.clone(),
    )
}
