//! Answering an AWS engagement invitation (spec §8), the pure part: the answer as the outbox
//! stores it (typed, versioned JSON, with the accept's `ClientToken` generated and stored
//! before the first send), the decision taken on a fresh read of the invitation (AWS has no
//! eTag: only a `PENDING` invitation is answered), and the accept task as the row's result
//! keeps it between polls. The executors are [`super::push::aws_accept`] and
//! [`super::push::aws_decline`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::answer::{Answer, Decision};
use crate::aws::model::{Invitation, InvitationStatus};
use crate::store::outbox::{AWS_ACCEPT, AWS_DECLINE};
use crate::store::{answers, StoreError};
use crate::timefmt::human;

/// An invitation id (`engi-…`, or its ARN): such an id is answered in AWS Partner Central.
pub(crate) fn is_invitation_id(id: &str) -> bool {
    id.starts_with("engi-") || (id.starts_with("arn:") && id.contains("engagement-invitation"))
}

/// Queues `answer` for `id`, whichever cloud answers it: an invitation id as an AWS answer
/// (an accept gets its `ClientToken` now), anything else as a Partner Center answer. The one
/// queueing of the producers (the action page, the inbox, the rules and the commands): one
/// open answer per id, sent by the one executor. Returns the row id and whether this call
/// added it. A decline reason AWS would refuse is still queued: its row cannot be read and
/// goes dead, naming why (`[aws]` makes such a configured reason a config error first).
pub(crate) fn enqueue(
    conn: &rusqlite::Connection,
    id: &str,
    answer: &Answer,
    now: DateTime<Utc>,
) -> Result<(i64, bool), StoreError> {
    if !is_invitation_id(id) {
        return answers::enqueue(conn, id, &super::answer::encode(answer), now);
    }
    let aws = AwsAnswer {
        decision: match &answer.decision {
            Decision::Accept => AwsDecision::accept(),
            Decision::Decline { reason } => AwsDecision::Decline {
                reason: reason.clone(),
            },
        },
        note: answer.note.clone(),
        actor: answer.actor.clone(),
    };
    answers::enqueue_aws(conn, id, aws.decision.kind(), &encode(&aws), now)
}

/// Accept (with the idempotency key of its task start) or decline with a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum AwsDecision {
    /// `StartEngagementByAcceptingInvitationTask`; `client_token` is stored when the answer
    /// is queued, so every retry of the start (and a restart) sends the same one.
    #[serde(rename = "aws_accept")]
    Accept { client_token: String },
    /// `RejectEngagementInvitation` with a `RejectionReason` (1–80 characters, checked when
    /// queued).
    #[serde(rename = "aws_decline")]
    Decline { reason: String },
}

impl AwsDecision {
    /// A new accept with a fresh `ClientToken`.
    pub(crate) fn accept() -> AwsDecision {
        AwsDecision::Accept {
            client_token: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The outbox kind of this decision.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            AwsDecision::Accept { .. } => AWS_ACCEPT,
            AwsDecision::Decline { .. } => AWS_DECLINE,
        }
    }

    /// `accept` or `decline`, as the command and the page name them.
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            AwsDecision::Accept { .. } => "accept",
            AwsDecision::Decline { .. } => "decline",
        }
    }
}

/// An answer to an invitation as queued: the same shape as a referral's (what, an optional
/// note kept in the audit log, who asked), with AWS's decisions.
pub(crate) type AwsAnswer = Answer<AwsDecision>;

/// The stored format's version: `{"v": 1, "action": "aws_accept", "client_token": ...}`.
const FORMAT: u64 = 1;

pub(crate) fn encode(answer: &AwsAnswer) -> Value {
    let mut value = serde_json::to_value(answer).expect("an answer serializes");
    if let Some(o) = value.as_object_mut() {
        o.insert("v".into(), FORMAT.into());
    }
    value
}

/// Why a stored AWS answer cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the AWS answer payload is not a JSON object")]
    NotAnObject,
    #[error("AWS answer format {0:?} is not the one this cosell-sync reads ({FORMAT})", FORMAT = FORMAT)]
    Format(Option<Value>),
    #[error("the row is a {kind} but holds an {holds}")]
    KindMismatch { kind: String, holds: &'static str },
    /// The fields do not make an answer: serde's words.
    #[error("{0}")]
    Fields(String),
    #[error("an accept without a ClientToken")]
    NoClientToken,
    #[error("RejectionReason {0}")]
    Reason(#[from] crate::config::BadRejectionReason),
}

/// The answer a row of `kind` holds; a row that cannot be read is an error that says why
/// (never a guessed write).
pub(crate) fn decode(kind: &str, payload: &Value) -> Result<AwsAnswer, DecodeError> {
    let mut payload = payload.clone();
    let Some(o) = payload.as_object_mut() else {
        return Err(DecodeError::NotAnObject);
    };
    match o.remove("v") {
        Some(v) if v == FORMAT => {}
        other => return Err(DecodeError::Format(other)),
    }
    let answer: AwsAnswer =
        serde_json::from_value(payload).map_err(|e| DecodeError::Fields(e.to_string()))?;
    if answer.decision.kind() != kind {
        return Err(DecodeError::KindMismatch {
            kind: kind.to_string(),
            holds: answer.decision.kind(),
        });
    }
    match &answer.decision {
        AwsDecision::Accept { client_token } if client_token.trim().is_empty() => {
            return Err(DecodeError::NoClientToken)
        }
        AwsDecision::Decline { reason } => crate::config::check_rejection_reason(reason)?,
        AwsDecision::Accept { .. } => {}
    }
    Ok(answer)
}

/// What to do with an answer, given the invitation as AWS has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `PENDING`: send it.
    Send,
    /// Already answered this way (in the console, or by an earlier try): nothing to write.
    Already(String),
    /// Answered the other way, expired, or unreadable: it cannot be answered so.
    Refuse(String),
}

/// Only a `PENDING` invitation is answered; anything else is recorded as how it was
/// answered (AWS's counterpart of a 412).
pub(crate) fn decide(invitation: &Invitation, decision: &AwsDecision) -> Verdict {
    let id = &invitation.id;
    let reason = invitation
        .rejection_reason
        .as_deref()
        .map(|r| format!(" (reason: {r})"))
        .unwrap_or_default();
    match (&invitation.status, decision) {
        (Some(InvitationStatus::Pending), _) => Verdict::Send,
        (Some(InvitationStatus::Accepted), AwsDecision::Accept { .. }) => Verdict::Already(
            format!("invitation {id} was already accepted in AWS Partner Central"),
        ),
        (Some(InvitationStatus::Rejected), AwsDecision::Decline { .. }) => Verdict::Already(
            format!("invitation {id} was already declined in AWS Partner Central{reason}"),
        ),
        (Some(InvitationStatus::Accepted), AwsDecision::Decline { .. }) => Verdict::Refuse(
            format!("invitation {id} was answered the other way: accepted in AWS Partner Central"),
        ),
        (Some(InvitationStatus::Rejected), AwsDecision::Accept { .. }) => Verdict::Refuse(format!(
            "invitation {id} was answered the other way: declined in AWS Partner Central{reason}"
        )),
        (Some(InvitationStatus::Expired), _) => {
            let when = invitation
                .expiration_date
                .map(|at| format!(" on {}", human(at)))
                .unwrap_or_default();
            Verdict::Refuse(format!(
                "invitation {id} expired{when}: nobody accepted it before its ExpirationDate"
            ))
        }
        (Some(InvitationStatus::Other(s)), _) => {
            Verdict::Refuse(format!("invitation {id} is {s}, which cannot be answered"))
        }
        (None, _) => Verdict::Refuse(format!(
            "invitation {id} has no Status; it is not answered blind"
        )),
    }
}

/// The accept task as the row's result keeps it: the `TaskId` stored as soon as the start
/// answers, so a restart follows the same task instead of starting another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub(crate) struct AcceptTask {
    pub(crate) task_id: Option<String>,
    /// When the start answered (the 30-minute bound counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) started_at: Option<DateTime<Utc>>,
    /// `IN_PROGRESS`, `COMPLETE` or `FAILED`, as last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) opportunity_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    /// Tasks of this action that ended `FAILED`: the next start uses a new token.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) failed: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl AcceptTask {
    /// The task to follow: started, not yet ended.
    pub(crate) fn running(&self) -> Option<&str> {
        match self.status.as_deref() {
            Some("COMPLETE" | "FAILED") => None,
            _ => self.task_id.as_deref(),
        }
    }

    /// The `ClientToken` of the next start: the stored one, and after each `FAILED` task a
    /// new one derived from it (itself stored: the count of failures is in the result).
    pub(crate) fn client_token(&self, stored: &str) -> String {
        match self.failed {
            0 => stored.to_string(),
            n => format!("{stored}-retry{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invitation(status: &str) -> Invitation {
        let raw = json!({"Id": "engi-0123456789abc", "Catalog": "AWS", "Status": status,
                         "RejectionReason": "Unable to support"});
        crate::aws::model::parse_invitation(&raw.to_string())
            .unwrap()
            .invitation
    }

    #[test]
    fn only_a_pending_invitation_is_answered() {
        let accept = AwsDecision::accept();
        let decline = AwsDecision::Decline {
            reason: "Other".into(),
        };
        let table = [
            ("PENDING", &accept, "send"),
            ("PENDING", &decline, "send"),
            ("ACCEPTED", &accept, "already"),
            ("REJECTED", &decline, "already"),
            ("ACCEPTED", &decline, "refuse"),
            ("REJECTED", &accept, "refuse"),
            ("EXPIRED", &accept, "refuse"),
            ("ARCHIVED", &decline, "refuse"),
        ];
        for (status, decision, want) in table {
            let got = match decide(&invitation(status), decision) {
                Verdict::Send => "send",
                Verdict::Already(_) => "already",
                Verdict::Refuse(_) => "refuse",
            };
            assert_eq!(got, want, "{status} {decision:?}");
        }
        let Verdict::Refuse(why) = decide(&invitation("REJECTED"), &accept) else {
            panic!("refused")
        };
        assert!(why.contains("Unable to support"), "{why}");
    }

    #[test]
    fn answers_round_trip_and_bad_rows_are_errors() {
        let answer = AwsAnswer {
            decision: AwsDecision::accept(),
            note: Some("see CRM".into()),
            actor: "cli:ana".into(),
        };
        let stored = encode(&answer);
        assert_eq!(stored["action"], AWS_ACCEPT);
        assert!(stored["client_token"]
            .as_str()
            .is_some_and(|t| t.len() >= 32));
        assert_eq!(decode(AWS_ACCEPT, &stored), Ok(answer));
        let long = "x".repeat(81);
        for (kind, bad) in [
            (
                AWS_ACCEPT,
                json!({"v": 2, "action": "aws_accept", "client_token": "t", "actor": "x"}),
            ),
            (
                AWS_DECLINE,
                json!({"v": 1, "action": "aws_accept", "client_token": "t", "actor": "x"}),
            ),
            (
                AWS_ACCEPT,
                json!({"v": 1, "action": "aws_accept", "client_token": " ", "actor": "x"}),
            ),
            (
                AWS_DECLINE,
                json!({"v": 1, "action": "aws_decline", "reason": long, "actor": "x"}),
            ),
            (
                AWS_DECLINE,
                json!({"v": 1, "action": "aws_decline", "reason": "a\u{7}b", "actor": "x"}),
            ),
            (AWS_ACCEPT, json!({"v": 1, "action": "aws_accept"})),
            (AWS_ACCEPT, json!("text")),
        ] {
            assert!(decode(kind, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_changes_only_after_a_failed_task() {
        let mut task = AcceptTask::default();
        assert_eq!(task.client_token("t1"), "t1");
        task.task_id = Some("task-0000000000001".into());
        task.status = Some("IN_PROGRESS".into());
        assert_eq!(task.client_token("t1"), "t1", "a retry of the same start");
        assert_eq!(task.running(), Some("task-0000000000001"));
        task.status = Some("FAILED".into());
        task.failed = 1;
        assert_eq!(task.running(), None);
        assert_eq!(task.client_token("t1"), "t1-retry1");
    }
}
