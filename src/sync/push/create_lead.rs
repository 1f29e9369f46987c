//! The lead create (Google): sent at most once; an unknown outcome is quarantined.

use super::*;

pub(super) async fn create_lead(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    stop: &CancellationToken,
    lead: Value,
) -> Result<Outcome, StoreError> {
    let parent = format!("partners/{}", google.policy.partner_id);
    // One attempt, never wrapped in a retry: a create has no request id, and Google has no
    // lookup by externalSystemId, so a repeated create could be a duplicate lead. Token and
    // rate limiter first; only then is the row marked as possibly on the wire, and sent.
    let result = match google.client.prepare_create_lead(&parent, &lead).await {
        Ok(ready) => {
            if let Some(outcome) = mark_sending(store, &row, stop).await? {
                return Ok(outcome);
            }
            google.client.send_create_lead(ready).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(answer) => lead_created(store, google, cycle_id, row, answer).await,
        Err(e) => create_failed(store, google, cycle_id, row, &parent, e).await,
    }
}

/// The create answered: link, lead copy, its first refresh check, the write-back and the
/// done row with its audit entry, all in one transaction.
pub(super) async fn lead_created(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    answer: crate::google::client::Answer<crate::google::Lead>,
) -> Result<Outcome, StoreError> {
    let (created, request_id) = (answer.value, answer.request_id);
    let (referral_id, id, cycle) = (row.referral_id.clone(), row.id, cycle_id.to_string());
    let name = created.name.clone();
    let first_check = google.refresh.min_interval;
    store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = Utc::now();
            // The new link and lead copy would queue a plan; that plan would decide only the
            // write-back queued below. Unless something else queued it, it stays unqueued.
            let was_queued = schedule::is_queued(&tx, &referral_id)?;
            gstore::set_link(&tx, &referral_id, Some(&created.name), None, "created", now)?;
            gstore::save_lead(&tx, &created, Some(&referral_id), now)?;
            if !was_queued {
                schedule::planned(&tx, &referral_id)?;
            }
            // The answer is the lead's current copy: no read is due before the minimum.
            schedule::checked_fresh(&tx, &created.name, &referral_id, first_check, now)?;
            // The write-back follows from the new link: queued in the same transaction.
            let write_back = Action::PatchReferral {
                ops: vec![PatchOp::replace(
                    "/externalReferenceId",
                    created.name.as_str(),
                )],
                base_after: BaseUpdate::default(),
            };
            let payload = encode(&write_back);
            outbox::enqueue(
                &tx,
                &referral_id,
                PATCH_REFERRAL,
                Some(&referral_id),
                &payload,
                now,
            )?;
            let audit = AuditEntry {
                api: "google",
                method: "leads.create",
                resource: created.name.clone(),
                fields: Some(format!("externalSystemId={referral_id}")),
                outcome: "ok",
                status_code: Some(200),
                request_id: Some(request_id),
                detail: None,
            };
            record_done(&tx, id, Some(created.name.clone()), &audit, &cycle, now)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    tracing::info!(lead = %name, "lead created");
    Ok(Outcome::Done { result: Some(name) })
}

/// A create that failed: quarantined when it may have reached Google (never repeated),
/// otherwise retried or dead like any write.
pub(super) async fn create_failed(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    parent: &str,
    e: ApiError,
) -> Result<Outcome, StoreError> {
    let unknown = matches!(
        e,
        ApiError::Transport {
            maybe_sent: true,
            ..
        } | ApiError::Malformed { .. }
    );
    let outcome = if unknown {
        Outcome::Quarantined {
            error: format!(
                "outcome unknown ({e}); the lead may exist in Google: link it (cosell-sync link {} partners/{}/leads/ID) or, if it does not exist, cosell-sync outbox retry {}",
                row.referral_id, google.policy.partner_id, row.id
            ),
        }
    } else {
        failure(&row, &e, &google.schedule)
    };
    let entry = failed_audit(
        "google",
        "leads.create",
        parent.to_string(),
        Some(format!("externalSystemId={}", row.referral_id)),
        &e,
    );
    finish_failed(store, row.id, outcome, entry, cycle_id).await
}
