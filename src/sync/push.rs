//! Plan and push (spec §2 "Push"): reconcile every referral that may need work, store its
//! actions in the outbox, then execute due actions with bounded concurrency. Transient
//! failures go back to the outbox with a jittered exponential delay (honouring `Retry-After`);
//! permanent ones and exhausted retries are dead; a lead create whose outcome is unknown is
//! quarantined, never repeated. A 412 on a referral patch re-reads the referral and re-plans.
//! Every remote write lands in the audit log with its request id.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use super::reconcile::{reconcile, Action, Plan, Policy};
use crate::google::GoogleClient;
use crate::http::{with_retry, ApiError, RetryPolicy};
use crate::microsoft::{MicrosoftClient, PatchOp, ReferralStatus};
use crate::store::google::{self as gstore, BaseUpdate};
use crate::store::outbox::{
    self, AuditEntry, OutboxRow, Outcome, CREATE_LEAD, PATCH_OPPORTUNITY, PATCH_REFERRAL,
};
use crate::store::referrals;
use crate::store::{Store, StoreError};

/// The outbox's retry schedule across attempts (and cycles).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub max_attempts: u32,
    pub min: Duration,
    pub max: Duration,
}

impl Schedule {
    /// Full jitter on an exponential step: `[d/2, d]` with `d = min · 2^(attempts-1)`, capped.
    pub fn delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
        let capped = exp.min(self.max);
        let jittered = capped.mul_f64(0.5 + fastrand::f64() * 0.5);
        retry_after.map_or(jittered, |ra| ra.max(jittered))
    }
}

/// Everything the Google half of a cycle needs.
#[derive(Debug, Clone)]
pub struct GoogleSide {
    pub client: GoogleClient,
    pub policy: Policy,
    pub schedule: Schedule,
    pub concurrency: usize,
    /// In-attempt retries of idempotent calls (gets, patches); never used for creates.
    pub retry: RetryPolicy,
    /// Log each write instead of sending it.
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PlanStats {
    pub referrals: u64,
    pub queued: u64,
    pub conflicts: u64,
    pub blocked: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PushStats {
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
    pub quarantined: u64,
    pub superseded: u64,
}

/// Reconciles every candidate referral in batches, storing each batch's decisions in one
/// transaction.
pub async fn plan_all(
    store: &Store,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<PlanStats, StoreError> {
    let mut stats = PlanStats::default();
    let mut after = String::new();
    loop {
        let (policy, cursor) = (policy.clone(), after.clone());
        let (batch_stats, last) = store
            .call(move |c| {
                let rows = gstore::snapshot_batch(c, &cursor, 500)?;
                let last = rows.last().map(|r| r.referral.referral.id.clone());
                let tx = c.transaction()?;
                let mut s = PlanStats::default();
                for row in &rows {
                    let plan = reconcile(row, &policy, now);
                    apply_plan(&tx, &row.referral.referral.id, &plan, now, &mut s)?;
                }
                tx.commit()?;
                s.referrals = rows.len() as u64;
                Ok((s, last))
            })
            .await?;
        stats.referrals += batch_stats.referrals;
        stats.queued += batch_stats.queued;
        stats.conflicts += batch_stats.conflicts;
        stats.blocked += batch_stats.blocked;
        match last {
            Some(id) => after = id,
            None => break,
        }
    }
    Ok(stats)
}

/// Re-plans one referral (after a 412 re-read, or a webhook event).
pub async fn plan_one(
    store: &Store,
    policy: &Policy,
    referral_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (policy, id) = (policy.clone(), referral_id.to_string());
    store
        .call(move |c| {
            let row = gstore::snapshot_one(c, &id)?;
            let tx = c.transaction()?;
            if let Some(row) = row {
                let plan = reconcile(&row, &policy, now);
                apply_plan(&tx, &id, &plan, now, &mut PlanStats::default())?;
            }
            tx.commit()?;
            Ok(())
        })
        .await
}

fn apply_plan(
    tx: &rusqlite::Transaction,
    referral_id: &str,
    plan: &Plan,
    now: DateTime<Utc>,
    stats: &mut PlanStats,
) -> Result<(), StoreError> {
    for action in &plan.actions {
        let (target, payload) = match action {
            Action::CreateLead { lead } => (None, json!({ "lead": lead })),
            Action::PatchReferral { ops, base_after } => (
                Some(referral_id.to_string()),
                json!({ "ops": ops, "base_after": base_after }),
            ),
            Action::PatchOpportunity {
                name,
                body,
                mask,
                base_after,
            } => (
                Some(name.clone()),
                json!({ "body": body, "mask": mask, "base_after": base_after }),
            ),
        };
        if outbox::enqueue(
            tx,
            referral_id,
            action.kind(),
            target.as_deref(),
            &payload,
            now,
        )? {
            stats.queued += 1;
        }
    }
    let mut fields = Vec::new();
    for c in &plan.conflicts {
        fields.push(c.field);
        if gstore::record_conflict(
            tx,
            referral_id,
            c.field,
            &c.microsoft,
            &c.google,
            &c.base,
            now,
        )? {
            stats.conflicts += 1;
            tracing::warn!(
                referral_id,
                field = c.field,
                microsoft = %c.microsoft,
                google = %c.google,
                base = %c.base,
                "conflict: both sides changed; [sync] conflict = \"manual\" writes nothing"
            );
        }
    }
    gstore::clear_conflicts(tx, referral_id, &fields)?;
    if let Some(reason) = &plan.forward_blocked {
        stats.blocked += 1;
        tracing::warn!(referral_id, reason, "referral cannot become a Google lead");
    }
    gstore::set_forward_blocked(tx, referral_id, plan.forward_blocked.as_deref(), now)?;
    gstore::update_base(tx, referral_id, &plan.agreed, now)?;
    Ok(())
}

/// Executes due actions until none is due.
pub async fn push_due(
    store: &Store,
    microsoft: &MicrosoftClient,
    google: &GoogleSide,
    cycle_id: &str,
) -> Result<PushStats, StoreError> {
    let mut stats = PushStats::default();
    loop {
        let batch = store.call(|c| outbox::claim_due(c, Utc::now(), 64)).await?;
        if batch.is_empty() {
            return Ok(stats);
        }
        let results: Vec<Result<Outcome, StoreError>> = futures_util::stream::iter(batch)
            .map(|row| execute(store, microsoft, google, cycle_id, row))
            .buffer_unordered(google.concurrency)
            .collect()
            .await;
        for result in results {
            match result? {
                Outcome::Done { .. } => stats.done += 1,
                Outcome::Retry { .. } => stats.retried += 1,
                Outcome::Dead { .. } => stats.dead += 1,
                Outcome::Quarantined { .. } => stats.quarantined += 1,
                Outcome::Superseded { .. } => stats.superseded += 1,
            }
        }
    }
}

async fn execute(
    store: &Store,
    microsoft: &MicrosoftClient,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
) -> Result<Outcome, StoreError> {
    use tracing::Instrument;
    let span = tracing::info_span!("action", id = row.id, kind = %row.kind, referral_id = %row.referral_id);
    async move {
        if google.dry_run {
            return dry_run(store, row).await;
        }
        match row.kind.as_str() {
            CREATE_LEAD => create_lead(store, google, cycle_id, row).await,
            PATCH_REFERRAL => patch_referral(store, microsoft, google, cycle_id, row).await,
            PATCH_OPPORTUNITY => patch_opportunity(store, google, cycle_id, row).await,
            other => {
                let outcome = Outcome::Dead {
                    error: format!("unknown action kind {other:?}"),
                };
                finish(store, row.id, outcome, None, None).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Dry run: logs the write (method, path, body summary) and closes it in the throw-away copy.
async fn dry_run(store: &Store, row: OutboxRow) -> Result<Outcome, StoreError> {
    let (method, path, summary) = match row.kind.as_str() {
        CREATE_LEAD => (
            "POST",
            "/v1/partners/{partner}/leads".to_string(),
            format!(
                "externalSystemId={} customer={} value={} {}",
                row.referral_id,
                row.payload["lead"]["customer"],
                row.payload["lead"]["partnerAnnualContractValue"],
                row.payload["lead"]["leadCurrencyCode"]
                    .as_str()
                    .unwrap_or("")
            ),
        ),
        PATCH_REFERRAL => (
            "PATCH",
            format!("{}/{}", crate::microsoft::REFERRALS_PATH, row.referral_id),
            row.payload["ops"].to_string(),
        ),
        _ => (
            "PATCH",
            format!(
                "/v1/{}?updateMask={}",
                row.target.as_deref().unwrap_or("?"),
                row.payload["mask"]
                    .as_array()
                    .map(|m| m
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            ),
            row.payload["body"].to_string(),
        ),
    };
    tracing::warn!(referral_id = %row.referral_id, method, path = %path, body = %summary, "DRY RUN: would send");
    finish(
        store,
        row.id,
        Outcome::Superseded {
            reason: "dry run: not sent".into(),
        },
        None,
        None,
    )
    .await
}

/// Records the outcome (and an optional extra write in the same transaction).
async fn finish(
    store: &Store,
    id: i64,
    outcome: Outcome,
    request_id: Option<String>,
    audit: Option<(AuditEntry, Option<String>)>,
) -> Result<Outcome, StoreError> {
    let o = outcome.clone();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            outbox::finish(&tx, id, &o, request_id.as_deref(), Utc::now())?;
            if let Some((entry, cycle)) = &audit {
                outbox::audit(&tx, entry, cycle.as_deref(), Utc::now())?;
            }
            tx.commit()?;
            Ok(())
        })
        .await?;
    match &outcome {
        Outcome::Dead { error } => {
            tracing::error!(action_id = id, error, "write failed for good (dead)")
        }
        Outcome::Quarantined { error } => {
            tracing::error!(action_id = id, error, "lead create quarantined")
        }
        Outcome::Retry { error, at } => {
            tracing::warn!(action_id = id, error, retry_at = %at, "write will be retried")
        }
        _ => {}
    }
    Ok(outcome)
}

/// Records a failed attempt with its audit row, in one transaction.
async fn finish_failed(
    store: &Store,
    id: i64,
    outcome: Outcome,
    entry: AuditEntry,
    cycle_id: &str,
) -> Result<Outcome, StoreError> {
    finish(
        store,
        id,
        outcome,
        None,
        Some((entry, Some(cycle_id.to_string()))),
    )
    .await
}

/// The failure outcome for a call that can be repeated safely.
fn failure(row: &OutboxRow, e: &ApiError, schedule: &Schedule) -> Outcome {
    let error = e.to_string();
    if (e.is_transient() || e.is_auth()) && row.attempts < schedule.max_attempts {
        Outcome::Retry {
            at: Utc::now()
                + chrono::Duration::from_std(schedule.delay(row.attempts, e.retry_after()))
                    .unwrap_or_default(),
            error,
        }
    } else if e.is_transient() || e.is_auth() {
        Outcome::Dead {
            error: format!("gave up after {} attempts: {error}", row.attempts),
        }
    } else {
        Outcome::Dead { error }
    }
}

fn failed_audit(
    api: &'static str,
    method: &'static str,
    resource: String,
    fields: Option<String>,
    e: &ApiError,
) -> AuditEntry {
    let request_id = match e {
        ApiError::Status { request_id, .. } | ApiError::Malformed { request_id, .. } => {
            request_id.clone()
        }
        _ => None,
    };
    AuditEntry {
        api,
        method,
        resource,
        fields,
        outcome: "failed",
        status_code: e.status(),
        request_id,
        detail: Some(e.to_string()),
    }
}

async fn create_lead(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
) -> Result<Outcome, StoreError> {
    let parent = format!("partners/{}", google.policy.partner_id);
    let lead = row.payload["lead"].clone();
    // One attempt, never wrapped in a retry: a create has no request id, and Google has no
    // lookup by externalSystemId, so a repeated create could be a duplicate lead.
    let result = google.client.create_lead(&parent, &lead).await;
    match result {
        Ok(answer) => {
            let created = answer.value;
            let request_id = answer.request_id;
            let (referral_id, id, cycle) = (row.referral_id.clone(), row.id, cycle_id.to_string());
            let name = created.name.clone();
            store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let now = Utc::now();
                    gstore::set_link(&tx, &referral_id, Some(&created.name), None, "created", now)?;
                    gstore::save_lead(&tx, &created, Some(&referral_id), now)?;
                    outbox::finish(&tx, id, &Outcome::Done { result: Some(created.name.clone()) }, Some(&request_id), now)?;
                    // The write-back follows from the new link: queued in the same transaction.
                    outbox::enqueue(
                        &tx,
                        &referral_id,
                        PATCH_REFERRAL,
                        Some(&referral_id),
                        &json!({"ops": [PatchOp::replace("/externalReferenceId", created.name.as_str())],
                                "base_after": BaseUpdate::default()}),
                        now,
                    )?;
                    outbox::audit(
                        &tx,
                        &AuditEntry {
                            api: "google",
                            method: "leads.create",
                            resource: created.name.clone(),
                            fields: Some(format!("externalSystemId={referral_id}")),
                            outcome: "ok",
                            status_code: Some(200),
                            request_id: Some(request_id.clone()),
                            detail: None,
                        },
                        Some(&cycle),
                        now,
                    )?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            tracing::info!(lead = %name, "lead created");
            Ok(Outcome::Done { result: Some(name) })
        }
        Err(e) => {
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
                parent,
                Some(format!("externalSystemId={}", row.referral_id)),
                &e,
            );
            finish_failed(store, row.id, outcome, entry, cycle_id).await
        }
    }
}

async fn patch_referral(
    store: &Store,
    microsoft: &MicrosoftClient,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
) -> Result<Outcome, StoreError> {
    let id = row.referral_id.clone();
    let current = {
        let id = id.clone();
        store.call(move |c| current_referral(c, &id)).await?
    };
    let Some(Current { status, etag, raw }) = current else {
        return finish(
            store,
            row.id,
            Outcome::Superseded {
                reason: "referral unknown".into(),
            },
            None,
            None,
        )
        .await;
    };
    if status.as_deref() == Some(ReferralStatus::Closed.as_str()) {
        return finish(
            store,
            row.id,
            Outcome::Superseded {
                reason: "referral is Closed; never written".into(),
            },
            None,
            None,
        )
        .await;
    }
    let ops: Vec<PatchOp> = serde_json::from_value::<Vec<OpIn>>(row.payload["ops"].clone())
        .unwrap_or_default()
        .into_iter()
        .map(|o| PatchOp {
            op: "replace",
            path: o.path,
            value: o.value,
        })
        // Never a write whose value is already there.
        .filter(|o| pointer(&raw, &o.path) != Some(&o.value))
        .collect();
    if ops.is_empty() {
        return finish(
            store,
            row.id,
            Outcome::Superseded {
                reason: "every value is already there".into(),
            },
            None,
            None,
        )
        .await;
    }
    let fields = ops
        .iter()
        .map(|o| o.path.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let result = with_retry(&google.retry, "patch referral", || {
        microsoft.patch_referral(&id, &ops, etag.as_deref())
    })
    .await;
    match result {
        Ok(outcome) => {
            let base: BaseUpdate =
                serde_json::from_value(row.payload["base_after"].clone()).unwrap_or_default();
            let (rid, cycle, action) = (outcome.request_id.clone(), cycle_id.to_string(), row.id);
            let fresh = outcome.referral;
            store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let now = Utc::now();
                    gstore::update_base(&tx, &id, &base, now)?;
                    outbox::finish(
                        &tx,
                        action,
                        &Outcome::Done { result: None },
                        rid.as_deref(),
                        now,
                    )?;
                    outbox::audit(
                        &tx,
                        &AuditEntry {
                            api: "microsoft",
                            method: "PATCH",
                            resource: id.clone(),
                            fields: Some(fields),
                            outcome: "ok",
                            status_code: Some(204),
                            request_id: rid.clone(),
                            detail: None,
                        },
                        Some(&cycle),
                        now,
                    )?;
                    tx.commit()?;
                    if let Some(fresh) = fresh {
                        referrals::commit_page(c, &[fresh], &[], None, now)?;
                    }
                    Ok(())
                })
                .await?;
            Ok(Outcome::Done { result: None })
        }
        Err(e) if e.status() == Some(412) => {
            // Someone changed the referral since we read it: read it again and re-plan.
            tracing::info!(referral_id = %row.referral_id, "412 on patch; re-reading and re-planning");
            let entry = failed_audit(
                "microsoft",
                "PATCH",
                row.referral_id.clone(),
                Some(fields),
                &e,
            );
            let outcome = Outcome::Superseded {
                reason: format!("re-planned after 412: {e}"),
            };
            let done = finish_failed(store, row.id, outcome, entry, cycle_id).await?;
            match with_retry(&google.retry, "get referral", || {
                microsoft.get_referral(&row.referral_id)
            })
            .await
            {
                Ok(fresh) => {
                    store
                        .call(move |c| referrals::commit_page(c, &[fresh], &[], None, Utc::now()))
                        .await?;
                    plan_one(store, &google.policy, &row.referral_id, Utc::now()).await?;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "re-read after 412 failed; the next cycle re-plans")
                }
            }
            Ok(done)
        }
        Err(e) => {
            let entry = failed_audit(
                "microsoft",
                "PATCH",
                row.referral_id.clone(),
                Some(fields),
                &e,
            );
            let outcome = failure(&row, &e, &google.schedule);
            finish_failed(store, row.id, outcome, entry, cycle_id).await
        }
    }
}

async fn patch_opportunity(
    store: &Store,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
) -> Result<Outcome, StoreError> {
    let name = row.target.clone().unwrap_or_default();
    let body = row.payload["body"].clone();
    let mask: Vec<String> = serde_json::from_value(row.payload["mask"].clone()).unwrap_or_default();
    let result = with_retry(&google.retry, "patch opportunity", || {
        google.client.patch_opportunity(&name, &body, &mask)
    })
    .await;
    match result {
        Ok(answer) => {
            let base: BaseUpdate =
                serde_json::from_value(row.payload["base_after"].clone()).unwrap_or_default();
            let (referral_id, id, cycle) = (row.referral_id.clone(), row.id, cycle_id.to_string());
            let (opp, request_id) = (answer.value, answer.request_id);
            store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let now = Utc::now();
                    gstore::save_opportunity(&tx, &opp, Some(&referral_id), now)?;
                    gstore::update_base(&tx, &referral_id, &base, now)?;
                    outbox::finish(
                        &tx,
                        id,
                        &Outcome::Done { result: None },
                        Some(&request_id),
                        now,
                    )?;
                    outbox::audit(
                        &tx,
                        &AuditEntry {
                            api: "google",
                            method: "opportunities.patch",
                            resource: opp.name.clone(),
                            fields: Some(mask.join(",")),
                            outcome: "ok",
                            status_code: Some(200),
                            request_id: Some(request_id.clone()),
                            detail: None,
                        },
                        Some(&cycle),
                        now,
                    )?;
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

#[derive(serde::Deserialize)]
struct OpIn {
    path: String,
    value: Value,
}

fn pointer<'a>(raw: &'a Value, path: &str) -> Option<&'a Value> {
    raw.pointer(path).filter(|v| !v.is_null())
}

/// The stored referral as a patch needs it.
struct Current {
    status: Option<String>,
    etag: Option<String>,
    raw: Value,
}

fn current_referral(c: &mut rusqlite::Connection, id: &str) -> Result<Option<Current>, StoreError> {
    use rusqlite::OptionalExtension;
    let row: Option<(Option<String>, Option<String>, String)> = c
        .query_row(
            "SELECT status, etag, raw_json FROM referrals WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(row.map(|(status, etag, raw)| Current {
        status,
        etag,
        raw: serde_json::from_str(&raw).unwrap_or(Value::Null),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_grows_is_capped_and_honours_retry_after() {
        let s = Schedule {
            max_attempts: 8,
            min: Duration::from_secs(30),
            max: Duration::from_secs(3600),
        };
        for attempt in 1..=12 {
            let d = s.delay(attempt, None);
            let step = Duration::from_secs(30)
                .saturating_mul(1 << (attempt - 1))
                .min(Duration::from_secs(3600));
            assert!(d >= step / 2 && d <= step, "attempt {attempt}: {d:?}");
        }
        assert!(s.delay(1, Some(Duration::from_secs(120))) >= Duration::from_secs(120));
    }
}
