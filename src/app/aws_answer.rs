//! `accept engi-…` and `decline engi-… --reason` (spec §8): an answer to an AWS engagement
//! invitation, queued in the outbox like every remote write (the accept with its `ClientToken`
//! generated and stored now, before any send) and sent by the one executor: by this process
//! when it can take the worker lock, else by the running daemon (one process holds the
//! 1-write-a-second limit). `accept` waits up to 60 s for the AWS task: exit 0 on `COMPLETE`
//! (or when the invitation already reads `ACCEPTED`), 1 on `FAILED` (with `ReasonCode` and
//! `Message`) and 1 when it is still running then, saying the daemon goes on following it.
//! A decline reason AWS would refuse (over 80 characters, a control character, outside the
//! Basic Multilingual Plane) is a usage error (2), nothing sent. `--dry-run` reads the
//! invitation and prints the request it would send.

use std::time::Duration;

use chrono::Utc;

use super::commands::{Outcome, Printed};
use super::{App, AppError};
use crate::config::Config;
use crate::store::outbox::{self, Kinds, OutboxRow};
use crate::store::{answers, Store};
use crate::sync::answer::Decision;
use crate::sync::aws_answer::{decide, encode, AwsAnswer, AwsDecision, Verdict};
use crate::sync::push::answer_referral::{AnswerOutcome, AnswerResult};

/// How long the command waits for the answer (for an accept: for its AWS task).
const WAIT: Duration = Duration::from_secs(60);
/// How often the command looks at a row another process (the daemon) sends.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// The AWS answer a command's decision makes; a reason AWS would refuse is a usage error.
fn aws_decision(decision: Decision) -> Result<AwsDecision, AppError> {
    match decision {
        Decision::Accept => Ok(AwsDecision::accept()),
        Decision::Decline { reason } => match crate::config::check_rejection_reason(&reason) {
            Ok(()) => Ok(AwsDecision::Decline { reason }),
            Err(e) => Err(AppError::Usage(format!(
                "--reason {e} (AWS's RejectionReason: 1 to 80 printable characters); nothing was sent"
            ))),
        },
    }
}

pub(crate) async fn run(
    config: Config,
    invitation_id: &str,
    decision: Decision,
    note: Option<String>,
    dry_run: bool,
) -> Outcome {
    let decision = aws_decision(decision)?;
    if config.aws.is_none() {
        return Err(AppError::Config(format!(
            "{invitation_id} is an AWS engagement invitation, and the configuration has no [aws] section"
        )));
    }
    if dry_run {
        return preview(config, invitation_id, &decision).await;
    }
    let mut app = App::build(config)?;
    let answer = AwsAnswer {
        decision,
        note,
        actor: super::answer::actor(),
    };
    let (id, kind, payload) = (
        invitation_id.to_string(),
        answer.decision.kind(),
        encode(&answer),
    );
    let (row, _added) = app
        .store
        .call(move |c| answers::enqueue_aws(c, &id, kind, &payload, Utc::now()))
        .await?;
    let accept = matches!(answer.decision, AwsDecision::Accept { .. });
    let seen = match app.become_worker() {
        Ok(()) => send_and_follow(&app, row, accept).await?,
        Err(AppError::Busy(_)) => {
            tracing::info!(
                action = row,
                "a daemon runs on this database; waiting for it to send the answer"
            );
            watch(&app.store, row, accept).await
        }
        Err(e) => return Err(e),
    };
    report(invitation_id, &answer, row, seen)
}

/// Whether the command stops waiting at this look: the row is closed, or (a decline) its
/// first attempt is recorded; an accept waits for its task.
fn settled(row: &OutboxRow, accept: bool) -> bool {
    !row.state.is_open() || (!accept && row.result.is_some())
}

/// This process is the worker: its one executor sends the answers queued (this one and any
/// left by an earlier command) and follows the accept's task at each poll, for up to 60 s.
async fn send_and_follow(app: &App, row: i64, accept: bool) -> Result<Option<OutboxRow>, AppError> {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        crate::sync::push::push_due(&app.cycle, "accept-decline", Kinds::Answers).await?;
        let current = app.store.call(move |c| outbox::get(c, row)).await?;
        let Some(current) = current else {
            return Ok(None);
        };
        let now = tokio::time::Instant::now();
        if settled(&current, accept) || now >= until {
            return Ok(Some(current));
        }
        let due = (current.next_attempt_at - Utc::now())
            .to_std()
            .unwrap_or_default()
            .max(Duration::from_millis(50));
        tokio::time::sleep_until((now + due).min(until)).await;
    }
}

/// Another process (the daemon) sends it: the row is looked at until it settles, or 60 s.
async fn watch(store: &Store, row: i64, accept: bool) -> Option<OutboxRow> {
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        let current = store.call(move |c| outbox::get(c, row)).await.ok()??;
        if settled(&current, accept) || tokio::time::Instant::now() >= until {
            return Some(current);
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Exit 0 only when the invitation is now answered as asked.
fn report(id: &str, asked: &AwsAnswer, row: i64, seen: Option<OutboxRow>) -> Outcome {
    let result = seen
        .as_ref()
        .and_then(|r| r.result.as_deref())
        .and_then(|r| serde_json::from_str::<AnswerResult>(r).ok());
    let Some(r) = result else {
        return Err(AppError::Refused(format!(
            "the answer is queued (action {row}) but was not sent within {} s; `cosell-sync outbox list` shows it",
            WAIT.as_secs()
        )));
    };
    if let (AnswerOutcome::Queued, Some(task)) =
        (r.outcome, r.task.as_ref().and_then(|t| t.running()))
    {
        return Err(AppError::Refused(format!(
            "the accept task {task} of invitation {id} is still running after {} s; the daemon (`cosell-sync run`) goes on following it (action {row}; `cosell-sync status --referral {id}` shows the outcome)",
            WAIT.as_secs()
        )));
    }
    let what = format!("invitation {id}");
    super::answer::report_result(&what, asked.decision.verb(), row, r)
}

/// `--dry-run`: the invitation read now (a read changes nothing), the decision, and the
/// request it would send. Nothing is queued and nothing is written.
async fn preview(mut config: Config, id: &str, decision: &AwsDecision) -> Outcome {
    config.daemon.dry_run = true;
    let app = App::build(config)?;
    let aws = app.cycle.aws.as_ref().ok_or_else(|| {
        AppError::Config("[aws]: no credentials were found (see `cosell-sync auth check`)".into())
    })?;
    let invitation = aws
        .client
        .get_invitation(id)
        .await
        .map_err(|e| AppError::Refused(format!("cannot read invitation {id}: {e}")))?
        .invitation;
    let catalog = app.config.aws.as_ref().map_or("AWS", |a| a.catalog());
    let (operation, body) = match decision {
        AwsDecision::Accept { client_token } => (
            "StartEngagementByAcceptingInvitationTask",
            serde_json::json!({"Catalog": catalog, "ClientToken": client_token, "Identifier": id}),
        ),
        AwsDecision::Decline { reason } => (
            "RejectEngagementInvitation",
            serde_json::json!({"Catalog": catalog, "Identifier": id, "RejectionReason": reason}),
        ),
    };
    match decide(&invitation, decision) {
        Verdict::Send => Ok(Printed::ok(format!(
            "DRY RUN: would send to AWS Partner Central\nPOST /\nX-Amz-Target: AWSPartnerCentralSelling.{operation}\nContent-Type: application/x-amz-json-1.0\n\n{}\n\nNothing was sent and nothing was changed.\n",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        ))),
        Verdict::Already(m) => Ok(Printed::ok(format!(
            "DRY RUN: {m}; nothing would be sent.\n"
        ))),
        Verdict::Refuse(m) => Err(AppError::Refused(m)),
    }
}
