//! `accept` and `decline` (spec §4): the answer is queued in the outbox like every remote
//! write; then this process sends it with the one executor when it can take the worker lock
//! (no daemon runs on the database), or waits for the running daemon to send it: the daemon
//! sees it queued and its answer sender ([`send_queued`]) sends it without a cycle. Either way the person
//! gets the outcome: exit 0 when the referral is now as asked (also when it already was),
//! 1 when it cannot be, or is not sent yet. `--dry-run` decides on a throw-away copy of the
//! database and prints the PATCH it would send.

use std::time::Duration;

use chrono::Utc;

use super::commands::{Outcome, Printed};
use super::{App, AppError};
use crate::config::Config;
use crate::store::outbox::Kinds;
use crate::store::{answers, referrals};
use crate::sync::answer::{decide, encode, patch_body, Answer, Decision, Verdict};
use crate::sync::push::answer_referral::{wait_for_outcome, AnswerOutcome, AnswerResult};

/// How long the command waits for a running daemon to send the answer.
const WAIT_FOR_DAEMON: Duration = Duration::from_secs(60);

/// `cli:USER`: who asked, for the audit log.
pub(super) fn actor() -> String {
    match std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        Ok(user) if !user.trim().is_empty() => format!("cli:{}", user.trim()),
        _ => "cli".into(),
    }
}

pub(crate) async fn run(
    config: Config,
    referral_id: &str,
    decision: Decision,
    note: Option<String>,
    dry_run: bool,
) -> Outcome {
    if crate::sync::aws_answer::is_invitation_id(referral_id) {
        // An AWS engagement invitation (spec §8): same outbox, same executor.
        return super::aws_answer::run(config, referral_id, decision, note, dry_run).await;
    }
    if dry_run {
        return preview(config, referral_id, &decision).await;
    }
    let mut app = App::build(config)?;
    let answer = Answer {
        decision,
        note,
        actor: actor(),
    };
    let (id, payload) = (referral_id.to_string(), encode(&answer));
    let (row, _added) = app
        .store
        .call(move |c| answers::enqueue(c, &id, &payload, Utc::now()))
        .await?;
    let outcome = match app.become_worker() {
        Ok(()) => {
            // This process is the worker: its one executor sends the answers queued (this
            // one and any left by an earlier command), never the lead creates of the queue.
            crate::sync::push::push_due(&app.cycle, "accept-decline", Kinds::Answers).await?;
            let recorded = Some(&app.cycle.send.answers);
            wait_for_outcome(&app.store, row, Duration::from_secs(1), recorded).await
        }
        Err(AppError::Busy(_)) => {
            tracing::info!(
                action = row,
                "a daemon runs on this database; waiting for it to send the answer"
            );
            // Sent by another process: no signal reaches this one; the row is looked at.
            wait_for_outcome(&app.store, row, WAIT_FOR_DAEMON, None).await
        }
        Err(e) => return Err(e),
    };
    report(referral_id, &answer, row, outcome)
}

/// How often the daemon looks for answers queued by the command line in another process
/// (which cannot ring its doorbell); the action page, in the daemon, rings it at once.
const POLL_QUEUED: Duration = Duration::from_millis(250);

/// The daemon's (and the demo's) answer sender: an answer queued by the page (which rings
/// [`crate::wake::AnswerWake`]) or by the command line in another process (seen within a
/// quarter second) is sent by the one executor, answers only, under the same `[sync]
/// concurrency` slots as the deadline lane's sends: no cycle, no `cycle_runs` row, no alert
/// evaluation (those keep their schedule). `app` gives the current app (SIGHUP replaces it).
pub(crate) async fn send_queued(
    app: impl Fn() -> std::sync::Arc<App>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let current = app();
        tokio::select! {
            _ = current.cycle.send.answers.rung() => {}
            _ = tokio::time::sleep(POLL_QUEUED) => {
                let due = current.store.call(|c| answers::any_due(c, Utc::now())).await;
                if !due.unwrap_or(false) {
                    continue;
                }
            }
            _ = stop.cancelled() => return,
        }
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = crate::sync::push::push_due(&current.cycle, "answers", Kinds::Answers).await
        {
            tracing::error!(error = %e, "queued answers not sent; the next look tries again");
        }
    }
}

/// Exit 0 only when the referral is now in the asked state.
fn report(referral_id: &str, asked: &Answer, row: i64, outcome: Option<AnswerResult>) -> Outcome {
    let Some(r) = outcome else {
        return Err(AppError::Refused(format!(
            "the answer is queued (action {row}) but the running daemon has not sent it within {} s; `cosell-sync outbox list` shows it",
            WAIT_FOR_DAEMON.as_secs()
        )));
    };
    report_result(
        &format!("referral {referral_id}"),
        asked.decision.verb(),
        row,
        r,
    )
}

/// What the person is told of an answer's recorded outcome (a referral's or, `what` naming
/// it, an AWS invitation's): exit 0 only when it is now as `asked` (`accept`, `decline`).
pub(super) fn report_result(what: &str, asked: &str, row: i64, r: AnswerResult) -> Outcome {
    let same = r.decision == asked;
    match r.outcome {
        AnswerOutcome::Sent if same => Ok(Printed::ok(format!(
            "{}\n(action {row}, by {}).\n",
            r.message, r.actor
        ))),
        AnswerOutcome::Already if same => {
            Ok(Printed::ok(format!("{}; nothing was sent.\n", r.message)))
        }
        AnswerOutcome::Sent | AnswerOutcome::Already => Err(AppError::Refused(format!(
            "{what} was {} by {} meanwhile: {}",
            r.decision_past(),
            r.actor,
            r.message
        ))),
        AnswerOutcome::Queued => Err(AppError::Refused(format!(
            "not sent yet: {} (action {row}; `cosell-sync outbox list`)",
            r.message
        ))),
        AnswerOutcome::Refused => Err(AppError::Refused(r.message)),
    }
}

/// `--dry-run`: the decision and the PATCH, on a throw-away copy of the database (a referral
/// it does not hold yet is read from Partner Center, which changes nothing there).
async fn preview(mut config: Config, referral_id: &str, decision: &Decision) -> Outcome {
    config.daemon.dry_run = true;
    let app = App::build(config)?;
    let id = referral_id.to_string();
    let stored = app
        .store
        .call(move |c| referrals::for_patch(c, &id))
        .await?
        .and_then(|s| crate::microsoft::model::ParsedReferral::from_value(s.raw).ok());
    let current = match stored {
        Some(r) => r,
        None => app
            .cycle
            .microsoft
            .get_referral(referral_id)
            .await
            .map_err(|e| AppError::Refused(format!("cannot read referral {referral_id}: {e}")))?,
    };
    let raw = serde_json::from_str(&current.raw).unwrap_or_default();
    let window = app.config.alerts.response_window.as_chrono();
    match decide(&current.referral, &raw, decision, window, Utc::now()) {
        Verdict::Send(_) => {
            let body = serde_json::to_string_pretty(&patch_body(decision)).unwrap_or_default();
            Ok(Printed::ok(format!(
                "DRY RUN: would send to Partner Center\nPATCH {}/{referral_id}\nIf-Match: {}\nContent-Type: application/json\n\n{body}\n\nNothing was sent and nothing was changed.\n",
                crate::microsoft::REFERRALS_PATH,
                current.referral.e_tag.as_deref().unwrap_or("(none: read first)")
            )))
        }
        Verdict::Already(m) => Ok(Printed::ok(format!(
            "DRY RUN: {m}; nothing would be sent.\n"
        ))),
        Verdict::Refuse(m) => Err(AppError::Refused(m)),
    }
}
