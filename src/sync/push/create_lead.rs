//! The lead create (Google): sent at most once; an unknown outcome is quarantined. Before it
//! is sent, the guard (issue 15): a referral that already names a Google record gets no
//! create. Its read joins the claim in one store call, and the answer (link, lead copy, the
//! plan that follows from the new link, the done row and its audit entry) is one more: two
//! store calls after the take.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::executor::{failed_audit, Claim, Executor, Settled};
use crate::google::client::Reply;
use crate::google::Lead;
use crate::http::ApiError;
use crate::store::google as gstore;
use crate::store::outbox::{ActionOutcome, AuditEntry, OutboxRow};
use crate::store::{referrals, schedule, StoreError};
use crate::sync::adopt::{named_record, Named};
use crate::sync::plan::{plan_created, plan_in};
use crate::sync::{GoogleSide, Policy};

/// Creates the lead of `row` (the one entry point of this kind).
pub(super) async fn execute(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: OutboxRow,
    lead: Value,
) -> Result<ActionOutcome, StoreError> {
    let parent = format!("partners/{}", google.policy.partner_id);
    // One attempt, never wrapped in a retry: a create has no request id, and Google has no
    // lookup by externalSystemId, so a repeated create could be a duplicate lead. Token and
    // rate limiter first; only then is the row marked as possibly on the wire, and sent.
    let ready = match google.client.prepare_create_lead(&parent, &lead).await {
        Ok(ready) => ready,
        Err(e) => return create_failed(exec, google, &row, &parent, e).await,
    };
    let guard = Guard {
        referral_id: row.referral_id.clone(),
        fresh_since: Some(google.fresh_since),
        policy: google.policy.clone(),
        claim: exec.claim_of(&row),
    };
    let checked = match exec.store.call_short(move |c| guard.run(c)).await? {
        Guarded::Stale => match reread(exec, google, &row).await? {
            Ok(guard) => exec.store.call_short(move |c| guard.run(c)).await?,
            Err(outcome) => return Ok(outcome),
        },
        checked => checked,
    };
    match checked {
        Guarded::Claimed => {}
        Guarded::NotSent(outcome) => return Ok(outcome),
        Guarded::Stopped(outcome) => {
            tracing::warn!(referral_id = %row.referral_id, "lead create stopped: the referral already names a Google record");
            return Ok(outcome);
        }
        Guarded::Stale => unreachable!("a guard that trusts the copy never finds it stale"),
    }
    match google.client.send_create_lead(ready).await {
        Ok(reply) => lead_created(exec, google, &row, reply).await,
        Err(e) => create_failed(exec, google, &row, &parent, e).await,
    }
}

/// The create guard and the claim, in one store call: the referral's stored
/// `externalReferenceId` is trusted only when this process's own pull wrote it
/// (`fresh_since`); an older copy (a restart, a restored backup) is read again from Partner
/// Center first, since the lead may have been created and written back after that copy.
struct Guard {
    referral_id: String,
    /// `None`: the copy was just read again; trust it.
    fresh_since: Option<DateTime<Utc>>,
    policy: Policy,
    claim: Claim,
}

enum Guarded {
    /// Claimed: send it.
    Claimed,
    /// The stored copy predates this process: read the referral again first.
    Stale,
    /// Not sent (shutdown, or no longer this taker's): see [`Claim::run`].
    NotSent(ActionOutcome),
    /// The referral names a Google record: no create; the create is closed and the referral
    /// planned again (which adopts the record when it is this partner's).
    Stopped(ActionOutcome),
}

impl Guard {
    fn run(self, c: &mut rusqlite::Connection) -> Result<Guarded, StoreError> {
        let stored = referrals::reference_and_change(c, &self.referral_id)?;
        let reference = match stored {
            Some((_, changed)) if self.fresh_since.is_some_and(|since| changed < since) => {
                return Ok(Guarded::Stale)
            }
            Some((reference, _)) => reference,
            None => None,
        };
        let (name, ours) = match named_record(reference.as_deref(), &self.policy.partner_id) {
            Named::Nothing => {
                return Ok(match self.claim.run(c)? {
                    None => Guarded::Claimed,
                    Some(not_sent) => Guarded::NotSent(not_sent),
                })
            }
            Named::Ours(name) => (name, true),
            Named::OtherPartner(name) => (name, false),
        };
        let reason = format!(
            "not created: the referral's externalReferenceId already names {name}{}",
            if ours {
                "; adopting it instead"
            } else {
                ", a record of another partner"
            }
        );
        let outcome = ActionOutcome::Superseded { reason };
        let tx = c.transaction()?;
        let now = Utc::now();
        Settled::from(outcome.clone()).write(&tx, self.claim.taken(), "", now)?;
        // The planner decides what follows (an adoption of this partner's record, or the
        // referral marked as blocked), in the same transaction.
        plan_in(&tx, &self.policy, &self.referral_id, now)?;
        tx.commit()?;
        Ok(Guarded::Stopped(outcome))
    }
}

/// Reads the referral again (stored, queuing its plan). `Err(outcome)`: the read failed and
/// the create waits (recorded): never created without knowing.
async fn reread(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: &OutboxRow,
) -> Result<Result<Guard, ActionOutcome>, StoreError> {
    let read = exec.refresh_referral(&row.referral_id).await?;
    if let Err(e) = read {
        let outcome = match exec.failure(row, &e) {
            // A dead read leaves the create waiting.
            ActionOutcome::Dead { error } => ActionOutcome::Retry {
                at: Utc::now() + chrono::Duration::minutes(5),
                error: format!("re-reading the referral before creating: {error}"),
            },
            other => other,
        };
        return Ok(Err(exec.record(row, outcome.into()).await?));
    }
    Ok(Ok(Guard {
        referral_id: row.referral_id.clone(),
        fresh_since: None,
        policy: google.policy.clone(),
        claim: exec.claim_of(row),
    }))
}

/// The create answered: link, lead copy, its first refresh check, the plan that follows from
/// the new link (the write-back) and the done row with its audit entry, in one transaction.
async fn lead_created(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: &OutboxRow,
    reply: Reply<Lead>,
) -> Result<ActionOutcome, StoreError> {
    let (created, request_id) = (reply.value, reply.request_id);
    let referral_id = row.referral_id.clone();
    let name = created.name.clone();
    let first_check = google.refresh.min_interval;
    let audit = AuditEntry {
        api: "google",
        method: "leads.create",
        resource: created.name.clone(),
        fields: Some(format!("externalSystemId={referral_id}")),
        outcome: "ok",
        status_code: Some(200),
        request_id: Some(request_id),
        detail: None,
        actor: None,
    };
    let done = ActionOutcome::Done {
        result: Some(name.clone()),
    };
    let also = Box::new(move |tx: &rusqlite::Transaction, now: DateTime<Utc>| {
        // The new link and lead copy queue a plan; it is made here, so unless something
        // else queued it, the referral leaves the queue.
        let was_queued = schedule::is_queued(tx, &referral_id)?;
        gstore::set_link(tx, &referral_id, Some(&created.name), None, "created", now)?;
        gstore::save_lead(tx, &created, Some(&referral_id), now)?;
        // The answer is the lead's current copy: no read is due before the minimum.
        schedule::checked_fresh(tx, &created.name, &referral_id, first_check, now)?;
        plan_created(tx, &referral_id, &created.name, now)?;
        if !was_queued {
            schedule::planned(tx, &referral_id)?;
        }
        Ok(())
    });
    let outcome = exec
        .record_with(row, Settled::sent(done, audit), also)
        .await?;
    tracing::info!(lead = %name, "lead created");
    Ok(outcome)
}

/// A create that failed: quarantined when it may have reached Google (never repeated),
/// otherwise retried or dead like any write.
async fn create_failed(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: &OutboxRow,
    parent: &str,
    e: ApiError,
) -> Result<ActionOutcome, StoreError> {
    let unknown = matches!(
        e,
        ApiError::Transport {
            maybe_sent: true,
            ..
        } | ApiError::Malformed { .. }
    );
    let outcome = if unknown {
        ActionOutcome::Quarantined {
            error: format!(
                "outcome unknown ({e}); the lead may exist in Google: link it (cosell-sync link {} partners/{}/leads/ID) or, if it does not exist, cosell-sync outbox retry {}",
                row.referral_id, google.policy.partner_id, row.id
            ),
        }
    } else {
        exec.failure(row, &e)
    };
    let entry = failed_audit(
        "google",
        "leads.create",
        parent.to_string(),
        Some(format!("externalSystemId={}", row.referral_id)),
        &e,
    );
    exec.record(row, Settled::audited(outcome, entry)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::App;
    use crate::sim::{sample, Simulator};
    use crate::store::outbox::{self, Kinds};

    /// Issue 26: a lead create is one store call before its request (the guard's read and
    /// the claim) and one after it (link, lead copy, plan, done row, audit row), counted on
    /// the store's own counter of asynchronous calls.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_lead_create_makes_two_store_calls_after_its_take() {
        let sim = Simulator::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = crate::app::demo::demo_config(&sim, None, dir.path()).unwrap();
        let mut app = App::build(config).unwrap();
        app.become_worker().unwrap();
        let mut ctx = app.cycle.clone();
        let google = ctx.google.as_mut().expect("the demo has the Google side");
        // This process's own pull wrote the copy: the guard trusts it (no re-read).
        google.fresh_since = chrono::DateTime::<Utc>::MIN_UTC;
        let now = Utc::now();
        let raw = sample::referral(7, now, chrono::Duration::hours(2), "New", "Pending");
        let parsed = crate::microsoft::model::ParsedReferral::from_value(raw).unwrap();
        let store = ctx.store.clone();
        store
            .call(move |c| referrals::commit_page(c, &[parsed], &[], None, now))
            .await
            .unwrap();
        let policy = ctx.google.as_ref().unwrap().policy.clone();
        let planned = crate::sync::plan::plan_all(&store, &policy, now, None)
            .await
            .unwrap();
        assert_eq!(planned.queued, 1, "one lead create queued");
        let row = store
            .call(|c| outbox::take_due_of(c, Utc::now(), &[], Kinds::All))
            .await
            .unwrap()
            .expect("the create is due");
        let lead = match crate::sync::plan::decode(&row).unwrap() {
            crate::sync::reconcile::Action::CreateLead { lead } => lead,
            other => panic!("not a create: {other:?}"),
        };
        let exec = Executor::of(&ctx, "test");
        let google = ctx.google.as_ref().unwrap();
        let before = store.calls();
        let outcome = execute(&exec, google, row, lead).await.unwrap();
        assert!(matches!(outcome, ActionOutcome::Done { .. }), "{outcome:?}");
        assert_eq!(store.calls() - before, 2, "store calls of one lead create");
        assert_eq!(sim.leads_per_external_id().len(), 1);
        // The write-back was planned in the create's transaction.
        let open = store
            .call(|c| outbox::list(c, &[outbox::State::Pending], 10))
            .await
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].kind, outbox::PATCH_REFERRAL);
    }
}
