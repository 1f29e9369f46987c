//! The referral patch (Microsoft): ETag-guarded; a 412 re-reads the referral and re-plans.

use chrono::Utc;

use super::executor::{failed_audit, Executor, Settled};
use crate::http::{with_retry, ApiError};
use crate::microsoft::{PatchOp, ReferralStatus, WriteOutcome};
use crate::store::google::{self as gstore, BaseUpdate};
use crate::store::outbox::{self, ActionOutcome, AuditEntry, OutboxRow};
use crate::store::{referrals, schedule, StoreError};
use crate::sync::adopt::reference_kept;
use crate::sync::plan::plan_one;
use crate::sync::GoogleSide;

/// What a patch sends: the operations whose value is not already in the stored copy, its
/// eTag, and the fields they name.
struct Ready {
    ops: Vec<PatchOp>,
    etag: Option<String>,
    fields: String,
}

/// Sends the patch of `row` (the one entry point of this kind). The stored copy, the checks,
/// this cycle's 412s and the claim are one store call; the outcome, its audit row and the
/// referral as Partner Center returned it are another.
pub(super) async fn execute(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: OutboxRow,
    ops: Vec<PatchOp>,
    base_after: BaseUpdate,
) -> Result<ActionOutcome, StoreError> {
    let checked = {
        let (id, cycle, claim) = (
            row.referral_id.clone(),
            exec.cycle_id.to_string(),
            exec.claim_of(&row),
        );
        exec.store
            .call_short(move |c| {
                let current = referrals::for_patch(c, &id)?;
                let skip = match ready_to_send(current, ops) {
                    Ok(ready) if outbox::count_412_in_cycle(c, &cycle, &id)? < 2 => {
                        return Ok(match claim.run(c)? {
                            None => Ok(ready),
                            Some(not_sent) => Err(not_sent),
                        });
                    }
                    // Two 412s in this cycle already (a write and its re-plan): no third
                    // try until the next cycle re-reads and re-plans.
                    Ok(_) => NotSent::Twice412,
                    Err(reason) => reason,
                };
                let reason = skip.to_string();
                let closed = ActionOutcome::Superseded { reason };
                Settled::from(closed.clone()).write(c, claim.taken(), &cycle, Utc::now())?;
                Ok(Err(closed))
            })
            .await?
    };
    let ready = match checked {
        Ok(ready) => ready,
        Err(not_sent) => return Ok(not_sent),
    };
    let (id, etag) = (&row.referral_id, ready.etag.as_deref());
    let result = with_retry(exec.microsoft_retry, "patch referral", || {
        exec.microsoft.patch_referral(id, &ready.ops, etag)
    })
    .await;
    match result {
        Ok(written) => {
            let guarded = ready.etag.is_some();
            referral_patched(exec, &row, ready.fields, written, base_after, guarded).await
        }
        Err(e) => patch_failed(exec, google, &row, ready.fields, e).await,
    }
}

/// Why a patch is not sent: the reason its superseded row keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum NotSent {
    #[error("referral unknown")]
    Unknown,
    #[error("referral is Closed; never written")]
    Closed,
    /// Another Google record's name would be overwritten ([`reference_kept`]'s words).
    #[error("{0}")]
    ReferenceKept(String),
    #[error("every value is already there")]
    AlreadyThere,
    /// Two 412s in this cycle already (a write and its re-plan).
    #[error("412 twice in this cycle; the next cycle re-plans")]
    Twice412,
}

/// What a patch sends, or why nothing is to be sent.
fn ready_to_send(
    current: Option<referrals::ForPatch>,
    ops: Vec<PatchOp>,
) -> Result<Ready, NotSent> {
    let Some(referrals::ForPatch { status, etag, raw }) = current else {
        return Err(NotSent::Unknown);
    };
    if status.as_deref() == Some(ReferralStatus::Closed.as_str()) {
        return Err(NotSent::Closed);
    }
    // Never a name of another Google record overwritten (recovery, issue 15).
    if let Some(reason) = reference_kept(&raw, &ops) {
        return Err(NotSent::ReferenceKept(reason));
    }
    // Never a write whose value is already there.
    let ops: Vec<PatchOp> = ops
        .into_iter()
        .filter(|o| raw.pointer(&o.path).filter(|v| !v.is_null()) != Some(&o.value))
        .collect();
    if ops.is_empty() {
        return Err(NotSent::AlreadyThere);
    }
    let fields = ops
        .iter()
        .map(|o| o.path.as_str())
        .collect::<Vec<_>>()
        .join(",");
    Ok(Ready { ops, etag, fields })
}

/// A failed patch: a first 412 in the cycle re-reads and re-plans (the audit log knows the
/// earlier one), a second one waits for the next cycle (an always-412 server cannot keep the
/// cycle going); anything else is retried or dead like any write.
async fn patch_failed(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: &OutboxRow,
    fields: String,
    e: ApiError,
) -> Result<ActionOutcome, StoreError> {
    let entry = failed_audit(
        "microsoft",
        "PATCH",
        row.referral_id.clone(),
        Some(fields),
        &e,
    );
    if e.status() != Some(412) {
        let outcome = exec.failure(row, &e);
        return exec.record(row, Settled::audited(outcome, entry)).await;
    }
    let replan_spent = {
        let (cycle, referral) = (exec.cycle_id.to_string(), row.referral_id.clone());
        exec.store
            .call(move |c| outbox::count_412_in_cycle(c, &cycle, &referral))
            .await?
            > 0
    };
    if replan_spent {
        tracing::warn!(referral_id = %row.referral_id, "412 again after re-planning; waiting for the next cycle");
        let outcome = ActionOutcome::Superseded {
            reason: format!("412 again after re-planning; the next cycle re-plans: {e}"),
        };
        return exec.record(row, Settled::audited(outcome, entry)).await;
    }
    let outcome = ActionOutcome::Superseded {
        reason: format!("re-planned after 412: {e}"),
    };
    let done = exec.record(row, Settled::audited(outcome, entry)).await?;
    // Someone changed the referral since we read it: read it again and re-plan.
    tracing::info!(referral_id = %row.referral_id, "412 on patch; re-reading and re-planning");
    let read = exec.refresh_referral(&row.referral_id).await?;
    match read {
        Ok(_) => plan_one(exec.store, &google.policy, &row.referral_id, Utc::now()).await?,
        Err(e) => tracing::warn!(error = %e, "re-read after 412 failed; the next cycle re-plans"),
    }
    Ok(done)
}

/// The patch went through: the base it agreed on, the done row and its audit entry in one
/// transaction, with the referral as Partner Center returned it. Sent with `If-Match`
/// (`guarded`), that copy is the one the plan saw plus this patch (any other change would
/// have been a 412), so it is stored without queueing another plan of it.
async fn referral_patched(
    exec: &Executor<'_>,
    row: &OutboxRow,
    fields: String,
    written: WriteOutcome,
    base_after: BaseUpdate,
    guarded: bool,
) -> Result<ActionOutcome, StoreError> {
    let id = row.referral_id.clone();
    let audit = AuditEntry {
        api: "microsoft",
        method: "PATCH",
        resource: id.clone(),
        fields: Some(fields),
        outcome: "ok",
        status_code: Some(204),
        request_id: written.request_id.clone(),
        detail: None,
        actor: None,
    };
    let fresh = written.referral;
    let also = Box::new(move |tx: &rusqlite::Transaction, now| {
        gstore::update_base(tx, &id, &base_after, now)?;
        // The answer's copy of the referral in the same transaction: one commit per
        // write-back instead of three, and never a done row beside a stale copy.
        if let Some(fresh) = fresh {
            let was_queued = schedule::is_queued(tx, &id)?;
            referrals::store_page(tx, &[fresh], &[], None, now)?;
            if guarded && !was_queued {
                schedule::planned(tx, &id)?;
            }
        }
        Ok(())
    });
    let done = Settled::sent(ActionOutcome::Done { result: None }, audit);
    exec.record_with(row, done, also).await
}
