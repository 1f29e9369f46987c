//! Leads and opportunities as the daemon reads them, with the raw JSON kept. Lenient where the
//! reference is unsure: enum values are strings (unknown ones kept), int64 fields may come as
//! strings or numbers, dates are `google.type.Date` (`{year, month, day}`, 0 = unspecified).

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `google.type.Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GoogleDate {
    #[serde(default)]
    pub(crate) year: i32,
    #[serde(default)]
    pub(crate) month: u32,
    #[serde(default)]
    pub(crate) day: u32,
}

impl GoogleDate {
    pub(crate) fn from_naive(d: NaiveDate) -> Self {
        GoogleDate {
            year: d.year(),
            month: d.month(),
            day: d.day(),
        }
    }

    /// A full date, or `None` when a part is unspecified (0).
    pub(crate) fn to_naive(self) -> Option<NaiveDate> {
        NaiveDate::from_ymd_opt(self.year, self.month, self.day)
    }

    pub(crate) fn parse(value: &Value) -> Option<NaiveDate> {
        serde_json::from_value::<GoogleDate>(value.clone())
            .ok()
            .and_then(GoogleDate::to_naive)
    }

    pub(crate) fn json(d: NaiveDate) -> Value {
        serde_json::to_value(Self::from_naive(d)).expect("date serializes")
    }
}

/// An int64 field: JSON string per the API (`"12"`), a number tolerated.
pub(crate) fn int64(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.trim().parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

fn text(value: &Value, key: &str) -> Option<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Why a Google answer is not a lead or opportunity this daemon can read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum RecordError {
    /// `lead` or `opportunity`.
    #[error("{0} without a name")]
    NoName(&'static str),
    #[error("dealSize {0:?} is not a number")]
    DealSizeText(String),
    #[error("dealSize {0} is not a number")]
    DealSizeValue(Value),
}

#[derive(Debug, Clone)]
pub(crate) struct Lead {
    pub(crate) name: String,
    pub(crate) external_system_id: Option<String>,
    pub(crate) lead_status: Option<String>,
    pub(crate) approval_status: Option<String>,
    pub(crate) raw: String,
}

impl Lead {
    pub(crate) fn from_value(value: &Value) -> Result<Lead, RecordError> {
        let name = text(value, "name").ok_or(RecordError::NoName("lead"))?;
        Ok(Lead {
            name,
            external_system_id: text(value, "externalSystemId"),
            lead_status: text(value, "leadStatus"),
            approval_status: text(value, "leadApprovalStatus"),
            raw: value.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Opportunity {
    pub(crate) name: String,
    pub(crate) sales_stage: Option<String>,
    pub(crate) deal_size: Option<f64>,
    pub(crate) close_date: Option<NaiveDate>,
    pub(crate) external_system_id: Option<String>,
    pub(crate) raw: String,
}

impl Opportunity {
    pub(crate) fn from_value(value: &Value) -> Result<Opportunity, RecordError> {
        let name = text(value, "name").ok_or(RecordError::NoName("opportunity"))?;
        let deal_size = match value.get("dealSize") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => Some(
                s.parse()
                    .map_err(|_| RecordError::DealSizeText(s.clone()))?,
            ),
            Some(other) => return Err(RecordError::DealSizeValue(other.clone())),
        };
        Ok(Opportunity {
            name,
            sales_stage: text(value, "salesStage"),
            deal_size,
            close_date: value.get("closeDate").and_then(GoogleDate::parse),
            external_system_id: text(value, "externalSystemId"),
            raw: value.to_string(),
        })
    }
}

/// `partners/{p}/leads/{l}` or `partners/{p}/opportunities/{o}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceKind {
    Lead,
    Opportunity,
}

/// Checks a resource name's shape and tells which kind it is.
pub(crate) fn resource_kind(name: &str) -> Option<ResourceKind> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["partners", p, "leads", l] if !p.is_empty() && !l.is_empty() => Some(ResourceKind::Lead),
        ["partners", p, "opportunities", o] if !p.is_empty() && !o.is_empty() => {
            Some(ResourceKind::Opportunity)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_the_opportunity_fixture() {
        let v: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/google-opportunity.json"))
                .unwrap();
        let o = Opportunity::from_value(&v).unwrap();
        assert_eq!(o.name, "partners/1234567/opportunities/42");
        assert_eq!(o.deal_size, Some(125000.0));
        assert_eq!(o.close_date, NaiveDate::from_ymd_opt(2027, 2, 28));
        assert_eq!(o.sales_stage.as_deref(), Some("SALES_STAGE_QUALIFY"));
    }

    #[test]
    fn dates_and_int64_round_trip() {
        let d = NaiveDate::from_ymd_opt(2027, 2, 28).unwrap();
        assert_eq!(
            GoogleDate::json(d),
            json!({"year": 2027, "month": 2, "day": 28})
        );
        assert_eq!(
            GoogleDate::parse(&json!({"year": 2027, "month": 0, "day": 0})),
            None
        );
        assert_eq!(int64(&json!("20")), Some(20));
        assert_eq!(int64(&json!(20)), Some(20));
        assert_eq!(int64(&json!("x")), None);
    }

    #[test]
    fn resource_names_are_checked() {
        assert_eq!(
            resource_kind("partners/1/leads/2"),
            Some(ResourceKind::Lead)
        );
        assert_eq!(
            resource_kind("partners/1/opportunities/2"),
            Some(ResourceKind::Opportunity)
        );
        assert_eq!(resource_kind("partners/1/leads/"), None);
        assert_eq!(resource_kind("leads/2"), None);
    }
}
