//! The referral patch (Microsoft): ETag-guarded; a 412 re-reads the referral and re-plans.

use super::*;

pub(super) async fn patch_referral(
    store: &Store,
    (microsoft, microsoft_retry, run): (&MicrosoftClient, &RetryPolicy, &PushRun),
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    ops: Vec<PatchOp>,
    base_after: BaseUpdate,
) -> Result<Outcome, StoreError> {
    let id = row.referral_id.clone();
    // The stored copy, the checks, this cycle's 412s and the claim: one store call.
    let ready = {
        let (id, cycle) = (id.clone(), cycle_id.to_string());
        let (action, attempts, stopping) = (row.id, row.attempts, run.stop.is_cancelled());
        store
            .call(move |c| {
                let current = referrals::for_patch(c, &id)?;
                let ready = match ready_to_send(current, ops) {
                    Err(reason) => return Ok(Err(reason)),
                    Ok(ready) => ready,
                };
                if outbox::count_412_in_cycle(c, &cycle, &id)? >= 2 {
                    // Two 412s in this cycle already (a write and its re-plan): no third
                    // try until the next cycle re-reads and re-plans.
                    return Ok(Err(
                        "412 twice in this cycle; the next cycle re-plans".into()
                    ));
                }
                Ok(Ok(match claim_send(c, action, attempts, stopping)? {
                    Some(not_sent) => Err(not_sent),
                    None => Ok(ready),
                }))
            })
            .await?
    };
    let (ops, etag, fields) = match ready {
        Ok(Ok(ready)) => ready,
        Ok(Err(not_sent)) => return Ok(not_sent),
        Err(reason) => return supersede(store, row.id, &reason).await,
    };
    let result = with_retry(microsoft_retry, "patch referral", || {
        microsoft.patch_referral(&id, &ops, etag.as_deref())
    })
    .await;
    // A 412 re-plans at most once per referral and cycle (the audit log knows the earlier one).
    let replan_spent = match &result {
        Err(e) if e.status() == Some(412) => {
            count_412(store, cycle_id, &row.referral_id).await? > 0
        }
        _ => false,
    };
    match result {
        Ok(outcome) => {
            let guarded = etag.is_some();
            referral_patched(store, cycle_id, &row, fields, outcome, base_after, guarded).await
        }
        Err(e) => {
            let ms = (microsoft, microsoft_retry);
            patch_failed(store, ms, google, cycle_id, row, fields, e, replan_spent).await
        }
    }
}

/// What a patch sends, or why nothing is to be sent: the operations whose value is not
/// already in the stored copy, its eTag, and the fields they name.
type Ready = (Vec<PatchOp>, Option<String>, String);

fn ready_to_send(current: Option<referrals::ForPatch>, ops: Vec<PatchOp>) -> Result<Ready, String> {
    let Some(referrals::ForPatch { status, etag, raw }) = current else {
        return Err("referral unknown".into());
    };
    if status.as_deref() == Some(ReferralStatus::Closed.as_str()) {
        return Err("referral is Closed; never written".into());
    }
    // Never a name of another Google record overwritten (recovery, issue 15).
    if let Some(reason) = crate::sync::adopt::reference_kept(&raw, &ops) {
        return Err(reason);
    }
    // Never a write whose value is already there.
    let ops: Vec<PatchOp> = ops
        .into_iter()
        .filter(|o| pointer(&raw, &o.path) != Some(&o.value))
        .collect();
    if ops.is_empty() {
        return Err("every value is already there".into());
    }
    let fields = ops
        .iter()
        .map(|o| o.path.as_str())
        .collect::<Vec<_>>()
        .join(",");
    Ok((ops, etag, fields))
}

/// A failed patch: a first 412 re-reads and re-plans, a second one in the cycle waits for
/// the next cycle; anything else is retried or dead like any write.
#[allow(clippy::too_many_arguments)] // the one call site above; a struct would only rename them
pub(super) async fn patch_failed(
    store: &Store,
    (microsoft, microsoft_retry): (&MicrosoftClient, &RetryPolicy),
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    fields: String,
    e: ApiError,
    replan_spent: bool,
) -> Result<Outcome, StoreError> {
    match e {
        e if e.status() == Some(412) && replan_spent => {
            // A second 412 in one cycle: the next cycle re-reads and re-plans (an always-412
            // server cannot keep the cycle going).
            tracing::warn!(referral_id = %row.referral_id, "412 again after re-planning; waiting for the next cycle");
            let entry = failed_audit(
                "microsoft",
                "PATCH",
                row.referral_id.clone(),
                Some(fields),
                &e,
            );
            let outcome = Outcome::Superseded {
                reason: format!("412 again after re-planning; the next cycle re-plans: {e}"),
            };
            finish_failed(store, row.id, outcome, entry, cycle_id).await
        }
        e => {
            let entry = failed_audit(
                "microsoft",
                "PATCH",
                row.referral_id.clone(),
                Some(fields),
                &e,
            );
            if e.status() == Some(412) {
                let outcome = Outcome::Superseded {
                    reason: format!("re-planned after 412: {e}"),
                };
                let done = finish_failed(store, row.id, outcome, entry, cycle_id).await?;
                replan_after_412(store, microsoft, microsoft_retry, google, &row.referral_id)
                    .await?;
                return Ok(done);
            }
            let outcome = failure(&row, &e, &google.schedule);
            finish_failed(store, row.id, outcome, entry, cycle_id).await
        }
    }
}

/// The patch went through: the base it agreed on, the done row and its audit entry in one
/// transaction, then the referral as Partner Center returned it. Sent with `If-Match`
/// (`guarded`), that copy is the one the plan saw plus this patch (any other change would
/// have been a 412), so it is stored without queueing another plan of it.
pub(super) async fn referral_patched(
    store: &Store,
    cycle_id: &str,
    row: &OutboxRow,
    fields: String,
    outcome: crate::microsoft::WriteOutcome,
    base_after: BaseUpdate,
    guarded: bool,
) -> Result<Outcome, StoreError> {
    let id = row.referral_id.clone();
    let audit = AuditEntry {
        api: "microsoft",
        method: "PATCH",
        resource: id.clone(),
        fields: Some(fields),
        outcome: "ok",
        status_code: Some(204),
        request_id: outcome.request_id.clone(),
        detail: None,
    };
    let (cycle, action, fresh) = (cycle_id.to_string(), row.id, outcome.referral);
    store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = Utc::now();
            gstore::update_base(&tx, &id, &base_after, now)?;
            record_done(&tx, action, None, &audit, &cycle, now)?;
            // The answer's copy of the referral in the same transaction: one commit per
            // write-back instead of three, and never a done row beside a stale copy.
            if let Some(fresh) = fresh {
                let was_queued = schedule::is_queued(&tx, &id)?;
                referrals::store_page(&tx, &[fresh], &[], None, now)?;
                if guarded && !was_queued {
                    schedule::planned(&tx, &id)?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    Ok(Outcome::Done { result: None })
}

/// Someone changed the referral since we read it: read it again and re-plan.
pub(super) async fn replan_after_412(
    store: &Store,
    microsoft: &MicrosoftClient,
    microsoft_retry: &RetryPolicy,
    google: &GoogleSide,
    referral_id: &str,
) -> Result<(), StoreError> {
    tracing::info!(referral_id, "412 on patch; re-reading and re-planning");
    match with_retry(microsoft_retry, "get referral", || {
        microsoft.get_referral(referral_id)
    })
    .await
    {
        Ok(fresh) => {
            store
                .call(move |c| referrals::commit_page(c, &[fresh], &[], None, Utc::now()))
                .await?;
            plan_one(store, &google.policy, referral_id, Utc::now()).await?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "re-read after 412 failed; the next cycle re-plans")
        }
    }
    Ok(())
}
