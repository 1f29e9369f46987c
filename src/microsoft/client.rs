//! The Partner Center Referrals client: list pages (OData `$filter`/`$orderby`/`$top`, then
//! `@odata.nextLink` verbatim), get by id, and PATCH with a JSON Patch array and `If-Match`.
//!
//! Each call carries a fresh `client-request-id` (and `MS-CorrelationId`), logs the answer's
//! `request-id`, waits for the rate limiter, and maps failures to [`ApiError`]. A 401 gets exactly
//! one token refresh and one more try; every other retry is the caller's ([`crate::http`]).

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::model::{ParsedReferral, RejectedRecord};
use super::odata::encode_query_value;
use super::TokenSource;
use crate::http::{new_request_id, same_origin, send_and_read, ApiError, RateLimiter};

const API: &str = "microsoft";

/// Which page to fetch: the first one of a query, or the server's `@odata.nextLink`.
#[derive(Debug, Clone, PartialEq)]
pub enum PageRequest {
    Query {
        filter: String,
        orderby: String,
        top: u32,
    },
    Next(String),
}

/// The most pages one query follows: 100,000 referrals at the largest `$top`, far beyond any
/// real inbox; a server that pages forever ends the query with an error instead of the cycle
/// never ending.
pub const MAX_PAGES: u64 = 1000;

/// Follows one query's `@odata.nextLink`s, refusing a link already followed (a loop) and a
/// page past [`MAX_PAGES`].
#[derive(Debug)]
pub struct Paging {
    seen: std::collections::HashSet<String>,
    pages: u64,
    max_pages: u64,
}

impl Paging {
    pub(crate) fn new(max_pages: u64) -> Self {
        Paging {
            seen: Default::default(),
            pages: 1,
            max_pages,
        }
    }

    /// The request for the page after the one just read, which named `link`.
    pub(crate) fn next(&mut self, link: String) -> Result<PageRequest, ApiError> {
        self.pages += 1;
        if self.pages > self.max_pages {
            return Err(ApiError::Refused {
                api: API,
                message: format!(
                    "the referral list did not end after {} pages; stopping the query",
                    self.max_pages
                ),
            });
        }
        if !self.seen.insert(link.clone()) {
            return Err(ApiError::Refused {
                api: API,
                message: format!(
                    "@odata.nextLink {link:?} repeats a page already read; stopping the query"
                ),
            });
        }
        Ok(PageRequest::Next(link))
    }
}

/// One page of referrals: the good ones, the ones that could not be read, and the next link.
#[derive(Debug)]
pub struct ReferralPage {
    pub referrals: Vec<ParsedReferral>,
    pub rejected: Vec<RejectedRecord>,
    pub next_link: Option<String>,
    pub request_id: Option<String>,
    /// `@odata.count`, when the answer has a usable one (a progress hint, never trusted).
    pub(crate) count: Option<u64>,
}

/// One JSON Patch operation; Partner Center takes `replace` and `add` only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatchOp {
    pub(crate) op: &'static str,
    pub(crate) path: String,
    pub(crate) value: Value,
}

impl PatchOp {
    pub fn replace(path: impl Into<String>, value: impl Into<Value>) -> Self {
        PatchOp {
            op: "replace",
            path: path.into(),
            value: value.into(),
        }
    }
}

/// Read back from the outbox: only the two operations Partner Center takes.
impl<'de> serde::Deserialize<'de> for PatchOp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        struct Stored {
            op: String,
            path: String,
            value: Value,
        }
        let stored = Stored::deserialize(d)?;
        let op = match stored.op.as_str() {
            "replace" => "replace",
            "add" => "add",
            other => {
                return Err(serde::de::Error::custom(format!(
                    "JSON Patch op {other:?} is not one Partner Center takes (replace, add)"
                )))
            }
        };
        Ok(PatchOp {
            op,
            path: stored.path,
            value: stored.value,
        })
    }
}

/// The result of a remote write, for the audit table.
#[derive(Debug)]
pub struct WriteOutcome {
    pub request_id: Option<String>,
    /// Present when the server returned the representation.
    pub(crate) referral: Option<ParsedReferral>,
}

struct Reply {
    body: String,
    request_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MicrosoftClient {
    http: reqwest::Client,
    api_base: Url,
    tokens: Arc<TokenSource>,
    limiter: Arc<RateLimiter>,
    /// Background requests (the changes query) take the rate limiter only when no
    /// deadline-lane request or write waits for it.
    background: bool,
}

impl MicrosoftClient {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        tokens: Arc<TokenSource>,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, crate::http::BadApiBase> {
        let api_base = crate::http::BadApiBase::parse("microsoft.api_base", api_base)?;
        Ok(MicrosoftClient {
            http,
            api_base,
            tokens,
            limiter,
            background: false,
        })
    }

    /// The token source (a reload with the same credentials keeps it: no new grant, and a
    /// rotated token held only in memory is not lost).
    pub fn tokens(&self) -> Arc<TokenSource> {
        self.tokens.clone()
    }

    /// This client with another token source.
    pub fn with_tokens(&self, tokens: Arc<TokenSource>) -> MicrosoftClient {
        MicrosoftClient {
            tokens,
            ..self.clone()
        }
    }

    /// The same client at background priority.
    pub fn background(&self) -> MicrosoftClient {
        MicrosoftClient {
            background: true,
            ..self.clone()
        }
    }

    fn referrals_url(&self) -> Url {
        let mut url = self.api_base.clone();
        let path = format!(
            "{}{}",
            url.path().trim_end_matches('/'),
            super::REFERRALS_PATH
        );
        url.set_path(&path);
        url
    }

    fn referral_url(&self, id: &str) -> Url {
        let mut url = self.referrals_url();
        url.path_segments_mut()
            .expect("an http(s) base has path segments")
            .push(id);
        url
    }

    /// The URL of a page. A nextLink is used verbatim (even when its path differs from the
    /// collection's, as documented samples show), resolved against the base if relative, and
    /// upgraded to https only when the configured base is https.
    pub(crate) fn page_url(&self, request: &PageRequest) -> Result<Url, ApiError> {
        match request {
            PageRequest::Query {
                filter,
                orderby,
                top,
            } => {
                let mut url = self.referrals_url();
                let mut query = Vec::new();
                if !filter.is_empty() {
                    query.push(format!("$filter={}", encode_query_value(filter)));
                }
                if !orderby.is_empty() {
                    query.push(format!("$orderby={}", encode_query_value(orderby)));
                }
                query.push(format!("$top={top}"));
                url.set_query(Some(&query.join("&")));
                Ok(url)
            }
            PageRequest::Next(link) => {
                let mut url = self.api_base.join(link).map_err(|e| ApiError::Malformed {
                    api: API,
                    method: "GET".into(),
                    path: link.clone(),
                    message: format!("unusable @odata.nextLink: {e}"),
                    request_id: None,
                })?;
                if self.api_base.scheme() == "https" && url.scheme() == "http" {
                    let _ = url.set_scheme("https");
                    if url.port() == Some(80) {
                        let _ = url.set_port(None);
                    }
                }
                // The bearer token goes with the request: only ever to the configured origin.
                if !same_origin(&url, &self.api_base) {
                    return Err(ApiError::Refused {
                        api: API,
                        message: format!(
                            "@odata.nextLink points at another origin ({}), not microsoft.api_base ({}); refusing to send the token there",
                            url.origin().ascii_serialization(),
                            self.api_base.origin().ascii_serialization()
                        ),
                    });
                }
                Ok(url)
            }
        }
    }

    /// Gets a token now (start-up check: READY waits for it, `auth check` reports it).
    pub async fn check_auth(&self) -> Result<(), ApiError> {
        self.tokens.access_token().await.map(|_| ())
    }

    /// Fetches one page. Records that cannot be read are returned in `rejected`, not as errors.
    pub async fn list_page(&self, request: &PageRequest) -> Result<ReferralPage, ApiError> {
        let url = self.page_url(request)?;
        let path = url.path().to_string();
        let answer = self.send(Method::GET, url, None, None).await?;
        let malformed = |message: String| ApiError::Malformed {
            api: API,
            method: "GET".into(),
            path: path.clone(),
            message,
            request_id: answer.request_id.clone(),
        };
        let page = super::model::parse_page(&answer.body).map_err(|e| malformed(e.to_string()))?;
        let (next_link, count) = (page.next_link, page.count);
        let mut referrals = Vec::with_capacity(page.items.len());
        let mut rejected = Vec::new();
        for item in page.items {
            match item {
                Ok(r) => referrals.push(r),
                Err(bad) => rejected.push(bad),
            }
        }
        Ok(ReferralPage {
            referrals,
            rejected,
            next_link,
            request_id: answer.request_id,
            count,
        })
    }

    pub async fn get_referral(&self, id: &str) -> Result<ParsedReferral, ApiError> {
        let url = self.referral_url(id);
        let path = url.path().to_string();
        let answer = self.send(Method::GET, url, None, None).await?;
        let value: Value = serde_json::from_str(&answer.body).map_err(|e| ApiError::Malformed {
            api: API,
            method: "GET".into(),
            path: path.clone(),
            message: e.to_string(),
            request_id: answer.request_id.clone(),
        })?;
        ParsedReferral::from_value(value).map_err(|bad| ApiError::Malformed {
            api: API,
            method: "GET".into(),
            path,
            message: bad.error,
            request_id: answer.request_id,
        })
    }

    /// PATCH with a JSON Patch array. `if_match` is the eTag exactly as the API gave it.
    pub async fn patch_referral(
        &self,
        id: &str,
        ops: &[PatchOp],
        if_match: Option<&str>,
    ) -> Result<WriteOutcome, ApiError> {
        let url = self.referral_url(id);
        let body = serde_json::to_value(ops).expect("patch ops serialize");
        let answer = self.send(Method::PATCH, url, Some(body), if_match).await?;
        let referral = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| ParsedReferral::from_value(v).ok());
        Ok(WriteOutcome {
            request_id: answer.request_id,
            referral,
        })
    }

    /// One request with its token, rate limit, request ids and the single 401 → refresh →
    /// retry; the origin check comes first. One piece so the credential rule ("only to the
    /// configured origin") is read in one place.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, ApiError> {
        let mut refreshed = false;
        loop {
            let token = self.tokens.access_token().await?;
            if self.background {
                self.limiter.acquire_background().await;
            } else {
                self.limiter.acquire().await;
            }
            let client_request_id = new_request_id();
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            let rid = HeaderValue::from_str(&client_request_id).expect("uuid is a header value");
            headers.insert("client-request-id", rid.clone());
            headers.insert("MS-CorrelationId", rid);
            if let Some(tag) = if_match {
                let value = HeaderValue::from_str(tag).map_err(|_| ApiError::Malformed {
                    api: API,
                    method: method.to_string(),
                    path: url.path().to_string(),
                    message: format!("eTag {tag:?} cannot be sent as If-Match"),
                    request_id: None,
                })?;
                headers.insert("If-Match", value);
            }
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .headers(headers)
                .bearer_auth(token.expose_secret());
            if let Some(body) = &body {
                // Ask for the updated referral back, so the store has the new eTag at once
                // (the API answers 204 without this preference).
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .header("Prefer", "return=representation")
                    .body(body.to_string());
            }
            let started = Instant::now();
            let path = url.path().to_string();
            let answer = send_and_read(API, method.as_str(), &path, request).await?;
            let status = answer.status;
            let request_id = answer.header("request-id");
            tracing::debug!(
                api = API,
                %method,
                path,
                status = status.as_u16(),
                client_request_id,
                request_id = request_id.as_deref().unwrap_or("-"),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "partner center answered"
            );
            if status.is_success() {
                return Ok(Reply {
                    body: answer.text,
                    request_id,
                });
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // The token may have been revoked or expired early: one fresh grant, one retry.
                refreshed = true;
                self.tokens.invalidate().await;
                tracing::info!(
                    path,
                    "partner center answered 401; refreshing the token once"
                );
                continue;
            }
            let (code, message) = error_code_and_message(&answer.text);
            return Err(ApiError::Status {
                api: API,
                method: method.to_string(),
                path,
                status: status.as_u16(),
                code,
                message,
                retry_after: answer.retry_after(),
                request_id,
            });
        }
    }
}

/// Reads Partner Center's error shapes: `{"error":{"code","message","innerError":{...}}}` and
/// the 429 shape `{"statusCode":429,"message":"..."}`; anything else is quoted, shortened.
fn error_code_and_message(body: &str) -> (Option<String>, String) {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    if let Some(error) = value.get("error") {
        let code = error
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut inner = error.get("innerError");
        while let Some(e) = inner {
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                message.push_str(" — ");
                message.push_str(m);
            }
            inner = e.get("innerError");
        }
        return (code, message);
    }
    if let Some(m) = value.get("message").and_then(Value::as_str) {
        return (None, m.to_string());
    }
    let short: String = body.chars().take(200).collect();
    (
        None,
        if short.is_empty() {
            "(empty body)".into()
        } else {
            short
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_the_fixture_are_read() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/microsoft-errors.json"))
                .unwrap();
        let (code, msg) = error_code_and_message(&fixture["412"].to_string());
        assert_eq!(code.as_deref(), Some("preconditionFailed"));
        assert!(msg.contains("modified"));
        let (code, msg) = error_code_and_message(&fixture["400"].to_string());
        assert_eq!(code.as_deref(), Some("invalidRequest"));
        assert!(msg.contains("Closed referrals cannot be updated"), "{msg}");
        let (code, msg) = error_code_and_message(&fixture["429"].to_string());
        assert_eq!(code, None);
        assert!(msg.contains("57 seconds"));
    }
}
