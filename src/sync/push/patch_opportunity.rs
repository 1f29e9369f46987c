//! The opportunity patch (Google): the fields the referral changed, with an update mask.

use super::*;

/// A patch of a linked opportunity, as planned.
pub(super) struct OpportunityPatch {
    pub(super) name: String,
    pub(super) body: Value,
    pub(super) mask: Vec<String>,
    pub(super) base_after: BaseUpdate,
}

pub(super) async fn patch_opportunity(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    patch: OpportunityPatch,
    stop: &CancellationToken,
) -> Result<Outcome, StoreError> {
    let OpportunityPatch {
        name,
        body,
        mask,
        base_after,
    } = patch;
    if let Some(outcome) = mark_sending(store, &row, stop).await? {
        return Ok(outcome);
    }
    let result = with_retry(&google.retry, "patch opportunity", || {
        google.client.patch_opportunity(&name, &body, &mask)
    })
    .await;
    match result {
        Ok(answer) => {
            let (referral_id, id, cycle) = (row.referral_id.clone(), row.id, cycle_id.to_string());
            let opp = answer.value;
            let audit = AuditEntry {
                api: "google",
                method: "opportunities.patch",
                resource: opp.name.clone(),
                fields: Some(mask.join(",")),
                outcome: "ok",
                status_code: Some(200),
                request_id: Some(answer.request_id),
                detail: None,
            };
            store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let now = Utc::now();
                    gstore::save_opportunity(&tx, &opp, Some(&referral_id), now)?;
                    gstore::update_base(&tx, &referral_id, &base_after, now)?;
                    record_done(&tx, id, None, &audit, &cycle, now)?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            Ok(Outcome::Done { result: None })
        }
        Err(e) => {
            let entry = failed_audit(
                "google",
                "opportunities.patch",
                name.clone(),
                Some(mask.join(",")),
                &e,
            );
            let outcome = failure(&row, &e, &google.schedule);
            finish_failed(store, row.id, outcome, entry, cycle_id).await
        }
    }
}

pub(super) fn pointer<'a>(raw: &'a Value, path: &str) -> Option<&'a Value> {
    raw.pointer(path).filter(|v| !v.is_null())
}
