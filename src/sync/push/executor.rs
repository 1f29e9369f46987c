//! The one executor of outbox actions: takes due rows under `[sync] concurrency` (answers
//! first), claims each right before its request ([`Claim`], the one claim), hands it to its
//! kind's file, and records every outcome through one path ([`Executor::record`]): the state,
//! the retry time, the error or result, the audit row and what a success changes, in one
//! transaction. Dead and quarantined rows are what the health alerts read, so that path is
//! the alert path too. Retry times come from one place ([`Executor::failure`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use rusqlite::{Connection, Transaction};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{adopt_link, answer_referral, aws_accept, aws_decline, create_lead};
use super::{patch_opportunity, patch_referral};
use super::{PushStats, Schedule};
use crate::http::{ApiError, RetryPolicy};
use crate::microsoft::model::ParsedReferral;
use crate::microsoft::MicrosoftClient;
use crate::store::outbox::{self, ActionOutcome, AuditEntry, Kinds, OutboxRow, SendClaim};
use crate::store::{Store, StoreError};
use crate::sync::plan::decode;
use crate::sync::pull::refresh_referral;
use crate::sync::reconcile::Action;
use crate::sync::{AwsSide, CycleContext, GoogleSide};
use crate::wake::AnswerWake;

/// How sending goes, whatever the action kind: the `[sync]` retry schedule and concurrency,
/// the `[alerts]` response window (the deadline an answer is checked against) and
/// `[daemon] dry_run`. Built once by the app.
#[derive(Debug, Clone)]
pub struct SendSettings {
    pub(crate) schedule: Schedule,
    /// `[sync] concurrency`: requests on the wire at once (1 without the Google side).
    pub(crate) concurrency: usize,
    /// Log each write instead of sending it.
    pub(crate) dry_run: bool,
    /// `[alerts] response_window`: the deadline when Microsoft gives none.
    pub response_window: chrono::Duration,
    /// Rung when an answer is queued; told of every recorded row (the page waits on it).
    pub(crate) answers: AnswerWake,
    /// The `concurrency` send slots every run of the executor shares (the deadline lane's and
    /// the answer sender's): a slot is held from the take to the record.
    pub(crate) slots: Arc<Semaphore>,
    /// The rows this process runs now, whichever run took them. Another run (the answer
    /// sender beside a cycle's) must not take one of them again: that would count a newer
    /// attempt, the first taker's claim would lose, and while each one's pre-send read (an
    /// AWS answer's `GetEngagementInvitation`, under the read quota) waited, two runs took
    /// the same answer in turn and neither ever sent it.
    pub(crate) running: Arc<std::sync::Mutex<Vec<i64>>>,
}

impl SendSettings {
    pub(crate) fn new(
        schedule: Schedule,
        concurrency: usize,
        dry_run: bool,
        response_window: chrono::Duration,
    ) -> SendSettings {
        let concurrency = concurrency.max(1);
        SendSettings {
            schedule,
            concurrency,
            dry_run,
            response_window,
            answers: AnswerWake::default(),
            slots: Arc::new(Semaphore::new(concurrency)),
            running: Arc::default(),
        }
    }
}

/// What sending needs, borrowed from the cycle context: the store, each client with its own
/// retry policy, the send settings, `stop` and the id audit rows carry.
#[derive(Clone, Copy)]
pub(crate) struct Executor<'a> {
    pub(crate) store: &'a Store,
    pub(crate) microsoft: &'a MicrosoftClient,
    /// `[microsoft.retry]`: every Microsoft call an action makes (re-reads, patches, answers).
    pub(crate) microsoft_retry: &'a RetryPolicy,
    /// `None` without `[google]`: then only answers are taken.
    pub(crate) google: Option<&'a GoogleSide>,
    /// `None` without `[aws]`: an answer to an invitation then fails, saying so.
    pub(crate) aws: Option<&'a AwsSide>,
    pub(crate) send: &'a SendSettings,
    /// SIGTERM: no new write starts (see [`Claim`]).
    pub(crate) stop: &'a CancellationToken,
    /// The cycle (or command) this run belongs to, for the audit log.
    pub(crate) cycle_id: &'a str,
}

/// What one attempt leaves on its row, recorded by [`Executor::record`].
#[derive(Debug, Clone)]
pub(crate) struct Settled {
    pub(crate) outcome: ActionOutcome,
    /// A kind's own result text, kept whatever the outcome (an answer's outcome for the
    /// person who asked).
    pub(crate) result: Option<String>,
    pub(crate) request_id: Option<String>,
    pub(crate) audit: Option<AuditEntry>,
}

impl From<ActionOutcome> for Settled {
    fn from(outcome: ActionOutcome) -> Settled {
        Settled {
            outcome,
            result: None,
            request_id: None,
            audit: None,
        }
    }
}

impl Settled {
    /// An outcome with the audit row of its request.
    pub(crate) fn audited(outcome: ActionOutcome, audit: AuditEntry) -> Settled {
        Settled {
            audit: Some(audit),
            ..Settled::from(outcome)
        }
    }

    /// A request that went through: the row keeps its request id too.
    pub(crate) fn sent(outcome: ActionOutcome, audit: AuditEntry) -> Settled {
        Settled {
            request_id: audit.request_id.clone(),
            ..Settled::audited(outcome, audit)
        }
    }
}

impl Settled {
    /// Writes the end of attempt `taken` (the row's id and the attempt its taker counted:
    /// state, retry time, error, result) and its audit row, inside the caller's transaction:
    /// what [`Executor::record_with`] commits, and what a store call that decides not to send
    /// (a guard, a check) writes itself. A taker whose row was taken again since writes
    /// nothing (two runs of the executor may take one due answer; the latest one owns it).
    pub(crate) fn write(
        &self,
        c: &Connection,
        taken: (i64, u32),
        cycle_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let (result, request_id) = (self.result.as_deref(), self.request_id.as_deref());
        if !outbox::finish(c, taken, &self.outcome, result, request_id, now)? {
            tracing::info!(
                action_id = taken.0,
                "taken again by a newer attempt; not recorded"
            );
            return Ok(());
        }
        if let Some(entry) = &self.audit {
            // An answer's audit row names the person who asked, not a sync cycle (its 412s
            // are not a write-back's: see `outbox::count_412_in_cycle`).
            let cycle = entry.actor.is_none().then_some(cycle_id);
            outbox::audit(c, entry, cycle, now)?;
        }
        Ok(())
    }
}

/// The log line of a recorded outcome (the ones a person may have to act on).
pub(crate) fn log(id: i64, outcome: &ActionOutcome) {
    match outcome {
        ActionOutcome::Dead { error } => {
            tracing::error!(action_id = id, error, "write failed for good (dead)")
        }
        ActionOutcome::Quarantined { error } => {
            tracing::error!(action_id = id, error, "lead create quarantined")
        }
        ActionOutcome::Retry { error, at } => {
            tracing::warn!(action_id = id, error, retry_at = %at, "write will be retried")
        }
        _ => {}
    }
}

/// A row this process runs ([`SendSettings::running`]), unmarked when its run ends or is
/// dropped (a stop, a store error of another row).
struct RunningMark {
    ids: Arc<std::sync::Mutex<Vec<i64>>>,
    id: i64,
}

impl Drop for RunningMark {
    fn drop(&mut self) {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.retain(|t| *t != self.id);
    }
}

/// What a success changes besides its row, in the row's transaction.
pub(crate) type Also =
    Box<dyn FnOnce(&Transaction, DateTime<Utc>) -> Result<(), StoreError> + Send>;

impl<'a> Executor<'a> {
    /// The executor of one cycle (or one command's run).
    pub(crate) fn of(ctx: &'a CycleContext, cycle_id: &'a str) -> Executor<'a> {
        Executor {
            store: &ctx.store,
            microsoft: &ctx.microsoft,
            microsoft_retry: &ctx.microsoft_retry,
            google: ctx.google.as_ref(),
            aws: ctx.aws.as_ref(),
            send: &ctx.send,
            stop: &ctx.stop,
            cycle_id,
        }
    }

    /// Executes due actions until none is due, or until `stop` (SIGTERM): then no new action
    /// starts and the running ones finish. A row is taken only when a send slot is free to
    /// run it (the slots are shared by every run: `[sync] concurrency` holds whoever woke
    /// the executor), and claimed only immediately before its request is sent, so a crash or
    /// a stop leaves at most `concurrency` writes in doubt. `kinds` narrows what it takes (the
    /// `accept`/`decline` command and the page's wake-up send answers only); without the
    /// Google side only answers can be sent (every other kind writes to Google or follows a
    /// Google write).
    pub(crate) async fn run(&self, kinds: Kinds) -> Result<PushStats, StoreError> {
        let kinds = if self.google.is_some() {
            kinds
        } else {
            Kinds::Answers
        };
        let concurrency = match self.google {
            Some(_) => self.send.concurrency,
            None => 1,
        };
        let mut stats = PushStats::default();
        let mut running = futures_util::stream::FuturesUnordered::new();
        loop {
            while running.len() < concurrency && !self.stop.is_cancelled() {
                // Nothing of ours runs: wait for a slot another run holds; else take one only
                // when free (a running send finishing frees ours).
                let slot = if running.is_empty() {
                    let slots = self.send.slots.clone();
                    tokio::select! {
                        slot = slots.acquire_owned() => slot.ok(),
                        _ = self.stop.cancelled() => None,
                    }
                } else {
                    self.send.slots.clone().try_acquire_owned().ok()
                };
                let Some(slot) = slot else {
                    break;
                };
                // Excluded and marked under the connection's lock, so no other run's take falls
                // between this one's take and its mark.
                let ids = self.send.running.clone();
                let Some(row) = self
                    .store
                    .call_short(move |c| {
                        let mut ids = ids.lock().unwrap_or_else(|p| p.into_inner());
                        let row = outbox::take_due_of(c, Utc::now(), &ids, kinds)?;
                        ids.extend(row.as_ref().map(|r| r.id));
                        Ok(row)
                    })
                    .await?
                else {
                    break;
                };
                let mark = RunningMark {
                    ids: self.send.running.clone(),
                    id: row.id,
                };
                running.push(async move {
                    let outcome = self.execute(row).await;
                    drop(slot);
                    drop(mark);
                    outcome
                });
            }
            let Some(result) = running.next().await else {
                return Ok(stats);
            };
            stats.count(&result?);
        }
    }

    /// Decodes a taken row and hands it to its kind's file (the one entry point each).
    async fn execute(&self, row: OutboxRow) -> Result<ActionOutcome, StoreError> {
        use tracing::Instrument;
        let span = tracing::info_span!("action", id = row.id, kind = %row.kind, referral_id = %row.referral_id);
        async move {
            let action = match decode(&row) {
                Ok(action) => action,
                Err(error) => {
                    // Never guessed at, never silently closed: a person looks at it.
                    let error = format!("the stored action cannot be read: {error}");
                    return self
                        .record(&row, ActionOutcome::Dead { error }.into())
                        .await;
                }
            };
            // An answer decides first, then logs what it would send in a dry run.
            match action {
                Action::AnswerReferral { answer } => {
                    return answer_referral::execute(self, row, answer).await
                }
                Action::AwsAccept { answer } => {
                    return aws_accept::execute(self, row, answer).await
                }
                Action::AwsDecline { answer } => {
                    return aws_decline::execute(self, row, answer).await
                }
                _ => {}
            }
            let Some(google) = self.google else {
                let reason = "the Google side is off".to_string();
                return self
                    .record(&row, ActionOutcome::Superseded { reason }.into())
                    .await;
            };
            // An adoption only reads Google: a dry run does it too (into the throw-away copy).
            if self.send.dry_run && !matches!(action, Action::AdoptLink { .. }) {
                return self.dry_run(&row, &action).await;
            }
            match action {
                Action::CreateLead { lead } => create_lead::execute(self, google, row, lead).await,
                Action::AdoptLink { name } => adopt_link::execute(self, google, row, name).await,
                Action::PatchReferral { ops, base_after } => {
                    patch_referral::execute(self, google, row, ops, base_after).await
                }
                Action::PatchOpportunity {
                    name,
                    body,
                    mask,
                    base_after,
                } => {
                    let patch = patch_opportunity::OpportunityPatch {
                        name,
                        body,
                        mask,
                        base_after,
                    };
                    patch_opportunity::execute(self, google, row, patch).await
                }
                Action::AnswerReferral { .. }
                | Action::AwsAccept { .. }
                | Action::AwsDecline { .. } => unreachable!("answers are sent above"),
            }
        }
        .instrument(span)
        .await
    }

    /// Dry run: logs the write (method, path, body summary) and closes it in the throw-away
    /// copy.
    async fn dry_run(&self, row: &OutboxRow, action: &Action) -> Result<ActionOutcome, StoreError> {
        let (method, path, summary) = match action {
            Action::AdoptLink { name } => ("GET", format!("/v1/{name}"), String::new()),
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
            // Decided and logged by the answer itself.
            Action::AnswerReferral { .. } => ("PATCH", row.referral_id.clone(), String::new()),
            Action::AwsAccept { .. } | Action::AwsDecline { .. } => {
                ("POST", row.referral_id.clone(), String::new())
            }
        };
        tracing::warn!(referral_id = %row.referral_id, method, path = %path, body = %summary, "DRY RUN: would send");
        let reason = "dry run: not sent".to_string();
        self.record(row, ActionOutcome::Superseded { reason }.into())
            .await
    }

    /// The claim of `row` by this taker, to run in a store call right before its request.
    pub(crate) fn claim_of(&self, row: &OutboxRow) -> Claim {
        Claim {
            id: row.id,
            attempts: row.attempts,
            held: false,
            stopping: self.stop.is_cancelled(),
        }
    }

    /// [`Claim::run`] in a store call of its own. `Some(outcome)`: do not send.
    pub(crate) async fn claim(&self, claim: Claim) -> Result<Option<ActionOutcome>, StoreError> {
        self.store.call_short(move |c| claim.run(c)).await
    }

    /// The one record path: the row's new state, retry time, error and result, its audit
    /// row ([`Settled::write`]) and `also` (what the success changes), in one transaction;
    /// then the log line.
    pub(crate) async fn record_with(
        &self,
        row: &OutboxRow,
        settled: Settled,
        also: Also,
    ) -> Result<ActionOutcome, StoreError> {
        let (id, attempts, cycle) = (row.id, row.attempts, self.cycle_id.to_string());
        let outcome = settled.outcome.clone();
        self.store
            .call_short(move |c| {
                let tx = c.transaction()?;
                let now = Utc::now();
                also(&tx, now)?;
                settled.write(&tx, (id, attempts), &cycle, now)?;
                tx.commit()?;
                Ok(())
            })
            .await?;
        log(id, &outcome);
        self.send.answers.recorded();
        Ok(outcome)
    }

    /// [`Executor::record_with`] when nothing else changes.
    pub(crate) async fn record(
        &self,
        row: &OutboxRow,
        settled: Settled,
    ) -> Result<ActionOutcome, StoreError> {
        self.record_with(row, settled, Box::new(|_, _| Ok(())))
            .await
    }

    /// An audit row of an attempt that does not end the action (a 412 before a re-read).
    pub(crate) async fn audit(&self, entry: AuditEntry) -> Result<(), StoreError> {
        let cycle = entry.actor.is_none().then(|| self.cycle_id.to_string());
        self.store
            .call_short(move |c| outbox::audit(c, &entry, cycle.as_deref(), Utc::now()))
            .await
    }

    /// Reads the referral again and stores it ([`refresh_referral`], the one way).
    pub(crate) async fn refresh_referral(
        &self,
        referral_id: &str,
    ) -> Result<Result<ParsedReferral, ApiError>, StoreError> {
        refresh_referral(
            self.store,
            self.microsoft,
            self.microsoft_retry,
            referral_id,
        )
        .await
    }

    /// When attempt `attempts` may be repeated (the schedule, honouring `Retry-After`).
    pub(crate) fn retry_time(&self, attempts: u32, retry_after: Option<Duration>) -> DateTime<Utc> {
        retry_at(Utc::now(), self.send.schedule.delay(attempts, retry_after))
    }

    /// The failure outcome for a call that can be repeated safely: retried while the
    /// schedule allows (transient or authentication errors), else dead.
    pub(crate) fn failure(&self, row: &OutboxRow, e: &ApiError) -> ActionOutcome {
        let error = e.to_string();
        let repeatable = e.is_transient() || e.is_auth();
        if repeatable && row.attempts < self.send.schedule.max_attempts {
            ActionOutcome::Retry {
                at: self.retry_time(row.attempts, e.retry_after()),
                error,
            }
        } else if repeatable {
            ActionOutcome::Dead {
                error: format!("gave up after {} attempts: {error}", row.attempts),
            }
        } else {
            ActionOutcome::Dead { error }
        }
    }
}

/// The one claim: moves a taken row `in_flight` immediately before its request (after the
/// token and the rate limiter), a compare-and-swap on the attempt this taker counted, so a
/// write is sent at most once whoever took it. Runs inside a store call (a send whose checks
/// read the database claims in the same call).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claim {
    id: i64,
    attempts: u32,
    /// This taker holds the row `in_flight` already (an answer decided again after a 412).
    pub(crate) held: bool,
    /// Shutdown began: give the row back instead.
    stopping: bool,
}

impl Claim {
    /// The row's id and the attempt this taker counted.
    pub(crate) fn taken(&self) -> (i64, u32) {
        (self.id, self.attempts)
    }

    /// `Some(outcome)`: do not send (shutdown began: given back, due again at once and the
    /// attempt not counted; or the row was dropped, taken again or closed meanwhile: nothing
    /// is recorded on a row this taker no longer owns).
    pub(crate) fn run(self, c: &Connection) -> Result<Option<ActionOutcome>, StoreError> {
        if self.stopping && !self.held {
            outbox::release(c, self.id, Utc::now())?;
            return Ok(Some(ActionOutcome::Retry {
                at: Utc::now(),
                error: "shutdown began before this write was sent".into(),
            }));
        }
        let claim = outbox::mark_attempt_sending(c, self.id, self.attempts, self.held, Utc::now())?;
        let reason = match claim {
            SendClaim::Won => return Ok(None),
            SendClaim::Dropped => "no longer pending (dropped by the operator); not sent",
            SendClaim::TakenByAnother => "taken again by a newer attempt, which sends it; not sent",
            SendClaim::Closed => "closed meanwhile; not sent",
        };
        tracing::info!(reason, "action not sent");
        Ok(Some(ActionOutcome::Superseded {
            reason: reason.into(),
        }))
    }
}

/// `now + delay` that cannot overflow, whatever number a server or the config supplied.
pub(crate) fn retry_at(now: DateTime<Utc>, delay: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The audit row of a failed request.
pub(crate) fn failed_audit(
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
        actor: None,
    }
}
