//! What the rules read of a referral, source-neutral (spec §7's table): one plain view that
//! each source fills from its own record — Microsoft's referral JSON here, an AWS invitation
//! later — so the evaluator never knows which cloud a referral came from. A field the record
//! lacks is `None`, and a `None` never satisfies a condition (not even a `not_` one).

use serde_json::Value;

/// Where a referral comes from: `"microsoft"` or `"aws"`, as rules and alerts name it.
pub(crate) const MICROSOFT: &str = "microsoft";

/// A deal value in its currency.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Money {
    pub(crate) amount: f64,
    pub(crate) currency: String,
}

/// The fields the rules' conditions read.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Facts {
    pub(crate) source: &'static str,
    /// ISO 3166 alpha-2, as the record has it.
    pub(crate) country: Option<String>,
    /// Only when the record has both a finite amount and a currency.
    pub(crate) value: Option<Money>,
    pub(crate) industries: Option<Vec<String>>,
    pub(crate) solutions: Option<Vec<String>>,
    pub(crate) products: Option<Vec<String>>,
    pub(crate) qualification: Option<String>,
    pub(crate) invited_by: Option<String>,
    pub(crate) customer: Option<String>,
}

impl Facts {
    /// A Partner Center referral's fields (spec §7, the Microsoft column), from its raw JSON:
    /// whatever shape a field arrives in, a value of the wrong type is "lacking", never a panic.
    pub(crate) fn microsoft(raw: &Value) -> Facts {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        let profile = raw.get("customerProfile");
        let details = raw.get("details");
        let requirements = details.and_then(|d| d.get("requirements"));
        let ids = |key: &str| -> Option<Vec<String>> {
            let list = requirements?.get(key)?.as_array()?;
            Some(
                list.iter()
                    .filter_map(|e| e.get("id").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect(),
            )
        };
        let amount = details
            .and_then(|d| d.get("dealValue"))
            .and_then(|v| match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            });
        let currency = text(details.and_then(|d| d.get("currency")));
        let value = match (amount, currency) {
            (Some(amount), Some(currency)) if amount.is_finite() => {
                Some(Money { amount, currency })
            }
            _ => None,
        };
        Facts {
            source: MICROSOFT,
            country: text(
                profile
                    .and_then(|p| p.get("address"))
                    .and_then(|a| a.get("country")),
            ),
            value,
            industries: ids("industries"),
            solutions: ids("solutions"),
            products: ids("products"),
            qualification: text(raw.get("qualification")),
            invited_by: text(
                raw.get("inviteContext")
                    .and_then(|c| c.get("invitedBy"))
                    .and_then(|i| i.get("organizationId")),
            ),
            customer: text(profile.and_then(|p| p.get("name"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_referral_fills_every_field_and_a_missing_or_mistyped_one_is_none() {
        let now = chrono::Utc::now();
        let raw = crate::sim::sample::referral(0, now, chrono::Duration::days(1), "New", "Pending");
        let f = Facts::microsoft(&raw);
        assert_eq!(f.source, "microsoft");
        assert_eq!(f.country.as_deref(), Some("US"));
        assert_eq!(f.value.as_ref().map(|m| m.currency.as_str()), Some("USD"));
        assert_eq!(f.products, Some(vec!["Azure".to_string()]));
        assert_eq!(f.solutions, Some(vec!["SOL-Azure".to_string()]));
        assert_eq!(f.industries, None, "the sample has no industries");
        assert_eq!(f.qualification.as_deref(), Some("Direct"));
        assert_eq!(f.invited_by.as_deref(), Some("msft"));
        assert_eq!(f.customer.as_deref(), Some("Fabrikam Inc"));

        let odd = json!({
            "customerProfile": {"name": 7, "address": "Main Street"},
            "details": {"dealValue": "12.5", "currency": null,
                        "requirements": {"industries": [{"id": "Retail"}, {"name": "x"}, 3]}},
            "qualification": ["Direct"],
            "inviteContext": {"invitedBy": null}
        });
        let f = Facts::microsoft(&odd);
        assert_eq!(
            f,
            Facts {
                source: MICROSOFT,
                industries: Some(vec!["Retail".into()]),
                ..Facts::default()
            },
            "a value without its currency is no value"
        );
        assert_eq!(Facts::microsoft(&json!(null)).customer, None);
    }
}
