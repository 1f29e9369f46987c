//! The answers of the five Partner Central operations as the daemon reads them (`partner-apis.md`
//! D.4), tolerant by design: each item of a page is read on its own from its raw JSON (kept
//! beside the typed view, as for Microsoft referrals), unknown enum values are kept verbatim,
//! extra members are ignored, a missing optional member is `None`, a member of the wrong type or
//! an unreadable timestamp is `None` with a note naming it, and only an item without its
//! required `Id` is rejected, never its page.
//!
//! All three payload types give a customer, a title and a deadline: `ExpirationDate`, else
//! `InvitationDate` + 15 days marked estimated (spec §8). The store's mapping of an
//! invitation onto a referral row is [`crate::store::invitations`].
//!
//! Tolerance where the facts are guesses: timestamps are ISO 8601 strings per the SDK's serde
//! code [V SDK], but the AWS JSON protocol's default is epoch seconds, so a number is read as
//! that [I]; which member names a Lead or Account Planning invitation's title is not in the
//! model [?], so the engagement's title stands in for it.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::open_enum::open_enum;
use crate::timefmt::parse_timestamp;

open_enum!(
    /// An invitation's state; only `PENDING` can still be answered.
    InvitationStatus {
        Pending = "PENDING",
        Accepted = "ACCEPTED",
        Rejected = "REJECTED",
        Expired = "EXPIRED",
    }
);
open_enum!(
    /// What AWS shares: an opportunity, a lead, or an account-planning engagement.
    PayloadType {
        OpportunityInvitation = "OpportunityInvitation",
        LeadInvitation = "LeadInvitation",
        AccountPlanningInvitation = "AccountPlanningInvitation",
    }
);
open_enum!(
    /// The accept task runs on AWS until it is `COMPLETE` or `FAILED`.
    TaskStatus {
        InProgress = "IN_PROGRESS",
        Complete = "COMPLETE",
        Failed = "FAILED",
    }
);

/// "Invitations will automatically expire if not accepted within 15 days" (D.2): the
/// estimate when an invitation has no `ExpirationDate`.
pub const ESTIMATED_WINDOW: TimeDelta = TimeDelta::days(15);

/// The longest free text kept in the typed view (the model's longest pattern is 2,000
/// characters, `BusinessProblem`); the raw JSON keeps all of it.
pub const MAX_TEXT_CHARS: usize = 2_000;

/// When an invitation expires, and whether that is AWS's date or our estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: DateTime<Utc>,
    /// `InvitationDate` + 15 days: AWS gave no `ExpirationDate`.
    pub estimated: bool,
}

/// An engagement invitation: a list summary or a full `GetEngagementInvitation` answer (the
/// summary has no payload, so its customer is unknown until the invitation is read).
#[derive(Debug, Clone, PartialEq)]
pub struct Invitation {
    /// `engi-…` or an ARN; the one required member.
    pub id: String,
    pub arn: Option<String>,
    pub catalog: Option<String>,
    pub status: Option<InvitationStatus>,
    pub payload_type: Option<PayloadType>,
    pub engagement_id: Option<String>,
    pub engagement_title: Option<String>,
    pub sender_aws_account_id: Option<String>,
    pub sender_company_name: Option<String>,
    pub invitation_date: Option<DateTime<Utc>>,
    pub expiration_date: Option<DateTime<Utc>>,
    /// The customer's company name, from the payload of whichever type.
    pub customer: Option<String>,
    /// The customer's country code, when the payload has one (rules use it).
    pub country: Option<String>,
    /// The project title (opportunities), else the engagement title, else a description.
    pub title: String,
    pub rejection_reason: Option<String>,
    /// Members present but unreadable (wrong type, unreadable timestamp), by name.
    pub problems: Vec<String>,
}

impl Invitation {
    /// `ExpirationDate`; else `InvitationDate` + 15 days, estimated; else unknown.
    pub fn deadline(&self) -> Option<Deadline> {
        if let Some(at) = self.expiration_date {
            return Some(Deadline {
                at,
                estimated: false,
            });
        }
        let at = self.invitation_date?.checked_add_signed(ESTIMATED_WINDOW)?;
        Some(Deadline {
            at,
            estimated: true,
        })
    }

    /// Reads one invitation object; `Err` only when it is not an object or has no `Id`.
    pub fn from_value(value: &Value) -> Result<Invitation, MalformedAnswer> {
        if !value.is_object() {
            return Err(MalformedAnswer("not a JSON object".into()));
        }
        let mut r = Reader::new(value);
        let id = r.text("/Id").filter(|id| !id.trim().is_empty());
        let Some(id) = id else {
            return Err(MalformedAnswer("no Id".into()));
        };
        let payload_type = r.text("/PayloadType").map(|s| PayloadType::parse(&s));
        let engagement_title = r.text("/EngagementTitle");
        let (customer, country, project_title) = payload_facts(&mut r);
        let title = project_title
            .or_else(|| engagement_title.clone())
            .unwrap_or_else(|| match &payload_type {
                Some(kind) => format!("{kind} {id}"),
                None => format!("Invitation {id}"),
            });
        Ok(Invitation {
            arn: r.text("/Arn"),
            catalog: r.text("/Catalog"),
            status: r.text("/Status").map(|s| InvitationStatus::parse(&s)),
            payload_type,
            engagement_id: r.text("/EngagementId"),
            engagement_title,
            sender_aws_account_id: r.text("/SenderAwsAccountId"),
            sender_company_name: r.text("/SenderCompanyName"),
            invitation_date: r.time("/InvitationDate"),
            expiration_date: r.time("/ExpirationDate"),
            customer,
            country,
            title,
            rejection_reason: r.text("/RejectionReason"),
            problems: r.problems,
            id,
        })
    }
}

/// The deal value of an opportunity invitation, yearly, in its currency (spec §7's table):
/// 12 × the sum of `Project.ExpectedCustomerSpend[].Amount` (monthly), when every entry has
/// one finite amount (a number or a numeric string [I]) and all share one `CurrencyCode`.
/// Lead and account-planning invitations have no value; anything unreadable is `None`.
pub fn yearly_spend(value: &Value) -> Option<(f64, String)> {
    let spend = value
        .pointer("/Payload/OpportunityInvitation/Project/ExpectedCustomerSpend")?
        .as_array()?;
    let mut currency: Option<&str> = None;
    let mut monthly = 0.0;
    for entry in spend {
        let amount = match entry.get("Amount")? {
            Value::Number(n) => n.as_f64()?,
            Value::String(s) => s.trim().parse::<f64>().ok()?,
            _ => return None,
        };
        let code = entry.get("CurrencyCode")?.as_str()?;
        if currency.is_some_and(|c| c != code) || code.is_empty() {
            return None;
        }
        currency = Some(code);
        monthly += amount;
    }
    let yearly = monthly * 12.0;
    let currency = currency?.to_string();
    yearly.is_finite().then_some((yearly, currency))
}

/// Customer, country and project title from whichever payload the invitation carries.
fn payload_facts(r: &mut Reader<'_>) -> (Option<String>, Option<String>, Option<String>) {
    for kind in [
        "OpportunityInvitation",
        "LeadInvitation",
        "AccountPlanningInvitation",
    ] {
        let base = format!("/Payload/{kind}");
        if r.value.pointer(&base).is_none() {
            continue;
        }
        let customer = r.text(&format!("{base}/Customer/CompanyName"));
        let country = r.text(&format!("{base}/Customer/CountryCode"));
        let title = r.text(&format!("{base}/Project/Title"));
        return (customer, country, title);
    }
    (None, None, None)
}

/// Reads members by JSON pointer, noting each one present with the wrong shape.
struct Reader<'a> {
    value: &'a Value,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    fn new(value: &'a Value) -> Self {
        Reader {
            value,
            problems: Vec::new(),
        }
    }

    fn member(pointer: &str) -> String {
        pointer.trim_start_matches('/').replace('/', ".")
    }

    /// A string member, cut to [`MAX_TEXT_CHARS`]; empty means absent.
    fn text(&mut self, pointer: &str) -> Option<String> {
        match self.value.pointer(pointer)? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(match s.char_indices().nth(MAX_TEXT_CHARS) {
                Some((cut, _)) => s[..cut].to_string(),
                None => s.clone(),
            }),
            other => {
                self.problems.push(format!(
                    "{} is not a string: {}",
                    Self::member(pointer),
                    short(&other.to_string())
                ));
                None
            }
        }
    }

    /// A timestamp: ISO 8601 text, or epoch seconds [I].
    fn time(&mut self, pointer: &str) -> Option<DateTime<Utc>> {
        let value = self.value.pointer(pointer)?;
        let parsed = match value {
            Value::Null => return None,
            Value::String(s) if s.trim().is_empty() => return None,
            Value::String(s) => parse_timestamp(s),
            Value::Number(n) => n.as_f64().and_then(epoch_seconds),
            _ => None,
        };
        if parsed.is_none() {
            self.problems.push(format!(
                "{} is not a timestamp: {}",
                Self::member(pointer),
                short(&value.to_string())
            ));
        }
        parsed
    }
}

fn epoch_seconds(secs: f64) -> Option<DateTime<Utc>> {
    if !secs.is_finite() || secs.abs() > 1e12 {
        return None;
    }
    let whole = secs.floor();
    let nanos = ((secs - whole) * 1e9) as u32;
    DateTime::from_timestamp(whole as i64, nanos.min(999_999_999))
}

/// A value quoted in a note: at most 80 characters.
fn short(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// An invitation and the exact JSON it came from.
#[derive(Debug, Clone)]
pub struct ParsedInvitation {
    pub invitation: Invitation,
    pub raw: String,
}

/// An item of a page that could not be read: reported, kept, and skipped.
#[derive(Debug, Clone)]
pub struct RejectedItem {
    pub id: Option<String>,
    pub error: String,
    pub raw: String,
}

/// An answer whose envelope is unusable (not a JSON object, a list that is not a list, a
/// `NextToken` that is not a string): the page cannot be read or followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedAnswer(pub String);

/// One page of a list answer: the items read, the items that could not be, and `NextToken`.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub rejected: Vec<RejectedItem>,
    pub next_token: Option<String>,
}

/// One page of `ListEngagementInvitations`.
pub type InvitationPage = Page<ParsedInvitation>;
/// One page of `ListEngagementByAcceptingInvitationTasks`.
pub type TaskPage = Page<Task>;

/// An accept task, as `StartEngagementByAcceptingInvitationTask` answers it and as the task
/// list shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub task_id: Option<String>,
    pub task_arn: Option<String>,
    pub status: Option<TaskStatus>,
    pub start_time: Option<DateTime<Utc>>,
    pub message: Option<String>,
    pub reason_code: Option<String>,
    /// The opportunity the accept created (`O…`), once `COMPLETE`.
    pub opportunity_id: Option<String>,
    pub engagement_invitation_id: Option<String>,
    pub problems: Vec<String>,
}

impl Task {
    pub fn from_value(value: &Value) -> Result<Task, MalformedAnswer> {
        if !value.is_object() {
            return Err(MalformedAnswer("not a JSON object".into()));
        }
        let mut r = Reader::new(value);
        Ok(Task {
            task_id: r.text("/TaskId"),
            task_arn: r.text("/TaskArn"),
            status: r.text("/TaskStatus").map(|s| TaskStatus::parse(&s)),
            start_time: r.time("/StartTime"),
            message: r.text("/Message"),
            reason_code: r.text("/ReasonCode"),
            opportunity_id: r.text("/OpportunityId"),
            engagement_invitation_id: r.text("/EngagementInvitationId"),
            problems: r.problems,
        })
    }
}

/// Reads an answer's top-level object.
pub fn parse_object(body: &str) -> Result<Value, MalformedAnswer> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| MalformedAnswer(format!("not JSON: {e}")))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(MalformedAnswer("not a JSON object".into()))
    }
}

/// The envelope of a list answer: its items (raw, each read on its own) and `NextToken`.
fn envelope<'a>(
    body: &'a str,
    list: &str,
) -> Result<(Vec<&'a serde_json::value::RawValue>, Option<String>), MalformedAnswer> {
    let map: std::collections::HashMap<&str, &'a serde_json::value::RawValue> =
        serde_json::from_str(body)
            .map_err(|e| MalformedAnswer(format!("not a JSON object: {e}")))?;
    let items = match map.get(list) {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => serde_json::from_str(raw.get())
            .map_err(|_| MalformedAnswer(format!("{list} is not a list")))?,
    };
    let next_token = match map.get("NextToken") {
        None => None,
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Null) => None,
            Ok(Value::String(s)) if s.is_empty() => None,
            Ok(Value::String(s)) => Some(s),
            _ => return Err(MalformedAnswer("NextToken is not a string".into())),
        },
    };
    Ok((items, next_token))
}

/// Reads an item from its own JSON text; JSON that cannot be held as a value (`1e400`,
/// nesting deeper than 128) is rejected with its id when one can still be read.
fn read_item<T>(
    raw: &str,
    read: &impl Fn(&Value) -> Result<T, MalformedAnswer>,
) -> Result<(T, String), RejectedItem> {
    let value: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => {
            return Err(RejectedItem {
                id: id_of(raw),
                error: format!("unreadable JSON: {e}"),
                raw: raw.chars().take(MAX_TEXT_CHARS).collect(),
            })
        }
    };
    read(&value)
        .map(|t| (t, raw.to_string()))
        .map_err(|error| RejectedItem {
            id: value.get("Id").and_then(Value::as_str).map(str::to_string),
            error: error.0,
            raw: raw.to_string(),
        })
}

/// The `Id` of an item whose other members are unreadable.
fn id_of(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        #[serde(rename = "Id")]
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(raw).ok()?.id
}

/// Reads a list answer: only an unusable envelope fails the page, each item on its own.
fn parse_list<T>(
    body: &str,
    list: &str,
    read: impl Fn(&Value) -> Result<T, MalformedAnswer>,
) -> Result<Page<(T, String)>, MalformedAnswer> {
    let (items, next_token) = envelope(body, list)?;
    let mut page = Page {
        items: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
        next_token,
    };
    for item in items {
        match read_item(item.get(), &read) {
            Ok(read) => page.items.push(read),
            Err(bad) => page.rejected.push(bad),
        }
    }
    Ok(page)
}

/// Parses a `ListEngagementInvitations` answer.
pub fn parse_invitation_page(body: &str) -> Result<InvitationPage, MalformedAnswer> {
    let page = parse_list(
        body,
        "EngagementInvitationSummaries",
        Invitation::from_value,
    )?;
    Ok(Page {
        items: (page.items.into_iter())
            .map(|(invitation, raw)| ParsedInvitation { invitation, raw })
            .collect(),
        rejected: page.rejected,
        next_token: page.next_token,
    })
}

/// Parses a `GetEngagementInvitation` answer (the invitation is the whole object).
pub fn parse_invitation(body: &str) -> Result<ParsedInvitation, MalformedAnswer> {
    let value = parse_object(body)?;
    let invitation = Invitation::from_value(&value)?;
    Ok(ParsedInvitation {
        invitation,
        raw: body.to_string(),
    })
}

/// Parses a `ListEngagementByAcceptingInvitationTasks` answer.
pub fn parse_task_page(body: &str) -> Result<TaskPage, MalformedAnswer> {
    let page = parse_list(body, "TaskSummaries", Task::from_value)?;
    Ok(Page {
        items: page.items.into_iter().map(|(task, _)| task).collect(),
        rejected: page.rejected,
        next_token: page.next_token,
    })
}

/// Parses a `StartEngagementByAcceptingInvitationTask` answer.
pub fn parse_task(body: &str) -> Result<Task, MalformedAnswer> {
    Task::from_value(&parse_object(body)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// Invitations of all three payload types, shaped member by member as D.4 lists them.
    fn sample_get(kind: &str) -> Value {
        let payload = match kind {
            "OpportunityInvitation" => json!({"OpportunityInvitation": {
                "ReceiverResponsibilities": ["Co-Sell Facilitator"],
                "Customer": {"Industry": "Software and Internet", "CompanyName": "Example Corp",
                             "WebsiteUrl": "https://example.com", "CountryCode": "US"},
                "Project": {"BusinessProblem": "Migrate the data warehouse to AWS this year",
                            "Title": "Data warehouse migration", "TargetCompletionDate": "2027-03-31",
                            "ExpectedCustomerSpend": []},
                "SenderContacts": [{"Email": "am@amazon.example"}]}}),
            "LeadInvitation" => json!({"LeadInvitation": {
                "Customer": {"CompanyName": "Lead Ltd", "CountryCode": "GB"},
                "Interaction": {"ContactBusinessTitle": "CTO", "SourceName": "Webinar"}}}),
            _ => json!({"AccountPlanningInvitation": {
                "AccountIdentifier": "cust-acc-0123456789abc",
                "Customer": {"CompanyName": "Plan GmbH", "CountryCode": "DE"}}}),
        };
        json!({
            "Arn": "arn:aws:partnercentral:us-east-1::catalog/AWS/engagement-invitation/engi-0000000000001",
            "Id": "engi-0000000000001", "Catalog": "AWS", "PayloadType": kind,
            "EngagementId": "eng-00000000000001", "EngagementTitle": "Shared by AWS",
            "Status": "PENDING", "InvitationDate": "2026-12-01T09:00:00Z",
            "ExpirationDate": "2026-12-16T09:00:00.123Z", "SenderCompanyName": "Amazon Web Services",
            "SenderAwsAccountId": "123456789012",
            "Receiver": {"Account": {"AwsAccountId": "210987654321", "Alias": "partner"}},
            "Payload": payload, "InvitationMessage": "Please have a look"
        })
    }

    #[test]
    fn every_payload_type_gives_customer_title_and_deadline() {
        let expiry: DateTime<Utc> = "2026-12-16T09:00:00.123Z".parse().unwrap();
        for (kind, customer, title, country) in [
            (
                "OpportunityInvitation",
                "Example Corp",
                "Data warehouse migration",
                "US",
            ),
            ("LeadInvitation", "Lead Ltd", "Shared by AWS", "GB"),
            (
                "AccountPlanningInvitation",
                "Plan GmbH",
                "Shared by AWS",
                "DE",
            ),
        ] {
            let parsed = parse_invitation(&sample_get(kind).to_string()).unwrap();
            let inv = parsed.invitation;
            assert_eq!(inv.customer.as_deref(), Some(customer), "{kind}");
            assert_eq!(inv.title, title, "{kind}");
            assert_eq!(inv.country.as_deref(), Some(country), "{kind}");
            assert_eq!(
                inv.deadline(),
                Some(Deadline {
                    at: expiry,
                    estimated: false
                })
            );
            assert_eq!(inv.status, Some(InvitationStatus::Pending));
            assert_eq!(inv.payload_type, Some(PayloadType::parse(kind)));
            assert!(inv.problems.is_empty(), "{:?}", inv.problems);
            assert!(
                parsed.raw.contains("InvitationMessage"),
                "the raw JSON is kept"
            );
        }
    }

    #[test]
    fn without_expiration_date_the_deadline_is_invitation_date_plus_15_days_estimated() {
        let mut value = sample_get("LeadInvitation");
        value.as_object_mut().unwrap().remove("ExpirationDate");
        value.as_object_mut().unwrap().remove("EngagementTitle");
        let inv = Invitation::from_value(&value).unwrap();
        assert_eq!(
            inv.deadline(),
            Some(Deadline {
                at: "2026-12-16T09:00:00Z".parse().unwrap(),
                estimated: true
            })
        );
        assert_eq!(inv.title, "LeadInvitation engi-0000000000001");
        value.as_object_mut().unwrap().remove("InvitationDate");
        assert_eq!(Invitation::from_value(&value).unwrap().deadline(), None);
    }

    #[test]
    fn unknown_values_are_kept_and_epoch_seconds_read() {
        let mut value = sample_get("OpportunityInvitation");
        value["Status"] = json!("ARCHIVED");
        value["PayloadType"] = json!("PartnerInvitation");
        value["ExpirationDate"] = json!(1_797_498_000.5);
        value["BrandNewMember"] = json!({"x": [1, 2]});
        let inv = Invitation::from_value(&value).unwrap();
        assert_eq!(inv.status, Some(InvitationStatus::Other("ARCHIVED".into())));
        assert_eq!(inv.payload_type.unwrap().as_str(), "PartnerInvitation");
        assert_eq!(
            inv.expiration_date,
            DateTime::from_timestamp(1_797_498_000, 500_000_000)
        );
        assert_eq!(inv.customer.as_deref(), Some("Example Corp"));
    }

    #[test]
    fn pages_and_tasks_read_with_their_next_token() {
        let summary = |id: &str| {
            json!({"Id": id, "Catalog": "AWS", "Status": "PENDING", "PayloadType": "OpportunityInvitation",
                   "EngagementTitle": "T", "ExpirationDate": "2026-12-16T09:00:00Z", "ParticipantType": "RECEIVER"})
        };
        let body = json!({"EngagementInvitationSummaries": [summary("engi-0000000000001"), {"Arn": "no id"}, 7, summary("engi-0000000000002")], "NextToken": "t2"});
        let page = parse_invitation_page(&body.to_string()).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.rejected.len(), 2);
        assert_eq!(page.next_token.as_deref(), Some("t2"));
        let last =
            parse_invitation_page(r#"{"EngagementInvitationSummaries": [], "NextToken": null}"#)
                .unwrap();
        assert_eq!(last.next_token, None);
        assert!(parse_invitation_page(r#"{"NextToken": 5}"#).is_err());
        assert!(parse_invitation_page("[]").is_err());

        let tasks = json!({"TaskSummaries": [{"TaskId": "task-0000000000001", "TaskStatus": "COMPLETE",
            "OpportunityId": "O1234567", "StartTime": "2026-12-01T09:00:00Z"},
            {"TaskId": "task-0000000000002", "TaskStatus": "FAILED", "ReasonCode": "EngagementConflict", "Message": "m"}]});
        let page = parse_task_page(&tasks.to_string()).unwrap();
        assert_eq!(page.items[0].status, Some(TaskStatus::Complete));
        assert_eq!(page.items[0].opportunity_id.as_deref(), Some("O1234567"));
        assert_eq!(
            page.items[1].reason_code.as_deref(),
            Some("EngagementConflict")
        );
        let started =
            parse_task(r#"{"TaskId": "task-0000000000003", "TaskStatus": "IN_PROGRESS"}"#).unwrap();
        assert_eq!(started.status, Some(TaskStatus::InProgress));
    }

    /// A hostile value for a member: missing, null, wrong types, unknown enum values, huge
    /// strings, absurd and unreadable dates, deep nesting (the store's generated test too).
    pub(crate) fn hostile(rng: &mut fastrand::Rng) -> Option<Value> {
        Some(match rng.u8(..12) {
            0 => return None,
            1 => Value::Null,
            2 => json!(rng.i64(..)),
            3 => json!(rng.f64() * 1e300),
            4 => json!("é".repeat(rng.usize(..3) * MAX_TEXT_CHARS + 1)),
            5 => json!(
                [
                    "9999-12-31T23:59:59Z",
                    "0000-01-01T00:00:00Z",
                    "+275760-09-13T00:00:00Z",
                    "2026-02-30T00:00:00Z",
                    "2026-12-01T09:00:00.123456789123Z",
                    "yesterday",
                    "1970-01-01",
                ][rng.usize(..7)]
            ),
            6 => {
                json!(["PENDING", "ARCHIVED", "", "pending", "LeadInvitation", "X"][rng.usize(..6)])
            }
            7 => json!({"nested": [1, {"deeper": [null]}]}),
            8 => json!([1, "two"]),
            9 => json!(rng.bool()),
            10 => json!(crate::config::hostile_text(rng, 12)),
            _ => json!(-1e12 + rng.f64()),
        })
    }

    #[test]
    fn hostile_pages_never_panic_and_keep_the_rest_of_the_page() {
        const MEMBERS: &[&str] = &[
            "/Id",
            "/Arn",
            "/Catalog",
            "/Status",
            "/PayloadType",
            "/EngagementTitle",
            "/InvitationDate",
            "/ExpirationDate",
            "/SenderCompanyName",
            "/Payload",
            "/Payload/OpportunityInvitation",
            "/Payload/OpportunityInvitation/Customer",
            "/Payload/OpportunityInvitation/Customer/CompanyName",
            "/Payload/OpportunityInvitation/Project/Title",
            "/Payload/LeadInvitation/Customer/CompanyName",
            "/Payload/AccountPlanningInvitation/Customer",
        ];
        let kinds = [
            "OpportunityInvitation",
            "LeadInvitation",
            "AccountPlanningInvitation",
        ];
        let mut rng = fastrand::Rng::with_seed(2929);
        let (mut kept, mut rejected) = (0, 0);
        for case in 0..300 {
            let mut items = Vec::new();
            let mut intact_ids = Vec::new();
            for n in 0..rng.usize(1..12) {
                let mut item = sample_get(kinds[rng.usize(..3)]);
                let id = format!("engi-{case:06}{n:07}");
                item["Id"] = json!(id);
                let mut id_touched = false;
                for _ in 0..rng.usize(..5) {
                    let pointer = MEMBERS[rng.usize(..MEMBERS.len())];
                    id_touched |= pointer == "/Id";
                    let (parent, key) = pointer.rsplit_once('/').unwrap();
                    if let Some(Value::Object(map)) = item.pointer_mut(parent) {
                        match hostile(&mut rng) {
                            Some(v) => map.insert(key.to_string(), v),
                            None => map.remove(key),
                        };
                    }
                }
                if rng.u8(..20) == 0 {
                    item = json!(crate::config::hostile_text(&mut rng, 5));
                    id_touched = true;
                }
                if !id_touched {
                    intact_ids.push(id);
                }
                items.push(item);
            }
            let body =
                json!({"EngagementInvitationSummaries": items, "NextToken": "next", "Extra": 1});
            let page = parse_invitation_page(&body.to_string()).expect("the envelope is fine");
            assert_eq!(page.items.len() + page.rejected.len(), items.len());
            assert_eq!(page.next_token.as_deref(), Some("next"));
            for id in &intact_ids {
                let found = page
                    .items
                    .iter()
                    .find(|p| &p.invitation.id == id)
                    .unwrap_or_else(|| panic!("case {case}: {id} was lost"));
                let inv = &found.invitation;
                // Every kept invitation has a title, and a deadline computation that never panics.
                assert!(!inv.title.is_empty());
                let _ = inv.deadline();
                assert!(inv.title.chars().count() <= MAX_TEXT_CHARS + 40);
                assert!(inv
                    .customer
                    .as_ref()
                    .is_none_or(|c| c.chars().count() <= MAX_TEXT_CHARS));
            }
            kept += page.items.len();
            rejected += page.rejected.len();
        }
        assert!(
            kept > 1000 && rejected > 20,
            "kept {kept}, rejected {rejected}"
        );
    }
}
