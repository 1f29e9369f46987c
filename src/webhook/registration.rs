//! `cosell-sync webhook register | show | test | unregister`: the registration on the classic
//! Partner Center API (`{webhook.api_base}/webhooks/v1/registration`, partner-apis.md A.5),
//! with the same Entra credentials as the Referrals API (a token for that API's resource).
//!
//! `test` asks for a `test-created` event (`POST …/registration/validationEvents`, at most 2 a
//! minute) and waits for it in the events table. When `webhook.listen` is free (no daemon
//! running), it serves a temporary receiver itself for the wait; otherwise the running
//! daemon's receiver stores the event. Either way the answer says whether an event arrived and
//! verified, or arrived and was refused (the rejected counter moved), or never came.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, Url};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::PartnerWebhookConfig;
use crate::config::Config;
use crate::http::{new_request_id, send_and_read, ApiError};
use crate::microsoft::TokenSource;
use crate::store::webhook as wstore;
use crate::store::Store;

const API: &str = "partner-center-webhooks";
const PATH: &str = "/webhooks/v1/registration";

/// The registration as Partner Center returns it (PascalCase documented; camelCase accepted).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Registration {
    #[serde(rename = "SubscriberId", alias = "subscriberId", default)]
    pub(crate) subscriber_id: Option<String>,
    #[serde(rename = "WebhookUrl", alias = "webhookUrl", default)]
    pub(crate) webhook_url: Option<String>,
    #[serde(rename = "WebhookEvents", alias = "webhookEvents", default)]
    pub(crate) webhook_events: Vec<String>,
}

/// The registration client.
#[derive(Debug, Clone)]
pub(crate) struct RegistrationClient {
    http: reqwest::Client,
    base: Url,
    tokens: Arc<TokenSource>,
}

/// Why `webhook register|show|unregister|test` could not start, or `test` stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebhookCommandError {
    #[error("webhook: the [webhook] section is missing")]
    NoSection,
    #[error(transparent)]
    Endpoint(#[from] crate::microsoft::auth::BadEndpoint),
    /// `webhook.api_base` is not a URL (the parser's words).
    #[error("webhook.api_base: {0}")]
    ApiBase(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Receiver(#[from] super::receiver::StartError),
    #[error("cannot request a test event: {0}")]
    RequestTest(ApiError),
}

impl RegistrationClient {
    /// From the configuration: `[microsoft]` credentials, `webhook.api_base`.
    pub(crate) fn from_config(config: &Config) -> Result<Self, WebhookCommandError> {
        let webhook = config
            .webhook
            .as_ref()
            .ok_or(WebhookCommandError::NoSection)?;
        let ms = &config.microsoft;
        let http = crate::http::client(ms.timeout.0, ms.connect_timeout.0);
        let tokens = TokenSource::from_config(http.clone(), config)?
            .with_scope(crate::microsoft::CLASSIC_SCOPE);
        let base = Url::parse(webhook.api_base.trim_end_matches('/'))
            .map_err(|e| WebhookCommandError::ApiBase(e.to_string()))?;
        Ok(RegistrationClient {
            http,
            base,
            tokens: Arc::new(tokens),
        })
    }

    fn url(&self, suffix: &str) -> Url {
        let mut url = self.base.clone();
        let path = format!("{}{PATH}{suffix}", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url
    }

    async fn call(
        &self,
        method: Method,
        suffix: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        let url = self.url(suffix);
        let path = url.path().to_string();
        let token = self.tokens.access_token().await?;
        let rid = new_request_id();
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(token.expose_secret())
            .header("Accept", "application/json")
            .header("MS-RequestId", &rid)
            .header("MS-CorrelationId", &rid);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let answer = send_and_read(API, method.as_str(), &path, request).await?;
        if answer.status.as_u16() == 404 && method == Method::GET {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(ApiError::Status {
                api: API,
                method: method.to_string(),
                path,
                status: answer.status.as_u16(),
                code: None,
                message: answer.text.chars().take(300).collect(),
                retry_after: answer.retry_after(),
                request_id: answer.header("request-id"),
            });
        }
        if answer.text.trim().is_empty() {
            return Ok(Some(Value::Null));
        }
        serde_json::from_str(&answer.text)
            .map(Some)
            .map_err(|e| ApiError::Malformed {
                api: API,
                method: method.to_string(),
                path,
                message: e.to_string(),
                request_id: answer.header("request-id"),
            })
    }

    /// The current registration, `None` when there is none.
    pub(crate) async fn show(&self) -> Result<Option<Registration>, ApiError> {
        let Some(value) = self.call(Method::GET, "", None).await? else {
            return Ok(None);
        };
        if value.is_null() {
            return Ok(None);
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| ApiError::Malformed {
                api: API,
                method: "GET".into(),
                path: PATH.into(),
                message: e.to_string(),
                request_id: None,
            })
    }

    /// Registers `webhook.public_url` for `webhook.events`: POST when there is no registration,
    /// PUT (replace) when there is one.
    pub(crate) async fn register(
        &self,
        webhook: &PartnerWebhookConfig,
    ) -> Result<Registration, ApiError> {
        let body = json!({ "WebhookUrl": webhook.public_url, "WebhookEvents": webhook.events });
        let method = if self.show().await?.is_some() {
            Method::PUT
        } else {
            Method::POST
        };
        let answer = self
            .call(method, "", Some(body))
            .await?
            .unwrap_or(Value::Null);
        Ok(
            serde_json::from_value(answer).unwrap_or_else(|_| Registration {
                subscriber_id: None,
                webhook_url: Some(webhook.public_url.clone()),
                webhook_events: webhook.events.clone(),
            }),
        )
    }

    /// `DELETE …/registration`. [?] DELETE is not in the captured docs; the answer is reported.
    pub(crate) async fn unregister(&self) -> Result<(), ApiError> {
        self.call(Method::DELETE, "", None).await.map(|_| ())
    }

    /// Asks for a `test-created` event; returns its correlation id when the answer has one.
    pub(crate) async fn request_test_event(&self) -> Result<Option<String>, ApiError> {
        let answer = self
            .call(Method::POST, "/validationEvents", None)
            .await?
            .unwrap_or(Value::Null);
        Ok(["correlationId", "CorrelationId"]
            .iter()
            .find_map(|k| answer.get(*k).and_then(Value::as_str))
            .map(str::to_string))
    }
}

/// How `webhook test` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TestOutcome {
    /// A verified `test-created` event was stored.
    Verified { via_temporary_receiver: bool },
    /// Something arrived but failed verification.
    Rejected,
    /// Nothing arrived in time.
    Missing,
}

/// `webhook test`: request the event and wait up to `wait` for it.
pub(crate) async fn test(
    config: &Config,
    client: &RegistrationClient,
    wait: Duration,
) -> Result<TestOutcome, WebhookCommandError> {
    let webhook = config
        .webhook
        .as_ref()
        .ok_or(WebhookCommandError::NoSection)?;
    let store = Store::open(&config.state.path)?;
    let stop = CancellationToken::new();
    let _stop_guard = stop.clone().drop_guard();
    // No forwarder here: the event is only stored; the daemon marks it processed later.
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    let temporary = match super::receiver::serve(webhook, store.clone(), tx, stop.clone()).await {
        Ok(_) => true,
        // The daemon's receiver is listening.
        Err(super::receiver::StartError::Bind(e)) if e.in_use() => false,
        Err(e) => return Err(e.into()),
    };
    let since = Utc::now();
    let rejected_before = store.call(|c| wstore::stats(c)).await?.rejected;
    client
        .request_test_event()
        .await
        .map_err(WebhookCommandError::RequestTest)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (arrived, stats) = store
            .call(move |c| {
                Ok((
                    wstore::arrived_since(c, super::TEST_EVENT, since)?,
                    wstore::stats(c)?,
                ))
            })
            .await?;
        if arrived {
            return Ok(TestOutcome::Verified {
                via_temporary_receiver: temporary,
            });
        }
        if stats.rejected > rejected_before {
            return Ok(TestOutcome::Rejected);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(TestOutcome::Missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
