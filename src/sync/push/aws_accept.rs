//! The AWS accept kind (spec §8): a queued accept of an engagement invitation, taken by the
//! one executor like every answer, claimed by its claim and recorded by its record path.
//! AWS has no eTag: the invitation is read first and the task is started only while it is
//! `PENDING` (otherwise the row records how it was answered). The start,
//! `StartEngagementByAcceptingInvitationTask`, carries the `ClientToken` stored with the
//! action when it was queued, the same on every retry and after a restart; a new token only
//! after a `FAILED` task. The task runs on AWS: the row stays `pending` with the `TaskId` in
//! its result and its next poll 5 s ahead, each poll one attempt, until `COMPLETE` (the new
//! `OpportunityId` in the result and the audit log), `FAILED` (dead: `action_failed` with the
//! `ReasonCode` and `Message`) or 30 minutes `IN_PROGRESS` (dead too). A restart finds the
//! `TaskId` and follows that task instead of starting another.
//!
//! Also what both AWS answer kinds share (the read, the records, the audit rows), used by
//! [`super::aws_decline`].

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::answer_referral::{AnswerOutcome, AnswerResult};
use super::executor::{Claim, Executor, Settled};
use crate::aws::model::{Invitation, Task};
use crate::http::{with_retry, ApiError, ErrorClass};
use crate::store::answers::mark_invitation_answered;
use crate::store::outbox::{ActionOutcome, AuditEntry, OutboxRow};
use crate::store::StoreError;
use crate::sync::aws_answer::{decide, AcceptTask, AwsAnswer, AwsDecision, Verdict};
use crate::sync::AwsSide;

/// How often a running accept task is read (spec §8), under the read quota.
pub(crate) const POLL_EVERY: Duration = Duration::from_secs(5);
/// A task still `IN_PROGRESS` this long after its start is reported as failed.
const TASK_LIMIT: chrono::Duration = chrono::Duration::minutes(30);
/// At most this many decisions per answer in one go: each after a `ConflictException` re-read.
pub(super) const MAX_ROUNDS: u32 = 3;

/// Sends (or follows) one accept row the executor took (the one entry point of this kind).
pub(super) async fn execute(
    exec: &Executor<'_>,
    row: OutboxRow,
    answer: AwsAnswer,
) -> Result<ActionOutcome, StoreError> {
    let Some(aws) = exec.aws else {
        return not_configured(exec, &row, &answer).await;
    };
    let task = stored_task(&row);
    if let Some(task_id) = task.running().map(str::to_string) {
        return follow(exec, aws, &row, &answer, task, &task_id).await;
    }
    let AwsDecision::Accept { client_token } = &answer.decision else {
        unreachable!("the executor hands accepts only to this kind")
    };
    let token = task.client_token(client_token);
    let mut claim = exec.claim_of(&row);
    for _ in 0..MAX_ROUNDS {
        let would = format!(
            "StartEngagementByAcceptingInvitationTask {{Catalog, ClientToken: {token}, Identifier: {}}}",
            row.referral_id
        );
        if let Err(closed) = read_decide_claim(exec, aws, &row, &answer, &mut claim, &would).await?
        {
            return Ok(closed);
        }
        // The ClientToken makes a repeat safe: a start that went through answers again
        // with the same task.
        let started = with_retry(&aws.retry, "accept invitation", || {
            aws.client.start_accept_task(&row.referral_id, &token)
        })
        .await;
        let fields =
            format!("accept (StartEngagementByAcceptingInvitationTask ClientToken={token})");
        match started {
            Ok(started) => {
                let mut task = AcceptTask {
                    started_at: Some(started.start_time.unwrap_or_else(Utc::now)),
                    failed: task.failed,
                    ..AcceptTask::default()
                };
                merge(&mut task, &started);
                let detail = format!(
                    "task {} {}",
                    task.task_id.as_deref().unwrap_or("(no TaskId)"),
                    task.status.as_deref().unwrap_or("?")
                );
                let audit = aws_audit(&row, &answer, fields, "ok", None, Some(detail));
                return settle(exec, &row, &answer, task, Some(audit)).await;
            }
            Err(e) if e.named_class() == Some(ErrorClass::Conflict) => {
                exec.audit(failed_audit(&row, &answer, fields, &e)).await?;
                tracing::info!(error = %e, "ConflictException: reading the invitation again and deciding again");
            }
            Err(e) => {
                let audit = failed_audit(&row, &answer, fields, &e);
                return failed(exec, &row, &answer, &e, Some(task), Some(audit)).await;
            }
        }
    }
    let m = "the invitation kept changing while it was accepted (ConflictException each time); trying again";
    let at = exec.retry_time(row.attempts, None);
    retry_later(exec, &row, &answer, m.into(), at, Some(task), None).await
}

/// The task this row follows, from its result (`None` before the first start).
fn stored_task(row: &OutboxRow) -> AcceptTask {
    row.result
        .as_deref()
        .and_then(|r| serde_json::from_str::<AnswerResult>(r).ok())
        .and_then(|r| r.task)
        .unwrap_or_default()
}

/// What a read of the task says, kept in the row's result.
fn merge(task: &mut AcceptTask, read: &Task) {
    if let Some(id) = &read.task_id {
        task.task_id = Some(id.clone());
    }
    if let Some(status) = &read.status {
        task.status = Some(status.as_str().to_string());
    }
    for (into, from) in [
        (&mut task.opportunity_id, &read.opportunity_id),
        (&mut task.reason_code, &read.reason_code),
        (&mut task.message, &read.message),
    ] {
        if from.is_some() {
            *into = from.clone();
        }
    }
}

/// One poll of a running task (a read, under the read quota): its outcome, or the next poll.
async fn follow(
    exec: &Executor<'_>,
    aws: &AwsSide,
    row: &OutboxRow,
    answer: &AwsAnswer,
    mut task: AcceptTask,
    task_id: &str,
) -> Result<ActionOutcome, StoreError> {
    if timed_out(&task, Utc::now()) {
        return settle(exec, row, answer, task, None).await;
    }
    let read = with_retry(&aws.retry, "follow accept task", || {
        aws.client.get_accept_task(task_id)
    })
    .await;
    match read {
        Ok(Some(read)) => {
            merge(&mut task, &read);
            let ended = matches!(task.status.as_deref(), Some("COMPLETE" | "FAILED"));
            let audit = ended.then(|| {
                let fields = format!("accept (ListEngagementByAcceptingInvitationTasks {task_id})");
                let outcome = match task.status.as_deref() {
                    Some("COMPLETE") => "ok",
                    _ => "failed",
                };
                aws_audit(row, answer, fields, outcome, None, Some(task_detail(&task)))
            });
            settle(exec, row, answer, task, audit).await
        }
        // Not listed (yet): the next poll looks again, within the 30 minutes.
        Ok(None) => settle(exec, row, answer, task, None).await,
        Err(e) if e.is_transient() => {
            let m = format!("the accept task {task_id} could not be read ({e}); read again in 5 s");
            let at = poll_time(e.retry_after());
            retry_later(exec, row, answer, m, at, Some(task), None).await
        }
        Err(e) => {
            let m = format!("the accept task {task_id} cannot be followed: {e}");
            dead(exec, row, answer, m, Some(task), None).await
        }
    }
}

/// Whether a task still running has run past the 30 minutes.
fn timed_out(task: &AcceptTask, now: DateTime<Utc>) -> bool {
    task.started_at.is_some_and(|at| now - at > TASK_LIMIT)
}

/// When the next poll is due: 5 s ahead, or later when AWS asks for a longer pause.
fn poll_time(retry_after: Option<Duration>) -> DateTime<Utc> {
    let wait = retry_after.map_or(POLL_EVERY, |ra| ra.max(POLL_EVERY));
    super::executor::retry_at(Utc::now(), wait)
}

/// `task-… COMPLETE: opportunity O…`, or `FAILED: ReasonCode: Message`.
fn task_detail(task: &AcceptTask) -> String {
    let id = task.task_id.as_deref().unwrap_or("(no TaskId)");
    match task.status.as_deref() {
        Some("COMPLETE") => format!(
            "task {id} COMPLETE: OpportunityId {}",
            task.opportunity_id.as_deref().unwrap_or("(none given)")
        ),
        Some("FAILED") => format!(
            "task {id} FAILED: {}: {}",
            task.reason_code.as_deref().unwrap_or("(no ReasonCode)"),
            task.message.as_deref().unwrap_or("(no Message)")
        ),
        other => format!("task {id} {}", other.unwrap_or("IN_PROGRESS")),
    }
}

/// Records what the task says now: done, dead, or the next poll.
async fn settle(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    mut task: AcceptTask,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let id = &row.referral_id;
    match task.status.as_deref() {
        Some("COMPLETE") => {
            let message = format!(
                "invitation {id} accepted in AWS Partner Central: opportunity {} ({})",
                task.opportunity_id
                    .as_deref()
                    .unwrap_or("(no OpportunityId given)"),
                task.task_id.as_deref().unwrap_or("no TaskId")
            );
            let result = result_of(answer, AnswerOutcome::Sent, &message, Some(task));
            let done = Settled {
                result: Some(result.clone()),
                request_id: audit.as_ref().and_then(|a| a.request_id.clone()),
                audit,
                ..Settled::from(ActionOutcome::Done {
                    result: Some(result),
                })
            };
            let invitation = id.clone();
            let also = Box::new(move |tx: &rusqlite::Transaction, now| {
                mark_invitation_answered(tx, &invitation, "Active", "Accepted", now).map(|_| ())
            });
            let outcome = exec.record_with(row, done, also).await?;
            tracing::info!(invitation_id = %id, actor = %answer.actor, "invitation accepted in AWS Partner Central");
            Ok(outcome)
        }
        Some("FAILED") => {
            task.failed += 1;
            let m = format!(
                "AWS could not accept invitation {id}: {}",
                task_detail(&task)
            );
            dead(exec, row, answer, m, Some(task), audit).await
        }
        _ if timed_out(&task, Utc::now()) => {
            let m = format!(
                "AWS could not accept invitation {id}: {} is still IN_PROGRESS 30 minutes after it started",
                task.task_id.as_deref().unwrap_or("the accept task")
            );
            dead(exec, row, answer, m, Some(task), audit).await
        }
        _ => {
            let m = format!(
                "AWS is accepting invitation {id}: {}; followed every 5 s",
                task_detail(&task)
            );
            retry_later(exec, row, answer, m, poll_time(None), Some(task), audit).await
        }
    }
}

/// Reads the invitation, decides on it, and claims the row right before the send (the one
/// claim). `Err(outcome)`: not sent, the row closed instead (already so, refused, a dry run
/// logging `would_send`, gone) or not this taker's.
pub(super) async fn read_decide_claim(
    exec: &Executor<'_>,
    aws: &AwsSide,
    row: &OutboxRow,
    answer: &AwsAnswer,
    claim: &mut Claim,
    would_send: &str,
) -> Result<Result<(), ActionOutcome>, StoreError> {
    let invitation = match read_invitation(exec, aws, row, answer).await? {
        Ok(invitation) => invitation,
        Err(closed) => return Ok(Err(closed)),
    };
    let closed = match decide(&invitation, &answer.decision) {
        Verdict::Already(m) => already(exec, aws, row, answer, m).await?,
        Verdict::Refuse(m) => close(exec, row, answer, AnswerOutcome::Refused, m).await?,
        Verdict::Send if exec.send.dry_run => {
            let m = format!("dry run: would send {would_send}; not sent");
            tracing::warn!(invitation_id = %row.referral_id, "DRY RUN: {m}");
            close(exec, row, answer, AnswerOutcome::Refused, m).await?
        }
        Verdict::Send => match exec.claim(*claim).await? {
            Some(not_sent) => not_sent,
            None => {
                claim.held = true;
                return Ok(Ok(()));
            }
        },
    };
    Ok(Err(closed))
}

/// Without `[aws]` nothing can be sent: a person has to look (dead, `action_failed`).
pub(super) async fn not_configured(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
) -> Result<ActionOutcome, StoreError> {
    let m = format!(
        "invitation {} cannot be answered: [aws] is not configured (or its credentials were not read)",
        row.referral_id
    );
    dead(exec, row, answer, m, None, None).await
}

/// Reads the invitation (GetEngagementInvitation, retried while transient). `Err(outcome)`
/// when the row was closed instead: the invitation is gone, or AWS did not answer (retried
/// later by the schedule).
pub(super) async fn read_invitation(
    exec: &Executor<'_>,
    aws: &AwsSide,
    row: &OutboxRow,
    answer: &AwsAnswer,
) -> Result<Result<Invitation, ActionOutcome>, StoreError> {
    let read = with_retry(&aws.retry, "read invitation", || {
        aws.client.get_invitation(&row.referral_id)
    })
    .await;
    match read {
        Ok(parsed) => Ok(Ok(parsed.invitation)),
        Err(e) => Ok(Err(failed(
            exec,
            row,
            answer,
            &e,
            stored_task_of(row, answer),
            None,
        )
        .await?)),
    }
}

/// An accept keeps its task state through a failure; a decline has none.
fn stored_task_of(row: &OutboxRow, answer: &AwsAnswer) -> Option<AcceptTask> {
    matches!(answer.decision, AwsDecision::Accept { .. }).then(|| stored_task(row))
}

/// A failed call: transient (and authentication) failures wait for the next try by the
/// `[sync]` schedule; a vanished invitation, a validation error (its field list in the error)
/// and the rest are dead, each an `action_failed` alert.
pub(super) async fn failed(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    e: &ApiError,
    task: Option<AcceptTask>,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let id = &row.referral_id;
    if e.named_class() == Some(ErrorClass::NotFound) {
        let m = format!("invitation {id} is gone from AWS Partner Central ({e}); not retried");
        return dead(exec, row, answer, m, task, audit).await;
    }
    match exec.failure(row, e) {
        ActionOutcome::Retry { at, .. } => {
            let m = match e.is_auth() {
                // AccessDenied names the IAM action the policy lacks.
                true => format!(
                    "AWS Partner Central refused the credentials ({e}); the answer stays queued and is sent again"
                ),
                false => format!(
                    "AWS Partner Central did not answer ({e}); the answer stays queued and is sent again"
                ),
            };
            retry_later(exec, row, answer, m, at, task, audit).await
        }
        _ => {
            let m = format!("AWS Partner Central refused the answer: {e}");
            dead(exec, row, answer, m, task, audit).await
        }
    }
}

/// Dead: failed for good, its `action_failed` alert says `message`.
async fn dead(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    message: String,
    task: Option<AcceptTask>,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let outcome = ActionOutcome::Dead { error: message };
    unsent(exec, row, answer, outcome, task, audit).await
}

/// Pending again at `at` (the next try, or the task's next poll), saying why.
pub(super) async fn retry_later(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    message: String,
    at: DateTime<Utc>,
    task: Option<AcceptTask>,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let outcome = ActionOutcome::Retry { at, error: message };
    unsent(exec, row, answer, outcome, task, audit).await
}

/// Records an attempt that did not settle the answer (dead, or pending again) with the
/// answer's result: refused, or queued.
async fn unsent(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    outcome: ActionOutcome,
    task: Option<AcceptTask>,
    audit: Option<AuditEntry>,
) -> Result<ActionOutcome, StoreError> {
    let (shown, message) = match &outcome {
        ActionOutcome::Retry { error, .. } => (AnswerOutcome::Queued, error.clone()),
        ActionOutcome::Dead { error } | ActionOutcome::Quarantined { error } => {
            (AnswerOutcome::Refused, error.clone())
        }
        ActionOutcome::Superseded { reason } => (AnswerOutcome::Refused, reason.clone()),
        ActionOutcome::Done { .. } => (AnswerOutcome::Sent, String::new()),
    };
    let settled = Settled {
        result: Some(result_of(answer, shown, &message, task)),
        request_id: audit.as_ref().and_then(|a| a.request_id.clone()),
        audit,
        ..Settled::from(outcome)
    };
    exec.record(row, settled).await
}

/// Already answered this way: nothing sent; the stored invitation row says so too. An
/// accepted one is asked for its completed accept task (one read): the opportunity it made
/// is kept and shown, whoever started it (this action, before a crash lost its answer, or
/// someone in the console).
async fn already(
    exec: &Executor<'_>,
    aws: &AwsSide,
    row: &OutboxRow,
    answer: &AwsAnswer,
    mut message: String,
) -> Result<ActionOutcome, StoreError> {
    let task = match answer.decision {
        AwsDecision::Accept { .. } => completed_task(aws, &row.referral_id).await,
        AwsDecision::Decline { .. } => None,
    };
    if let Some(o) = task.as_ref().and_then(|t| t.opportunity_id.as_deref()) {
        message = format!("{message}: opportunity {o}");
    }
    tracing::info!(message, "answer closed without a write");
    let settled = Settled {
        result: Some(result_of(answer, AnswerOutcome::Already, &message, task)),
        ..Settled::from(ActionOutcome::Superseded { reason: message })
    };
    let (status, substatus) = answered_state(&answer.decision);
    let invitation = row.referral_id.clone();
    let also = Box::new(move |tx: &rusqlite::Transaction, now| {
        mark_invitation_answered(tx, &invitation, status, substatus, now).map(|_| ())
    });
    exec.record_with(row, settled, also).await
}

/// The `COMPLETE` accept task of an invitation, if the task list has one (a failed read
/// only loses the opportunity id of the message).
async fn completed_task(aws: &AwsSide, id: &str) -> Option<AcceptTask> {
    let tasks = with_retry(&aws.retry, "read accept tasks", || {
        aws.client.accept_tasks_of(id)
    })
    .await
    .map_err(|e| tracing::warn!(error = %e, "the accept tasks of the invitation could not be read"))
    .ok()?;
    let done = tasks
        .iter()
        .find(|t| t.status.as_ref().map(|s| s.as_str()) == Some("COMPLETE"))?;
    let mut task = AcceptTask {
        started_at: done.start_time,
        ..AcceptTask::default()
    };
    merge(&mut task, done);
    Some(task)
}

/// The state an answered invitation's referrals row takes (`Active`/`Accepted`,
/// `Closed`/`Declined`): the same words as a Microsoft referral answered so.
pub(super) fn answered_state(decision: &AwsDecision) -> (&'static str, &'static str) {
    match decision {
        AwsDecision::Accept { .. } => ("Active", "Accepted"),
        AwsDecision::Decline { .. } => ("Closed", "Declined"),
    }
}

/// Closes the row without a write (refused, dry run), with its outcome.
pub(super) async fn close(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    outcome: AnswerOutcome,
    message: String,
) -> Result<ActionOutcome, StoreError> {
    tracing::info!(?outcome, message, "answer closed without a write");
    let settled = Settled {
        result: Some(result_of(answer, outcome, &message, None)),
        ..Settled::from(ActionOutcome::Superseded { reason: message })
    };
    exec.record(row, settled).await
}

pub(super) fn result_of(
    answer: &AwsAnswer,
    outcome: AnswerOutcome,
    message: &str,
    task: Option<AcceptTask>,
) -> String {
    AnswerResult::text(
        outcome,
        message,
        answer.decision.verb(),
        &answer.actor,
        task,
    )
}

/// The audit row of an AWS answer's request, with the person who asked and the note.
pub(super) fn aws_audit(
    row: &OutboxRow,
    answer: &AwsAnswer,
    fields: String,
    outcome: &'static str,
    failed: Option<&ApiError>,
    detail: Option<String>,
) -> AuditEntry {
    let note = answer.note.as_deref().map(|n| format!("note: {n}"));
    let detail = match (failed.map(ApiError::to_string).or(detail), note) {
        (Some(d), Some(n)) => Some(format!("{d}; {n}")),
        (d, n) => d.or(n),
    };
    let request_id = match failed {
        Some(ApiError::Named { request_id, .. } | ApiError::Status { request_id, .. }) => {
            request_id.clone()
        }
        _ => None,
    };
    AuditEntry {
        api: "aws",
        method: "POST",
        resource: row.referral_id.clone(),
        fields: Some(fields),
        outcome,
        status_code: failed.and_then(ApiError::status),
        request_id,
        detail,
        actor: Some(answer.actor.clone()),
    }
}

pub(super) fn failed_audit(
    row: &OutboxRow,
    answer: &AwsAnswer,
    fields: String,
    e: &ApiError,
) -> AuditEntry {
    aws_audit(row, answer, fields, "failed", Some(e), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: Option<&str>, started_minutes_ago: i64) -> AcceptTask {
        AcceptTask {
            task_id: Some("task-0000000000007".into()),
            started_at: Some(Utc::now() - chrono::Duration::minutes(started_minutes_ago)),
            status: status.map(str::to_string),
            ..AcceptTask::default()
        }
    }

    #[test]
    fn a_task_in_progress_past_30_minutes_is_over() {
        assert!(!timed_out(&task(Some("IN_PROGRESS"), 29), Utc::now()));
        assert!(timed_out(&task(Some("IN_PROGRESS"), 31), Utc::now()));
        assert!(
            !timed_out(&AcceptTask::default(), Utc::now()),
            "not started: no clock"
        );
    }

    #[test]
    fn a_task_s_outcome_names_the_opportunity_or_the_reason() {
        let mut t = task(Some("COMPLETE"), 1);
        t.opportunity_id = Some("O7000001".into());
        assert_eq!(
            task_detail(&t),
            "task task-0000000000007 COMPLETE: OpportunityId O7000001"
        );
        let mut t = task(Some("FAILED"), 1);
        t.reason_code = Some("EngagementConflict".into());
        t.message = Some("already engaged".into());
        assert_eq!(
            task_detail(&t),
            "task task-0000000000007 FAILED: EngagementConflict: already engaged"
        );
        let read = Task::from_value(&serde_json::json!({
            "TaskId": "task-0000000000007", "TaskStatus": "COMPLETE", "OpportunityId": "O9"
        }))
        .unwrap();
        let mut t = task(Some("IN_PROGRESS"), 1);
        merge(&mut t, &read);
        assert_eq!(
            (t.status.as_deref(), t.opportunity_id.as_deref()),
            (Some("COMPLETE"), Some("O9"))
        );
        assert_eq!(t.running(), None);
    }

    #[test]
    fn polls_wait_5_s_or_what_aws_asks() {
        let soon = poll_time(None) - Utc::now();
        assert!(soon <= chrono::Duration::seconds(5) && soon > chrono::Duration::seconds(4));
        let later = poll_time(Some(Duration::from_secs(30))) - Utc::now();
        assert!(later > chrono::Duration::seconds(29));
    }
}
