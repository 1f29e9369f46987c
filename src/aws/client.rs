//! The Partner Central Selling API client: the five operations of `partner-apis.md` D.4, each a
//! signed `POST /` with `Content-Type: application/x-amz-json-1.0` and
//! `X-Amz-Target: AWSPartnerCentralSelling.<Operation>`, a JSON body of PascalCase members.
//!
//! Errors are classified by their name (`__type` after `#`, or `x-amzn-errortype`), never by
//! the HTTP status (spec §8), into [`ApiError::Named`]: throttling, internal errors and 5xx are
//! transient; `AccessDeniedException` (and the signature errors) are authentication failures
//! naming the IAM action; `ValidationException` (with its field list) and
//! `ServiceQuotaExceededException` are permanent; `ConflictException` asks the caller to read
//! again; `ResourceNotFoundException` says the invitation is gone. The client does no retries
//! of its own ([`crate::http::with_retry`] is the caller's) and keeps to `[aws]
//! requests_per_second` reads and 1 write in any sliding second. Pull, alerts and answers
//! through the executor use it next.

use std::sync::Arc;

use chrono::Utc;
use reqwest::header::CONTENT_TYPE;
use reqwest::Url;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

use super::model::{self, InvitationPage, MalformedAnswer, ParsedInvitation, Task};
use super::sigv4::{self, Credentials};
use crate::http::{send_and_read, ApiError, ErrorClass, RateLimiter};

const API: &str = "aws";
/// The JSON protocol's content type (D.1).
pub const CONTENT_TYPE_JSON: &str = "application/x-amz-json-1.0";
/// `X-Amz-Target` is this prefix, a dot, and the operation (D.1).
pub const TARGET_PREFIX: &str = "AWSPartnerCentralSelling";
/// The largest `MaxResults` of `ListEngagementInvitations` (D.4).
pub const PAGE_SIZE: u32 = 100;

/// Writes a second: AWS allows 1 (D.3), counted where they arrive. Spaced 1.05 s apart here,
/// so a request that leaves on time but arrives a little late never lands two writes in one
/// second of AWS's count.
const WRITES_PER_SECOND: f64 = 1.0 / 1.05;

/// The five operations, by their names in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ListEngagementInvitations,
    GetEngagementInvitation,
    StartEngagementByAcceptingInvitationTask,
    ListEngagementByAcceptingInvitationTasks,
    RejectEngagementInvitation,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::ListEngagementInvitations => "ListEngagementInvitations",
            Operation::GetEngagementInvitation => "GetEngagementInvitation",
            Operation::StartEngagementByAcceptingInvitationTask => {
                "StartEngagementByAcceptingInvitationTask"
            }
            Operation::ListEngagementByAcceptingInvitationTasks => {
                "ListEngagementByAcceptingInvitationTasks"
            }
            Operation::RejectEngagementInvitation => "RejectEngagementInvitation",
        }
    }

    /// Writes count against the write quota (1 a second), reads against the read quota (D.3).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Operation::StartEngagementByAcceptingInvitationTask
                | Operation::RejectEngagementInvitation
        )
    }

    /// The IAM action a caller needs (D.3): `partnercentral:<Operation>`.
    pub fn iam_action(self) -> String {
        format!("partnercentral:{}", self.name())
    }
}

/// The client: one endpoint, one catalog, one set of credentials, two rate limits.
#[derive(Debug, Clone)]
pub struct AwsClient {
    http: reqwest::Client,
    endpoint: Url,
    /// The `Host` header as sent (host, and the port when it is not the scheme's default).
    host: String,
    catalog: String,
    credentials: Arc<Credentials>,
    reads: Arc<RateLimiter>,
    writes: Arc<RateLimiter>,
}

impl AwsClient {
    /// A client for `endpoint` (the simulator's or a test's too); reads at most
    /// `reads_per_second`, evenly, and writes at most 1 in any second.
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        catalog: &str,
        credentials: Credentials,
        reads_per_second: f64,
    ) -> Result<AwsClient, ApiError> {
        let refused = |message: String| ApiError::Refused { api: API, message };
        let endpoint =
            Url::parse(endpoint).map_err(|e| refused(format!("aws.endpoint {endpoint:?}: {e}")))?;
        let host = match (endpoint.host_str(), endpoint.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(refused(format!("aws.endpoint {endpoint} has no host"))),
        };
        Ok(AwsClient {
            http,
            endpoint,
            host,
            catalog: catalog.to_string(),
            credentials: Arc::new(credentials),
            reads: Arc::new(RateLimiter::evenly(reads_per_second)),
            writes: Arc::new(RateLimiter::evenly(WRITES_PER_SECOND)),
        })
    }

    /// The client `[aws]` describes: its endpoint, catalog, read rate, timeouts and the
    /// credentials found in §8's order. Refused when the configuration was loaded without
    /// reading secrets (no credentials then).
    pub fn from_config(aws: &crate::config::AwsConfig) -> Result<AwsClient, ApiError> {
        let found = aws.credentials().ok_or_else(|| ApiError::Refused {
            api: API,
            message: "no credentials were read for [aws]".into(),
        })?;
        let credentials = Credentials {
            access_key_id: found.access_key_id.clone(),
            secret_access_key: found.secret_access_key.clone(),
            session_token: found.session_token.clone(),
        };
        let (timeout, connect_timeout) = aws.timeouts();
        let http = crate::http::client(timeout, connect_timeout);
        let reads = aws.requests_per_second();
        AwsClient::new(http, aws.endpoint(), aws.catalog(), credentials, reads)
    }

    /// Takes over `from`'s rate limits (a reload builds a new client: the writes it sends
    /// must still keep a second from the old client's last one). The read limit only when the
    /// read rate is unchanged.
    pub fn keep_limits_of(&mut self, from: &AwsClient, same_read_rate: bool) {
        self.writes = from.writes.clone();
        if same_read_rate {
            self.reads = from.reads.clone();
        }
    }

    /// One page of the invitations this account received that are still `PENDING`.
    pub async fn list_pending_invitations(
        &self,
        next_token: Option<&str>,
    ) -> Result<InvitationPage, ApiError> {
        let mut body = json!({
            "Catalog": self.catalog,
            "ParticipantType": "RECEIVER",
            "Status": ["PENDING"],
            "MaxResults": PAGE_SIZE,
        });
        if let Some(token) = next_token {
            body["NextToken"] = json!(token);
        }
        let op = Operation::ListEngagementInvitations;
        let answer = self.call(op, &body).await?;
        model::parse_invitation_page(&answer.text).map_err(|e| malformed(op, e, answer))
    }

    /// One invitation in full (customer, project, sender; D.4).
    pub async fn get_invitation(&self, id: &str) -> Result<ParsedInvitation, ApiError> {
        let op = Operation::GetEngagementInvitation;
        check_identifier(op, id)?;
        let body = json!({"Catalog": self.catalog, "Identifier": id});
        let answer = self.call(op, &body).await?;
        model::parse_invitation(&answer.text).map_err(|e| malformed(op, e, answer))
    }

    /// Accepts an invitation and creates its opportunity, asynchronously. `client_token` is
    /// the idempotency key: the same on every retry of one start.
    pub async fn start_accept_task(&self, id: &str, client_token: &str) -> Result<Task, ApiError> {
        let op = Operation::StartEngagementByAcceptingInvitationTask;
        check_identifier(op, id)?;
        if client_token.is_empty() || client_token.chars().count() > 255 {
            return Err(refused(op, "ClientToken must be 1 to 255 characters"));
        }
        let body = json!({"Catalog": self.catalog, "ClientToken": client_token, "Identifier": id});
        let answer = self.call(op, &body).await?;
        model::parse_task(&answer.text).map_err(|e| malformed(op, e, answer))
    }

    /// The accept tasks of invitation `id` (an invitation found accepted: the task that did
    /// it names the opportunity).
    pub async fn accept_tasks_of(&self, id: &str) -> Result<Vec<Task>, ApiError> {
        let op = Operation::ListEngagementByAcceptingInvitationTasks;
        check_identifier(op, id)?;
        let body = json!({"Catalog": self.catalog, "EngagementInvitationIdentifier": [id]});
        let answer = self.call(op, &body).await?;
        let page = model::parse_task_page(&answer.text).map_err(|e| malformed(op, e, answer))?;
        Ok(page.items)
    }

    /// The accept task `task_id` as the task list shows it; `None` when it is not listed.
    pub async fn get_accept_task(&self, task_id: &str) -> Result<Option<Task>, ApiError> {
        let op = Operation::ListEngagementByAcceptingInvitationTasks;
        let body = json!({"Catalog": self.catalog, "TaskIdentifier": [task_id]});
        let answer = self.call(op, &body).await?;
        let page = model::parse_task_page(&answer.text).map_err(|e| malformed(op, e, answer))?;
        // The list may name the task by id or ARN (`.*task-…`); anything else is not it.
        Ok(page.items.into_iter().find(|t| {
            t.task_id
                .as_deref()
                .is_some_and(|id| id == task_id || id.ends_with(&format!("/{task_id}")))
        }))
    }

    /// Declines an invitation with a reason AWS shows the sender.
    pub async fn reject_invitation(&self, id: &str, reason: &str) -> Result<(), ApiError> {
        let op = Operation::RejectEngagementInvitation;
        check_identifier(op, id)?;
        crate::config::check_rejection_reason(reason)
            .map_err(|e| refused(op, &format!("RejectionReason {e}")))?;
        let body = json!({"Catalog": self.catalog, "Identifier": id, "RejectionReason": reason});
        self.call(op, &body).await.map(|_| ())
    }

    /// One signed call under its rate limit. Success is any 2xx; anything else is a named
    /// error (or, without a name, the HTTP taxonomy's verdict).
    async fn call(&self, op: Operation, body: &Value) -> Result<crate::http::RawAnswer, ApiError> {
        let body = body.to_string();
        let target = format!("{TARGET_PREFIX}.{}", op.name());
        if op.is_write() {
            self.writes.acquire().await;
        } else {
            self.reads.acquire().await;
        }
        let parts = sigv4::Request {
            method: "POST",
            path: "/",
            query: "",
            headers: vec![
                ("host".into(), self.host.clone()),
                ("content-type".into(), CONTENT_TYPE_JSON.into()),
                ("x-amz-target".into(), target.clone()),
            ],
            body: body.as_bytes(),
        };
        // Signed after the rate limit: a wait can never make the signature stale.
        let signed = sigv4::sign(
            &self.credentials,
            sigv4::REGION,
            sigv4::SERVICE,
            Utc::now(),
            &parts,
        );
        let mut request = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, CONTENT_TYPE_JSON)
            .header("x-amz-target", &target)
            .header("x-amz-date", &signed.x_amz_date)
            .header("authorization", &signed.authorization);
        if let Some(token) = &signed.security_token {
            request = request.header("x-amz-security-token", token.expose_secret());
        }
        let answer = send_and_read(API, "POST", op.name(), request.body(body)).await?;
        tracing::debug!(
            api = API,
            operation = op.name(),
            status = answer.status.as_u16(),
            request_id = answer.header("x-amzn-requestid").as_deref().unwrap_or("-"),
            "partner central answered"
        );
        if answer.status.is_success() {
            return Ok(answer);
        }
        Err(error_of(op, &answer))
    }
}

/// The model's `Identifier` pattern: `engi-` and 13 of `[0-9a-z]`, or an ARN, 1–255 chars.
pub fn is_invitation_id(id: &str) -> bool {
    let engi = id.strip_prefix("engi-").is_some_and(|rest| {
        rest.len() == 13
            && rest
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    });
    let arn = id.starts_with("arn:") && id.len() <= 255;
    engi || arn
}

fn check_identifier(op: Operation, id: &str) -> Result<(), ApiError> {
    if is_invitation_id(id) {
        Ok(())
    } else {
        Err(refused(
            op,
            &format!("{id:?} is not an invitation id (engi- and 13 lower-case letters or digits, or an ARN)"),
        ))
    }
}

fn refused(op: Operation, message: &str) -> ApiError {
    ApiError::Refused {
        api: API,
        message: format!("{}: {message}; nothing sent", op.name()),
    }
}

fn malformed(op: Operation, e: MalformedAnswer, answer: crate::http::RawAnswer) -> ApiError {
    ApiError::Malformed {
        api: API,
        method: "POST".into(),
        path: op.name().into(),
        message: e.0,
        request_id: answer.header("x-amzn-requestid"),
    }
}

/// The error's name: `x-amzn-errortype`, else the body's `__type` (or `code`), without the
/// namespace before `#` and anything after `:`.
fn error_name(answer: &crate::http::RawAnswer, body: &Value) -> Option<String> {
    let raw = answer.header("x-amzn-errortype").or_else(|| {
        ["__type", "code", "Code"]
            .iter()
            .find_map(|k| body.get(*k).and_then(Value::as_str).map(str::to_string))
    })?;
    let name = raw.rsplit('#').next().unwrap_or(&raw);
    let name = name.split(':').next().unwrap_or(name).trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Reads an error answer into [`ApiError::Named`], classified by the name.
fn error_of(op: Operation, answer: &crate::http::RawAnswer) -> ApiError {
    let body: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
    let status = answer.status.as_u16();
    let message = ["message", "Message", "errorMessage"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let short: String = answer.text.chars().take(200).collect();
            if short.is_empty() {
                "(empty body)".into()
            } else {
                short
            }
        });
    let name = error_name(answer, &body);
    let class = match name.as_deref() {
        Some(name) => classify(name, status),
        // No name at all (a proxy, a load balancer): the HTTP taxonomy is all there is.
        None if matches!(status, 408 | 429 | 500..=599) => ErrorClass::Transient,
        None => ErrorClass::Permanent,
    };
    let detail = match (name.as_deref(), class) {
        (_, ErrorClass::Auth) => Some(format!(
            "check the credentials and that the IAM policy allows {}",
            op.iam_action()
        )),
        (Some("ValidationException"), _) => validation_detail(&body),
        (Some("ServiceQuotaExceededException"), _) => Some(
            "a Partner Central quota is spent (the message names it); the request is not retried"
                .into(),
        ),
        _ => None,
    };
    ApiError::Named {
        api: API,
        operation: op.name().into(),
        status,
        name: name.unwrap_or_else(|| format!("HTTP {status}")),
        class,
        message,
        detail,
        retry_after: answer.retry_after(),
        request_id: answer.header("x-amzn-requestid"),
    }
}

/// The class of an error name (D.4's errors, and the signature errors every AWS JSON service
/// answers [I]); an unknown name is transient on 5xx and permanent otherwise.
pub fn classify(name: &str, status: u16) -> ErrorClass {
    match name {
        "ThrottlingException" | "InternalServerException" | "ServiceUnavailableException" => {
            ErrorClass::Transient
        }
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException"
        | "ExpiredTokenException"
        | "InvalidClientTokenId" => ErrorClass::Auth,
        "ValidationException" | "ServiceQuotaExceededException" => ErrorClass::Permanent,
        "ConflictException" => ErrorClass::Conflict,
        "ResourceNotFoundException" => ErrorClass::NotFound,
        _ if status >= 500 => ErrorClass::Transient,
        _ => ErrorClass::Permanent,
    }
}

/// `ValidationException`: its `Reason` and `ErrorList` (`FieldName`, `Message`, `Code` [I]:
/// the members of the list's items are not in part D), so the alert names the fields.
fn validation_detail(body: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(reason) = body.get("Reason").and_then(Value::as_str) {
        parts.push(format!("reason {reason}"));
    }
    let errors = body.get("ErrorList").and_then(Value::as_array);
    for error in errors.into_iter().flatten().take(20) {
        let field = error
            .get("FieldName")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let message = error.get("Message").and_then(Value::as_str).unwrap_or("");
        let code = error
            .get("Code")
            .and_then(Value::as_str)
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        parts.push(format!("{field}: {message}{code}"));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    const ID: &str = "engi-0123456789abc";

    fn credentials(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: SecretString::from("test-secret"),
            session_token: token.map(SecretString::from),
        }
    }

    fn client(server: &MockServer, token: Option<&str>) -> AwsClient {
        let http = crate::http::client(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(5),
        );
        AwsClient::new(http, &server.uri(), "AWS", credentials(token), 100.0).unwrap()
    }

    async fn answering(status: u16, body: Value) -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/"))
            .and(header("content-type", CONTENT_TYPE_JSON))
            .respond_with(ResponseTemplate::new(status).set_body_json(body))
            .mount(&server)
            .await;
        server
    }

    /// The requests the server received: target, JSON body, and whether the signature is
    /// valid for the test key (checked with the verifier, over exactly what arrived).
    async fn received(server: &MockServer, token: Option<&str>) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for request in server.received_requests().await.unwrap() {
            let headers: Vec<(String, String)> = request
                .headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
                .collect();
            let get = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let authorization = get("authorization");
            let signed_headers = match token {
                Some(_) => "content-type;host;x-amz-date;x-amz-security-token;x-amz-target",
                None => "content-type;host;x-amz-date;x-amz-target",
            };
            assert!(
                authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
                    && authorization.contains("/us-east-1/partnercentral-selling/aws4_request")
                    && authorization.contains(&format!("SignedHeaders={signed_headers},")),
                "{authorization}"
            );
            assert_eq!(get("x-amz-security-token"), token.unwrap_or_default());
            let parts = sigv4::Request {
                method: request.method.as_str(),
                path: request.url.path(),
                query: request.url.query().unwrap_or(""),
                headers: headers.clone(),
                body: &request.body,
            };
            let known = |id: &str| {
                (id == "AKIDTEST").then(|| sigv4::KnownKey {
                    secret_access_key: SecretString::from("test-secret"),
                    session_token: token.map(SecretString::from),
                })
            };
            sigv4::verify(&parts, known, sigv4::REGION, sigv4::SERVICE, Utc::now())
                .expect("the signature verifies over what was received");
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            out.push((get("x-amz-target"), body));
        }
        out
    }

    #[tokio::test]
    async fn the_pending_list_sends_the_documented_members_signed() {
        let page = json!({"EngagementInvitationSummaries": [
            {"Id": ID, "Catalog": "AWS", "Status": "PENDING", "ExpirationDate": "2026-12-16T09:00:00Z"}],
            "NextToken": "page-2"});
        let server = answering(200, page).await;
        let aws = client(&server, None);
        let first = aws.list_pending_invitations(None).await.unwrap();
        assert_eq!(first.items[0].invitation.id, ID);
        assert_eq!(first.next_token.as_deref(), Some("page-2"));
        aws.list_pending_invitations(Some("page-2")).await.unwrap();
        let sent = received(&server, None).await;
        assert_eq!(
            sent[0].0,
            "AWSPartnerCentralSelling.ListEngagementInvitations"
        );
        assert_eq!(
            sent[0].1,
            json!({"Catalog": "AWS", "ParticipantType": "RECEIVER", "Status": ["PENDING"], "MaxResults": 100})
        );
        assert_eq!(sent[1].1["NextToken"], "page-2");
    }

    #[tokio::test]
    async fn every_operation_sends_its_members_and_target_and_a_session_token_is_signed() {
        let server = answering(200, json!({"Id": ID, "TaskId": "task-0000000000001",
            "TaskSummaries": [{"TaskId": "task-0000000000001", "TaskStatus": "COMPLETE", "OpportunityId": "O42"}]}))
        .await;
        let aws = client(&server, Some("session-token"));
        aws.get_invitation(ID).await.unwrap();
        aws.start_accept_task(ID, "token-1").await.unwrap();
        let task = aws
            .get_accept_task("task-0000000000001")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.opportunity_id.as_deref(), Some("O42"));
        aws.reject_invitation(ID, "Customer problem unclear")
            .await
            .unwrap();
        let of_invitation = aws.accept_tasks_of(ID).await.unwrap();
        assert_eq!(of_invitation[0].opportunity_id.as_deref(), Some("O42"));
        let sent = received(&server, Some("session-token")).await;
        let expected = [
            (
                "GetEngagementInvitation",
                json!({"Catalog": "AWS", "Identifier": ID}),
            ),
            (
                "StartEngagementByAcceptingInvitationTask",
                json!({"Catalog": "AWS", "ClientToken": "token-1", "Identifier": ID}),
            ),
            (
                "ListEngagementByAcceptingInvitationTasks",
                json!({"Catalog": "AWS", "TaskIdentifier": ["task-0000000000001"]}),
            ),
            (
                "RejectEngagementInvitation",
                json!({"Catalog": "AWS", "Identifier": ID, "RejectionReason": "Customer problem unclear"}),
            ),
            (
                "ListEngagementByAcceptingInvitationTasks",
                json!({"Catalog": "AWS", "EngagementInvitationIdentifier": [ID]}),
            ),
        ];
        assert_eq!(sent.len(), expected.len());
        for ((target, body), (op, members)) in sent.iter().zip(expected) {
            assert_eq!(target, &format!("AWSPartnerCentralSelling.{op}"));
            assert_eq!(body, &members, "{op}");
        }
    }

    #[tokio::test]
    async fn errors_are_classified_by_name_never_by_status() {
        let cases = [
            (
                400,
                json!({"__type": "com.amazonaws.partnercentral#ThrottlingException", "message": "Rate exceeded"}),
                ErrorClass::Transient,
                "ThrottlingException",
            ),
            (
                500,
                json!({"__type": "InternalServerException", "Message": "oops"}),
                ErrorClass::Transient,
                "InternalServerException",
            ),
            (
                503,
                json!({"__type": "SomethingNewException"}),
                ErrorClass::Transient,
                "SomethingNewException",
            ),
            (429, json!({}), ErrorClass::Transient, "HTTP 429"),
            (
                400,
                json!({"__type": "AccessDeniedException", "Message": "not authorized"}),
                ErrorClass::Auth,
                "AccessDeniedException",
            ),
            (
                403,
                json!({"__type": "ConflictException", "message": "changed"}),
                ErrorClass::Conflict,
                "ConflictException",
            ),
            (
                400,
                json!({"__type": "ResourceNotFoundException"}),
                ErrorClass::NotFound,
                "ResourceNotFoundException",
            ),
            (
                400,
                json!({"__type": "ServiceQuotaExceededException", "message": "Daily write quota"}),
                ErrorClass::Permanent,
                "ServiceQuotaExceededException",
            ),
            (
                500,
                json!({"__type": "ValidationException", "message": "bad"}),
                ErrorClass::Permanent,
                "ValidationException",
            ),
            (
                400,
                json!({"__type": "InvalidSignatureException"}),
                ErrorClass::Auth,
                "InvalidSignatureException",
            ),
        ];
        for (status, body, class, name) in cases {
            let server = answering(status, body.clone()).await;
            let err = client(&server, None).get_invitation(ID).await.unwrap_err();
            assert_eq!(err.named_class(), Some(class), "{body}: {err}");
            assert!(
                matches!(&err, ApiError::Named { name: n, .. } if n == name),
                "{body}: {err}"
            );
            assert_eq!(err.is_transient(), class == ErrorClass::Transient, "{err}");
            assert_eq!(err.is_auth(), class == ErrorClass::Auth, "{err}");
            assert_eq!(
                server.received_requests().await.unwrap().len(),
                1,
                "no hidden retry: {err}"
            );
        }
    }

    #[tokio::test]
    async fn access_denied_names_the_iam_action_and_validation_its_fields() {
        let server = answering(400, json!({"__type": "AccessDeniedException", "Message": "User is not authorized", "Reason": "ACCESS_DENIED"})).await;
        let err = client(&server, None)
            .reject_invitation(ID, "Other")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("partnercentral:RejectEngagementInvitation"),
            "{err}"
        );

        let server = answering(400, json!({"__type": "ValidationException", "message": "Invalid input",
            "Reason": "REQUEST_VALIDATION_FAILED",
            "ErrorList": [{"FieldName": "RejectionReason", "Message": "too long", "Code": "INVALID_STRING_FORMAT"}]})).await;
        let err = client(&server, None)
            .reject_invitation(ID, "Other")
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("RejectionReason: too long (INVALID_STRING_FORMAT)"),
            "{text}"
        );
        assert!(text.contains("REQUEST_VALIDATION_FAILED"), "{text}");

        // The name may come in the header only; the namespace and suffix are dropped.
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(400)
                    .insert_header(
                        "x-amzn-errortype",
                        "ThrottlingException:http://internal.amazon.com/coral/",
                    )
                    .insert_header("x-amzn-requestid", "req-1")
                    .set_body_string("{}"),
            )
            .mount(&server)
            .await;
        let err = client(&server, None).get_invitation(ID).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(
            err.to_string().contains("ThrottlingException") && err.to_string().contains("req-1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_anything_is_sent() {
        let server = answering(200, json!({})).await;
        let aws = client(&server, None);
        for id in ["engi-short", "ENGI-0123456789ABC", "", "eng-0123456789abcd"] {
            assert!(
                matches!(aws.get_invitation(id).await, Err(ApiError::Refused { .. })),
                "{id}"
            );
        }
        for reason in ["", "tab\there", &"x".repeat(81)] {
            assert!(matches!(
                aws.reject_invitation(ID, reason).await,
                Err(ApiError::Refused { .. })
            ));
        }
        assert!(matches!(
            aws.start_accept_task(ID, "").await,
            Err(ApiError::Refused { .. })
        ));
        assert!(server.received_requests().await.unwrap().is_empty());
        // An ARN is an identifier too.
        aws.get_invitation("arn:aws:partnercentral:us-east-1:123456789012:catalog/AWS/engagement-invitation/engi-0123456789abc")
            .await
            .unwrap_err(); // `{}` has no Id: malformed, but it was sent
        assert_eq!(server.received_requests().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn writes_are_never_faster_than_one_a_second() {
        let server = answering(200, json!({})).await;
        let aws = client(&server, None);
        let started = std::time::Instant::now();
        for _ in 0..3 {
            aws.reject_invitation(ID, "Other").await.unwrap();
        }
        assert!(
            started.elapsed() >= std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Reads do not wait for the write quota.
        let started = std::time::Instant::now();
        aws.get_invitation(ID).await.unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_millis(900));
    }
}
