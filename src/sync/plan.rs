//! Planning: what becomes an outbox row (reconcile each candidate referral, store its
//! actions, in batches or inside an action's own transaction), and the stored action format.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::microsoft::ReferralStatus;
use crate::store::google::{self as gstore, SnapshotRow};
use crate::store::outbox::{
    self, OutboxRow, ANSWER_REFERRAL, AWS_ACCEPT, AWS_DECLINE, PATCH_OPPORTUNITY,
};
use crate::store::referrals;
use crate::store::{schedule, Store, StoreError};
use crate::sync::reconcile::{after_create, reconcile, Action, Plan, Policy};
use crate::sync::{answer, aws_answer};
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PlanStats {
    pub referrals: u64,
    pub queued: u64,
    pub(crate) conflicts: u64,
    pub(crate) blocked: u64,
}

impl PlanStats {
    pub(crate) fn add(&mut self, other: PlanStats) {
        self.referrals += other.referrals;
        self.queued += other.queued;
        self.conflicts += other.conflicts;
        self.blocked += other.blocked;
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
pub(crate) async fn plan_all(
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
pub(crate) async fn plan_queued(
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

/// Re-plans one referral (after a 412 re-read).
pub(crate) async fn plan_one(
    store: &Store,
    policy: &Policy,
    referral_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (policy, id) = (policy.clone(), referral_id.to_string());
    store
        .call(move |c| {
            let tx = c.transaction()?;
            plan_in(&tx, &policy, &id, now)?;
            tx.commit()?;
            Ok(())
        })
        .await
}

/// Plans one referral inside the caller's transaction: what follows from a change an action
/// just made (the write-back after a new link, the adoption a create guard found) is decided
/// by the planner, from the stored state, once.
pub(crate) fn plan_in(
    tx: &rusqlite::Transaction,
    policy: &Policy,
    referral_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if let Some(row) = gstore::snapshot_one(tx, referral_id)? {
        let plan = reconcile(&row, policy, now);
        apply_plan(tx, referral_id, &plan, now, &mut PlanStats::default())?;
    }
    Ok(())
}

/// Plans a referral whose lead was just created (`lead_name`, linked in this transaction):
/// the write-back rule of [`reconcile`] from three stored columns, without reading and
/// parsing the whole snapshot ([`crate::sync::reconcile::after_create`]).
pub(crate) fn plan_created(
    tx: &rusqlite::Transaction,
    referral_id: &str,
    lead_name: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(inputs) = referrals::write_back_inputs(tx, referral_id)? else {
        return Ok(());
    };
    let closed = inputs.status.as_deref() == Some(ReferralStatus::Closed.as_str());
    let plan = after_create(
        lead_name,
        inputs.reference.as_deref(),
        closed,
        inputs.patch_blocked,
    );
    apply_plan(tx, referral_id, &plan, now, &mut PlanStats::default())
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
            Action::AdoptLink { name } => Some(name.clone()),
            Action::PatchReferral { .. } => Some(referral_id.to_string()),
            Action::PatchOpportunity { name, .. } => Some(name.clone()),
            Action::AnswerReferral { .. }
            | Action::AwsAccept { .. }
            | Action::AwsDecline { .. } => Some(referral_id.to_string()),
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

/// The version of the stored action format: `{"v": 1, "action": "create_lead", ...}`.
const ACTION_FORMAT: u64 = 1;

/// An action as the outbox stores it: the tagged action plus its format version (an answer
/// keeps its own versioned format, [`answer::encode`]).
pub(crate) fn encode(action: &Action) -> Value {
    match action {
        Action::AnswerReferral { answer } => return answer::encode(answer),
        Action::AwsAccept { answer } | Action::AwsDecline { answer } => {
            return aws_answer::encode(answer)
        }
        _ => {}
    }
    let mut value = serde_json::to_value(action).expect("an action serializes");
    if let Some(object) = value.as_object_mut() {
        object.insert("v".into(), ACTION_FORMAT.into());
    }
    value
}

/// Why an outbox row's action cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("answer: {0}")]
    Answer(#[from] answer::DecodeError),
    #[error("AWS answer: {0}")]
    AwsAnswer(#[from] aws_answer::DecodeError),
    /// The whole payload.
    #[error("payload is not a JSON object: {0}")]
    NotAnObject(Value),
    /// The row's `v`.
    #[error("action format {0} is newer than this cosell-sync reads ({ACTION_FORMAT}); upgrade it", ACTION_FORMAT = ACTION_FORMAT)]
    NewerFormat(Value),
    /// The fields do not make an action of the row's kind: serde's words.
    #[error("{kind} action {id}: {message}")]
    Fields {
        kind: String,
        id: i64,
        message: String,
    },
    /// The row's `kind` column and the payload's action differ.
    #[error("row {id} is a {kind} but holds a {holds}")]
    KindMismatch {
        id: i64,
        kind: String,
        holds: &'static str,
    },
}

/// The action an outbox row holds. Rows of the first format (no `v`: the payload fields of
/// its `kind` only) still decode; a row that cannot decode is an error that names why.
pub(crate) fn decode(row: &OutboxRow) -> Result<Action, DecodeError> {
    if row.kind == ANSWER_REFERRAL {
        let answer = answer::decode(&row.payload)?;
        return Ok(Action::AnswerReferral { answer });
    }
    if row.kind == AWS_ACCEPT || row.kind == AWS_DECLINE {
        let answer = aws_answer::decode(&row.kind, &row.payload)?;
        return Ok(match row.kind == AWS_ACCEPT {
            true => Action::AwsAccept { answer },
            false => Action::AwsDecline { answer },
        });
    }
    let mut payload = row.payload.clone();
    let Some(object) = payload.as_object_mut() else {
        return Err(DecodeError::NotAnObject(row.payload.clone()));
    };
    match object.remove("v") {
        Some(v) if v == ACTION_FORMAT => {}
        Some(v) => return Err(DecodeError::NewerFormat(v)),
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
    let action: Action = serde_json::from_value(payload).map_err(|e| DecodeError::Fields {
        kind: row.kind.clone(),
        id: row.id,
        message: e.to_string(),
    })?;
    if action.kind() != row.kind {
        return Err(DecodeError::KindMismatch {
            id: row.id,
            kind: row.kind.clone(),
            holds: action.kind(),
        });
    }
    Ok(action)
}
