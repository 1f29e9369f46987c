//! The Cloud CRM Partners client: `leads.create`, `leads.get`, `opportunities.get` and
//! `opportunities.patch` with an explicit `updateMask`. Google error bodies
//! (`{"error":{"code","message","status","details"}}`) become typed [`ApiError`]s whose `code`
//! is the canonical status (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`, ...). No hidden retries:
//! a lead create in particular must never be repeated blindly (there is no request id).

use std::sync::Arc;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Url};
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::time::Instant;

use super::model::{Lead, Opportunity};
use super::GoogleAuth;
use crate::http::{new_request_id, send_and_read, ApiError, RateLimiter};

const API: &str = "google";

/// A request that holds its token and its rate-limit slot and has not been sent.
#[derive(Debug)]
pub(crate) struct Prepared {
    method: Method,
    url: Url,
    body: Option<String>,
    token: secrecy::SecretString,
    /// What error messages name (the parent of a create).
    label: String,
}

/// A successful call's parsed body and the id to quote in the audit table.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    pub(crate) value: T,
    pub(crate) request_id: String,
}

#[derive(Debug, Clone)]
pub struct GoogleClient {
    http: reqwest::Client,
    api_base: Url,
    auth: Arc<GoogleAuth>,
    limiter: Arc<RateLimiter>,
    /// Background reads (the refresh lane) take the rate limiter only when no write or
    /// deadline-lane request is waiting for it.
    background: bool,
}

impl GoogleClient {
    pub fn new(
        http: reqwest::Client,
        api_base: &str,
        auth: Arc<GoogleAuth>,
        limiter: Arc<RateLimiter>,
    ) -> Result<Self, crate::http::BadApiBase> {
        let api_base = crate::http::BadApiBase::parse("google.api_base", api_base)?;
        Ok(GoogleClient {
            http,
            api_base,
            auth,
            limiter,
            background: false,
        })
    }

    /// The same client at background priority, for the refresh lane's reads.
    pub fn background(&self) -> GoogleClient {
        GoogleClient {
            background: true,
            ..self.clone()
        }
    }

    fn url(&self, resource: &str) -> Url {
        let mut url = self.api_base.clone();
        let path = format!("{}/v1/{resource}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    /// The first half of a create: gets the token and waits for the rate limiter, sending
    /// nothing. The caller records "may be on the wire" between this and
    /// [`GoogleClient::send_create_lead`], so a crash never leaves a create in doubt that was
    /// only waiting for its turn.
    pub(crate) async fn prepare_create_lead(
        &self,
        parent: &str,
        lead: &Value,
    ) -> Result<Prepared, ApiError> {
        let url = self.url(&format!("{parent}/leads"));
        let mut ready = self.prepare(Method::POST, url, Some(lead)).await?;
        ready.label = parent.to_string();
        Ok(ready)
    }

    /// Sends a create prepared by [`GoogleClient::prepare_create_lead`], at once.
    pub(crate) async fn send_create_lead(&self, ready: Prepared) -> Result<Reply<Lead>, ApiError> {
        let parent = ready.label.clone();
        let (body, request_id) = self.dispatch(ready).await?;
        let lead =
            Lead::from_value(&body).map_err(|e| self.malformed("POST", &parent, e, &request_id))?;
        Ok(Reply {
            value: lead,
            request_id,
        })
    }

    pub(crate) async fn get_lead(&self, name: &str) -> Result<Reply<Lead>, ApiError> {
        let (body, request_id) = self.send(Method::GET, self.url(name), None).await?;
        let lead =
            Lead::from_value(&body).map_err(|e| self.malformed("GET", name, e, &request_id))?;
        Ok(Reply {
            value: lead,
            request_id,
        })
    }

    pub(crate) async fn get_opportunity(&self, name: &str) -> Result<Reply<Opportunity>, ApiError> {
        let (body, request_id) = self.send(Method::GET, self.url(name), None).await?;
        let opp = Opportunity::from_value(&body)
            .map_err(|e| self.malformed("GET", name, e, &request_id))?;
        Ok(Reply {
            value: opp,
            request_id,
        })
    }

    /// `PATCH /v1/{name}?updateMask=a,b`: only the masked fields of `body` are written.
    pub(crate) async fn patch_opportunity(
        &self,
        name: &str,
        body: &Value,
        update_mask: &[String],
    ) -> Result<Reply<Opportunity>, ApiError> {
        let mut url = self.url(name);
        url.query_pairs_mut()
            .append_pair("updateMask", &update_mask.join(","));
        let (body, request_id) = self.send(Method::PATCH, url, Some(body)).await?;
        let opp = Opportunity::from_value(&body)
            .map_err(|e| self.malformed("PATCH", name, e, &request_id))?;
        Ok(Reply {
            value: opp,
            request_id,
        })
    }

    fn malformed(
        &self,
        method: &str,
        path: &str,
        message: impl std::fmt::Display,
        request_id: &str,
    ) -> ApiError {
        ApiError::Malformed {
            api: API,
            method: method.into(),
            path: path.into(),
            message: message.to_string(),
            request_id: Some(request_id.to_string()),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<(Value, String), ApiError> {
        let ready = self.prepare(method, url, body).await?;
        self.dispatch(ready).await
    }

    /// Token first, then the rate limiter: what is left is only the send.
    async fn prepare(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Prepared, ApiError> {
        let token = self.auth.token().await?;
        if self.background {
            self.limiter.acquire_background().await;
        } else {
            self.limiter.acquire().await;
        }
        Ok(Prepared {
            method,
            url,
            body: body.map(Value::to_string),
            token,
            label: String::new(),
        })
    }

    async fn dispatch(&self, ready: Prepared) -> Result<(Value, String), ApiError> {
        let Prepared {
            method,
            url,
            body,
            token,
            ..
        } = ready;
        // Google does not echo a request id; ours goes in `x-request-id` and in the audit row.
        let request_id = new_request_id();
        let path = url.path().to_string();
        let mut request = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/json")
            .header("x-request-id", &request_id)
            .bearer_auth(token.expose_secret());
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let started = Instant::now();
        let answer = send_and_read(API, method.as_str(), &path, request).await?;
        let status = answer.status;
        tracing::debug!(
            api = API,
            %method,
            path,
            status = status.as_u16(),
            request_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "google answered"
        );
        if status.is_success() {
            let value = serde_json::from_str(&answer.text).map_err(|e| ApiError::Malformed {
                api: API,
                method: method.to_string(),
                path: path.clone(),
                message: e.to_string(),
                request_id: Some(request_id.clone()),
            })?;
            return Ok((value, request_id));
        }
        let error: Value = serde_json::from_str(&answer.text).unwrap_or(Value::Null);
        let error = &error["error"];
        let mut message = error["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| answer.text.chars().take(200).collect());
        // BadRequest details name the offending fields; keep them in the message.
        for violation in error["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["fieldViolations"].as_array())
            .flatten()
        {
            message.push_str(&format!(
                "; {}: {}",
                violation["field"].as_str().unwrap_or("?"),
                violation["description"].as_str().unwrap_or("")
            ));
        }
        Err(ApiError::Status {
            api: API,
            method: method.to_string(),
            path,
            status: status.as_u16(),
            code: error["status"].as_str().map(str::to_string),
            message,
            retry_after: answer.retry_after(),
            request_id: Some(request_id),
        })
    }
}
