//! The answer kind: a queued accept or decline sent to Partner Center, taken by the one
//! executor like every action (first, under the same `[sync] concurrency`), claimed by its
//! claim and recorded by its record path. Each PATCH carries `If-Match` with the eTag of the
//! copy it was decided on; a 412 re-reads the referral and decides again
//! ([`crate::sync::answer::decide`]), never a blind retry. Every PATCH is audited with the
//! person who asked. The outcome lands in the row's `result` as an [`AnswerResult`], which
//! the command and the page read back ([`wait_for_outcome`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::executor::{failed_audit, Executor, Settled};
use crate::http::{with_retry, ApiError};
use crate::microsoft::model::ParsedReferral;
use crate::microsoft::{PatchOp, WriteOutcome};
use crate::store::outbox::{self, ActionOutcome, AuditEntry, OutboxRow};
use crate::store::{referrals, Store, StoreError};
use crate::sync::answer::{decide, Answer, Verdict};
use crate::wake::AnswerWake;

/// How an answer ended, for the person who asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AnswerOutcome {
    /// This answer changed Partner Center.
    Sent,
    /// It was already so: nothing sent.
    Already,
    /// It cannot be (why is in the message).
    Refused,
    /// Partner Center did not answer; retried later.
    Queued,
}

/// How an answer ended, as the command and the page show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AnswerResult {
    pub(crate) outcome: AnswerOutcome,
    pub(crate) message: String,
    /// `accept` or `decline`.
    pub(crate) decision: String,
    pub(crate) actor: String,
    pub(crate) at: DateTime<Utc>,
    /// An AWS accept: its task as last read (the `TaskId` followed, the new
    /// `OpportunityId` once `COMPLETE`, `ReasonCode` and `Message` when `FAILED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) task: Option<crate::sync::aws_answer::AcceptTask>,
}

impl AnswerResult {
    /// The row's result text of an answer's outcome now (`decision`: `accept` or `decline`),
    /// whichever cloud it answers.
    pub(crate) fn text(
        outcome: AnswerOutcome,
        message: &str,
        decision: &str,
        actor: &str,
        task: Option<crate::sync::aws_answer::AcceptTask>,
    ) -> String {
        serde_json::to_string(&AnswerResult {
            outcome,
            message: message.into(),
            decision: decision.into(),
            actor: actor.into(),
            at: Utc::now(),
            task,
        })
        .expect("a result serializes")
    }

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

/// Sends one answer row the executor took (the one entry point of this kind).
pub(super) async fn execute(
    exec: &Executor<'_>,
    row: OutboxRow,
    answer: Answer,
) -> Result<ActionOutcome, StoreError> {
    let mut current = match stored_or_fresh(exec, &row, &answer).await? {
        Ok(current) => current,
        Err(closed) => return Ok(closed),
    };
    // The first send claims the row the way every action is claimed; later rounds, after a
    // 412, hold it already.
    let mut claim = exec.claim_of(&row);
    for _ in 0..MAX_ROUNDS {
        let verdict = decide(
            &current.referral,
            &serde_json::from_str(&current.raw).unwrap_or_default(),
            &answer.decision,
            exec.send.response_window,
            Utc::now(),
        );
        let ops = match verdict {
            Verdict::Already(m) => {
                return close(exec, &row, &answer, AnswerOutcome::Already, m).await
            }
            Verdict::Refuse(m) => {
                return close(exec, &row, &answer, AnswerOutcome::Refused, m).await
            }
            Verdict::Send(ops) if exec.send.dry_run => {
                let body = serde_json::to_string(&ops).unwrap_or_default();
                tracing::warn!(referral_id = %row.referral_id, body, "DRY RUN: would send PATCH");
                let m = format!("dry run: would send PATCH {body}; not sent");
                return close(exec, &row, &answer, AnswerOutcome::Refused, m).await;
            }
            Verdict::Send(ops) => ops,
        };
        if let Some(not_sent) = exec.claim(claim).await? {
            return Ok(not_sent);
        }
        claim.held = true;
        let etag = current.referral.e_tag.clone();
        // Transient failures are retried here: If-Match makes a repeat safe (a PATCH that went
        // through makes the next one a 412, which re-reads and finds it answered).
        let sent = with_retry(exec.microsoft_retry, "answer referral", || {
            exec.microsoft
                .patch_referral(&row.referral_id, &ops, etag.as_deref())
        })
        .await;
        match sent {
            Ok(written) => return answered(exec, &row, &answer, &ops, written).await,
            Err(e) if e.status() == Some(412) => {
                exec.audit(audit_failed(&row, &answer, &ops, &e)).await?;
                tracing::info!(
                    "412: the referral changed since it was read; re-reading and deciding again"
                );
                match read_fresh(exec, &row, &answer).await? {
                    Ok(fresh) => current = fresh,
                    Err(closed) => return Ok(closed),
                }
            }
            Err(e) => {
                let audit = audit_failed(&row, &answer, &ops, &e);
                return failed(exec, &row, &answer, &e, Some(audit)).await;
            }
        }
    }
    let m = "the referral kept changing while it was answered (412 each time); trying again";
    let at = exec.retry_time(row.attempts, None);
    retry_later(exec, &row, &answer, m.into(), at, None).await
}

/// The stored copy when it has an eTag (a stale one costs a 412 and a re-read), else a GET.
async fn stored_or_fresh(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
) -> Result<Result<ParsedReferral, ActionOutcome>, StoreError> {
    let id = row.referral_id.clone();
    let stored = exec
        .store
        .call(move |c| referrals::for_patch(c, &id))
        .await?;
    let parsed = stored
        .filter(|s| s.etag.is_some())
        .and_then(|s| ParsedReferral::from_value(s.raw).ok());
    match parsed {
        Some(p) => Ok(Ok(p)),
        None => read_fresh(exec, row, answer).await,
    }
}

/// Reads the referral again and stores it. `Err(outcome)` when the row was closed instead
/// (unknown referral; Partner Center unreachable: retried later).
async fn read_fresh(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
) -> Result<Result<ParsedReferral, ActionOutcome>, StoreError> {
    let read = exec.refresh_referral(&row.referral_id).await?;
    match read {
        Ok(fresh) => Ok(Ok(fresh)),
        Err(e) if e.status() == Some(404) => {
            let m = format!(
                "referral {} is unknown to Partner Center (404)",
                row.referral_id
            );
            Ok(Err(
                close(exec, row, answer, AnswerOutcome::Refused, m).await?
            ))
        }
        Err(e) => Ok(Err(failed(exec, row, answer, &e, None).await?)),
    }
}

/// The PATCH went through: its audit row (with the actor), the referral as it is now, and
/// the done row, in one transaction.
async fn answered(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
    ops: &[PatchOp],
    written: WriteOutcome,
) -> Result<ActionOutcome, StoreError> {
    // 200 with the representation (asked for), 204 without: then read it again.
    let code = if written.referral.is_some() { 200 } else { 204 };
    let fresh = match written.referral {
        Some(r) => Some(r),
        None => {
            // A failed re-read keeps the stored copy; the next pull brings the answer in.
            let _ = exec.refresh_referral(&row.referral_id).await?;
            None
        }
    };
    let message = format!(
        "referral {} {} in Partner Center",
        row.referral_id,
        answer.decision.past()
    );
    let result = result_of(answer, AnswerOutcome::Sent, &message);
    let audit = audit_entry(row, answer, ops, "ok", Some(code), written.request_id, None);
    let done = Settled {
        result: Some(result.clone()),
        ..Settled::sent(
            ActionOutcome::Done {
                result: Some(result),
            },
            audit,
        )
    };
    let also = Box::new(move |tx: &rusqlite::Transaction, now| {
        if let Some(fresh) = fresh {
            referrals::store_page(tx, &[fresh], &[], None, now)?;
        }
        Ok(())
    });
    let outcome = exec.record_with(row, done, also).await?;
    tracing::info!(decision = answer.decision.verb(), actor = %answer.actor, "referral answered in Partner Center");
    Ok(outcome)
}

/// A failed PATCH or read: transient ones wait for the next try (the executor's schedule),
/// others are refused.
async fn failed(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
    e: &ApiError,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let (outcome, message) = match exec.failure(row, e) {
        ActionOutcome::Retry { at, .. } => {
            let m = format!(
                "Partner Center did not answer ({e}); the answer stays queued and is sent again"
            );
            return retry_later(exec, row, answer, m, at, audit).await;
        }
        _ => (
            AnswerOutcome::Refused,
            format!("Partner Center refused the answer: {e}"),
        ),
    };
    let result = result_of(answer, outcome, &message);
    let settled = Settled {
        result: Some(result),
        audit,
        ..Settled::from(ActionOutcome::Dead { error: message })
    };
    exec.record(row, settled).await
}

async fn retry_later(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
    message: String,
    at: DateTime<Utc>,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let result = result_of(answer, AnswerOutcome::Queued, &message);
    let settled = Settled {
        result: Some(result),
        audit,
        ..Settled::from(ActionOutcome::Retry { at, error: message })
    };
    exec.record(row, settled).await
}

/// Closes the row without a write (already so, refused, dry run), with its outcome.
async fn close(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &Answer,
    outcome: AnswerOutcome,
    message: String,
) -> Result<ActionOutcome, StoreError> {
    tracing::info!(?outcome, message, "answer closed without a write");
    let settled = Settled {
        result: Some(result_of(answer, outcome, &message)),
        ..Settled::from(ActionOutcome::Superseded { reason: message })
    };
    exec.record(row, settled).await
}

fn result_of(answer: &Answer, outcome: AnswerOutcome, message: &str) -> String {
    AnswerResult::text(
        outcome,
        message,
        answer.decision.verb(),
        &answer.actor,
        None,
    )
}

fn audit_failed(row: &OutboxRow, answer: &Answer, ops: &[PatchOp], e: &ApiError) -> AuditEntry {
    let failed = failed_audit("microsoft", "PATCH", row.referral_id.clone(), None, e);
    audit_entry(
        row,
        answer,
        ops,
        "failed",
        failed.status_code,
        failed.request_id,
        failed.detail,
    )
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
        actor: Some(answer.actor.clone()),
    }
}

/// Waits until the answer row settles: closed, or waiting for a retry with its reason.
/// `settled` is the executor's signal (a row recorded); without one (an answer sent by
/// another process) the row is looked at every quarter second.
pub(crate) async fn wait_for_outcome(
    store: &Store,
    id: i64,
    limit: Duration,
    settled: Option<&AnswerWake>,
) -> Option<AnswerResult> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let seen = settled.map(AnswerWake::seen);
        let row = store
            .call(move |c| outbox::get(c, id))
            .await
            .ok()
            .flatten()?;
        let result = row
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str::<AnswerResult>(r).ok());
        if !row.state.is_open() || result.is_some() {
            return result.or_else(|| {
                Some(AnswerResult {
                    outcome: AnswerOutcome::Refused,
                    message: row
                        .last_error
                        .unwrap_or_else(|| format!("the answer was {}", row.state)),
                    decision: String::new(),
                    actor: String::new(),
                    at: Utc::now(),
                    task: None,
                })
            });
        }
        let wait = match (settled, seen) {
            (Some(signal), Some(seen)) => signal.after(seen),
            _ => Box::pin(tokio::time::sleep(Duration::from_millis(250))),
        };
        if tokio::time::timeout_at(until, wait).await.is_err() {
            return None;
        }
    }
}
