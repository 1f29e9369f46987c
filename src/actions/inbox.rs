//! The team's inbox page (spec §7), on with `[actions]` and `actor_header`: `GET
//! {public_url}/inbox` lists every incoming referral awaiting an answer, nearest deadline
//! first, 100 a page, with what the rules decided and a link to its action page; one form
//! answers the checked ones at once. The POST queues each answer (the same outbox, `If-Match`
//! and one executor as the action page), rings the executor's doorbell and answers 303 to a results
//! page (queued, sent or refused per referral): it never waits for the sends.
//!
//! The header alone names the person, so the inbox is served only on a loopback `listen` or
//! behind `[actions] proxy_secret_file` (checked at load, and here in constant time); the
//! form carries a token bound to the person (12 hours, never an action-link token); a
//! cross-site POST and an ambiguous actor header are refused by [`super::request_guard`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use ring::hmac;

use super::html::{inbox_page, message_page, results_page, InboxLine, InboxView};
use super::page::{page, PageSettings};
use super::request_guard::{same_origin, single_actor, Refusal};
use crate::alerts::format::deal;
use crate::config::actions::ProxySecretError;
use crate::outside::Outside;
use crate::store::triage as tstore;
use crate::store::Store;
use crate::sync::answer::{Answer, Decision};
use crate::timefmt::{human, time_left};
use crate::wake::AnswerWake;

/// Referrals a page shows, and the most one POST answers.
pub(crate) const PER_PAGE: usize = 100;
/// A POST of a full page is a few kilobytes.
const MAX_BODY: usize = 64 * 1024;

struct Shared {
    settings: PageSettings,
    store: Store,
    answers: AnswerWake,
    /// `X-Proxy-Secret`'s expected value, kept as an HMAC tag under a random key so the
    /// comparison is constant-time (`hmac::verify`).
    proxy_secret: Option<(hmac::Key, hmac::Tag)>,
}

/// The inbox's routes (`{path}/inbox`, `{path}/inbox/results`); without `actor_header` they
/// answer 404. Fails when the proxy secret cannot be read.
pub(crate) fn router(
    settings: PageSettings,
    store: Store,
    answers: AnswerWake,
) -> Result<Router, ProxySecretError> {
    let proxy_secret = match settings.config.proxy_secret_file() {
        Some(path) => {
            let secret = crate::config::actions::read_proxy_secret(path)?;
            // Any key will do: it only makes the comparison constant-time.
            let key = hmac::Key::new(hmac::HMAC_SHA256, &uuid::Uuid::new_v4().into_bytes());
            let tag = hmac::sign(&key, &secret);
            Some((key, tag))
        }
        None => None,
    };
    let base = settings.config.path();
    let shared = Arc::new(Shared {
        settings,
        store,
        answers,
        proxy_secret,
    });
    Ok(Router::new()
        .route(&format!("{base}/inbox"), get(show).post(answer))
        .route(&format!("{base}/inbox/results"), get(results))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared))
}

fn message(status: StatusCode, title: &str, text: &str) -> Response {
    page(status, message_page(title, text, &[], false))
}

/// Who asks, after the checks every inbox request passes: the inbox is on (404), the proxy
/// secret (403), exactly one actor (403 without, 400 when ambiguous).
fn admit(s: &Shared, headers: &HeaderMap) -> Result<String, Response> {
    let Some(name) = s.settings.config.actor_header() else {
        return Err(message(
            StatusCode::NOT_FOUND,
            "Not found",
            "The inbox is off: [actions] actor_header is not set.",
        ));
    };
    if let Some((key, tag)) = &s.proxy_secret {
        let given = headers.get_all("x-proxy-secret").iter().collect::<Vec<_>>();
        let ok = given.len() == 1 && hmac::verify(key, given[0].as_bytes(), tag.as_ref()).is_ok();
        if !ok {
            tracing::warn!("inbox: request without the proxy secret refused");
            return Err(message(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "This request did not come through the sign-on proxy.",
            ));
        }
    }
    single_actor(headers, name).map_err(|e| {
        tracing::warn!(header = name, reason = %e, "inbox: actor header refused");
        refused(e)
    })
}

fn refused(e: Refusal) -> Response {
    let text = match e {
        Refusal::CrossSite(_) => "This form was sent from another site; nothing was answered.",
        Refusal::NoActor => "Sign in through the company's sign-on first.",
        Refusal::BadActor(_) => "The sign-on header does not name exactly one person.",
    };
    message(e.status(), "Not allowed", text)
}

/// `?page=N`, counted from 1; anything else is page 1.
fn page_number(query: Option<&str>) -> usize {
    form_pairs(query.unwrap_or("").as_bytes())
        .into_iter()
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .filter(|n| (1..=100_000).contains(n))
        .unwrap_or(1)
}

async fn show(
    State(s): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let person = match admit(&s, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let number = page_number(query.as_deref());
    let (window, now) = (s.settings.window, Utc::now());
    let listed = s
        .store
        .call(move |c| tstore::inbox(c, window, now, number, PER_PAGE))
        .await;
    let (total, rows) = match listed {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "inbox: database error");
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again in a moment",
                "cosell-sync could not read its database.",
            );
        }
    };
    let token = s.settings.signer.inbox_token(&person, now);
    page(
        StatusCode::OK,
        render_inbox(&s.settings, &person, &token, number, total, &rows, now),
    )
}

fn render_inbox(
    settings: &PageSettings,
    person: &str,
    token: &str,
    number: usize,
    total: usize,
    rows: &[tstore::InboxRow],
    now: chrono::DateTime<Utc>,
) -> String {
    let lines: Vec<InboxLine> = rows
        .iter()
        .map(|r| InboxLine {
            id: &r.referral.id,
            time_left: time_left(r.deadline - now),
            customer: r
                .referral
                .customer
                .as_ref()
                .map(Outside::unescaped)
                .unwrap_or("-"),
            value: deal(r.referral.deal_value, r.referral.currency.as_deref()),
            source: &r.referral.source,
            rules: r
                .decision
                .as_ref()
                .map(crate::triage::sentence)
                .unwrap_or_else(|| "not decided yet".into()),
            link: settings.signer.url(&r.referral.id, r.deadline),
        })
        .collect();
    inbox_page(&InboxView {
        person,
        token,
        number,
        pages: total.div_ceil(PER_PAGE).max(1),
        total,
        rows: &lines,
        reasons: &settings.config.decline_reasons,
        as_of: &human(now),
    })
}

async fn answer(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    // Before anything else: a form another site made the browser send changes nothing.
    if let Err(e) = same_origin(&headers, &s.settings.config.public_url) {
        tracing::warn!(reason = %e, "inbox: cross-site POST refused");
        return refused(e);
    }
    let person = match admit(&s, &headers) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let form = form_pairs(&body);
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    if let Err(e) = s
        .settings
        .signer
        .verify_inbox(field("token"), &person, Utc::now())
    {
        tracing::info!(reason = %e, "inbox: form token refused");
        return message(
            StatusCode::FORBIDDEN,
            "This form cannot be used",
            "The form is not yours or is older than 12 hours. Open the inbox again.",
        );
    }
    let decision = match (field("action"), field("reason")) {
        ("accept", _) => Decision::Accept,
        ("decline", r) if s.settings.config.decline_reasons.iter().any(|x| x == r) => {
            Decision::Decline {
                reason: r.to_string(),
            }
        }
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not understood",
                "Choose Accept, or Decline with one of the listed reasons.",
            )
        }
    };
    let mut ids: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "referral")
        .map(|(_, v)| v.clone())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() || ids.len() > PER_PAGE || ids.iter().any(|id| !plain_id(id)) {
        return message(
            StatusCode::BAD_REQUEST,
            "Not understood",
            "Check between 1 and 100 referrals of the inbox.",
        );
    }
    let answer = Answer {
        decision,
        note: None,
        actor: person,
    };
    if let Err(e) = queue_all(&s, &ids, &answer).await {
        tracing::error!(error = %e, "inbox: database error");
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again in a moment",
            "cosell-sync could not queue the answers.",
        );
    }
    let query: Vec<String> = ids.iter().map(|id| format!("referral={id}")).collect();
    let to = format!(
        "{}/inbox/results?{}",
        s.settings.config.path(),
        query.join("&")
    );
    let mut r = (StatusCode::SEE_OTHER, "").into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Queues the answer for each checked referral still awaiting one (each checked and queued
/// in its own transaction), then rings the executor's doorbell when any was queued.
async fn queue_all(
    s: &Shared,
    ids: &[String],
    answer: &Answer,
) -> Result<(), crate::store::StoreError> {
    let (window, answer, ids) = (s.settings.window, answer.clone(), ids.to_vec());
    let queued = s
        .store
        .call(move |c| {
            let now = Utc::now();
            let mut n = 0;
            for id in &ids {
                let tx = c.transaction()?;
                if tstore::awaits_answer(&tx, id, window, now)? {
                    crate::sync::aws_answer::enqueue(&tx, id, &answer, now)?;
                    n += 1;
                }
                tx.commit()?;
            }
            Ok(n)
        })
        .await?;
    if queued > 0 {
        s.answers.ring();
    }
    Ok(())
}

/// Referral ids are GUID-like; anything else is not one of ours (and never reaches a URL).
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn results(
    State(s): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = admit(&s, &headers) {
        return r;
    }
    let ids: Vec<String> = form_pairs(query.unwrap_or_default().as_bytes())
        .into_iter()
        .filter(|(k, v)| k == "referral" && plain_id(v))
        .map(|(_, v)| v)
        .take(PER_PAGE)
        .collect();
    let states = s
        .store
        .call(move |c| {
            ids.into_iter()
                .map(|id| Ok((tstore::answer_state(c, &id)?, id)))
                .collect::<Result<Vec<_>, crate::store::StoreError>>()
        })
        .await;
    let Ok(states) = states else {
        return message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again in a moment",
            "cosell-sync could not read its database.",
        );
    };
    let outcomes: Vec<(&str, &str, Option<&str>)> = states
        .iter()
        .map(|(state, id)| match state {
            Some((word, detail)) => (*word, id.as_str(), detail.as_deref()),
            None => (
                "refused",
                id.as_str(),
                Some("it no longer awaits an answer"),
            ),
        })
        .collect();
    let back = format!("{}/inbox", s.settings.config.path());
    page(StatusCode::OK, results_page(&back, &outcomes))
}

/// `application/x-www-form-urlencoded` pairs, repeated keys kept (`referral=a&referral=b`).
fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let mut it = pair.splitn(2, |b| *b == b'=');
            let k = decode(it.next().unwrap_or_default());
            let v = decode(it.next().unwrap_or_default());
            (k, v)
        })
        .collect()
}

fn decode(part: &[u8]) -> String {
    let mut out = Vec::with_capacity(part.len());
    let mut i = 0;
    while i < part.len() {
        match part[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < part.len() => {
                let hex = std::str::from_utf8(&part[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_keep_repeats_and_decode_what_browsers_send() {
        let pairs = form_pairs(
            b"token=1.a%2Bb&referral=r-1&referral=r-2&reason=Too+small+%26+odd&x=%zz&y=%4",
        );
        assert_eq!(pairs[0], ("token".into(), "1.a+b".into()));
        assert_eq!(pairs[1].1, "r-1");
        assert_eq!(pairs[2].1, "r-2");
        assert_eq!(pairs[3].1, "Too small & odd");
        assert_eq!(pairs[4].1, "%zz");
        assert_eq!(pairs[5].1, "%4");
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let text = crate::config::hostile_text(&mut rng, 30) + "%";
            let _ = form_pairs(text.as_bytes());
        }
        assert_eq!(page_number(Some("page=3")), 3);
        assert_eq!(page_number(Some("page=0")), 1);
        assert_eq!(page_number(Some("page=-1&page=2")), 1);
        assert_eq!(page_number(None), 1);
        assert!(plain_id("5a3e0001-7c1e") && !plain_id("a/b") && !plain_id(""));
    }
}
