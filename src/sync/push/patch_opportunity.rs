//! The opportunity patch (Google): the fields the referral changed, with an update mask.

use serde_json::Value;

use super::executor::{failed_audit, Executor, Settled};
use crate::http::with_retry;
use crate::store::google::{self as gstore, BaseUpdate};
use crate::store::outbox::{ActionOutcome, AuditEntry, OutboxRow};
use crate::store::StoreError;
use crate::sync::GoogleSide;

/// A patch of a linked opportunity, as planned.
pub(super) struct OpportunityPatch {
    pub(super) name: String,
    pub(super) body: Value,
    pub(super) mask: Vec<String>,
    pub(super) base_after: BaseUpdate,
}

/// Sends the patch of `row` (the one entry point of this kind); the answer's copy of the
/// opportunity and the base it agreed on are stored with the done row.
pub(super) async fn execute(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: OutboxRow,
    patch: OpportunityPatch,
) -> Result<ActionOutcome, StoreError> {
    let OpportunityPatch {
        name,
        body,
        mask,
        base_after,
    } = patch;
    if let Some(not_sent) = exec.claim(exec.claim_of(&row)).await? {
        return Ok(not_sent);
    }
    let result = with_retry(&google.retry, "patch opportunity", || {
        google.client.patch_opportunity(&name, &body, &mask)
    })
    .await;
    match result {
        Ok(reply) => {
            let referral_id = row.referral_id.clone();
            let opp = reply.value;
            let audit = AuditEntry {
                api: "google",
                method: "opportunities.patch",
                resource: opp.name.clone(),
                fields: Some(mask.join(",")),
                outcome: "ok",
                status_code: Some(200),
                request_id: Some(reply.request_id),
                detail: None,
                actor: None,
            };
            let done = Settled::sent(ActionOutcome::Done { result: None }, audit);
            let also = Box::new(move |tx: &rusqlite::Transaction, now| {
                gstore::save_opportunity(tx, &opp, Some(&referral_id), now)?;
                gstore::update_base(tx, &referral_id, &base_after, now)
            });
            exec.record_with(&row, done, also).await
        }
        Err(e) => {
            let entry = failed_audit(
                "google",
                "opportunities.patch",
                name.clone(),
                Some(mask.join(",")),
                &e,
            );
            let outcome = exec.failure(&row, &e);
            exec.record(&row, Settled::audited(outcome, entry)).await
        }
    }
}
