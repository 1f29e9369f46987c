//! The simulated Google side: a service-account token endpoint that verifies the RS256 JWT
//! grant against the key it issued, and the four Cloud CRM Partners methods with the field
//! rules of the reference: required lead fields (enum values from the published lists, never
//! `*_UNSPECIFIED`), no list endpoint, `updateMask` required on patch and refused for
//! output-only fields.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

use super::{before, dropped, lock, ErrorShape, SimState};

type Shared = Arc<SimState>;

/// The simulated Google records.
#[derive(Debug, Default)]
pub struct GoogleState {
    pub leads: BTreeMap<String, Value>,
    pub(crate) opportunities: BTreeMap<String, Value>,
    pub(crate) access_tokens: HashSet<String>,
    /// The `updateMask` of every opportunity patch received, in order.
    pub(crate) patch_masks: Vec<String>,
    /// The `externalSystemId` of every lead create that reached the handler, in order (the
    /// server's own count: a create the client only feared sending is not here).
    pub(crate) create_requests: Vec<String>,
    /// How long a lead create takes to answer (after it is recorded above).
    pub(crate) create_latency: std::time::Duration,
    /// `Retry-After` seconds of a 429 the next lead create answers (once).
    pub(crate) create_429: Option<u64>,
    /// Lead creates being answered now, and the most ever at once (the creates in doubt).
    pub(crate) creates_in_flight: usize,
    pub(crate) max_creates_in_flight: usize,
    /// Added before every `get` answer (a slow Google read path).
    pub(crate) read_delay: std::time::Duration,
    next_id: u64,
}

/// The partner id the simulated Google side serves.
pub const PARTNER_ID: &str = "1234567";
const CLIENT_EMAIL: &str = "cosell-sync@sim-project.iam.gserviceaccount.com";

struct SimKey {
    pkcs8_pem: &'static str,
    public_der: Vec<u8>,
}

/// The simulator's service-account key: a fixed 2048-bit test key (ring, the one crypto
/// provider in the tree, signs with RSA keys but does not generate them). It signs nothing but
/// the simulator's own token grants on the loopback.
const SERVICE_ACCOUNT_KEY: &str = include_str!("keys/google-service-account.pem");

fn key() -> &'static SimKey {
    static KEY: OnceLock<SimKey> = OnceLock::new();
    KEY.get_or_init(|| {
        use rustls_pki_types::pem::PemObject;
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(SERVICE_ACCOUNT_KEY.as_bytes())
                .expect("the test key is PKCS#8 PEM");
        let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .expect("the test key is an RSA key");
        SimKey {
            pkcs8_pem: SERVICE_ACCOUNT_KEY,
            public_der: pair.public_key().as_ref().to_vec(),
        }
    })
}

/// A service-account key file for the simulator, its `token_uri` pointing at it.
pub fn key_json(base_url: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "sim-project",
        "private_key_id": "sim-key-1",
        "private_key": key().pkcs8_pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "100000000000000000001",
        "token_uri": format!("{base_url}/google/token"),
    })
    .to_string()
}

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/google/token", post(token))
        .route("/v1/partners/{partner}/leads", post(create_lead))
        .route("/v1/partners/{partner}/leads/{lead}", get(get_lead))
        .route(
            "/v1/partners/{partner}/opportunities/{opportunity}",
            get(get_opportunity).patch(patch_opportunity),
        )
}

/// Google's error shape.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": status.as_u16(), "message": message, "status": code}})),
    )
        .into_response()
}

fn invalid(field: &str, description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {
            "code": 400, "message": "Request contains an invalid argument.", "status": "INVALID_ARGUMENT",
            "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                         "fieldViolations": [{"field": field, "description": description}]}]
        }})),
    )
        .into_response()
}

async fn token(State(state): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    state.count("google.token");
    let oauth_error = |description: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": description})),
        )
            .into_response()
    };
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("Invalid grant_type.");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("Missing assertion.");
    };
    if let Err(e) = verify_jwt(assertion) {
        return oauth_error(&format!("Invalid JWT: {e}"));
    }
    let access = format!("ya29.sim-{}", uuid::Uuid::new_v4().simple());
    lock(&state.google).access_tokens.insert(access.clone());
    Json(json!({"access_token": access, "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

/// Why the simulated token endpoint refused a JWT bearer grant.
#[derive(Debug, thiserror::Error)]
enum JwtError {
    #[error("not three parts")]
    NotThreeParts,
    #[error("{0}")]
    Base64(#[from] base64::DecodeError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("alg {0} is not RS256")]
    Alg(Value),
    #[error("bad signature")]
    BadSignature,
    #[error("unknown issuer {0}")]
    Issuer(Value),
    #[error("scope cloudcrmpartners not requested")]
    Scope,
    #[error("audience {0} is not this token endpoint")]
    Audience(Value),
    #[error("expired")]
    Expired,
}

/// Checks the JWT bearer grant: RS256 signed by the issued key, issued by its service
/// account, for the cloudcrmpartners scope, addressed to this token endpoint, not expired.
fn verify_jwt(jwt: &str) -> Result<(), JwtError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(JwtError::NotThreeParts);
    };
    let decode = |p: &str| -> Result<Value, JwtError> {
        let bytes = b64.decode(p.trim_end_matches('='))?;
        Ok(serde_json::from_slice(&bytes)?)
    };
    let header = decode(header)?;
    if header["alg"] != "RS256" {
        return Err(JwtError::Alg(header["alg"].clone()));
    }
    // Base64url with or without padding: both are seen in the wild.
    let signature = b64.decode(signature.trim_end_matches('='))?;
    let signed = &jwt[..jwt.rfind('.').expect("three parts")];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &key().public_der)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature)?;
    let claims = decode(claims)?;
    if claims["iss"] != CLIENT_EMAIL {
        return Err(JwtError::Issuer(claims["iss"].clone()));
    }
    if !claims["scope"]
        .as_str()
        .unwrap_or("")
        .contains(crate::google::SCOPE)
    {
        return Err(JwtError::Scope);
    }
    if !claims["aud"]
        .as_str()
        .unwrap_or("")
        .ends_with("/google/token")
    {
        return Err(JwtError::Audience(claims["aud"].clone()));
    }
    let now = chrono::Utc::now().timestamp();
    if claims["exp"].as_i64().unwrap_or(0) < now {
        return Err(JwtError::Expired);
    }
    Ok(())
}

fn authorized(state: &SimState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if lock(&state.google).access_tokens.contains(t) => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        )),
    }
}

fn check_partner(partner: &str) -> Result<(), Response> {
    if partner == PARTNER_ID {
        Ok(())
    } else {
        Err(error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "The caller does not have permission for this partner.",
        ))
    }
}

const ENUMS: &[(&str, &str, &[&str])] = &[
    (
        "engagementModel",
        "lead.engagement_model",
        &["ENGAGEMENT_MODEL_BUILD", "ENGAGEMENT_MODEL_SERVICE"],
    ),
    (
        "dealTransactionType",
        "lead.deal_transaction_type",
        &["DEAL_TRANSACTION_TYPE_DEAL_SUBMISSION"],
    ),
    (
        "supportLevel",
        "lead.support_level",
        &[
            "SUPPORT_LEVEL_TECHNICAL_SUPPORT",
            "SUPPORT_LEVEL_UP_SELLING_OR_CROSS_SELLING",
            "SUPPORT_LEVEL_ALIGN_SALES_OR_ACCOUNT_STRATEGY",
            "SUPPORT_LEVEL_ALREADY_IN_TOUCH_WITH_CLOUD_SALES",
            "SUPPORT_LEVEL_OTHER",
        ],
    ),
    (
        "deliveryModel",
        "lead.delivery_model",
        &[
            "DELIVERY_MODEL_VM_ON_CUSTOMER_TENANCY",
            "DELIVERY_MODEL_SAAS_ON_GCP",
            "DELIVERY_MODEL_OTHER",
        ],
    ),
    (
        "contractVehicle",
        "lead.contract_vehicle",
        &[
            "CONTRACT_VEHICLE_MARKETPLACE",
            "CONTRACT_VEHICLE_NOT_KNOWN_AT_THIS_TIME",
            "CONTRACT_VEHICLE_PARTNER_CONTRACT",
        ],
    ),
];

const SALES_STAGES: &[&str] = &[
    "SALES_STAGE_QUALIFY",
    "SALES_STAGE_REFINE",
    "SALES_STAGE_TECH_EVAL_SOLUTION_DEV",
    "SALES_STAGE_PROPOSAL_NEGOTIATION",
    "SALES_STAGE_MIGRATION_IMPLEMENTATION",
    "SALES_STAGE_CLOSED_LOST",
    "SALES_STAGE_CLOSED_ADMIN",
];

fn valid_date(v: &Value) -> bool {
    crate::google::GoogleDate::parse(v).is_some()
}

/// The create rules: every Required field present and well typed.
fn validate_lead(lead: &Value) -> Result<(), Response> {
    let string = |key: &str| lead[key].as_str().is_some_and(|s| !s.trim().is_empty());
    for (key, field) in [
        ("leadCurrencyCode", "lead.lead_currency_code"),
        ("dealTerm", "lead.deal_term"),
        ("opportunitySummary", "lead.opportunity_summary"),
        ("submitterEmail", "lead.submitter_email"),
        ("externalSystemId", "lead.external_system_id"),
        ("description", "lead.description"),
    ] {
        if !string(key) {
            return Err(invalid(field, "Required field is missing."));
        }
    }
    if !lead["partnerAnnualContractValue"].is_number() {
        return Err(invalid(
            "lead.partner_annual_contract_value",
            "Required field is missing.",
        ));
    }
    if lead["customer"].as_object().is_none_or(|c| c.is_empty()) {
        return Err(invalid("lead.customer", "Required field is missing."));
    }
    if !valid_date(&lead["estimatedCloseDate"]) {
        return Err(invalid(
            "lead.estimated_close_date",
            "Required field is missing.",
        ));
    }
    for (key, field) in [
        (
            "customerContactRequested",
            "lead.customer_contact_requested",
        ),
        ("isvSolutionConnectDeal", "lead.isv_solution_connect_deal"),
    ] {
        if !lead[key].is_boolean() {
            return Err(invalid(field, "Required field is missing."));
        }
    }
    for (key, field, allowed) in ENUMS {
        match lead[*key].as_str() {
            None => return Err(invalid(field, "Required field is missing.")),
            Some(v) if !allowed.contains(&v) => {
                return Err(invalid(field, &format!("Invalid value {v:?}.")))
            }
            Some(_) => {}
        }
    }
    // ProductFamily values are not published: any real-looking value, exactly one.
    match lead["productInterests"].as_array() {
        Some(list) if list.len() == 1 => {
            let v = list[0].as_str().unwrap_or("");
            if v.is_empty()
                || v.ends_with("_UNSPECIFIED")
                || !v
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            {
                return Err(invalid(
                    "lead.product_interests",
                    &format!("Invalid value {v:?}."),
                ));
            }
        }
        Some(_) => {
            return Err(invalid(
                "lead.product_interests",
                "Only a single value is supported.",
            ))
        }
        None => {
            return Err(invalid(
                "lead.product_interests",
                "Required field is missing.",
            ))
        }
    }
    Ok(())
}

/// Counts a lead create out of `creates_in_flight` when its answer is made (or it is dropped).
struct InFlight(Shared);

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.0.google).creates_in_flight -= 1;
    }
}

async fn create_lead(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(partner): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers).and_then(|_| check_partner(&partner)) {
        return r;
    }
    let external_id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["externalSystemId"].as_str().map(str::to_string))
        .unwrap_or_default();
    let (latency, too_many) = {
        let mut g = lock(&state.google);
        g.create_requests.push(external_id);
        g.creates_in_flight += 1;
        g.max_creates_in_flight = g.max_creates_in_flight.max(g.creates_in_flight);
        (g.create_latency, g.create_429.take())
    };
    let _answered = InFlight(state.clone());
    let _on_wire = super::WriteOnWire::start(&state);
    if let Some(secs) = too_many {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded.",
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            response.headers_mut().insert("Retry-After", value);
        }
        return response;
    }
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let drop_after = match before(&state, "google.create_lead", ErrorShape::Google).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Ok(mut lead) = serde_json::from_slice::<Value>(&body) else {
        return invalid("lead", "Invalid JSON payload.");
    };
    if let Err(r) = validate_lead(&lead) {
        return r;
    }
    let created = {
        let mut g = lock(&state.google);
        g.next_id += 1;
        let name = format!("partners/{partner}/leads/{}", 8000 + g.next_id);
        let today = chrono::Utc::now().date_naive();
        lead["name"] = json!(name);
        lead["leadStatus"] = json!("STATE_SUBMITTED");
        lead["leadApprovalStatus"] = json!("APPROVAL_STATE_IN_PROCESS");
        lead["submittedTime"] = json!(crate::timefmt::db_timestamp(chrono::Utc::now()));
        lead["createDate"] = crate::google::GoogleDate::json(today);
        lead["title"] = lead["customer"]
            .as_object()
            .and_then(|c| c.values().find_map(Value::as_str))
            .map(|s| json!(s))
            .unwrap_or(Value::Null);
        g.leads.insert(name, lead.clone());
        lead
    };
    if drop_after {
        // The lead exists, but the client never hears of it.
        return dropped();
    }
    (StatusCode::OK, Json(created)).into_response()
}

async fn get_lead(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((partner, id)): Path<(String, String)>,
) -> Response {
    get_record(&state, &headers, &partner, "leads", &id).await
}

async fn get_opportunity(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((partner, id)): Path<(String, String)>,
) -> Response {
    get_record(&state, &headers, &partner, "opportunities", &id).await
}

/// `GET /v1/partners/{p}/{collection}/{id}` for both record kinds.
async fn get_record(
    state: &SimState,
    headers: &HeaderMap,
    partner: &str,
    collection: &str,
    id: &str,
) -> Response {
    if let Err(r) = authorized(state, headers).and_then(|_| check_partner(partner)) {
        return r;
    }
    let kind = if collection == "leads" {
        "google.get_lead"
    } else {
        "google.get_opportunity"
    };
    let drop_after = match before(state, kind, ErrorShape::Google).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let read_delay = lock(&state.google).read_delay;
    if !read_delay.is_zero() {
        tokio::time::sleep(read_delay).await;
    }
    let name = format!("partners/{partner}/{collection}/{id}");
    let found = {
        let g = lock(&state.google);
        let records = if collection == "leads" {
            &g.leads
        } else {
            &g.opportunities
        };
        records.get(&name).cloned()
    };
    match found {
        _ if drop_after => dropped(),
        Some(record) => Json(record).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{name} not found."),
        ),
    }
}

const WRITABLE: &[&str] = &[
    "notes",
    "nextSteps",
    "dealSize",
    "closeDate",
    "salesStage",
    "termMonths",
    "qualificationState",
    "externalSystemId",
    "isConfidential",
    "decisionPhase",
];
const OUTPUT_ONLY: &[&str] = &[
    "name",
    "lead",
    "owner",
    "dealCurrencyCode",
    "sourceSystem",
    "winProbability",
    "productFamily",
    "customer",
    "createDate",
    "submitDate",
];

async fn patch_opportunity(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path((partner, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers).and_then(|_| check_partner(&partner)) {
        return r;
    }
    let drop_after = match before(&state, "google.patch_opportunity", ErrorShape::Google).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let Some(mask) = query.get("updateMask").filter(|m| !m.is_empty()) else {
        return invalid("update_mask", "An explicit update mask is required.");
    };
    lock(&state.google).patch_masks.push(mask.clone());
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(&body) else {
        return invalid("opportunity", "Invalid JSON payload.");
    };
    let name = format!("partners/{partner}/opportunities/{id}");
    let mut g = lock(&state.google);
    let Some(current) = g.opportunities.get(&name).cloned() else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Opportunity {name} not found."),
        );
    };
    let mut updated = current;
    for path in mask.split(',').map(str::trim) {
        if OUTPUT_ONLY.contains(&path) {
            return invalid(
                &format!("update_mask.{path}"),
                "The field is output only and cannot be updated.",
            );
        }
        if !WRITABLE.contains(&path) {
            return invalid(
                &format!("update_mask.{path}"),
                "Unknown field in update mask.",
            );
        }
        let value = patch.get(path).cloned().unwrap_or(Value::Null);
        let ok = match path {
            "salesStage" => value.as_str().is_some_and(|s| SALES_STAGES.contains(&s)),
            "closeDate" => value.is_null() || valid_date(&value),
            "dealSize" => value.is_null() || value.is_number(),
            "termMonths" => value.is_null() || crate::google::model::int64(&value).is_some(),
            _ => true,
        };
        if !ok {
            return invalid(
                &format!("opportunity.{path}"),
                &format!("Invalid value {value}."),
            );
        }
        updated[path] = value;
    }
    g.opportunities.insert(name, updated.clone());
    drop(g);
    if drop_after {
        return dropped();
    }
    Json(updated).into_response()
}

impl super::Simulator {
    /// A service-account key file (JSON) for this simulator's Google token endpoint.
    pub fn google_key_json(&self) -> String {
        key_json(&self.base_url())
    }

    /// Every lead created so far.
    pub fn google_leads(&self) -> Vec<Value> {
        lock(&self.state.google).leads.values().cloned().collect()
    }

    /// Every lead create from now on takes `latency` to answer (it is received at once).
    pub fn set_create_latency(&self, latency: std::time::Duration) {
        lock(&self.state.google).create_latency = latency;
    }

    /// The most lead creates that were ever being answered at once.
    pub fn max_creates_in_flight(&self) -> usize {
        lock(&self.state.google).max_creates_in_flight
    }

    /// The next lead create answers 429 with this `Retry-After` (any number, to test clamping).
    pub fn answer_next_create_429(&self, retry_after_secs: u64) {
        lock(&self.state.google).create_429 = Some(retry_after_secs);
    }

    /// The `externalSystemId` of every lead create received, in order.
    pub fn create_requests(&self) -> Vec<String> {
        lock(&self.state.google).create_requests.clone()
    }

    /// How many leads carry each `externalSystemId` (a duplicate shows as a count above 1).
    pub fn leads_per_external_id(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for lead in lock(&self.state.google).leads.values() {
            let id = lead["externalSystemId"].as_str().unwrap_or("").to_string();
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    /// Google converts a lead into an opportunity (as its review would); returns its name.
    pub fn convert_lead(&self, lead_name: &str, opportunity_id: u64) -> Option<String> {
        let mut g = lock(&self.state.google);
        let lead = g.leads.get_mut(lead_name)?;
        lead["leadStatus"] = json!("STATE_CONVERTED");
        let lead = lead.clone();
        let partner = lead_name.split('/').nth(1).unwrap_or(PARTNER_ID);
        let name = format!("partners/{partner}/opportunities/{opportunity_id}");
        let opp = json!({
            "name": name,
            "lead": lead_name,
            "owner": {"givenName": "Alex", "familyName": "Kim", "email": "alex.kim@google.example", "phone": ""},
            "notes": "",
            "nextSteps": "",
            "dealSize": lead["partnerAnnualContractValue"],
            "dealCurrencyCode": lead["leadCurrencyCode"],
            "closeDate": lead["estimatedCloseDate"],
            "sourceSystem": "SOURCE_SYSTEM_PARTNER",
            "salesStage": "SALES_STAGE_QUALIFY",
            "winProbability": "20",
            "termMonths": "12",
            "qualificationState": "QUALIFICATION_STATE_APPROVED",
            "externalSystemId": lead["externalSystemId"],
            "createDate": lead["createDate"],
            "submitDate": lead["createDate"],
            "isConfidential": false,
        });
        g.opportunities.insert(name.clone(), opp);
        Some(name)
    }

    /// Makes every Google `get` answer `delay` late (writes are not slowed).
    pub fn set_google_read_delay(&self, delay: std::time::Duration) {
        lock(&self.state.google).read_delay = delay;
    }

    /// The `updateMask` of every opportunity patch received, in order.
    pub fn patch_masks(&self) -> Vec<String> {
        lock(&self.state.google).patch_masks.clone()
    }

    pub fn opportunity(&self, name: &str) -> Option<Value> {
        lock(&self.state.google).opportunities.get(name).cloned()
    }

    /// Changes an opportunity as a Google seller would.
    pub fn edit_opportunity(&self, name: &str, edit: impl FnOnce(&mut Value)) -> bool {
        let mut g = lock(&self.state.google);
        match g.opportunities.get_mut(name) {
            Some(o) => {
                edit(o);
                true
            }
            None => false,
        }
    }
}
