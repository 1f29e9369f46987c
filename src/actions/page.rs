//! The action page's HTTP side: one axum [`Router`] built by [`router`], mounted on the
//! daemon's listener for `[actions] listen` (alone, or beside the webhook receiver).
//! `GET public_url/TOKEN` shows the referral and the form; `POST` of that form queues the
//! answer in the outbox, rings the executor's doorbell for answers (the one executor sends
//! it at once, without a cycle) and shows the outcome once the executor recorded it. A link that is forged,
//! altered, expired, used for another referral, or a request without the SSO header, gets
//! 403 before anything is read or sent. A referral already answered shows its outcome, and a
//! POST then changes nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::html::{form_page, message_page, Fact};
use super::request_guard::{same_origin, single_actor, Refusal};
use super::ActionsConfig;
use crate::alerts::format::deal;
use crate::links::{Claims, LinkError, LinkSigner};
use crate::store::answers::{self, PageFacts};
use crate::store::{Store, StoreError};
use crate::sync::answer::{Answer, Decision};
use crate::sync::push::answer_referral::{wait_for_outcome, AnswerOutcome, AnswerResult};
use crate::timefmt::{human, time_left};
use crate::wake::AnswerWake;

/// A form is a few hundred bytes; anything near this is not our form.
const MAX_BODY: usize = 16 * 1024;
/// How long a POST waits for Partner Center's answer before saying "queued".
const WAIT_FOR_OUTCOME: Duration = Duration::from_secs(20);

/// What the page needs besides the store: the links' signer and the `[actions]` settings.
#[derive(Debug, Clone)]
pub(crate) struct PageSettings {
    pub(crate) signer: Arc<LinkSigner>,
    pub(crate) config: ActionsConfig,
    /// `[alerts] response_window`: the deadline when Microsoft gives none.
    pub(crate) window: chrono::Duration,
    /// `[alerts] referral_url`, with `{id}`.
    pub(crate) referral_url: String,
}

struct Shared {
    settings: PageSettings,
    store: Store,
    /// The executor's doorbell for answers: rung as soon as one is queued; the page waits
    /// on its signal for the row to be recorded.
    answers: AnswerWake,
}

/// The page's router; `answers` is the executor's doorbell for answers.
pub(crate) fn router(settings: PageSettings, store: Store, answers: AnswerWake) -> Router {
    let route = format!("{}/{{token}}", settings.config.path());
    let shared = Arc::new(Shared {
        settings,
        store,
        answers,
    });
    Router::new()
        .route(&route, get(show).post(answer))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// A page with the headers every answer carries: never cached, never framed, never sending
/// its URL (the token) as a Referer to another site, no script allowed. `same-origin`, not
/// `no-referrer`: under `no-referrer` a browser sends `Origin: null` with the page's own form,
/// which [`same_origin`] must refuse; to ourselves the Referer is the URL the form posts to.
pub(super) fn page(status: StatusCode, html: String) -> Response {
    let mut r = (status, html).into_response();
    let h = r.headers_mut();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "no-store"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        (
            "content-security-policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

fn refused(status: StatusCode, title: &str, message: &str) -> Response {
    page(status, message_page(title, message, &[], false))
}

fn forbidden(message: &str) -> Response {
    refused(StatusCode::FORBIDDEN, "This link cannot be used", message)
}

/// The page's answer to a request the [`super::request_guard`] refused.
fn guard_refused(e: Refusal) -> Response {
    match e {
        Refusal::CrossSite(_) => forbidden(
            "This form was sent from another site. Open the link from the alert and answer there.",
        ),
        Refusal::NoActor => forbidden("Sign in through the company's sign-on first."),
        Refusal::BadActor(_) => refused(
            e.status(),
            "Not understood",
            "The sign-on header does not name exactly one person.",
        ),
    }
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %e, "action page: database error");
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again in a moment",
        "cosell-sync could not read its database.",
    )
}

/// The checks every request passes first: the link, then the SSO header.
fn admit(s: &Shared, token: &str, headers: &HeaderMap) -> Result<(Claims, String), Response> {
    let claims = s.settings.signer.verify(token, Utc::now()).map_err(|e| {
        tracing::info!(reason = %e, "action link refused");
        forbidden(match e {
            LinkError::Expired => "The referral's deadline has passed: this link no longer works.",
            _ => "This link is not valid. Open the link from the alert again.",
        })
    })?;
    let actor = match s.settings.config.actor_header() {
        None => "link".to_string(),
        Some(name) => single_actor(headers, name).map_err(|e| {
            tracing::warn!(header = name, reason = %e, "action page: actor header refused");
            guard_refused(e)
        })?,
    };
    Ok((claims, actor))
}

async fn load(s: &Shared, referral_id: &str) -> Result<Option<PageFacts>, Response> {
    let id = referral_id.to_string();
    s.store
        .call(move |c| answers::page_facts(c, &id))
        .await
        .map_err(unavailable)
}

async fn show(
    State(s): State<Arc<Shared>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (claims, _actor) = match admit(&s, &token, &headers) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let facts = match load(&s, &claims.referral_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(),
        Err(r) => return r,
    };
    let now = Utc::now();
    let mut view = View::of(&s.settings, &facts, now);
    if let Some(rules) = rules_say(&s, &facts.id).await {
        view.rows.push(("Rules", Fact::Text(rules)));
    }
    if let Some(outcome) = answered_outcome(&s, &facts).await {
        return page(
            StatusCode::OK,
            message_page(&outcome.0, &outcome.1, &view.facts(), true),
        );
    }
    if now >= view.deadline {
        return forbidden("The referral's deadline has passed: it can no longer be answered.");
    }
    let html = form_page(
        &view.facts(),
        view.deadline - now < chrono::Duration::hours(24),
        &token,
        &facts.id,
        &s.settings.config.decline_reasons,
    );
    page(StatusCode::OK, html)
}

/// What the triage rules decided (spec §7: "rule X would decline: reason"), when they did;
/// the page shows the referral without it when the store cannot say.
async fn rules_say(s: &Shared, referral_id: &str) -> Option<String> {
    let id = referral_id.to_string();
    let decided = s
        .store
        .call(move |c| crate::store::triage::decision_of(c, &id))
        .await;
    decided.ok().flatten().map(|d| crate::triage::sentence(&d))
}

fn not_found() -> Response {
    refused(
        StatusCode::NOT_FOUND,
        "Referral not found",
        "cosell-sync does not know this referral (any more).",
    )
}

/// `Some((title, message))` when the referral is answered already (here, in the portal or
/// by the daemon).
async fn answered_outcome(s: &Shared, facts: &PageFacts) -> Option<(String, String)> {
    let status = facts.raw["status"].as_str().unwrap_or("");
    let substatus = facts.raw["substatus"].as_str().unwrap_or("");
    if status == "New" {
        return None;
    }
    let id = facts.id.clone();
    let here = s
        .store
        .call(move |c| answers::latest_finished(c, &id))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.result)
        .and_then(|r| serde_json::from_str::<AnswerResult>(&r).ok())
        .filter(|r| r.outcome == AnswerOutcome::Sent);
    let title = match (status, substatus) {
        ("Active", _) => "Accepted".to_string(),
        ("Closed", "Declined") => "Declined".to_string(),
        ("Closed", "Expired") => "Expired unanswered".to_string(),
        _ => format!("{status} / {substatus}"),
    };
    let mut message = format!("This referral is {status}/{substatus} in Partner Center");
    if let Some(reason) = facts.raw["statusReason"].as_str().filter(|r| !r.is_empty()) {
        message.push_str(&format!(" (reason: {reason})"));
    }
    match here {
        Some(r) => message.push_str(&format!(
            "; {} here by {} on {}.",
            r.decision_past(),
            r.actor,
            human(r.at)
        )),
        None => message.push('.'),
    }
    Some((title, message))
}

async fn answer(
    State(s): State<Arc<Shared>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Response {
    // Before anything else: a form another site made the browser send changes nothing.
    if let Err(e) = same_origin(&headers, &s.settings.config.public_url) {
        tracing::warn!(reason = %e, "action page: cross-site POST refused");
        return guard_refused(e);
    }
    let (claims, actor) = match admit(&s, &token, &headers) {
        Ok(ok) => ok,
        Err(r) => return r,
    };
    let Ok(Form(form)) = Form::<HashMap<String, String>>::from_request(request, &()).await else {
        return refused(
            StatusCode::BAD_REQUEST,
            "Not understood",
            "The form could not be read.",
        );
    };
    // The hidden inputs must repeat this very link: a form replayed onto another link fails.
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("token") != token || field("referral") != claims.referral_id {
        tracing::info!("action form does not match its link");
        return forbidden("This form does not belong to this link.");
    }
    let decision = match parse_decision(&s.settings.config, field("action"), field("reason")) {
        Ok(d) => d,
        Err(e) => return refused(StatusCode::BAD_REQUEST, "Not understood", &e.to_string()),
    };
    let facts = match load(&s, &claims.referral_id).await {
        Ok(Some(f)) => f,
        Ok(None) => return not_found(),
        Err(r) => return r,
    };
    let view = View::of(&s.settings, &facts, Utc::now());
    if answered_outcome(&s, &facts).await.is_none() && Utc::now() >= view.deadline {
        return forbidden("The referral's deadline has passed: it can no longer be answered.");
    }
    let note =
        Some(field("note").trim().chars().take(1000).collect::<String>()).filter(|n| !n.is_empty());
    let queued = Answer {
        decision,
        note,
        actor,
    };
    let id = match queue(&s, &claims.referral_id, &queued).await {
        Ok(id) => id,
        Err(e) => return unavailable(e),
    };
    let outcome = wait_for_outcome(&s.store, id, WAIT_FOR_OUTCOME, Some(&s.answers)).await;
    outcome_page(&queued, outcome, &view.facts())
}

/// A form that asks for no decision the page offers (the person is told which to choose).
#[derive(Debug, thiserror::Error)]
enum FormError {
    #[error("Choose one of the listed reasons to decline.")]
    UnlistedReason,
    #[error("Choose Accept or Decline.")]
    NoDecision,
}

fn parse_decision(
    config: &ActionsConfig,
    action: &str,
    reason: &str,
) -> Result<Decision, FormError> {
    match action {
        "accept" => Ok(Decision::Accept),
        "decline" if config.decline_reasons.iter().any(|r| r == reason) => Ok(Decision::Decline {
            reason: reason.to_string(),
        }),
        "decline" => Err(FormError::UnlistedReason),
        _ => Err(FormError::NoDecision),
    }
}

async fn queue(s: &Shared, referral_id: &str, answer: &Answer) -> Result<i64, StoreError> {
    let (id, queued) = (referral_id.to_string(), answer.clone());
    let (row, added) = s
        .store
        .call(move |c| crate::sync::aws_answer::enqueue(c, &id, &queued, Utc::now()))
        .await?;
    tracing::info!(referral_id, actor = %answer.actor, decision = answer.decision.verb(), joined = !added, "answer queued from the action page");
    // The executor sends it now, without a cycle.
    s.answers.ring();
    Ok(row)
}

/// 200 when the referral is now as asked; 409 when it cannot be (or was answered the other
/// way, by someone else first); 202 while Partner Center has not answered yet.
fn outcome_page(asked: &Answer, outcome: Option<AnswerResult>, facts: &[(&str, Fact)]) -> Response {
    let Some(r) = outcome else {
        return page(
            StatusCode::ACCEPTED,
            message_page(
                "Queued",
                "Partner Center has not answered yet; the answer stays queued and cosell-sync sends it. Reload this page to see the outcome.",
                facts,
                true,
            ),
        );
    };
    let same = r.decision.is_empty() || r.decision == asked.decision.verb();
    match r.outcome {
        AnswerOutcome::Queued => page(
            StatusCode::ACCEPTED,
            message_page("Queued", &r.message, facts, true),
        ),
        AnswerOutcome::Sent | AnswerOutcome::Already if same => {
            let title = if asked.decision == Decision::Accept {
                "Accepted"
            } else {
                "Declined"
            };
            page(
                StatusCode::OK,
                message_page(title, &format!("{}.", r.message), facts, true),
            )
        }
        AnswerOutcome::Sent => page(
            StatusCode::CONFLICT,
            message_page(
                "Answered the other way",
                &format!("{} {} it first: {}.", r.actor, r.decision_past(), r.message),
                facts,
                false,
            ),
        ),
        AnswerOutcome::Already | AnswerOutcome::Refused => page(
            StatusCode::CONFLICT,
            message_page("Not answered", &r.message, facts, false),
        ),
    }
}

/// The facts a person decides on, from the stored copy.
struct View {
    deadline: DateTime<Utc>,
    rows: Vec<(&'static str, Fact)>,
}

impl View {
    fn of(settings: &PageSettings, f: &PageFacts, now: DateTime<Utc>) -> View {
        let raw = &f.raw;
        let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let deadline = crate::deadline::deadline(f.created_at, f.expires_at, settings.window);
        let mut rows = Vec::new();
        let customer = text(&raw["customerProfile"]["name"]).unwrap_or_else(|| "-".into());
        rows.push(("Customer", Fact::Text(customer)));
        rows.push((
            "Deal",
            Fact::Text(text(&raw["name"]).unwrap_or_else(|| "-".into())),
        ));
        let value = raw["details"]["dealValue"].as_f64();
        rows.push((
            "Value",
            Fact::Text(deal(value, raw["details"]["currency"].as_str())),
        ));
        let left = if now < deadline {
            time_left(deadline - now)
        } else {
            "none (past the deadline)".into()
        };
        rows.push(("Time left", Fact::Text(left)));
        rows.push(("Deadline", Fact::Text(human(deadline))));
        rows.push((
            "Partner Center",
            Fact::Link {
                text: "Open the referral".into(),
                href: settings.referral_url.replace("{id}", &f.id),
            },
        ));
        rows.push((
            "Google lead",
            Fact::Text(f.lead.clone().unwrap_or_else(|| "none yet".into())),
        ));
        rows.push((
            "Google opportunity",
            Fact::Text(
                f.opportunity
                    .clone()
                    .unwrap_or_else(|| "none linked".into()),
            ),
        ));
        rows.push(("Referral id", Fact::Text(f.id.clone())));
        View { deadline, rows }
    }

    fn facts(&self) -> Vec<(&'static str, Fact)> {
        self.rows
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Fact::Text(t) => Fact::Text(t.clone()),
                    Fact::Link { text, href } => Fact::Link {
                        text: text.clone(),
                        href: href.clone(),
                    },
                };
                (*k, v)
            })
            .collect()
    }
}

/// Serves the page alone on `[actions] listen` until `shutdown`, on the daemon's one server
/// layer (its timeouts, caps and rejection counting); `run` instead mounts [`router`] beside
/// its other listeners. Returns the bound address.
pub(crate) async fn serve(
    listen: &str,
    router: Router,
    shutdown: tokio_util::sync::CancellationToken,
) -> Result<std::net::SocketAddr, crate::serve::BindError> {
    let limits = crate::serve::Limits::daemon();
    let addr = crate::serve::serve("actions.listen", listen, router, limits, shutdown).await?;
    tracing::info!(%addr, "action page listening");
    Ok(addr)
}
