//! The simulated Microsoft side: Entra's token endpoint (refresh-token grant with rotation) and
//! the Referrals API (list with OData and nextLink paging, get, JSON Patch with eTags).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use std::collections::HashMap;

use super::odata;
use super::{before, dropped, lock, ErrorShape, SimState};
use crate::timefmt::{db_timestamp, parse_timestamp};

type Shared = Arc<SimState>;

pub(crate) fn router() -> Router<Shared> {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(device_code))
        .route("/v1.0/engagements/referrals", get(list))
        // The documented nextLink points here (`http://.../v1.0/referrals?$skiptoken=...`).
        .route("/v1.0/referrals", get(list))
        .route(
            "/v1.0/engagements/referrals/{id}",
            get(get_one).patch(patch_one),
        )
}

/// Marks a referral as changed: fresh eTag (quoted, Cosmos style) and `updatedDateTime`.
pub fn touch(referral: &mut Value) {
    referral["eTag"] = json!(format!("\"{}\"", uuid::Uuid::new_v4()));
    referral["updatedDateTime"] = json!(db_timestamp(chrono::Utc::now()));
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response();
    add_request_id(&mut response);
    response
}

fn add_request_id(response: &mut Response) {
    let id = uuid::Uuid::new_v4().to_string();
    response.headers_mut().insert(
        "request-id",
        HeaderValue::from_str(&id).expect("uuid header"),
    );
}

fn ok_json(status: StatusCode, body: Value) -> Response {
    let mut response = (status, Json(body)).into_response();
    add_request_id(&mut response);
    response
}

pub(crate) fn authorized(state: &SimState, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if lock(&state.tokens).access_tokens.contains(t) => Ok(()),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The access token is missing, invalid or expired.",
        )),
    }
}

/// The simulated Entra token endpoint: every grant type the daemon uses (refresh token with
/// rotation, device code, client credentials for the classic scope), each with its error
/// answers. One handler, as Entra has one endpoint; each arm is short.
async fn token(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.count("token");
    let creds = &state.credentials;
    let oauth_error = |status: StatusCode, code: &str, description: &str| {
        (
            status,
            Json(json!({"error": code, "error_description": description})),
        )
            .into_response()
    };
    if tenant != creds.tenant {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "AADSTS90002: Tenant not found.",
        );
    }
    if form.get("client_id") != Some(&creds.client_id) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "AADSTS700016: Application not found in the directory.",
        );
    }
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant == "urn:ietf:params:oauth:grant-type:device_code" {
        // A public client may omit the secret; a wrong one is refused.
        if form
            .get("client_secret")
            .is_some_and(|s| s != &creds.client_secret)
        {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        let mut tokens = lock(&state.tokens);
        let code = form.get("device_code").cloned().unwrap_or_default();
        if !tokens.device_codes.contains(&code) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "AADSTS70000: Unknown device code.",
            );
        }
        if let Some(answer) = tokens.device_script.pop_front() {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                &answer,
                "AADSTS70016: OAuth 2.0 device flow error.",
            );
        }
        tokens.device_codes.remove(&code);
        return issue_tokens(&mut tokens);
    }
    if form.get("client_secret") != Some(&creds.client_secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.",
        );
    }
    if grant != "refresh_token" {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "AADSTS70003: The grant type is not supported.",
        );
    }
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    if !scope.contains("https://api.partner.microsoft.com/.default")
        && !scope.contains("https://api.partnercenter.microsoft.com/.default")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "AADSTS70011: The provided scope is not valid.",
        );
    }
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    let mut tokens = lock(&state.tokens);
    if !tokens.refresh_tokens.contains(&presented) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "AADSTS70000: The provided refresh token is expired, revoked or malformed.",
        );
    }
    if !tokens.keep_rotated {
        tokens.refresh_tokens.remove(&presented);
    }
    issue_tokens(&mut tokens)
}

fn issue_tokens(tokens: &mut super::TokenState) -> Response {
    let access = format!("sim-access-{}", uuid::Uuid::new_v4());
    let refresh = format!("sim-refresh-{}", uuid::Uuid::new_v4());
    tokens.access_tokens.insert(access.clone());
    tokens.refresh_tokens.insert(refresh.clone());
    let lifetime = tokens.access_token_lifetime_secs;
    Json(json!({
        "token_type": "Bearer",
        "scope": "https://api.partner.microsoft.com/user_impersonation",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
        "refresh_token": refresh,
    }))
    .into_response()
}

async fn device_code(
    State(state): State<Shared>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    state.count("devicecode");
    if tenant != state.credentials.tenant
        || form.get("client_id") != Some(&state.credentials.client_id)
    {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "error_description": "AADSTS700016: Application not found."}))).into_response();
    }
    let code = format!("sim-device-{}", uuid::Uuid::new_v4().simple());
    lock(&state.tokens).device_codes.insert(code.clone());
    Json(json!({
        "device_code": code,
        "user_code": "SIMCODE42",
        "verification_uri": "https://microsoft.com/devicelogin",
        "expires_in": 900,
        "interval": 1,
        "message": "To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code SIMCODE42 to authenticate."
    }))
    .into_response()
}

async fn list(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let drop_after = match before(&state, "list", ErrorShape::Microsoft).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let page = match query.get("$skiptoken") {
        Some(token) => next_page(&state, token),
        None => first_page(&state, &query),
    };
    let (items, next_token, total) = match page {
        Ok(p) => p,
        Err(r) => return r,
    };
    if drop_after {
        return dropped();
    }
    let mut body = json!({
        "@odata.context": format!("http://{host}/v1.0/$metadata#Referrals"),
        "@odata.count": total,
        "value": items,
    });
    if let Some(token) = next_token {
        // As documented: http scheme and a path different from the collection's.
        body["@odata.nextLink"] = json!(format!("http://{host}/v1.0/referrals?$skiptoken={token}"));
    }
    ok_json(StatusCode::OK, body)
}

type Page = (Vec<Value>, Option<String>, usize);

fn first_page(state: &SimState, query: &HashMap<String, String>) -> Result<Page, Response> {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "invalidRequest", &m);
    let filter = match query.get("$filter").filter(|f| !f.trim().is_empty()) {
        Some(f) => Some(odata::parse_filter(f).map_err(|e| bad(format!("Invalid $filter: {e}")))?),
        None => None,
    };
    let orderby = match query.get("$orderby") {
        Some(o) => odata::parse_orderby(o).map_err(|e| bad(format!("Invalid $orderby: {e}")))?,
        None => Vec::new(),
    };
    for key in &orderby {
        if !matches!(
            key.path.join("/").as_str(),
            "createdDateTime" | "updatedDateTime"
        ) {
            return Err(bad(format!(
                "$orderby supports createdDateTime and updatedDateTime, not {}",
                key.path.join("/")
            )));
        }
    }
    let top = match query.get("$top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|t| *t >= 1)
            .ok_or_else(|| bad(format!("Invalid $top: {t}")))?
            .min(100),
        None => 100,
    };
    let referrals = lock(&state.referrals);
    let mut matching: Vec<&Value> = referrals
        .values()
        .filter(|r| filter.as_ref().is_none_or(|f| odata::matches(f, r)))
        .collect();
    matching.sort_by(|a, b| {
        odata::order(a, b, &orderby).then_with(|| a["id"].as_str().cmp(&b["id"].as_str()))
    });
    let total = matching.len();
    let ids: Vec<String> = matching
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_default().to_string())
        .collect();
    drop(referrals);
    Ok(serve_from_cursor(
        state,
        super::Cursor {
            ids: Arc::new(ids),
            offset: 0,
            top,
        },
        total,
    ))
}

fn next_page(state: &SimState, token: &str) -> Result<Page, Response> {
    let cursor = lock(&state.cursors).get(token).cloned().ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalidRequest",
            "The $skiptoken is invalid or has expired.",
        )
    })?;
    let total = cursor.ids.len();
    Ok(serve_from_cursor(state, cursor, total))
}

/// Serves `top` records from the cursor, re-reading each (so a page shows current data), and
/// parks the rest under a new skiptoken.
fn serve_from_cursor(state: &SimState, mut cursor: super::Cursor, total: usize) -> Page {
    let end = (cursor.offset + cursor.top).min(cursor.ids.len());
    let referrals = lock(&state.referrals);
    let items: Vec<Value> = cursor.ids[cursor.offset..end]
        .iter()
        .filter_map(|id| referrals.get(id).cloned())
        .collect();
    drop(referrals);
    cursor.offset = end;
    let next = (end < cursor.ids.len()).then(|| {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let mut cursors = lock(&state.cursors);
        // Tokens expire eventually, as a real service's do; keep memory bounded.
        if cursors.len() > 50_000 {
            cursors.clear();
        }
        cursors.insert(token.clone(), cursor);
        token
    });
    (items, next, total)
}

async fn get_one(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let drop_after = match before(&state, "get", ErrorShape::Microsoft).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let found = lock(&state.referrals).get(&id).cloned();
    match found {
        _ if drop_after => dropped(),
        Some(mut r) => {
            r["@odata.context"] =
                json!("https://api.partner.microsoft.com/v1.0/$metadata#Referrals/$entity");
            ok_json(StatusCode::OK, r)
        }
        None => error(StatusCode::NOT_FOUND, "itemNotFound", "Referral not found."),
    }
}

const VALID_PAIRS: &[(&str, &[&str])] = &[
    ("New", &["Pending", "Received"]),
    ("Active", &["Accepted"]),
    ("Closed", &["Won", "Lost", "Declined", "Expired"]),
];

async fn patch_one(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = authorized(&state, &headers) {
        return r;
    }
    let _on_wire = super::WriteOnWire::start(&state);
    let latency = *lock(&state.patch_latency);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let drop_after = match before(&state, "patch", ErrorShape::Microsoft).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let response = apply_patch(&state, &headers, &id, &body);
    record_patch(&state, &headers, &id, &body, response.status().as_u16());
    if drop_after {
        return dropped();
    }
    response
}

fn record_patch(state: &SimState, headers: &HeaderMap, id: &str, body: &[u8], status: u16) {
    let mut patches = lock(&state.patches);
    if patches.len() >= 10_000 {
        patches.pop_front();
    }
    patches.push_back(super::SimPatch {
        referral_id: id.to_string(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        if_match: headers
            .get("if-match")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        status,
    });
}

/// Partner Center's PATCH rules in one place (eTag, JSON Patch ops, status transitions,
/// Closed is terminal), checked in the order the service documents them.
fn apply_patch(state: &SimState, headers: &HeaderMap, id: &str, body: &[u8]) -> Response {
    let bad = |code: &str, m: &str| error(StatusCode::BAD_REQUEST, code, m);
    let Ok(Value::Array(ops)) = serde_json::from_slice::<Value>(body) else {
        return bad("invalidRequest", "The body must be a JSON Patch array.");
    };
    let mut referrals = lock(&state.referrals);
    let Some(current) = referrals.get(id) else {
        return error(StatusCode::NOT_FOUND, "itemNotFound", "Referral not found.");
    };
    if let Some(tag) = headers.get("if-match").and_then(|v| v.to_str().ok()) {
        if Some(tag) != current["eTag"].as_str() {
            let mut r = error(
                StatusCode::PRECONDITION_FAILED,
                "preconditionFailed",
                "The resource has been modified since it was read.",
            );
            *r.body_mut() = Body::from(
                json!({"error": {"code": "preconditionFailed", "message": "The resource has been modified since it was read.", "target": "If-Match"}}).to_string(),
            );
            return r;
        }
    }
    if current["status"] == "Closed" {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "invalidRequest", "message": "Invalid status transition.", "innerError": {"code": "invalidStatus", "message": "Closed referrals cannot be updated."}}}))).into_response();
    }
    let old_status = current["status"].as_str().unwrap_or("New").to_string();
    let mut updated = current.clone();
    for op in &ops {
        let kind = op["op"].as_str().unwrap_or("");
        if !matches!(kind, "replace" | "add") {
            return bad(
                "invalidRequest",
                &format!("Unsupported patch operation '{kind}'; use replace or add."),
            );
        }
        let Some(path) = op["path"].as_str().filter(|p| p.starts_with('/')) else {
            return bad(
                "invalidRequest",
                "Each operation needs a path starting with '/'.",
            );
        };
        if matches!(
            path,
            "/id" | "/eTag" | "/createdDateTime" | "/updatedDateTime"
        ) {
            return bad("invalidRequest", &format!("{path} is read-only."));
        }
        set_pointer(&mut updated, path, op["value"].clone());
    }
    let status = updated["status"].as_str().unwrap_or("");
    let substatus = updated["substatus"].as_str().unwrap_or("");
    let pair_ok = VALID_PAIRS
        .iter()
        .any(|(s, subs)| *s == status && subs.contains(&substatus));
    let move_ok = match old_status.as_str() {
        "New" => true,
        "Active" => status != "New",
        _ => false,
    };
    if !pair_ok || !move_ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": "invalidRequest", "message": "Invalid status transition.", "innerError": {"code": "invalidStatus", "message": format!("{old_status} cannot move to {status}/{substatus}.")}}}))).into_response();
    }
    if let Some(value) = updated["details"]["dealValue"].as_f64() {
        if value < 0.0 {
            return bad("invalidRequest", "dealValue must not be negative.");
        }
    }
    if let Some(closing) = updated["details"]["closingDateTime"].as_str() {
        if parse_timestamp(closing).is_none() {
            return bad("invalidRequest", "closingDateTime is not a date.");
        }
    }
    if status == "Closed" && updated["closedDateTime"].is_null() {
        updated["closedDateTime"] = json!(db_timestamp(chrono::Utc::now()));
    }
    touch(&mut updated);
    referrals.insert(id.to_string(), updated.clone());
    drop(referrals);
    super::webhook::notify(state, id, false);
    let wants_body = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("return=representation"));
    if wants_body {
        ok_json(StatusCode::OK, updated)
    } else {
        let mut r = StatusCode::NO_CONTENT.into_response();
        add_request_id(&mut r);
        r
    }
}

/// Sets a JSON Pointer path, creating intermediate objects.
fn set_pointer(target: &mut Value, path: &str, value: Value) {
    let mut node = target;
    let parts: Vec<String> = path[1..]
        .split('/')
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_object() {
            *node = json!({});
        }
        let map = node.as_object_mut().expect("object");
        if i == parts.len() - 1 {
            map.insert(part.clone(), value);
            return;
        }
        node = map.entry(part.clone()).or_insert_with(|| json!({}));
    }
}
