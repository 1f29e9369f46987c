//! Plan and push (spec §2 "Push"): reconcile every referral that may need work, store its
//! actions in the outbox, then execute due actions with bounded concurrency. Transient
//! failures go back to the outbox with a jittered exponential delay (honouring `Retry-After`);
//! permanent ones and exhausted retries are dead; a lead create whose outcome is unknown is
//! quarantined, never repeated. A 412 on a referral patch re-reads the referral and re-plans.
//! Every remote write lands in the audit log with its request id.
//!
//! [`crate::sync::plan`] decides what becomes an outbox row (and the stored action format);
//! [`executor`] is the one executor: it takes due rows (answers first) under one `[sync] concurrency`,
//! claims and records every kind the same way. One file per action kind, each with one entry
//! point `execute(&Executor, ..., row, payload) -> ActionOutcome`: [`create_lead`],
//! [`patch_referral`], [`patch_opportunity`], [`adopt_link`] and [`answer_referral`]
//! (accepts and declines), [`aws_accept`] and [`aws_decline`] (answers to AWS engagement
//! invitations, spec §8). A new kind is one file here and one variant of
//! [`crate::sync::reconcile::Action`] (see `lib.rs`).

mod adopt_link;
pub(crate) mod answer_referral;
pub(crate) mod aws_accept;
mod aws_decline;
mod create_lead;
pub(crate) mod executor;
mod patch_opportunity;
mod patch_referral;

use std::time::Duration;

use serde::Serialize;

use crate::store::outbox::{ActionOutcome, Kinds};
use crate::store::StoreError;
use crate::sync::CycleContext;

pub(crate) use executor::{Executor, SendSettings};

/// Executes due actions with the cycle's executor (see [`Executor::run`]).
pub(crate) async fn push_due(
    ctx: &CycleContext,
    cycle_id: &str,
    kinds: Kinds,
) -> Result<PushStats, StoreError> {
    Executor::of(ctx, cycle_id).run(kinds).await
}

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
pub struct PushStats {
    pub done: u64,
    pub retried: u64,
    pub(crate) dead: u64,
    pub(crate) quarantined: u64,
    pub(crate) superseded: u64,
}

impl PushStats {
    /// Counts one recorded outcome.
    pub(crate) fn count(&mut self, outcome: &ActionOutcome) {
        match outcome {
            ActionOutcome::Done { .. } => self.done += 1,
            ActionOutcome::Retry { .. } => self.retried += 1,
            ActionOutcome::Dead { .. } => self.dead += 1,
            ActionOutcome::Quarantined { .. } => self.quarantined += 1,
            ActionOutcome::Superseded { .. } => self.superseded += 1,
        }
    }

    pub(crate) fn add(&mut self, o: PushStats) {
        self.done += o.done;
        self.retried += o.retried;
        self.dead += o.dead;
        self.quarantined += o.quarantined;
        self.superseded += o.superseded;
    }
}

#[cfg(test)]
mod tests {
    use super::executor::retry_at;
    use super::*;
    use crate::microsoft::PatchOp;
    use crate::store::google::BaseUpdate;
    use crate::store::outbox::{OutboxRow, State};
    use crate::sync::plan::{decode, encode};
    use crate::sync::reconcile::Action;
    use chrono::Utc;
    use serde_json::{json, Value};

    fn row(kind: &str, target: Option<&str>, payload: Value) -> OutboxRow {
        OutboxRow {
            id: 7,
            referral_id: "r-1".into(),
            kind: kind.into(),
            target: target.map(str::to_string),
            payload,
            state: State::Pending,
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
            Action::AdoptLink {
                name: "partners/1/leads/2".into(),
            },
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
