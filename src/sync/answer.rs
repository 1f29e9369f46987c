//! Accepting or declining a referral, the pure part: the answer as the outbox stores it
//! (typed, versioned JSON), the Partner Center PATCH bodies, and the decision taken on a
//! fresh copy of the referral. The executor is [`super::push::answer_referral`].
//!
//! The bodies are tagged [I] in `partner-apis.md` ("Accept / decline": built from the
//! documented status table, not seen on a real tenant): [`patch_body`] is the one place to
//! change if a tenant answers otherwise.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::microsoft::model::{Direction, Referral, ReferralStatus, ReferralSubstatus};
use crate::microsoft::PatchOp;
use crate::store::outbox::ANSWER_REFERRAL;
use crate::timefmt::human;

/// Accept, or decline with a reason (which becomes `statusReason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub(crate) enum Decision {
    Accept,
    Decline { reason: String },
}

impl Decision {
    /// `accept` or `decline`, as the command and the page name them.
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Decision::Accept => "accept",
            Decision::Decline { .. } => "decline",
        }
    }

    /// `accepted` or `declined`.
    pub(crate) fn past(&self) -> &'static str {
        match self {
            Decision::Accept => "accepted",
            Decision::Decline { .. } => "declined",
        }
    }
}

/// An answer as queued: what, an optional note (kept in the audit log; Partner Center's
/// field for it is not documented), and who asked.
/// Generic over the decision: an AWS invitation's answer is an `Answer<AwsDecision>`
/// (`sync::aws_answer`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer<D = Decision> {
    #[serde(flatten)]
    pub(crate) decision: D,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) note: Option<String>,
    /// `cli:USER`, the SSO header's value, or `link`.
    pub(crate) actor: String,
}

/// The stored format's version: `{"v": 1, "action": "answer_referral", "decision": ...}`.
const FORMAT: u64 = 1;

pub(crate) fn encode(answer: &Answer) -> Value {
    let mut value = serde_json::to_value(answer).expect("an answer serializes");
    if let Some(o) = value.as_object_mut() {
        o.insert("v".into(), FORMAT.into());
        o.insert("action".into(), ANSWER_REFERRAL.into());
    }
    value
}

/// Why a stored answer cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("the answer payload is not a JSON object")]
    NotAnObject,
    /// The `v` the row has (`None`: none).
    #[error("answer format {0:?} is not the one this cosell-sync reads ({FORMAT})", FORMAT = FORMAT)]
    Format(Option<Value>),
    #[error("the row does not hold an answer_referral action")]
    NotAnAnswer,
    /// The fields do not make an answer: serde's words.
    #[error("{0}")]
    Fields(String),
    #[error("a decline without a reason")]
    DeclineWithoutReason,
}

/// The answer a row holds; a row that cannot be read is an error that says why (never a
/// guessed write).
pub(crate) fn decode(payload: &Value) -> Result<Answer, DecodeError> {
    let mut payload = payload.clone();
    let Some(o) = payload.as_object_mut() else {
        return Err(DecodeError::NotAnObject);
    };
    match o.remove("v") {
        Some(v) if v == FORMAT => {}
        other => return Err(DecodeError::Format(other)),
    }
    if o.remove("action").as_ref().and_then(Value::as_str) != Some(ANSWER_REFERRAL) {
        return Err(DecodeError::NotAnAnswer);
    }
    let answer: Answer =
        serde_json::from_value(payload).map_err(|e| DecodeError::Fields(e.to_string()))?;
    if let Decision::Decline { reason } = &answer.decision {
        if reason.trim().is_empty() {
            return Err(DecodeError::DeclineWithoutReason);
        }
    }
    Ok(answer)
}

/// The PATCH that answers a referral. [I] see the module docs.
pub(crate) fn patch_body(decision: &Decision) -> Vec<PatchOp> {
    match decision {
        Decision::Accept => vec![
            PatchOp::replace("/status", "Active"),
            PatchOp::replace("/substatus", "Accepted"),
        ],
        Decision::Decline { reason } => vec![
            PatchOp::replace("/status", "Closed"),
            PatchOp::replace("/substatus", "Declined"),
            PatchOp::replace("/statusReason", reason.as_str()),
        ],
    }
}

/// What to do with an answer, given the referral as Partner Center has it now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Incoming, New and before its deadline: send this PATCH.
    Send(Vec<PatchOp>),
    /// Already in the asked state: nothing to write (exit 0). The text says since when.
    Already(String),
    /// It cannot be answered so (exit 1); the text says why, and when and how it was answered.
    Refuse(String),
}

/// The referral's response deadline (`expirationDateTime`, else created + the window).
pub(crate) fn deadline_of(referral: &Referral, window: Duration) -> DateTime<Utc> {
    crate::deadline::deadline(
        referral.created_date_time,
        referral.expiration_date_time,
        window,
    )
}

/// Never a write to a referral that is not incoming and New, nor past its deadline.
pub(crate) fn decide(
    referral: &Referral,
    raw: &Value,
    decision: &Decision,
    window: Duration,
    now: DateTime<Utc>,
) -> Verdict {
    if let Some(Direction::Outgoing | Direction::Other(_)) = &referral.direction {
        let direction = referral.direction.as_ref().map(Direction::as_str);
        return Verdict::Refuse(format!(
            "referral {} is not an incoming referral (direction {}); only incoming referrals are answered",
            referral.id,
            direction.unwrap_or("?")
        ));
    }
    let when = answered_at(referral, raw);
    let status = referral.status.clone().unwrap_or(ReferralStatus::None);
    let substatus = referral
        .substatus
        .clone()
        .unwrap_or(ReferralSubstatus::None);
    match (&status, &substatus, decision) {
        (ReferralStatus::New, ReferralSubstatus::Pending | ReferralSubstatus::Received, _) => {
            let deadline = deadline_of(referral, window);
            if now >= deadline {
                Verdict::Refuse(format!(
                    "referral {} is past its deadline ({}); Partner Center archives it as Expired",
                    referral.id,
                    human(deadline)
                ))
            } else {
                Verdict::Send(patch_body(decision))
            }
        }
        (ReferralStatus::Active, ReferralSubstatus::Accepted, Decision::Accept) => {
            Verdict::Already(format!(
                "referral {} was already accepted{when}",
                referral.id
            ))
        }
        (ReferralStatus::Closed, ReferralSubstatus::Declined, Decision::Decline { .. }) => {
            Verdict::Already(format!(
                "referral {} was already declined{when}{}",
                referral.id,
                reason_of(raw)
            ))
        }
        (ReferralStatus::Active, _, _) => Verdict::Refuse(format!(
            "referral {} was answered the other way: accepted (Active/{substatus}){when}",
            referral.id
        )),
        (ReferralStatus::Closed, ReferralSubstatus::Declined, Decision::Accept) => {
            Verdict::Refuse(format!(
                "referral {} was answered the other way: declined{when}{}",
                referral.id,
                reason_of(raw)
            ))
        }
        (ReferralStatus::Closed, ReferralSubstatus::Expired, _) => Verdict::Refuse(format!(
            "referral {} is Closed/Expired: nobody answered before its deadline{when}",
            referral.id
        )),
        (ReferralStatus::Closed, _, _) => Verdict::Refuse(format!(
            "referral {} is already Closed ({substatus}){when}; Closed is final",
            referral.id
        )),
        _ => Verdict::Refuse(format!(
            "referral {} is {status}/{substatus}, which cannot be answered",
            referral.id
        )),
    }
}

/// ` on 2026-11-30 10:00 UTC` from `closedDateTime` or `updatedDateTime`.
fn answered_at(referral: &Referral, raw: &Value) -> String {
    let closed = raw["closedDateTime"]
        .as_str()
        .and_then(crate::timefmt::parse_timestamp);
    closed
        .or(referral.updated_date_time)
        .map(|at| format!(" on {} in Partner Center", human(at)))
        .unwrap_or_default()
}

fn reason_of(raw: &Value) -> String {
    raw["statusReason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .map(|r| format!(" (reason: {r})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn referral(edit: impl FnOnce(&mut Value)) -> (Referral, Value) {
        let mut raw = json!({
            "id": "r-1", "createdDateTime": "2026-11-20T00:00:00Z",
            "updatedDateTime": "2026-11-21T00:00:00Z",
            "status": "New", "substatus": "Pending", "direction": "Incoming",
            "eTag": "\"e1\""
        });
        edit(&mut raw);
        let parsed = crate::microsoft::model::Referral::deserialize(&raw).unwrap();
        (parsed, raw)
    }

    fn now() -> DateTime<Utc> {
        "2026-11-25T00:00:00Z".parse().unwrap()
    }

    fn decline() -> Decision {
        Decision::Decline {
            reason: "Not our solution area".into(),
        }
    }

    #[test]
    fn the_bodies_are_the_documented_pairs() {
        let body = serde_json::to_value(patch_body(&Decision::Accept)).unwrap();
        assert_eq!(
            body,
            json!([{"op":"replace","path":"/status","value":"Active"},{"op":"replace","path":"/substatus","value":"Accepted"}])
        );
        let body = serde_json::to_value(patch_body(&decline())).unwrap();
        assert_eq!(
            body,
            json!([{"op":"replace","path":"/status","value":"Closed"},{"op":"replace","path":"/substatus","value":"Declined"},{"op":"replace","path":"/statusReason","value":"Not our solution area"}])
        );
    }

    #[test]
    fn only_an_incoming_new_referral_before_its_deadline_is_written() {
        let window = Duration::days(14);
        type Edit = fn(&mut Value);
        let table: Vec<(Edit, Decision, &str)> = vec![
            (|_| {}, Decision::Accept, "send"),
            (|r| r["substatus"] = json!("Received"), decline(), "send"),
            (|r| r["direction"] = json!(null), Decision::Accept, "send"),
            (
                |r| r["direction"] = json!("Outgoing"),
                Decision::Accept,
                "refuse",
            ),
            (
                |r| r["createdDateTime"] = json!("2026-11-01T00:00:00Z"),
                Decision::Accept,
                "refuse",
            ),
            (
                |r| r["expirationDateTime"] = json!("2026-11-24T00:00:00Z"),
                decline(),
                "refuse",
            ),
            (
                |r| {
                    r["status"] = json!("Active");
                    r["substatus"] = json!("Accepted")
                },
                Decision::Accept,
                "already",
            ),
            (
                |r| {
                    r["status"] = json!("Active");
                    r["substatus"] = json!("Accepted")
                },
                decline(),
                "refuse",
            ),
            (
                |r| {
                    r["status"] = json!("Closed");
                    r["substatus"] = json!("Declined")
                },
                decline(),
                "already",
            ),
            (
                |r| {
                    r["status"] = json!("Closed");
                    r["substatus"] = json!("Declined")
                },
                Decision::Accept,
                "refuse",
            ),
            (
                |r| {
                    r["status"] = json!("Closed");
                    r["substatus"] = json!("Expired")
                },
                Decision::Accept,
                "refuse",
            ),
            (
                |r| {
                    r["status"] = json!("Closed");
                    r["substatus"] = json!("Won")
                },
                decline(),
                "refuse",
            ),
            (|r| r["status"] = json!("Weird"), Decision::Accept, "refuse"),
        ];
        for (i, (edit, decision, want)) in table.into_iter().enumerate() {
            let (r, raw) = referral(edit);
            let got = match decide(&r, &raw, &decision, window, now()) {
                Verdict::Send(_) => "send",
                Verdict::Already(_) => "already",
                Verdict::Refuse(_) => "refuse",
            };
            assert_eq!(got, want, "case {i}: {raw}");
        }
    }

    #[test]
    fn a_refusal_says_how_and_when_it_was_answered() {
        let (r, raw) = referral(|r| {
            r["status"] = json!("Closed");
            r["substatus"] = json!("Declined");
            r["statusReason"] = json!("No capacity");
            r["closedDateTime"] = json!("2026-11-22T09:30:00Z");
        });
        let Verdict::Refuse(why) = decide(&r, &raw, &Decision::Accept, Duration::days(14), now())
        else {
            panic!("refused")
        };
        assert!(why.contains("declined on 2026-11-22 09:30 UTC"), "{why}");
        assert!(why.contains("No capacity"), "{why}");
    }

    #[test]
    fn answers_round_trip_and_bad_rows_are_errors() {
        let answer = Answer {
            decision: decline(),
            note: Some("see CRM".into()),
            actor: "cli:ana".into(),
        };
        let stored = encode(&answer);
        assert_eq!(stored["v"], 1);
        assert_eq!(stored["decision"], "decline");
        assert_eq!(decode(&stored), Ok(answer));
        for bad in [
            json!({"v": 2, "action": "answer_referral", "decision": "accept", "actor": "x"}),
            json!({"v": 1, "action": "create_lead", "decision": "accept", "actor": "x"}),
            json!({"v": 1, "action": "answer_referral", "decision": "maybe", "actor": "x"}),
            json!({"v": 1, "action": "answer_referral", "decision": "decline", "reason": " ", "actor": "x"}),
            json!({"v": 1, "action": "answer_referral", "decision": "accept"}),
            json!("text"),
        ] {
            assert!(decode(&bad).is_err(), "{bad}");
        }
    }
}
