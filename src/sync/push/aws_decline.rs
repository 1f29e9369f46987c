//! The AWS decline kind (spec §8): a queued decline of an engagement invitation, taken,
//! claimed and recorded by the one executor like every answer. The invitation is read first
//! (AWS has no eTag) and `RejectEngagementInvitation {Catalog, Identifier, RejectionReason}`
//! is sent only while it is `PENDING`; a `ConflictException` reads it again and decides
//! again (a decline that went through, repeated, finds it `REJECTED`: already so). Audited
//! with the person who asked; the invitation's referrals row becomes `Closed`/`Declined`.

use super::answer_referral::AnswerOutcome;
use super::aws_accept::{
    answered_state, aws_audit, failed, failed_audit, not_configured, read_decide_claim, result_of,
    retry_later, MAX_ROUNDS,
};
use super::executor::{Executor, Settled};
use crate::http::{with_retry, ErrorClass};
use crate::store::answers::mark_invitation_answered;
use crate::store::outbox::{ActionOutcome, OutboxRow};
use crate::store::StoreError;
use crate::sync::aws_answer::{AwsAnswer, AwsDecision};

/// Sends one decline row the executor took (the one entry point of this kind).
pub(super) async fn execute(
    exec: &Executor<'_>,
    row: OutboxRow,
    answer: AwsAnswer,
) -> Result<ActionOutcome, StoreError> {
    let Some(aws) = exec.aws else {
        return not_configured(exec, &row, &answer).await;
    };
    let AwsDecision::Decline { reason } = &answer.decision else {
        unreachable!("the executor hands declines only to this kind")
    };
    let fields = format!("decline (RejectEngagementInvitation RejectionReason={reason})");
    let mut claim = exec.claim_of(&row);
    for _ in 0..MAX_ROUNDS {
        let would = format!(
            "RejectEngagementInvitation {{Catalog, Identifier: {}, RejectionReason: {reason:?}}}",
            row.referral_id
        );
        if let Err(closed) = read_decide_claim(exec, aws, &row, &answer, &mut claim, &would).await?
        {
            return Ok(closed);
        }
        // A repeat of a reject that went through is a ConflictException, which re-reads.
        let sent = with_retry(&aws.retry, "decline invitation", || {
            aws.client.reject_invitation(&row.referral_id, reason)
        })
        .await;
        match sent {
            Ok(()) => return declined(exec, &row, &answer, fields).await,
            Err(e) if e.named_class() == Some(ErrorClass::Conflict) => {
                exec.audit(failed_audit(&row, &answer, fields.clone(), &e))
                    .await?;
                tracing::info!(error = %e, "ConflictException: reading the invitation again and deciding again");
            }
            Err(e) => {
                let audit = failed_audit(&row, &answer, fields, &e);
                return failed(exec, &row, &answer, &e, None, Some(audit)).await;
            }
        }
    }
    let m = "the invitation kept changing while it was declined (ConflictException each time); trying again";
    let at = exec.retry_time(row.attempts, None);
    retry_later(exec, &row, &answer, m.into(), at, None, None).await
}

/// The reject went through: its audit row, the invitation's row and the done row, in one
/// transaction.
async fn declined(
    exec: &Executor<'_>,
    row: &OutboxRow,
    answer: &AwsAnswer,
    fields: String,
) -> Result<ActionOutcome, StoreError> {
    let message = format!(
        "invitation {} declined in AWS Partner Central",
        row.referral_id
    );
    let result = result_of(answer, AnswerOutcome::Sent, &message, None);
    let audit = aws_audit(row, answer, fields, "ok", None, None);
    let done = Settled {
        result: Some(result.clone()),
        ..Settled::sent(
            ActionOutcome::Done {
                result: Some(result),
            },
            audit,
        )
    };
    let (status, substatus) = answered_state(&answer.decision);
    let invitation = row.referral_id.clone();
    let also = Box::new(move |tx: &rusqlite::Transaction, now| {
        mark_invitation_answered(tx, &invitation, status, substatus, now).map(|_| ())
    });
    let outcome = exec.record_with(row, done, also).await?;
    tracing::info!(invitation_id = %row.referral_id, actor = %answer.actor, "invitation declined in AWS Partner Central");
    Ok(outcome)
}
