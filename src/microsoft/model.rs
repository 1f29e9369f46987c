//! The referral resource as the daemon reads it: a typed view of the fields it decides on, with
//! the raw JSON kept beside it so no field is ever lost. Parsing is lenient where the API facts
//! are uncertain ([I]/[?] in `partner-apis.md`): unknown enum values are kept as strings, unknown
//! fields are ignored (they stay in the raw JSON), numbers may arrive as strings, and timestamps
//! may lack a zone or carry up to 9 fractional digits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::open_enum::open_enum;

open_enum!(
    /// `New → Active → Closed`; Closed is terminal.
    ReferralStatus { None, New, Active, Closed }
);
open_enum!(
    /// New: Pending|Received; Active: Accepted; Closed: Won|Lost|Declined|Expired.
    ReferralSubstatus { None, Pending, Received, Accepted, Won, Lost, Declined, Expired }
);
open_enum!(Direction { Incoming, Outgoing });

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Address {
    #[serde(default)]
    pub(crate) country: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CustomerProfile {
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default, deserialize_with = "lenient_object")]
    pub(crate) address: Option<Address>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReferralDetails {
    #[serde(default)]
    pub(crate) notes: Option<String>,
    /// A finite, non-negative amount; anything else is `None` with the reason in
    /// [`ReferralDetails::deal_value_error`], so it is reported by field and never sent.
    #[serde(default, deserialize_with = "lenient_number")]
    pub(crate) deal_value: Option<f64>,
    #[serde(skip)]
    pub(crate) deal_value_error: Option<String>,
    #[serde(default)]
    pub(crate) currency: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_datetime")]
    pub(crate) closing_date_time: Option<DateTime<Utc>>,
}

/// The fields of a referral the daemon reads. Everything else is in the raw JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referral {
    pub id: String,
    #[serde(default)]
    pub(crate) engagement_id: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) external_reference_id: Option<String>,
    #[serde(deserialize_with = "lenient_datetime")]
    pub(crate) created_date_time: DateTime<Utc>,
    #[serde(default, deserialize_with = "lenient_opt_datetime")]
    pub(crate) updated_date_time: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "lenient_opt_datetime")]
    pub(crate) expiration_date_time: Option<DateTime<Utc>>,
    #[serde(default)]
    pub(crate) status: Option<ReferralStatus>,
    #[serde(default)]
    pub(crate) substatus: Option<ReferralSubstatus>,
    #[serde(default)]
    pub(crate) direction: Option<Direction>,
    #[serde(default)]
    pub(crate) qualification: Option<String>,
    #[serde(default, rename = "type")]
    pub(crate) referral_type: Option<String>,
    /// Sent back verbatim (quotes included) in `If-Match`.
    #[serde(default)]
    pub e_tag: Option<String>,
    #[serde(default, deserialize_with = "lenient_object")]
    pub(crate) customer_profile: Option<CustomerProfile>,
    #[serde(default, deserialize_with = "lenient_object")]
    pub(crate) details: Option<ReferralDetails>,
}

impl Referral {
    /// When the referral last changed; a referral without `updatedDateTime` changed when created.
    pub(crate) fn updated_at(&self) -> DateTime<Utc> {
        self.updated_date_time.unwrap_or(self.created_date_time)
    }

    pub fn customer_name(&self) -> Option<&str> {
        self.customer_profile.as_ref()?.name.as_deref()
    }

    pub(crate) fn customer_country(&self) -> Option<&str> {
        self.customer_profile
            .as_ref()?
            .address
            .as_ref()?
            .country
            .as_deref()
    }
}

/// A referral and the exact JSON it came from.
#[derive(Debug, Clone)]
pub struct ParsedReferral {
    pub referral: Referral,
    pub(crate) raw: String,
}

/// A record of a page that could not be read as a referral: reported, kept, and skipped.
#[derive(Debug, Clone)]
pub struct RejectedRecord {
    pub id: Option<String>,
    pub(crate) error: String,
    pub(crate) raw: String,
}

/// The longest free text kept in the typed view (the notes that become the Google lead's
/// summary). Google does not publish its limit [?]; this is far below any plausible one and far
/// above any real note. The raw JSON keeps the full text.
pub(crate) const MAX_TEXT_CHARS: usize = 10_000;

impl ParsedReferral {
    /// Reads one element of a page's `value` array; a bad one never fails its page.
    pub(crate) fn from_value(value: Value) -> Result<ParsedReferral, RejectedRecord> {
        let raw = value.to_string();
        let id = value.get("id").and_then(Value::as_str).map(str::to_string);
        Self::checked(serde_json::from_value::<Referral>(value), raw, move |_| id)
    }

    /// Reads a referral the store kept (`raw_json`, written from [`ParsedReferral::raw`]):
    /// straight into the typed view, and the text kept as it is. The planner reads every
    /// candidate this way; going through a `Value` tree and writing it back out cost more than
    /// the plan itself.
    pub(crate) fn from_stored(raw: String) -> Result<ParsedReferral, RejectedRecord> {
        let typed = serde_json::from_str::<Referral>(&raw);
        Self::checked(typed, raw, id_of)
    }

    /// The checks every referral passes, however it was read: an id, sane values.
    fn checked(
        typed: Result<Referral, serde_json::Error>,
        raw: String,
        id: impl FnOnce(&str) -> Option<String>,
    ) -> Result<ParsedReferral, RejectedRecord> {
        match typed {
            Ok(referral) if referral.id.trim().is_empty() => Err(RejectedRecord {
                id: None,
                error: "empty id".into(),
                raw,
            }),
            Ok(mut referral) => {
                sanitize(&mut referral);
                Ok(ParsedReferral { referral, raw })
            }
            Err(e) => Err(RejectedRecord {
                id: id(&raw),
                error: e.to_string(),
                raw,
            }),
        }
    }

    /// Reads one item from its own JSON text. JSON that `serde_json` cannot hold as a value
    /// (a number beyond f64 such as `1e400`, nesting deeper than 128, a lone surrogate) is
    /// rejected here, with the id when one can still be read, instead of failing the page.
    pub(crate) fn from_raw(raw: &str) -> Result<ParsedReferral, RejectedRecord> {
        match serde_json::from_str::<Value>(raw) {
            Ok(value) => Self::from_value(value),
            Err(e) => Err(RejectedRecord {
                id: id_of(raw),
                error: format!("unreadable JSON: {e}"),
                raw: raw.chars().take(MAX_TEXT_CHARS).collect(),
            }),
        }
    }
}

/// The top-level `id` of an item whose other fields are unreadable (unknown fields are
/// skipped without being decoded, so `1e400` or deep nesting elsewhere do not matter).
fn id_of(raw: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(raw).ok()?.id
}

/// Values the API may send but no one may act on: an amount that is not a finite,
/// non-negative number (`"NaN"`, `"inf"`, `"1e309"`, `-5`), and free text longer than
/// [`MAX_TEXT_CHARS`] (truncated, and said so in the log).
fn sanitize(referral: &mut Referral) {
    let id = referral.id.clone();
    let Some(details) = referral.details.as_mut() else {
        return;
    };
    if let Some(v) = details.deal_value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
        details.deal_value = None;
        details.deal_value_error = Some(format!(
            "details.dealValue is {v}, not a finite, non-negative amount"
        ));
    }
    if let Some(notes) = details.notes.as_mut() {
        if let Some((cut, _)) = notes.char_indices().nth(MAX_TEXT_CHARS) {
            tracing::warn!(
                referral_id = %id,
                field = "details.notes",
                chars_kept = MAX_TEXT_CHARS,
                "text field too long; truncated (the raw JSON keeps all of it)"
            );
            notes.truncate(cut);
        }
    }
}

/// One page of the list answer: the envelope read first, each item then on its own.
#[derive(Debug)]
pub struct RawPage {
    pub items: Vec<Result<ParsedReferral, RejectedRecord>>,
    pub next_link: Option<String>,
    /// `@odata.count` when it is a whole number (only a hint for progress: [?] whether it
    /// counts the query or the page).
    pub(crate) count: Option<u64>,
}

/// Why a list answer's envelope cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Not JSON, or not the envelope's shape: serde's words.
    #[error("{0}")]
    Json(String),
    #[error("no \"value\" array")]
    NoValue,
    #[error("@odata.nextLink is not a string: {0}")]
    NextLinkNotString(Value),
}

/// Parses a list answer. Only an unreadable envelope (not JSON, no `value` array) fails the
/// page; a bad item becomes a [`RejectedRecord`] and the rest proceed.
pub fn parse_page(body: &str) -> Result<RawPage, PageError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        value: Option<Vec<&'a serde_json::value::RawValue>>,
        #[serde(rename = "@odata.nextLink", default)]
        next_link: Option<Value>,
        #[serde(rename = "@odata.count", default)]
        count: Option<Value>,
    }
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| PageError::Json(e.to_string()))?;
    let items = envelope.value.ok_or(PageError::NoValue)?;
    let next_link = match envelope.next_link {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => return Err(PageError::NextLinkNotString(other)),
    };
    Ok(RawPage {
        items: items
            .into_iter()
            .map(|item| ParsedReferral::from_raw(item.get()))
            .collect(),
        next_link,
        count: envelope.count.as_ref().and_then(Value::as_u64),
    })
}

pub use crate::timefmt::{db_timestamp, parse_timestamp};

fn lenient_datetime<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    parse_timestamp(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("unreadable timestamp {text:?}")))
}

fn lenient_opt_datetime<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<DateTime<Utc>>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => parse_timestamp(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unreadable timestamp {s:?}"))),
    }
}

/// A number, a numeric string, or null.
fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("not a number: {s:?}"))),
        other => Err(serde::de::Error::custom(format!("not a number: {other}"))),
    }
}

/// An optional nested object; `null`, `{}`-like junk of the wrong type becomes `None` rather
/// than failing the whole referral (the raw JSON still has it).
fn lenient_object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Value::deserialize(d)?;
    if !value.is_object() {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_fixture_page() {
        let page: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/microsoft-referrals-page.json"
        ))
        .unwrap();
        let items = page["value"].as_array().unwrap();
        let first = ParsedReferral::from_value(items[0].clone())
            .unwrap()
            .referral;
        assert_eq!(first.id, "3b1f6a52-7c1e-4f0e-9d8a-2f5c6b1e4a10");
        assert_eq!(first.status, Some(ReferralStatus::New));
        assert_eq!(first.substatus, Some(ReferralSubstatus::Pending));
        assert_eq!(first.direction, Some(Direction::Incoming));
        assert_eq!(
            first.e_tag.as_deref(),
            Some("\"84001c9d-0000-0100-0000-6225a63e0000\"")
        );
        assert_eq!(first.customer_name(), Some("Fabrikam Inc"));
        assert_eq!(first.details.as_ref().unwrap().deal_value, Some(125000.0));
        assert_eq!(
            db_timestamp(first.created_date_time),
            "2026-11-10T08:14:05.875490100Z"
        );
        let second = ParsedReferral::from_value(items[1].clone())
            .unwrap()
            .referral;
        assert_eq!(second.customer_country(), Some("FR"));
        assert_eq!(second.details.unwrap().closing_date_time, None);
    }

    #[test]
    fn unknown_enums_and_fields_are_kept() {
        let parsed = ParsedReferral::from_value(json!({
            "id": "r1", "createdDateTime": "2026-11-10T08:14:05",
            "status": "Paused", "substatus": "OnHold", "brandNewField": {"x": 1},
            "details": {"dealValue": "1500.50"}, "customerProfile": {"ids": {}, "address": []}
        }))
        .unwrap();
        assert_eq!(
            parsed.referral.status,
            Some(ReferralStatus::Other("Paused".into()))
        );
        assert_eq!(
            parsed.referral.substatus.as_ref().unwrap().as_str(),
            "OnHold"
        );
        assert_eq!(parsed.referral.details.unwrap().deal_value, Some(1500.5));
        assert!(parsed.raw.contains("brandNewField"));
    }

    #[test]
    fn long_notes_are_truncated_and_unusable_amounts_named() {
        let parsed = ParsedReferral::from_value(json!({
            "id": "r3", "createdDateTime": "2026-11-10T08:14:05Z",
            "details": {"notes": "é".repeat(MAX_TEXT_CHARS + 5), "dealValue": "NaN"}
        }))
        .unwrap();
        let details = parsed.referral.details.unwrap();
        assert_eq!(details.notes.unwrap().chars().count(), MAX_TEXT_CHARS);
        assert_eq!(details.deal_value, None);
        assert!(details
            .deal_value_error
            .unwrap()
            .starts_with("details.dealValue is NaN"));
        assert!(
            parsed.raw.len() > MAX_TEXT_CHARS * 2,
            "the raw JSON keeps it all"
        );
    }

    /// A random value for a referral field: the shapes the API sends and the hostile ones.
    fn hostile(rng: &mut fastrand::Rng) -> Value {
        match rng.u8(..10) {
            0 => Value::Null,
            1 => json!(rng.f64() * 1e9),
            2 => json!(["NaN", "inf", "-5", "1e309", "12.5", ""][rng.usize(..6)]),
            3 => json!(rng.i64(..)),
            4 => json!("é".repeat(rng.usize(..3) * MAX_TEXT_CHARS / 2 + 1)),
            5 => json!({"nested": [1, "two", null, {"x": rng.bool()}]}),
            6 => json!(
                [
                    "2026-11-10T08:14:05Z",
                    "2026-11-10",
                    "yesterday",
                    "2026-11-10T08:14:05.1234567"
                ][rng.usize(..4)]
            ),
            7 => json!(rng.bool()),
            8 => json!(
                ["New", "Active", "Closed", "Paused", "Pending", "Incoming", ""][rng.usize(..7)]
            ),
            _ => json!(format!("text-{}", rng.u32(..))),
        }
    }

    /// The planner reads stored referrals with `from_stored` (straight into the typed view);
    /// the pull reads them with `from_value`. Over generated referrals, hostile values
    /// included, both read the same stored text the same way: same typed view, same text,
    /// same rejection.
    #[test]
    fn a_stored_referral_reads_back_as_the_pull_read_it() {
        let mut rng = fastrand::Rng::with_seed(20);
        let now = chrono::Utc::now();
        let fields = [
            "/status",
            "/substatus",
            "/direction",
            "/name",
            "/externalReferenceId",
            "/createdDateTime",
            "/updatedDateTime",
            "/expirationDateTime",
            "/details/dealValue",
            "/details/currency",
            "/details/closingDateTime",
            "/details/notes",
            "/customerProfile/name",
            "/customerProfile/address",
            "/id",
            "/eTag",
        ];
        let inbox = crate::sim::sample::pending_inbox(50, now);
        let (mut read, mut rejected) = (0, 0);
        for case in 0..2_000 {
            let mut value = inbox[case % inbox.len()].clone();
            for _ in 0..rng.usize(..4) {
                let path = fields[rng.usize(..fields.len())];
                let (parent, key) = path.rsplit_once('/').unwrap();
                if let Some(Value::Object(map)) = value.pointer_mut(parent) {
                    map.insert(key.to_string(), hostile(&mut rng));
                }
            }
            let pulled = ParsedReferral::from_value(value);
            let stored_text = match &pulled {
                Ok(p) => p.raw.clone(),
                Err(r) => r.raw.clone(),
            };
            let stored = ParsedReferral::from_stored(stored_text);
            match (pulled, stored) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(format!("{:?}", a.referral), format!("{:?}", b.referral));
                    assert_eq!(a.raw, b.raw);
                    read += 1;
                }
                (Err(a), Err(b)) => {
                    assert_eq!(a.id, b.id, "case {case}");
                    rejected += 1;
                }
                (a, b) => panic!("case {case}: the pull read {a:?}, the store read {b:?}"),
            }
        }
        assert!(
            read > 500 && rejected > 100,
            "read {read}, rejected {rejected}"
        );
    }

    #[test]
    fn a_broken_record_is_rejected_with_its_id() {
        let err = ParsedReferral::from_value(json!({"id": "r2", "createdDateTime": "yesterday"}))
            .unwrap_err();
        assert_eq!(err.id.as_deref(), Some("r2"));
        assert!(err.error.contains("unreadable timestamp"), "{}", err.error);
        assert!(ParsedReferral::from_value(json!("not an object")).is_err());
        assert!(
            ParsedReferral::from_value(json!({"createdDateTime": "2026-01-01T00:00:00Z"})).is_err()
        );
    }
}
