//! Sending a queued accept or decline to Partner Center: one answer row, taken by the one
//! executor ([`super::push_due`], in the deadline lane of the worker process, or in the
//! `accept`/`decline` command when no daemon runs) beside every other outbox action and under
//! the same `[sync] concurrency`. Each PATCH carries `If-Match` with the eTag of the copy it
//! was decided on; a 412 re-reads the referral and decides again ([`super::answer::decide`]),
//! never a blind retry. Every PATCH is audited with the person who asked. The outcome lands in
//! the row's `result` as an [`AnswerResult`], which the command and the page read back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::http::{with_retry, ApiError, RetryPolicy};
use crate::microsoft::model::ParsedReferral;
use crate::microsoft::{MicrosoftClient, PatchOp};
use crate::store::answers::{self, Finish};
use crate::store::outbox::{self, AuditEntry, OutboxRow, Outcome, SendClaim};
use crate::store::{referrals, Store, StoreError};
use crate::sync::answer::{decide, decode, Answer, Verdict};
use crate::sync::{CycleContext, Schedule};

/// The settings answers need besides the clients (the `[alerts]` window, the `[sync]` retry
/// schedule, dry run): in the cycle context, since the executor that sends them is the cycle's.
#[derive(Debug, Clone)]
pub struct AnswerSettings {
    /// `[alerts] response_window`: the deadline when Microsoft gives none.
    pub window: chrono::Duration,
    pub(crate) schedule: Schedule,
    /// `[daemon] dry_run`: decide and log, never send.
    pub(crate) dry_run: bool,
}

/// What sending one answer uses, borrowed from the executor's cycle context.
struct AnswerContext<'a> {
    store: &'a Store,
    microsoft: &'a MicrosoftClient,
    retry: &'a RetryPolicy,
    window: chrono::Duration,
    schedule: Schedule,
    dry_run: bool,
}

impl<'a> AnswerContext<'a> {
    fn of(ctx: &'a CycleContext) -> AnswerContext<'a> {
        AnswerContext {
            store: &ctx.store,
            microsoft: &ctx.microsoft,
            retry: &ctx.pull.retry,
            window: ctx.answers.window,
            schedule: ctx.answers.schedule,
            dry_run: ctx.answers.dry_run,
        }
    }
}

/// How an answer ended, as the command and the page show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AnswerResult {
    /// `sent` (this answer changed Partner Center), `already` (it was already so),
    /// `refused` (it cannot be: why is in `message`), `queued` (Partner Center did not
    /// answer; retried later).
    pub(crate) outcome: String,
    pub(crate) message: String,
    /// `accept` or `decline`.
    pub(crate) decision: String,
    pub(crate) actor: String,
    pub(crate) at: DateTime<Utc>,
}

impl AnswerResult {
    /// `accepted` or `declined`.
    pub(crate) fn decision_past(&self) -> &'static str {
        match self.decision.as_str() {
            "accept" => "accepted",
            _ => "declined",
        }
    }
}

/// At most this many decisions per answer in one go: each after a 412 re-read.
const MAX_ROUNDS: u32 = 3;

/// Sends one answer row the executor took; the outcome is recorded on the row (and returned
/// for the cycle's counts).
pub(super) async fn send(ctx: &CycleContext, row: OutboxRow) -> Result<Outcome, StoreError> {
    let span = tracing::info_span!("answer", id = row.id, referral_id = %row.referral_id);
    tracing::Instrument::instrument(send_one(&AnswerContext::of(ctx), row), span).await
}

async fn send_one(ctx: &AnswerContext<'_>, row: OutboxRow) -> Result<Outcome, StoreError> {
    let answer = match decode(&row.payload) {
        Ok(a) => a,
        Err(e) => {
            let error = format!("the stored answer cannot be read: {e}");
            return close(ctx, &row, None, "dead", "refused", &error, None).await;
        }
    };
    let mut current = match stored_or_fresh(ctx, &row, &answer).await? {
        Ok(current) => current,
        Err(closed) => return Ok(closed),
    };
    // The first send claims the row the way every action is claimed (a compare-and-swap on
    // the attempt this taker counted); later rounds, after a 412, hold it already.
    let mut claimed = false;
    for _ in 0..MAX_ROUNDS {
        let verdict = decide(
            &current.referral,
            &serde_json::from_str(&current.raw).unwrap_or_default(),
            &answer.decision,
            ctx.window,
            Utc::now(),
        );
        let ops = match verdict {
            Verdict::Already(m) => {
                return close(ctx, &row, Some(&answer), "superseded", "already", &m, None).await
            }
            Verdict::Refuse(m) => {
                return close(ctx, &row, Some(&answer), "superseded", "refused", &m, None).await
            }
            Verdict::Send(ops) if ctx.dry_run => {
                let body = serde_json::to_string(&ops).unwrap_or_default();
                tracing::warn!(referral_id = %row.referral_id, body, "DRY RUN: would send PATCH");
                let m = format!("dry run: would send PATCH {body}; not sent");
                return close(ctx, &row, Some(&answer), "superseded", "refused", &m, None).await;
            }
            Verdict::Send(ops) => ops,
        };
        if let Some(not_sent) = claim(ctx, &row, claimed).await? {
            return Ok(not_sent);
        }
        claimed = true;
        let etag = current.referral.e_tag.clone();
        // Transient failures are retried here: If-Match makes a repeat safe (a PATCH that went
        // through makes the next one a 412, which re-reads and finds it answered).
        let sent = with_retry(ctx.retry, "answer referral", || {
            ctx.microsoft
                .patch_referral(&row.referral_id, &ops, etag.as_deref())
        })
        .await;
        match sent {
            Ok(w) => return answered(ctx, &row, &answer, &ops, w).await,
            Err(e) if e.status() == Some(412) => {
                audit_failure(ctx, &row, &answer, &ops, &e).await?;
                tracing::info!(
                    "412: the referral changed since it was read; re-reading and deciding again"
                );
                match read_fresh(ctx, &row, &answer).await? {
                    Ok(fresh) => current = fresh,
                    Err(closed) => return Ok(closed),
                }
            }
            Err(e) => {
                audit_failure(ctx, &row, &answer, &ops, &e).await?;
                return failed(ctx, &row, &answer, &e).await;
            }
        }
    }
    let m = "the referral kept changing while it was answered (412 each time); trying again";
    retry_later(ctx, &row, &answer, m.into(), None).await
}

/// Moves the row `in_flight` right before its PATCH. `Some(outcome)`: do not send (the
/// operator dropped it, or a newer taker holds it); nothing is recorded on a row this taker
/// no longer owns.
async fn claim(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    claimed: bool,
) -> Result<Option<Outcome>, StoreError> {
    let (taken, id) = (row.clone(), row.id);
    let reason = if claimed {
        let still = ctx
            .store
            .call(move |c| answers::mark_sending(c, id, Utc::now()))
            .await?;
        match still {
            true => return Ok(None),
            false => "no longer pending (dropped by the operator); not sent",
        }
    } else {
        let claim = ctx
            .store
            .call(move |c| outbox::mark_sending(c, &taken, Utc::now()))
            .await?;
        match claim {
            SendClaim::Won => return Ok(None),
            SendClaim::Dropped => "no longer pending (dropped by the operator); not sent",
            SendClaim::TakenByAnother => "taken again by a newer attempt, which sends it",
            SendClaim::Closed => "closed meanwhile; not sent",
        }
    };
    tracing::info!(reason, "answer not sent");
    Ok(Some(Outcome::Superseded {
        reason: reason.into(),
    }))
}

/// The stored copy when it has an eTag (a stale one costs a 412 and a re-read), else a GET.
async fn stored_or_fresh(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
) -> Result<Result<ParsedReferral, Outcome>, StoreError> {
    let id = row.referral_id.clone();
    let stored = ctx
        .store
        .call(move |c| referrals::for_patch(c, &id))
        .await?;
    let parsed = stored
        .filter(|s| s.etag.is_some())
        .and_then(|s| ParsedReferral::from_value(s.raw).ok());
    match parsed {
        Some(p) => Ok(Ok(p)),
        None => read_fresh(ctx, row, answer).await,
    }
}

/// GETs the referral and stores it. `Err(outcome)` when the row was closed instead (unknown
/// referral, Partner Center unreachable: retried later).
async fn read_fresh(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
) -> Result<Result<ParsedReferral, Outcome>, StoreError> {
    let read = with_retry(ctx.retry, "get referral", || {
        ctx.microsoft.get_referral(&row.referral_id)
    })
    .await;
    match read {
        Ok(fresh) => {
            let copy = fresh.clone();
            ctx.store
                .call(move |c| referrals::commit_page(c, &[copy], &[], None, Utc::now()))
                .await?;
            Ok(Ok(fresh))
        }
        Err(e) if e.status() == Some(404) => {
            let m = format!(
                "referral {} is unknown to Partner Center (404)",
                row.referral_id
            );
            Ok(Err(close(
                ctx,
                row,
                Some(answer),
                "superseded",
                "refused",
                &m,
                None,
            )
            .await?))
        }
        Err(e) => Ok(Err(failed(ctx, row, answer, &e).await?)),
    }
}

/// The PATCH went through: its audit row (with the actor), the referral as it is now, and
/// the done row, in one transaction.
async fn answered(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
    ops: &[PatchOp],
    w: crate::microsoft::WriteOutcome,
) -> Result<Outcome, StoreError> {
    // 200 with the representation (asked for), 204 without.
    let code = if w.referral.is_some() { 200 } else { 204 };
    let fresh = match w.referral {
        Some(r) => Some(r),
        None => with_retry(ctx.retry, "get referral", || {
            ctx.microsoft.get_referral(&row.referral_id)
        })
        .await
        .ok(),
    };
    let result = result_of(
        answer,
        "sent",
        &format!(
            "referral {} {} in Partner Center",
            row.referral_id,
            answer.decision.past()
        ),
    );
    let entry = audit_entry(
        row,
        answer,
        ops,
        "ok",
        Some(code),
        w.request_id.clone(),
        None,
    );
    let (id, actor, stored) = (row.id, answer.actor.clone(), result.clone());
    let request_id = w.request_id;
    ctx.store
        .call(move |c| {
            let now = Utc::now();
            if let Some(fresh) = fresh {
                referrals::commit_page(c, &[fresh], &[], None, now)?;
            }
            let tx = c.transaction()?;
            answers::audit(&tx, &entry, &actor, now)?;
            let finish = Finish {
                state: "done",
                result: Some(stored),
                error: None,
                request_id,
                retry_at: None,
            };
            answers::finish(&tx, id, &finish, now)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    tracing::info!(decision = answer.decision.verb(), actor = %answer.actor, "referral answered in Partner Center");
    Ok(Outcome::Done {
        result: Some(result),
    })
}

/// A failed PATCH or read: transient ones wait for the next try, others are refused.
async fn failed(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
    e: &ApiError,
) -> Result<Outcome, StoreError> {
    if (e.is_transient() || e.is_auth()) && row.attempts < ctx.schedule.max_attempts {
        let m = format!(
            "Partner Center did not answer ({e}); the answer stays queued and is sent again"
        );
        return retry_later(ctx, row, answer, m, e.retry_after()).await;
    }
    let m = format!("Partner Center refused the answer: {e}");
    close(ctx, row, Some(answer), "dead", "refused", &m, None).await
}

async fn retry_later(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
    message: String,
    retry_after: Option<std::time::Duration>,
) -> Result<Outcome, StoreError> {
    let delay = ctx.schedule.delay(row.attempts, retry_after);
    let at = Utc::now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
    tracing::warn!(error = %message, retry_at = %at, "answer not sent yet");
    close(
        ctx,
        row,
        Some(answer),
        "pending",
        "queued",
        &message,
        Some(at),
    )
    .await
}

/// Records where the row ends (or waits) with its outcome.
async fn close(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: Option<&Answer>,
    state: &'static str,
    outcome: &str,
    message: &str,
    retry_at: Option<DateTime<Utc>>,
) -> Result<Outcome, StoreError> {
    let result = answer.map(|a| result_of(a, outcome, message));
    if state != "pending" {
        tracing::info!(outcome, message, "answer closed without a write");
    }
    let finish = Finish {
        state,
        result,
        error: (outcome != "already").then(|| message.to_string()),
        request_id: None,
        retry_at,
    };
    let id = row.id;
    ctx.store
        .call(move |c| answers::finish(c, id, &finish, Utc::now()))
        .await?;
    let message = message.to_string();
    Ok(match state {
        "pending" => Outcome::Retry {
            at: retry_at.unwrap_or_else(Utc::now),
            error: message,
        },
        "dead" => Outcome::Dead { error: message },
        _ => Outcome::Superseded { reason: message },
    })
}

fn result_of(answer: &Answer, outcome: &str, message: &str) -> String {
    serde_json::to_string(&AnswerResult {
        outcome: outcome.into(),
        message: message.into(),
        decision: answer.decision.verb().into(),
        actor: answer.actor.clone(),
        at: Utc::now(),
    })
    .expect("a result serializes")
}

async fn audit_failure(
    ctx: &AnswerContext<'_>,
    row: &OutboxRow,
    answer: &Answer,
    ops: &[PatchOp],
    e: &ApiError,
) -> Result<(), StoreError> {
    let request_id = match e {
        ApiError::Status { request_id, .. } | ApiError::Malformed { request_id, .. } => {
            request_id.clone()
        }
        _ => None,
    };
    let entry = audit_entry(
        row,
        answer,
        ops,
        "failed",
        e.status(),
        request_id,
        Some(e.to_string()),
    );
    let actor = answer.actor.clone();
    ctx.store
        .call(move |c| answers::audit(c, &entry, &actor, Utc::now()))
        .await
}

fn audit_entry(
    row: &OutboxRow,
    answer: &Answer,
    ops: &[PatchOp],
    outcome: &'static str,
    status_code: Option<u16>,
    request_id: Option<String>,
    error: Option<String>,
) -> AuditEntry {
    let fields = ops
        .iter()
        .map(|o| {
            format!(
                "{}={}",
                o.path.trim_start_matches('/'),
                o.value.as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let note = answer.note.as_deref().map(|n| format!("note: {n}"));
    let detail = match (error, note) {
        (Some(e), Some(n)) => Some(format!("{e}; {n}")),
        (e, n) => e.or(n),
    };
    AuditEntry {
        api: "microsoft",
        method: "PATCH",
        resource: row.referral_id.clone(),
        fields: Some(format!("{} ({fields})", answer.decision.verb())),
        outcome,
        status_code,
        request_id,
        detail,
    }
}

/// Waits until the answer row settles: closed, or waiting for a retry with its reason.
pub(crate) async fn wait_for_outcome(
    store: &Store,
    id: i64,
    limit: Duration,
) -> Option<AnswerResult> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let row = store
            .call(move |c| outbox::get(c, id))
            .await
            .ok()
            .flatten()?;
        let settled = !matches!(row.state.as_str(), "pending" | "in_flight");
        let result = row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<AnswerResult>(r).ok());
        if settled || result.is_some() {
            return result.or_else(|| {
                Some(AnswerResult {
                    outcome: "refused".into(),
                    message: row
                        .last_error
                        .unwrap_or_else(|| format!("the answer was {}", row.state)),
                    decision: String::new(),
                    actor: String::new(),
                    at: Utc::now(),
                })
            });
        }
        if tokio::time::Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
