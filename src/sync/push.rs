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
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::reconcile::{reconcile, Action, Plan, Policy};
use super::GoogleSide;
use crate::http::{with_retry, ApiError, RetryPolicy};
use crate::microsoft::{MicrosoftClient, PatchOp, ReferralStatus};
use crate::store::google::{self as gstore, BaseUpdate, SnapshotRow};
use crate::store::outbox::{
    self, AuditEntry, OutboxRow, Outcome, PATCH_OPPORTUNITY, PATCH_REFERRAL,
};
use crate::store::{referrals, schedule};
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
        // `try_`: a factor just under 1 times `Duration::MAX` may round above it.
        let jittered =
            Duration::try_from_secs_f64(capped.as_secs_f64() * (0.5 + fastrand::f64() * 0.5))
                .unwrap_or(capped);
        retry_after.map_or(jittered, |ra| ra.max(jittered))
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PlanStats {
    pub referrals: u64,
    pub queued: u64,
    pub conflicts: u64,
    pub blocked: u64,
}

impl PlanStats {
    pub fn add(&mut self, other: PlanStats) {
        self.referrals += other.referrals;
        self.queued += other.queued;
        self.conflicts += other.conflicts;
        self.blocked += other.blocked;
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PushStats {
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
    pub quarantined: u64,
    pub superseded: u64,
}

impl PushStats {
    pub fn add(&mut self, o: PushStats) {
        self.done += o.done;
        self.retried += o.retried;
        self.dead += o.dead;
        self.quarantined += o.quarantined;
        self.superseded += o.superseded;
    }
}

/// Which referrals a plan covers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum PlanScope {
    /// Every candidate: incoming referrals still New and every linked referral — except,
    /// with a time, those the plan queue planned after a change at or after it.
    All(Option<DateTime<Utc>>),
    /// The plan queue: referrals whose inputs changed since they were last planned.
    Queued,
}

/// Reconciles every candidate referral in batches, storing each batch's decisions in one
/// transaction. `planned_since` (a cycle's start) leaves out the referrals that cycle's plan
/// queue already planned after their last change: each is planned once per change.
pub async fn plan_all(
    store: &Store,
    policy: &Policy,
    now: DateTime<Utc>,
    planned_since: Option<DateTime<Utc>>,
) -> Result<PlanStats, StoreError> {
    let stats = plan_batches(store, policy, now, PlanScope::All(planned_since)).await?;
    // Everything queued before this plan began has been planned with newer data.
    store
        .call(move |c| schedule::planned_before(c, now))
        .await?;
    Ok(stats)
}

/// Plans the referrals queued since their last plan (new or changed referrals, changed Google
/// records, new links), in batches, taking each off the queue in the transaction that planned
/// it. This is what the deadline lane runs every tick: its cost follows what changed, not how
/// many referrals are tracked.
pub async fn plan_queued(
    store: &Store,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<PlanStats, StoreError> {
    plan_batches(store, policy, now, PlanScope::Queued).await
}

/// Plans `scope` in keyset-paginated batches of 500 (memory stays flat), each batch's
/// decisions stored in one transaction.
async fn plan_batches(
    store: &Store,
    policy: &Policy,
    now: DateTime<Utc>,
    scope: PlanScope,
) -> Result<PlanStats, StoreError> {
    let mut stats = PlanStats::default();
    let mut after = String::new();
    loop {
        let (policy, cursor) = (policy.clone(), after.clone());
        let (batch_stats, last) = store
            .call(move |c| {
                let (rows, last) = match scope {
                    PlanScope::All(since) => {
                        let rows = gstore::snapshot_batch(c, &cursor, 500, since)?;
                        let last = rows.last().map(|r| r.referral.referral.id.clone());
                        (
                            rows.into_iter()
                                .map(|r| (r.referral.referral.id.clone(), Some(r)))
                                .collect(),
                            last,
                        )
                    }
                    PlanScope::Queued => {
                        let ids = schedule::queued_for_plan(c, &cursor, 500)?;
                        let mut rows: Vec<(String, Option<SnapshotRow>)> = Vec::new();
                        for id in &ids {
                            rows.push((id.clone(), gstore::snapshot_one(c, id)?));
                        }
                        (rows, ids.last().cloned())
                    }
                };
                let tx = c.transaction()?;
                let mut s = PlanStats::default();
                for (id, row) in &rows {
                    if let Some(row) = row {
                        let plan = reconcile(row, &policy, now);
                        apply_plan(&tx, id, &plan, now, &mut s)?;
                        s.referrals += 1;
                    }
                    if scope == PlanScope::Queued {
                        schedule::planned(&tx, id)?;
                    }
                }
                tx.commit()?;
                Ok((s, last))
            })
            .await?;
        stats.add(batch_stats);
        match last {
            Some(id) => after = id,
            None => return Ok(stats),
        }
    }
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
        let target = match action {
            Action::CreateLead { .. } => None,
            Action::PatchReferral { .. } => Some(referral_id.to_string()),
            Action::PatchOpportunity { name, .. } => Some(name.clone()),
        };
        if outbox::enqueue(
            tx,
            referral_id,
            action.kind(),
            target.as_deref(),
            &encode(action),
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

/// What one `push_due` shares between its workers.
#[derive(Debug)]
struct PushRun {
    /// SIGTERM: no new write starts (see [`mark_sending`]).
    stop: CancellationToken,
}

/// Executes due actions until none is due, or until `stop` (SIGTERM): then no new action
/// starts and the running ones finish. A row is taken only when a worker slot is free to run
/// it, and marked `in_flight` only immediately before its request is sent, so a crash or a
/// stop leaves at most `concurrency` writes in doubt.
pub async fn push_due(
    store: &Store,
    microsoft: &MicrosoftClient,
    microsoft_retry: &RetryPolicy,
    google: &GoogleSide,
    cycle_id: &str,
    stop: &CancellationToken,
) -> Result<PushStats, StoreError> {
    let mut stats = PushStats::default();
    let run = PushRun { stop: stop.clone() };
    let mut running = futures_util::stream::FuturesUnordered::new();
    let mut taken: Vec<i64> = Vec::new();
    loop {
        while running.len() < google.concurrency.max(1) && !stop.is_cancelled() {
            let exclude = taken.clone();
            let Some(row) = store
                .call(move |c| outbox::take_due(c, Utc::now(), &exclude))
                .await?
            else {
                break;
            };
            taken.push(row.id);
            let id = row.id;
            let run = &run;
            running.push(async move {
                (
                    id,
                    execute(
                        store,
                        microsoft,
                        microsoft_retry,
                        google,
                        cycle_id,
                        row,
                        run,
                    )
                    .await,
                )
            });
        }
        let Some((id, result)) = running.next().await else {
            return Ok(stats);
        };
        taken.retain(|t| *t != id);
        match result? {
            Outcome::Done { .. } => stats.done += 1,
            Outcome::Retry { .. } => stats.retried += 1,
            Outcome::Dead { .. } => stats.dead += 1,
            Outcome::Quarantined { .. } => stats.quarantined += 1,
            Outcome::Superseded { .. } => stats.superseded += 1,
        }
    }
}

async fn count_412(store: &Store, cycle_id: &str, referral_id: &str) -> Result<u64, StoreError> {
    let (cycle, referral) = (cycle_id.to_string(), referral_id.to_string());
    store
        .call(move |c| outbox::count_412_in_cycle(c, &cycle, &referral))
        .await
}

/// Marks a taken row `in_flight` right before its send. `Some(outcome)`: do not send
/// (shutdown began, or the operator dropped the row); the outcome is already recorded.
async fn mark_sending(
    store: &Store,
    row: &OutboxRow,
    stop: &CancellationToken,
) -> Result<Option<Outcome>, StoreError> {
    let id = row.id;
    if stop.is_cancelled() {
        // Not started: due again at once for the next process, the attempt not counted.
        let outcome = Outcome::Retry {
            at: Utc::now(),
            error: "shutdown began before this write was sent".into(),
        };
        store
            .call(move |c| outbox::release(c, id, Utc::now()))
            .await?;
        return Ok(Some(outcome));
    }
    let marked = store
        .call(move |c| outbox::mark_sending(c, id, Utc::now()))
        .await?;
    Ok((!marked).then(|| Outcome::Superseded {
        reason: "no longer pending (dropped by the operator); not sent".into(),
    }))
}

async fn execute(
    store: &Store,
    microsoft: &MicrosoftClient,
    microsoft_retry: &RetryPolicy,
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    run: &PushRun,
) -> Result<Outcome, StoreError> {
    use tracing::Instrument;
    let span = tracing::info_span!("action", id = row.id, kind = %row.kind, referral_id = %row.referral_id);
    async move {
        let action = match decode(&row) {
            Ok(action) => action,
            Err(error) => {
                // Never guessed at, never silently closed: a person looks at it.
                let outcome = Outcome::Dead {
                    error: format!("the stored action cannot be read: {error}"),
                };
                return finish(store, row.id, outcome, None, None).await;
            }
        };
        if google.dry_run {
            return dry_run(store, row, &action).await;
        }
        match action {
            Action::CreateLead { lead } => {
                create_lead(store, google, cycle_id, row, &run.stop, lead).await
            }
            Action::PatchReferral { ops, base_after } => {
                let referral = (microsoft, microsoft_retry, run);
                patch_referral(store, referral, google, cycle_id, row, ops, base_after).await
            }
            Action::PatchOpportunity {
                name,
                body,
                mask,
                base_after,
            } => {
                let patch = OpportunityPatch {
                    name,
                    body,
                    mask,
                    base_after,
                };
                patch_opportunity(store, google, cycle_id, row, patch, &run.stop).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Dry run: logs the write (method, path, body summary) and closes it in the throw-away copy.
async fn dry_run(store: &Store, row: OutboxRow, action: &Action) -> Result<Outcome, StoreError> {
    let (method, path, summary) = match action {
        Action::CreateLead { lead } => (
            "POST",
            "/v1/partners/{partner}/leads".to_string(),
            format!(
                "externalSystemId={} customer={} value={} {}",
                row.referral_id,
                lead["customer"],
                lead["partnerAnnualContractValue"],
                lead["leadCurrencyCode"].as_str().unwrap_or("")
            ),
        ),
        Action::PatchReferral { ops, .. } => (
            "PATCH",
            format!("{}/{}", crate::microsoft::REFERRALS_PATH, row.referral_id),
            serde_json::to_string(ops).unwrap_or_default(),
        ),
        Action::PatchOpportunity {
            name, body, mask, ..
        } => (
            "PATCH",
            format!("/v1/{name}?updateMask={}", mask.join(",")),
            body.to_string(),
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

/// The version of the stored action format: `{"v": 1, "action": "create_lead", ...}`.
const ACTION_FORMAT: u64 = 1;

/// An action as the outbox stores it: the tagged action plus its format version.
pub fn encode(action: &Action) -> Value {
    let mut value = serde_json::to_value(action).expect("an action serializes");
    if let Some(object) = value.as_object_mut() {
        object.insert("v".into(), ACTION_FORMAT.into());
    }
    value
}

/// The action an outbox row holds. Rows of the first format (no `v`: the payload fields of
/// its `kind` only) still decode; a row that cannot decode is an error that names why.
pub fn decode(row: &OutboxRow) -> Result<Action, String> {
    let mut payload = row.payload.clone();
    let Some(object) = payload.as_object_mut() else {
        return Err(format!("payload is not a JSON object: {}", row.payload));
    };
    match object.remove("v") {
        Some(v) if v == ACTION_FORMAT => {}
        Some(v) => {
            return Err(format!(
            "action format {v} is newer than this cosell-sync reads ({ACTION_FORMAT}); upgrade it"
        ))
        }
        None => {
            // Format 0: the kind lived in its own column, the opportunity name in `target`,
            // and a `null` base value meant "leave it" (as that version read it).
            object.insert("action".into(), row.kind.clone().into());
            if let Some(base) = object.get_mut("base_after").and_then(Value::as_object_mut) {
                base.retain(|_, v| !v.is_null());
            }
            if row.kind == PATCH_OPPORTUNITY {
                let name = row.target.clone().unwrap_or_default();
                object.entry("name").or_insert(name.into());
            }
        }
    }
    let action: Action = serde_json::from_value(payload)
        .map_err(|e| format!("{} action {}: {e}", row.kind, row.id))?;
    if action.kind() != row.kind {
        return Err(format!(
            "row {} is a {} but holds a {}",
            row.id,
            row.kind,
            action.kind()
        ));
    }
    Ok(action)
}

/// Closes an action as done with its audit row, inside the caller's transaction (which
/// holds what else the success changes: a link, a saved copy, base values).
fn record_done(
    tx: &rusqlite::Transaction,
    id: i64,
    result: Option<String>,
    audit: &AuditEntry,
    cycle_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    outbox::finish(
        tx,
        id,
        &Outcome::Done { result },
        audit.request_id.as_deref(),
        now,
    )?;
    outbox::audit(tx, audit, Some(cycle_id), now)?;
    Ok(())
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

/// `now + delay` that cannot overflow, whatever number a server or the config supplied.
fn retry_at(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The failure outcome for a call that can be repeated safely.
fn failure(row: &OutboxRow, e: &ApiError, schedule: &Schedule) -> Outcome {
    let error = e.to_string();
    if (e.is_transient() || e.is_auth()) && row.attempts < schedule.max_attempts {
        Outcome::Retry {
            at: retry_at(Utc::now(), schedule.delay(row.attempts, e.retry_after())),
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
async fn lead_created(
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
async fn create_failed(
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

/// A superseded outcome: closed without a write, with why.
async fn supersede(store: &Store, id: i64, reason: &str) -> Result<Outcome, StoreError> {
    let outcome = Outcome::Superseded {
        reason: reason.into(),
    };
    finish(store, id, outcome, None, None).await
}

async fn patch_referral(
    store: &Store,
    (microsoft, microsoft_retry, run): (&MicrosoftClient, &RetryPolicy, &PushRun),
    google: &GoogleSide,
    cycle_id: &str,
    row: OutboxRow,
    ops: Vec<PatchOp>,
    base_after: BaseUpdate,
) -> Result<Outcome, StoreError> {
    let stop = &run.stop;
    let id = row.referral_id.clone();
    let current = {
        let id = id.clone();
        store.call(move |c| referrals::for_patch(c, &id)).await?
    };
    let Some(referrals::ForPatch { status, etag, raw }) = current else {
        return supersede(store, row.id, "referral unknown").await;
    };
    if status.as_deref() == Some(ReferralStatus::Closed.as_str()) {
        return supersede(store, row.id, "referral is Closed; never written").await;
    }
    // Never a write whose value is already there.
    let ops: Vec<PatchOp> = ops
        .into_iter()
        .filter(|o| pointer(&raw, &o.path) != Some(&o.value))
        .collect();
    if ops.is_empty() {
        return supersede(store, row.id, "every value is already there").await;
    }
    let fields = ops
        .iter()
        .map(|o| o.path.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if count_412(store, cycle_id, &row.referral_id).await? >= 2 {
        // Two 412s in this cycle already (a write and its re-plan): no third try until the
        // next cycle re-reads and re-plans.
        let outcome = Outcome::Superseded {
            reason: "412 twice in this cycle; the next cycle re-plans".into(),
        };
        return finish(store, row.id, outcome, None, None).await;
    }
    if let Some(outcome) = mark_sending(store, &row, stop).await? {
        return Ok(outcome);
    }
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

/// A failed patch: a first 412 re-reads and re-plans, a second one in the cycle waits for
/// the next cycle; anything else is retried or dead like any write.
#[allow(clippy::too_many_arguments)] // the one call site above; a struct would only rename them
async fn patch_failed(
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
async fn referral_patched(
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
            tx.commit()?;
            if let Some(fresh) = fresh {
                let was_queued = schedule::is_queued(c, &id)?;
                referrals::commit_page(c, &[fresh], &[], None, now)?;
                if guarded && !was_queued {
                    schedule::planned(c, &id)?;
                }
            }
            Ok(())
        })
        .await?;
    Ok(Outcome::Done { result: None })
}

/// Someone changed the referral since we read it: read it again and re-plan.
async fn replan_after_412(
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

/// A patch of a linked opportunity, as planned.
struct OpportunityPatch {
    name: String,
    body: Value,
    mask: Vec<String>,
    base_after: BaseUpdate,
}

async fn patch_opportunity(
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

fn pointer<'a>(raw: &'a Value, path: &str) -> Option<&'a Value> {
    raw.pointer(path).filter(|v| !v.is_null())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(kind: &str, target: Option<&str>, payload: Value) -> OutboxRow {
        OutboxRow {
            id: 7,
            referral_id: "r-1".into(),
            kind: kind.into(),
            target: target.map(str::to_string),
            payload,
            state: "pending".into(),
            attempts: 0,
            next_attempt_at: Utc::now(),
            last_error: None,
            request_id: None,
            result: None,
            updated_at: String::new(),
        }
    }

    fn actions() -> Vec<Action> {
        vec![
            Action::CreateLead {
                lead: json!({"externalSystemId": "r-1", "customer": {"organizationName": "AT&T"}}),
            },
            Action::PatchReferral {
                ops: vec![PatchOp::replace(
                    "/externalReferenceId",
                    "partners/1/leads/2",
                )],
                base_after: BaseUpdate {
                    deal_value: Some(Some(1250.5)),
                    close_date: None,
                },
            },
            Action::PatchOpportunity {
                name: "partners/1/opportunities/3".into(),
                body: json!({"dealSize": 1250.5}),
                mask: vec!["dealSize".into()],
                base_after: BaseUpdate {
                    deal_value: Some(None),
                    close_date: Some(chrono::NaiveDate::from_ymd_opt(2027, 1, 31)),
                },
            },
        ]
    }

    #[test]
    fn every_action_decodes_back_to_itself() {
        for action in actions() {
            let stored = row(action.kind(), None, encode(&action));
            assert_eq!(decode(&stored).as_ref(), Ok(&action));
        }
    }

    #[test]
    fn rows_of_the_first_format_still_decode() {
        let lead = row(
            "create_lead",
            None,
            json!({"lead": {"externalSystemId": "r-1"}}),
        );
        assert_eq!(
            decode(&lead),
            Ok(Action::CreateLead {
                lead: json!({"externalSystemId": "r-1"})
            })
        );
        let patch = row(
            "patch_referral",
            Some("r-1"),
            json!({"ops": [{"op": "replace", "path": "/externalReferenceId", "value": "x"}],
                   "base_after": {"deal_value": null, "close_date": null}}),
        );
        assert!(
            matches!(decode(&patch), Ok(Action::PatchReferral { ops, base_after }) if ops[0].value == "x" && base_after.is_empty()),
            "a format-0 null base value leaves the base as it is"
        );
        let opp = row(
            "patch_opportunity",
            Some("partners/1/opportunities/3"),
            json!({"body": {"dealSize": 5.0}, "mask": ["dealSize"], "base_after": {}}),
        );
        assert!(
            matches!(decode(&opp), Ok(Action::PatchOpportunity { name, .. }) if name == "partners/1/opportunities/3")
        );
    }

    #[test]
    fn an_unreadable_row_is_an_error_never_an_empty_write() {
        for (kind, payload) in [
            (
                "patch_referral",
                json!({"ops": "not a list", "base_after": {}}),
            ),
            (
                "patch_referral",
                json!({"v": 1, "action": "patch_referral", "ops": [{"op": "remove", "path": "/x", "value": 1}], "base_after": {}}),
            ),
            ("patch_opportunity", json!({"body": {}, "base_after": {}})),
            (
                "create_lead",
                json!({"v": 2, "action": "create_lead", "lead": {}}),
            ),
            ("create_lead", json!("a string")),
            (
                "create_lead",
                json!({"v": 1, "action": "patch_opportunity", "name": "n", "body": {}, "mask": [], "base_after": {}}),
            ),
            ("teleport", json!({"anything": 1})),
        ] {
            let stored = row(kind, Some("t"), payload.clone());
            assert!(decode(&stored).is_err(), "{kind} {payload} decoded");
        }
    }

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

    #[test]
    fn absurd_delays_never_overflow_the_clock() {
        let s = Schedule {
            max_attempts: u32::MAX,
            min: Duration::MAX,
            max: Duration::MAX,
        };
        let now = Utc::now();
        for attempts in [0, 1, 31, 32, 64, u32::MAX] {
            let d = s.delay(attempts, Some(Duration::MAX));
            assert!(retry_at(now, d) >= now);
        }
        assert_eq!(
            retry_at(now, Duration::from_secs(10)),
            now + chrono::Duration::seconds(10)
        );
    }
}
