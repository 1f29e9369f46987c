//! The simulated AWS Partner Central inbox, following `partner-apis.md` part D (not our
//! client): one `POST /` taking AWS JSON 1.0 with `X-Amz-Target`, every request's SigV4
//! signature verified (service `partnercentral-selling`, us-east-1; a wrong secret gets the
//! error AWS gives), the five operations with their required members and patterns, paging with
//! an opaque `NextToken`, `ClientToken` idempotency on the accept task, tasks that complete
//! after a few polls (or fail, on demand), rejects, and a throttle switch. It listens on
//! 127.0.0.1 only, on its own port (AWS's endpoint is another host than Microsoft's).
//!
//! Where part D is silent the behaviour is a guess, marked [I]: the HTTP status of the
//! signature errors (403), `ConflictException` for an answer to an invitation that is no longer
//! `PENDING` or a `ClientToken` reused for another invitation, and the invitation turning
//! `ACCEPTED` when its task completes. `demo` and `cosell-sync sim` serve it with
//! [`sample_invitations`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, TimeDelta, Utc};
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::aws::sigv4;

/// The access key the simulator knows by default.
pub const ACCESS_KEY_ID: &str = "AKIDSIMULATORAWS01";
/// Its secret.
pub const SECRET_ACCESS_KEY: &str = "sim-aws-secret-access-key";
/// The account the invitations are sent to.
const RECEIVER_ACCOUNT: &str = "210987654321";

/// How an accept task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Complete,
    Failed {
        reason_code: String,
        message: String,
    },
}

#[derive(Debug, Clone)]
struct SimTask {
    id: String,
    invitation_id: String,
    client_token: String,
    catalog: String,
    start_time: DateTime<Utc>,
    /// List reads left before the task ends.
    polls_left: u32,
    outcome: Outcome,
    /// Set once the task is `COMPLETE`.
    opportunity_id: Option<String>,
    ended: bool,
}

/// One request that passed the signature check, for the tests.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsRequest {
    pub operation: String,
    pub body: Value,
    /// When it arrived (the write quota is counted on these).
    pub at: DateTime<Utc>,
}

/// The simulated account's state.
#[derive(Debug)]
pub struct AwsState {
    keys: HashMap<String, (String, Option<String>)>,
    /// Full invitations (the `GetEngagementInvitation` shape), by id.
    invitations: BTreeMap<String, Value>,
    tasks: BTreeMap<String, SimTask>,
    page_size: usize,
    polls_to_finish: u32,
    fail_next: Option<Outcome>,
    throttle_next: u32,
    /// Operations the caller's IAM policy does not allow (`AccessDeniedException`).
    denied: BTreeSet<String>,
    /// `ThrottlingException` for the next requests of one operation.
    throttle_operation: Option<(String, u32)>,
    /// Requests answered with `ThrottlingException`, oldest first (bounded).
    throttled: VecDeque<AwsRequest>,
    requests: VecDeque<AwsRequest>,
    counters: BTreeMap<String, u64>,
    next_id: u64,
}

impl Default for AwsState {
    fn default() -> Self {
        AwsState {
            keys: HashMap::from([(
                ACCESS_KEY_ID.to_string(),
                (SECRET_ACCESS_KEY.to_string(), None),
            )]),
            invitations: BTreeMap::new(),
            tasks: BTreeMap::new(),
            page_size: 100,
            polls_to_finish: 2,
            fail_next: None,
            throttle_next: 0,
            denied: BTreeSet::new(),
            throttle_operation: None,
            throttled: VecDeque::new(),
            requests: VecDeque::new(),
            counters: BTreeMap::new(),
            next_id: 0,
        }
    }
}

type Shared = Arc<Mutex<AwsState>>;

/// A running AWS simulator; stops when dropped.
pub struct AwsSimulator {
    addr: SocketAddr,
    state: Shared,
    stop: CancellationToken,
}

impl Drop for AwsSimulator {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl AwsSimulator {
    /// Starts on an ephemeral port of 127.0.0.1, with no invitations.
    pub async fn start() -> std::io::Result<AwsSimulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts on `addr` (`cosell-sync sim` puts it beside the other simulator's port, so a
    /// rehearsal's `[aws] endpoint` survives a restart of the simulator).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<AwsSimulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::default();
        let app = Router::new()
            .route("/", post(handle))
            .with_state(state.clone());
        let stop = super::spawn_server(listener, app);
        Ok(AwsSimulator { addr, state, stop })
    }

    /// `http://127.0.0.1:PORT`: the `[aws] endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds or replaces invitations (any JSON with an `Id`, so tests can plant odd ones).
    pub fn put_invitations(&self, invitations: impl IntoIterator<Item = Value>) {
        let mut state = lock(&self.state);
        for inv in invitations {
            let id = inv
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            state.invitations.insert(id, inv);
        }
    }

    /// How many invitations it holds (of any status).
    pub fn invitation_count(&self) -> usize {
        lock(&self.state).invitations.len()
    }

    pub fn invitation(&self, id: &str) -> Option<Value> {
        lock(&self.state).invitations.get(id).cloned()
    }

    /// Changes an invitation as AWS or a person in the console would (accepted there, expired).
    pub fn edit_invitation(&self, id: &str, edit: impl FnOnce(&mut Value)) -> bool {
        lock(&self.state)
            .invitations
            .get_mut(id)
            .map(edit)
            .is_some()
    }

    /// Accepts another key (and, for temporary credentials, its session token).
    pub fn allow_key(&self, id: &str, secret: &str, session_token: Option<&str>) {
        lock(&self.state).keys.insert(
            id.to_string(),
            (secret.to_string(), session_token.map(str::to_string)),
        );
    }

    /// Summaries per list page (100 by default, the most `MaxResults` allows).
    pub fn set_page_size(&self, size: usize) {
        lock(&self.state).page_size = size.max(1);
    }

    /// Task-list reads before an accept task ends (2 by default).
    pub fn set_polls_to_finish(&self, polls: u32) {
        lock(&self.state).polls_to_finish = polls;
    }

    /// The next accept task started ends `FAILED` with this reason code and message.
    pub fn fail_next_accept(&self, reason_code: &str, message: &str) {
        lock(&self.state).fail_next = Some(Outcome::Failed {
            reason_code: reason_code.into(),
            message: message.into(),
        });
    }

    /// The next `n` signed requests get `ThrottlingException`.
    pub fn throttle_next(&self, n: u32) {
        lock(&self.state).throttle_next = n;
    }

    /// From now on `operation` is refused with `AccessDeniedException`, as AWS refuses a
    /// caller whose IAM policy lacks `partnercentral:<operation>`.
    pub fn deny(&self, operation: &str) {
        lock(&self.state).denied.insert(operation.to_string());
    }

    /// The next `n` requests of `operation` (e.g. the accept's start) get
    /// `ThrottlingException`, whatever comes between them.
    pub fn throttle_next_of(&self, operation: &str, n: u32) {
        lock(&self.state).throttle_operation = Some((operation.to_string(), n));
    }

    /// The signed requests answered with `ThrottlingException`, oldest first (bounded).
    pub fn throttled(&self) -> Vec<AwsRequest> {
        lock(&self.state).throttled.iter().cloned().collect()
    }

    /// Requests served, by operation (and `throttled`, `refused:<error>`).
    pub fn counter(&self, key: &str) -> u64 {
        lock(&self.state).counters.get(key).copied().unwrap_or(0)
    }

    /// The signed requests that reached an operation, oldest first (bounded).
    pub fn requests(&self) -> Vec<AwsRequest> {
        lock(&self.state).requests.iter().cloned().collect()
    }
}

/// An AWS JSON error: `{"__type": "...#Name", "message": ...}` and `x-amzn-errortype` (D.1).
fn error(status: StatusCode, name: &str, message: &str, extra: Value) -> Response {
    let mut body = json!({
        "__type": format!("com.amazonaws.partnercentral.selling#{name}"),
        "message": message,
    });
    if let (Some(map), Value::Object(more)) = (body.as_object_mut(), extra) {
        map.extend(more);
    }
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(
        "x-amzn-errortype",
        name.parse().expect("an error name is a header value"),
    );
    response
}

/// `ValidationException` naming one field (D.4's errors; `ErrorList` item members [I]).
fn invalid(field: &str, code: &str, message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ValidationException",
        &format!("{field}: {message}"),
        json!({"Reason": "REQUEST_VALIDATION_FAILED",
               "ErrorList": [{"FieldName": field, "Message": message, "Code": code}]}),
    )
}

fn not_found(id: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ResourceNotFoundException",
        &format!("Engagement invitation {id} was not found"),
        json!({}),
    )
}

fn conflict(message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "ConflictException",
        message,
        json!({}),
    )
}

fn ok(body: Value) -> Response {
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response.headers_mut().insert(
        "content-type",
        "application/x-amz-json-1.0"
            .parse()
            .expect("a content type"),
    );
    response
}

async fn handle(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let header_list: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(n, v)| Some((n.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let request = sigv4::Request {
        method: "POST",
        path: "/",
        query: "",
        headers: header_list,
        body: &body,
    };
    let mut state = lock(&state);
    let known = |id: &str| {
        state.keys.get(id).map(|(secret, token)| sigv4::KnownKey {
            secret_access_key: SecretString::from(secret.clone()),
            session_token: token.clone().map(SecretString::from),
        })
    };
    if let Err(refusal) = sigv4::verify(&request, known, sigv4::REGION, sigv4::SERVICE, Utc::now())
    {
        // [I] AWS's JSON services answer the signature errors with 403.
        *state
            .counters
            .entry(format!("refused:{}", refusal.error_name()))
            .or_default() += 1;
        return error(
            StatusCode::FORBIDDEN,
            refusal.error_name(),
            &refusal.message(),
            json!({}),
        );
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    if content_type != Some("application/x-amz-json-1.0") {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "Expected application/x-amz-json-1.0",
            json!({}),
        );
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(operation) = target.strip_prefix("AWSPartnerCentralSelling.") else {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "",
            json!({}),
        );
    };
    let Ok(input) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "Start of structure or map found where not expected.",
            json!({}),
        );
    };
    if state.denied.contains(operation) {
        *state
            .counters
            .entry("refused:AccessDeniedException".into())
            .or_default() += 1;
        return error(
            StatusCode::BAD_REQUEST,
            "AccessDeniedException",
            &format!("User: arn:aws:iam::{RECEIVER_ACCOUNT}:user/cosell-sync is not authorized to perform: partnercentral:{operation} because no identity-based policy allows the partnercentral:{operation} action"),
            json!({"Reason": "ACCESS_DENIED"}),
        );
    }
    let this_one = match &mut state.throttle_operation {
        Some((op, n)) if op == operation && *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    };
    if state.throttle_next > 0 || this_one {
        if !this_one {
            state.throttle_next -= 1;
        }
        *state.counters.entry("throttled".into()).or_default() += 1;
        if state.throttled.len() >= 1_000 {
            state.throttled.pop_front();
        }
        state.throttled.push_back(AwsRequest {
            operation: operation.to_string(),
            body: input.clone(),
            at: Utc::now(),
        });
        return error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            "Rate exceeded",
            json!({}),
        );
    }
    *state.counters.entry(operation.to_string()).or_default() += 1;
    if state.requests.len() >= 10_000 {
        state.requests.pop_front();
    }
    state.requests.push_back(AwsRequest {
        operation: operation.to_string(),
        body: input.clone(),
        at: Utc::now(),
    });
    let catalog = match input.get("Catalog").and_then(Value::as_str) {
        Some(c) if !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphabetic()) => c.to_string(),
        Some(_) => return invalid("Catalog", "INVALID_STRING_FORMAT", "must match [a-zA-Z]+"),
        None => return invalid("Catalog", "REQUIRED_FIELD_MISSING", "is required"),
    };
    match operation {
        "ListEngagementInvitations" => list_invitations(&state, &catalog, &input),
        "GetEngagementInvitation" => {
            with_invitation(&state, &catalog, &input, |inv| ok(inv.clone()))
        }
        "StartEngagementByAcceptingInvitationTask" => start_task(&mut state, &catalog, &input),
        "ListEngagementByAcceptingInvitationTasks" => list_tasks(&mut state, &catalog, &input),
        "RejectEngagementInvitation" => reject(&mut state, &catalog, &input),
        _ => error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            "",
            json!({}),
        ),
    }
}

/// The model's `Identifier` pattern: `engi-` and 13 of `[0-9a-z]`, or an ARN (1–255).
fn identifier(input: &Value) -> Result<String, Box<Response>> {
    let Some(id) = input.get("Identifier").and_then(Value::as_str) else {
        return Err(Box::new(invalid(
            "Identifier",
            "REQUIRED_FIELD_MISSING",
            "is required",
        )));
    };
    let engi = id.strip_prefix("engi-").is_some_and(|r| {
        r.len() == 13
            && r.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    });
    if (engi || id.starts_with("arn:")) && (1..=255).contains(&id.len()) {
        // An ARN names the invitation by its last segment.
        Ok(id.rsplit('/').next().unwrap_or(id).to_string())
    } else {
        Err(Box::new(invalid(
            "Identifier",
            "INVALID_STRING_FORMAT",
            "must be engi-[0-9a-z]{13} or an ARN",
        )))
    }
}

fn with_invitation(
    state: &AwsState,
    catalog: &str,
    input: &Value,
    answer: impl FnOnce(&Value) -> Response,
) -> Response {
    let id = match identifier(input) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    match state.invitations.get(&id) {
        Some(inv) if inv["Catalog"] == catalog => answer(inv),
        _ => not_found(&id),
    }
}

/// The summary members of an invitation (D.4's `EngagementInvitationSummaries`).
fn summary(inv: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for key in [
        "Arn",
        "PayloadType",
        "Id",
        "EngagementId",
        "EngagementTitle",
        "Status",
        "InvitationDate",
        "ExpirationDate",
        "SenderAwsAccountId",
        "SenderCompanyName",
        "Receiver",
        "Catalog",
    ] {
        if let Some(v) = inv.get(key) {
            out.insert(key.into(), v.clone());
        }
    }
    out.insert("ParticipantType".into(), json!("RECEIVER"));
    Value::Object(out)
}

/// An opaque page token: where the next page starts, with a check so a made-up one fails.
fn page_token(offset: usize) -> String {
    format!(
        "{offset}.{:08x}",
        crate::config::fnv1a(format!("aws-page-{offset}").as_bytes()) as u32
    )
}

fn page_offset(token: &str) -> Option<usize> {
    let (offset, _) = token.split_once('.')?;
    let offset: usize = offset.parse().ok()?;
    (page_token(offset) == token).then_some(offset)
}

fn list_invitations(state: &AwsState, catalog: &str, input: &Value) -> Response {
    match input.get("ParticipantType").and_then(Value::as_str) {
        Some("RECEIVER") => {}
        // This account sent nothing.
        Some("SENDER") => return ok(json!({"EngagementInvitationSummaries": []})),
        Some(_) => {
            return invalid(
                "ParticipantType",
                "INVALID_ENUM_VALUE",
                "must be SENDER or RECEIVER",
            )
        }
        None => return invalid("ParticipantType", "REQUIRED_FIELD_MISSING", "is required"),
    }
    let max = match input.get("MaxResults") {
        None => 100,
        Some(v) => match v.as_u64() {
            Some(n @ 1..=100) => n as usize,
            _ => {
                return invalid(
                    "MaxResults",
                    "VALUE_OUT_OF_RANGE",
                    "must be between 1 and 100",
                )
            }
        },
    };
    let statuses: Option<Vec<&str>> = input
        .get("Status")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect());
    let offset = match input.get("NextToken").and_then(Value::as_str) {
        None => 0,
        Some(token) => match page_offset(token) {
            Some(o) => o,
            None => return invalid("NextToken", "INVALID_VALUE", "is not a token this API gave"),
        },
    };
    let matching: Vec<&Value> = state
        .invitations
        .values()
        .filter(|inv| inv["Catalog"] == catalog)
        .filter(|inv| {
            statuses
                .as_ref()
                .is_none_or(|s| s.iter().any(|st| inv["Status"] == *st))
        })
        .collect();
    let size = max.min(state.page_size);
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(size)
        .map(|inv| summary(inv))
        .collect();
    let mut body = json!({"EngagementInvitationSummaries": page});
    if offset + size < matching.len() {
        body["NextToken"] = json!(page_token(offset + size));
    }
    ok(body)
}

fn task_json(task: &SimTask) -> Value {
    let mut out = json!({
        "TaskId": task.id,
        "TaskArn": format!("arn:aws:partnercentral:us-east-1:{RECEIVER_ACCOUNT}:catalog/{}/engagement-by-accepting-invitation-task/{}", task.catalog, task.id),
        "StartTime": crate::timefmt::db_timestamp(task.start_time),
        "EngagementInvitationId": task.invitation_id,
        "TaskStatus": if !task.ended { "IN_PROGRESS" } else if task.outcome == Outcome::Complete { "COMPLETE" } else { "FAILED" },
    });
    if let Some(o) = &task.opportunity_id {
        out["OpportunityId"] = json!(o);
    }
    if let (
        true,
        Outcome::Failed {
            reason_code,
            message,
        },
    ) = (task.ended, &task.outcome)
    {
        out["ReasonCode"] = json!(reason_code);
        out["Message"] = json!(message);
    }
    out
}

fn start_task(state: &mut AwsState, catalog: &str, input: &Value) -> Response {
    let id = match identifier(input) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let token = match input.get("ClientToken").and_then(Value::as_str) {
        Some(t) if (1..=255).contains(&t.chars().count()) => t.to_string(),
        Some(_) => {
            return invalid(
                "ClientToken",
                "INVALID_STRING_FORMAT",
                "must be 1 to 255 characters",
            )
        }
        None => return invalid("ClientToken", "REQUIRED_FIELD_MISSING", "is required"),
    };
    // The idempotency key: the same token answers with the same task, once.
    if let Some(task) = state.tasks.values().find(|t| t.client_token == token) {
        if task.invitation_id != id {
            return conflict("ClientToken was already used for another invitation");
        }
        return ok(task_json(task));
    }
    match state.invitations.get(&id) {
        Some(inv) if inv["Catalog"] == catalog => {
            if inv["Status"] != "PENDING" {
                return conflict(&format!(
                    "Engagement invitation {id} is {}, not PENDING",
                    inv["Status"]
                ));
            }
        }
        _ => return not_found(&id),
    }
    if state
        .tasks
        .values()
        .any(|t| t.invitation_id == id && !t.ended)
    {
        return conflict(&format!("An accept task for {id} is already in progress"));
    }
    state.next_id += 1;
    let task = SimTask {
        id: format!("task-{:013}", state.next_id),
        invitation_id: id,
        client_token: token,
        catalog: catalog.to_string(),
        start_time: Utc::now(),
        polls_left: state.polls_to_finish,
        outcome: state.fail_next.take().unwrap_or(Outcome::Complete),
        opportunity_id: None,
        ended: false,
    };
    let answer = task_json(&task);
    state.tasks.insert(task.id.clone(), task);
    ok(answer)
}

fn list_tasks(state: &mut AwsState, catalog: &str, input: &Value) -> Response {
    let wanted: Option<Vec<String>> =
        input
            .get("TaskIdentifier")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
                    .collect()
            });
    let invitations: Option<Vec<String>> = input
        .get("EngagementInvitationIdentifier")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(|i| i.rsplit('/').next().unwrap_or(i).to_string())
                .collect()
        });
    let ids: Vec<String> = state
        .tasks
        .values()
        .filter(|t| t.catalog == catalog)
        .filter(|t| wanted.as_ref().is_none_or(|w| w.contains(&t.id)))
        .filter(|t| {
            invitations
                .as_ref()
                .is_none_or(|w| w.contains(&t.invitation_id))
        })
        .map(|t| t.id.clone())
        .collect();
    let mut summaries = Vec::new();
    for id in ids {
        advance(state, &id);
        summaries.push(task_json(&state.tasks[&id]));
    }
    ok(json!({"TaskSummaries": summaries}))
}

/// One more read of a task: it ends after its polls; a completed one accepted its invitation
/// and created the opportunity [I].
fn advance(state: &mut AwsState, task_id: &str) {
    let next = state.next_id + 1;
    let Some(task) = state.tasks.get_mut(task_id) else {
        return;
    };
    if task.ended {
        return;
    }
    if task.polls_left > 0 {
        task.polls_left -= 1;
        return;
    }
    task.ended = true;
    if task.outcome == Outcome::Complete {
        task.opportunity_id = Some(format!("O{}", 7_000_000 + next));
        let invitation_id = task.invitation_id.clone();
        state.next_id = next;
        if let Some(inv) = state.invitations.get_mut(&invitation_id) {
            inv["Status"] = json!("ACCEPTED");
        }
    }
}

fn reject(state: &mut AwsState, catalog: &str, input: &Value) -> Response {
    let id = match identifier(input) {
        Ok(id) => id,
        Err(response) => return *response,
    };
    let reason = input.get("RejectionReason").and_then(Value::as_str);
    if let Some(Err(e)) = reason.map(crate::config::check_rejection_reason) {
        return invalid("RejectionReason", "INVALID_STRING_FORMAT", &e.to_string());
    }
    match state.invitations.get_mut(&id) {
        Some(inv) if inv["Catalog"] == catalog => {
            if inv["Status"] != "PENDING" {
                return conflict(&format!(
                    "Engagement invitation {id} is {}, not PENDING",
                    inv["Status"]
                ));
            }
            inv["Status"] = json!("REJECTED");
            if let Some(r) = reason {
                inv["RejectionReason"] = json!(r);
            }
            ok(json!({}))
        }
        _ => not_found(&id),
    }
}

/// Sample invitations of all three payload types, in catalog `AWS`: one expiring in under a
/// day, one without `ExpirationDate` (its deadline is estimated), the others days away.
pub fn sample_invitations(now: DateTime<Utc>) -> Vec<Value> {
    let at = |t: DateTime<Utc>| crate::timefmt::db_timestamp(t);
    let invitation = |n: u32,
                      kind: &str,
                      sent_ago: TimeDelta,
                      expires: Option<TimeDelta>,
                      payload: Value| {
        let id = format!("engi-sim{n:010}");
        let mut inv = json!({
            "Arn": format!("arn:aws:partnercentral:us-east-1::catalog/AWS/engagement-invitation/{id}"),
            "Id": id, "Catalog": "AWS", "PayloadType": kind,
            "EngagementId": format!("eng-sim{n:011}"),
            "EngagementTitle": format!("AWS co-sell {n}"),
            "Status": "PENDING",
            "InvitationDate": at(now - sent_ago),
            "SenderAwsAccountId": "123456789012", "SenderCompanyName": "Amazon Web Services",
            "Receiver": {"Account": {"AwsAccountId": RECEIVER_ACCOUNT, "Alias": "partner"}},
            "Payload": {kind: payload},
            "InvitationMessage": "Shared with you by your AWS partner manager",
        });
        if let Some(left) = expires {
            inv["ExpirationDate"] = json!(at(now + left));
        }
        inv
    };
    let customer = |name: &str, country: &str| {
        json!({"Industry": "Software and Internet", "CompanyName": name,
               "WebsiteUrl": "https://customer.example", "CountryCode": country})
    };
    vec![
        invitation(
            1,
            "OpportunityInvitation",
            TimeDelta::days(14) - TimeDelta::hours(4),
            Some(TimeDelta::hours(20)),
            json!({
            "ReceiverResponsibilities": ["Co-Sell Facilitator"],
            "Customer": customer("Northwind Traders", "US"),
            "Project": {"Title": "Data lake on AWS", "BusinessProblem": "Consolidate the analytics platforms into one data lake",
                        "TargetCompletionDate": "2027-06-30", "ExpectedCustomerSpend": []},
            "SenderContacts": [{"Email": "pdm@amazon.example", "FirstName": "Pat"}]}),
        ),
        invitation(
            2,
            "OpportunityInvitation",
            TimeDelta::days(5),
            Some(TimeDelta::days(10)),
            json!({
            "ReceiverResponsibilities": ["Services Partner"],
            "Customer": customer("Tailspin Toys", "DE"),
            "Project": {"Title": "SAP migration", "BusinessProblem": "Move the SAP landscape off premises this year",
                        "TargetCompletionDate": "2027-03-31", "ExpectedCustomerSpend": []}}),
        ),
        invitation(
            3,
            "LeadInvitation",
            TimeDelta::days(2),
            Some(TimeDelta::days(13)),
            json!({
            "Customer": {"CompanyName": "Wide World Importers", "CountryCode": "GB"},
            "Interaction": {"ContactBusinessTitle": "CTO", "SourceName": "AWS Summit"}}),
        ),
        invitation(
            4,
            "AccountPlanningInvitation",
            TimeDelta::days(3),
            None,
            json!({
            "AccountIdentifier": "cust-acc-sim0000000004",
            "Customer": customer("Contoso Pharma", "FR")}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::client::AwsClient;
    use crate::aws::model::{InvitationStatus, TaskStatus};
    use crate::http::{ApiError, ErrorClass, RetryPolicy};

    fn client(sim: &AwsSimulator, secret: &str) -> AwsClient {
        let http = crate::http::client(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(5),
        );
        let credentials = sigv4::Credentials {
            access_key_id: ACCESS_KEY_ID.into(),
            secret_access_key: SecretString::from(secret.to_string()),
            session_token: None,
        };
        AwsClient::new(http, &sim.endpoint(), "AWS", credentials, 100.0).unwrap()
    }

    async fn pull_all(aws: &AwsClient) -> Vec<String> {
        let mut ids = Vec::new();
        let mut token = None;
        loop {
            let page = aws
                .list_pending_invitations(token.as_deref())
                .await
                .unwrap();
            ids.extend(page.items.into_iter().map(|p| p.invitation.id));
            match page.next_token {
                Some(t) => token = Some(t),
                None => return ids,
            }
        }
    }

    #[tokio::test]
    async fn the_client_pulls_the_pending_inbox_across_pages_with_every_payload_type() {
        let sim = AwsSimulator::start().await.unwrap();
        let now = Utc::now();
        let mut invitations = sample_invitations(now);
        let mut accepted = invitations[1].clone();
        accepted["Id"] = json!("engi-accepted00001");
        accepted["Status"] = json!("ACCEPTED");
        invitations.push(accepted);
        sim.put_invitations(invitations);
        sim.set_page_size(3);
        let aws = client(&sim, SECRET_ACCESS_KEY);
        let ids = pull_all(&aws).await;
        assert_eq!(ids.len(), 4, "only the PENDING ones: {ids:?}");
        assert_eq!(
            sim.counter("ListEngagementInvitations"),
            2,
            "two pages of 3"
        );
        for request in sim.requests() {
            assert_eq!(request.body["ParticipantType"], "RECEIVER");
            assert_eq!(request.body["Status"], json!(["PENDING"]));
        }
        let mut near = 0;
        for id in ids {
            let inv = aws.get_invitation(&id).await.unwrap().invitation;
            assert!(inv.customer.is_some(), "{id}: a customer");
            assert!(!inv.title.is_empty());
            let deadline = inv.deadline().expect("a deadline");
            assert_eq!(deadline.estimated, inv.expiration_date.is_none());
            if deadline.at - now < TimeDelta::days(1) {
                near += 1;
            }
        }
        assert_eq!(near, 1, "one invitation is near expiry");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_as_aws_refuses_it() {
        let sim = AwsSimulator::start().await.unwrap();
        sim.put_invitations(sample_invitations(Utc::now()));
        let err = client(&sim, "not-the-secret")
            .list_pending_invitations(None)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Named { name, class: ErrorClass::Auth, .. } if name == "InvalidSignatureException"),
            "{err}"
        );
        assert!(err.is_auth());
        assert!(
            err.to_string()
                .contains("partnercentral:ListEngagementInvitations"),
            "{err}"
        );
        assert_eq!(
            sim.counter("ListEngagementInvitations"),
            0,
            "nothing was served"
        );
        assert_eq!(sim.counter("refused:InvalidSignatureException"), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_throttled_read_succeeds_on_the_callers_retry() {
        let sim = AwsSimulator::start().await.unwrap();
        sim.put_invitations(sample_invitations(Utc::now()));
        sim.throttle_next(1);
        let aws = client(&sim, SECRET_ACCESS_KEY);
        let policy = RetryPolicy {
            min_delay: std::time::Duration::from_millis(10),
            max_delay: std::time::Duration::from_millis(50),
            ..RetryPolicy::default()
        };
        let page =
            crate::http::with_retry(&policy, "aws list", || aws.list_pending_invitations(None))
                .await
                .unwrap();
        assert_eq!(page.items.len(), 4);
        assert_eq!(sim.counter("throttled"), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_accept_is_idempotent_by_client_token_and_completes_after_polls() {
        let sim = AwsSimulator::start().await.unwrap();
        sim.put_invitations(sample_invitations(Utc::now()));
        sim.set_polls_to_finish(2);
        let aws = client(&sim, SECRET_ACCESS_KEY);
        let id = "engi-sim0000000001";
        let first = aws.start_accept_task(id, "token-a").await.unwrap();
        assert_eq!(first.status, Some(TaskStatus::InProgress));
        // A retry of the same start (same token) is the same task, not a second one.
        let again = aws.start_accept_task(id, "token-a").await.unwrap();
        assert_eq!(again.task_id, first.task_id);
        let other = aws.start_accept_task(id, "token-b").await.unwrap_err();
        assert_eq!(other.named_class(), Some(ErrorClass::Conflict), "{other}");
        let task_id = first.task_id.unwrap();
        let mut polls = 0;
        let done = loop {
            polls += 1;
            let task = aws
                .get_accept_task(&task_id)
                .await
                .unwrap()
                .expect("listed");
            if task.status != Some(TaskStatus::InProgress) {
                break task;
            }
            assert!(polls < 10);
        };
        assert_eq!(polls, 3, "two polls in progress, the third complete");
        assert_eq!(done.status, Some(TaskStatus::Complete));
        assert!(done
            .opportunity_id
            .as_deref()
            .is_some_and(|o| o.starts_with('O')));
        let inv = aws.get_invitation(id).await.unwrap().invitation;
        assert_eq!(inv.status, Some(InvitationStatus::Accepted));
        // Answering an invitation that is no longer PENDING is a conflict.
        let late = aws.reject_invitation(id, "Other").await.unwrap_err();
        assert_eq!(late.named_class(), Some(ErrorClass::Conflict), "{late}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_failed_task_says_why_and_leaves_the_invitation_pending() {
        let sim = AwsSimulator::start().await.unwrap();
        sim.put_invitations(sample_invitations(Utc::now()));
        sim.set_polls_to_finish(0);
        sim.fail_next_accept("EngagementConflict", "The engagement already has a partner");
        let aws = client(&sim, SECRET_ACCESS_KEY);
        let id = "engi-sim0000000002";
        let task = aws.start_accept_task(id, "token-f").await.unwrap();
        let done = aws
            .get_accept_task(task.task_id.as_deref().unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.status, Some(TaskStatus::Failed));
        assert_eq!(done.reason_code.as_deref(), Some("EngagementConflict"));
        assert_eq!(
            done.message.as_deref(),
            Some("The engagement already has a partner")
        );
        assert_eq!(sim.invitation(id).unwrap()["Status"], "PENDING");
        // After a FAILED task a new start with a new token is allowed.
        let retry = aws.start_accept_task(id, "token-g").await.unwrap();
        assert_ne!(retry.task_id, task.task_id);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_reject_records_the_reason_and_an_unknown_invitation_is_not_found() {
        let sim = AwsSimulator::start().await.unwrap();
        sim.put_invitations(sample_invitations(Utc::now()));
        let aws = client(&sim, SECRET_ACCESS_KEY);
        aws.reject_invitation("engi-sim0000000003", "Customer problem unclear")
            .await
            .unwrap();
        let inv = sim.invitation("engi-sim0000000003").unwrap();
        assert_eq!(inv["Status"], "REJECTED");
        assert_eq!(inv["RejectionReason"], "Customer problem unclear");
        assert_eq!(sim.counter("RejectEngagementInvitation"), 1);
        let gone = aws.get_invitation("engi-0000000000zzz").await.unwrap_err();
        assert_eq!(gone.named_class(), Some(ErrorClass::NotFound), "{gone}");
        assert!(!gone.is_transient());
        // An invitation accepted in the console reads ACCEPTED.
        sim.edit_invitation("engi-sim0000000004", |inv| {
            inv["Status"] = json!("ACCEPTED")
        });
        let inv = aws
            .get_invitation("engi-sim0000000004")
            .await
            .unwrap()
            .invitation;
        assert_eq!(inv.status, Some(InvitationStatus::Accepted));
    }
}
