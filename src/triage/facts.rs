//! What the rules read of a referral, source-neutral (spec §7's table): one plain view that
//! each source fills from its own record — Microsoft's referral JSON or an AWS invitation's
//! `GetEngagementInvitation` answer — so the evaluator never knows which cloud a referral came
//! from. A field the record
//! lacks is `None`, and a `None` never satisfies a condition (not even a `not_` one).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Where a referral comes from: `"microsoft"` or `"aws"`, as rules and alerts name it.
pub(crate) const MICROSOFT: &str = crate::store::invitations::MICROSOFT;
/// An AWS engagement invitation (spec §8).
pub(crate) const AWS: &str = crate::store::invitations::AWS;

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

impl Facts {
    /// An AWS invitation's fields (spec §7, the AWS column), from its stored
    /// `GetEngagementInvitation` answer: the customer of whichever payload type it carries
    /// (`Payload.*.Customer`), the yearly value of an opportunity's expected spend. AWS has no
    /// solutions, products, qualification or inviter: a condition on them never holds.
    pub(crate) fn aws(raw: &Value) -> Facts {
        let customer = raw
            .get("Payload")
            .and_then(Value::as_object)
            .and_then(|payload| payload.values().find_map(|p| p.get("Customer")));
        let text = |key: &str| {
            customer
                .and_then(|c| c.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Facts {
            source: AWS,
            country: text("CountryCode"),
            value: crate::aws::model::yearly_spend(raw)
                .map(|(amount, currency)| Money { amount, currency }),
            industries: text("Industry").map(|i| vec![i]),
            customer: text("CompanyName"),
            ..Facts::default()
        }
    }

    /// The facts of a stored record of `source` (`referrals.source`).
    pub(crate) fn of_stored(source: &str, raw: &str) -> Facts {
        match source {
            AWS => Facts::aws(&serde_json::from_str(raw).unwrap_or_default()),
            _ => Facts::microsoft_text(raw),
        }
    }
}

/// The parts of a referral's JSON the rules read, borrowed unparsed: the rest (notes, team,
/// consent, targets…) is skipped rather than built into a tree, which is most of the cost of
/// deciding a stored inbox every cycle.
#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(borrow, rename = "customerProfile")]
    customer_profile: Option<&'a RawValue>,
    #[serde(borrow)]
    details: Option<&'a RawValue>,
    #[serde(borrow)]
    qualification: Option<&'a RawValue>,
    #[serde(borrow, rename = "inviteContext")]
    invite_context: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ProfileParts<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    address: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct DetailsParts<'a> {
    #[serde(borrow, rename = "dealValue")]
    deal_value: Option<&'a RawValue>,
    #[serde(borrow)]
    currency: Option<&'a RawValue>,
    #[serde(borrow)]
    requirements: Option<&'a RawValue>,
}

impl Facts {
    /// [`Facts::microsoft`] of a stored referral's JSON text, reading only the fields the
    /// rules use; the same facts whatever the text (a test holds the two equal).
    pub(crate) fn microsoft_text(raw: &str) -> Facts {
        let Ok(parts) = serde_json::from_str::<Parts>(raw) else {
            return Facts::microsoft(&serde_json::from_str(raw).unwrap_or_default());
        };
        let mut top = Map::new();
        let parse = |r: &RawValue| serde_json::from_str::<Value>(r.get()).unwrap_or_default();
        if let Some(p) = parts.customer_profile {
            let profile = match serde_json::from_str::<ProfileParts>(p.get()) {
                Ok(pp) => slim([("name", pp.name), ("address", pp.address)]),
                Err(_) => parse(p),
            };
            top.insert("customerProfile".into(), profile);
        }
        if let Some(d) = parts.details {
            let details = match serde_json::from_str::<DetailsParts>(d.get()) {
                Ok(dp) => slim([
                    ("dealValue", dp.deal_value),
                    ("currency", dp.currency),
                    ("requirements", dp.requirements),
                ]),
                Err(_) => parse(d),
            };
            top.insert("details".into(), details);
        }
        for (key, part) in [
            ("qualification", parts.qualification),
            ("inviteContext", parts.invite_context),
        ] {
            if let Some(v) = part {
                top.insert(key.into(), parse(v));
            }
        }
        Facts::microsoft(&Value::Object(top))
    }
}

/// An object of the named parts that are present, each parsed.
fn slim<const N: usize>(fields: [(&str, Option<&RawValue>); N]) -> Value {
    let mut out = Map::new();
    for (key, part) in fields {
        if let Some(r) = part {
            out.insert(
                key.into(),
                serde_json::from_str(r.get()).unwrap_or_default(),
            );
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_invitation_fills_the_aws_column_and_lacks_the_rest() {
        let opportunity = json!({"Id": "engi-0000000000002", "Payload": {"OpportunityInvitation": {
            "Customer": {"CompanyName": "Tailspin Toys", "CountryCode": "US"},
            "Project": {"ExpectedCustomerSpend": [
                {"Amount": "1000.5", "CurrencyCode": "USD", "Frequency": "Monthly"},
                {"Amount": 500, "CurrencyCode": "USD", "Frequency": "Monthly"}]}}}});
        let f = Facts::aws(&opportunity);
        assert_eq!(f.source, "aws");
        assert_eq!(
            f.value,
            Some(Money {
                amount: 12.0 * 1500.5,
                currency: "USD".into()
            })
        );
        assert_eq!(f.solutions, None);
        assert_eq!(f.invited_by, None);
        let lead = json!({"Id": "engi-0000000000001", "Payload": {"LeadInvitation": {
            "Customer": {"CompanyName": "Contoso", "CountryCode": "DE",
                         "Industry": "Retail"}}}});
        let f = Facts::aws(&lead);
        assert_eq!(f.customer.as_deref(), Some("Contoso"));
        assert_eq!(f.country.as_deref(), Some("DE"));
        assert_eq!(f.industries, Some(vec!["Retail".to_string()]));
        assert_eq!(f.value, None, "a lead invitation has no value");
        let odd = json!({"Payload": {"OpportunityInvitation": {"Customer": {"CompanyName": 7}}}});
        assert_eq!(
            Facts::aws(&odd),
            Facts {
                source: AWS,
                ..Facts::default()
            }
        );
        assert_eq!(Facts::of_stored("aws", "not json").source, "aws");
    }

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

    /// The text path reads the same facts as the tree, whatever the shapes (generated).
    #[test]
    fn the_text_path_reads_what_the_tree_reads() {
        let now = chrono::Utc::now();
        let shapes = [
            json!(null),
            json!("x"),
            json!(7),
            json!([1, {"id": "Azure"}]),
            json!({"id": "Retail"}),
            json!({"name": "日\u{0}", "address": {"country": "de"}}),
            json!({"dealValue": "12.5", "currency": "EUR", "requirements": {"products": [{"id": "Azure"}]}}),
            json!({"invitedBy": {"organizationId": "msft"}}),
        ];
        let keys = [
            "customerProfile",
            "details",
            "qualification",
            "inviteContext",
            "name",
        ];
        let mut rng = fastrand::Rng::with_seed(31);
        for i in 0..3_000 {
            let mut raw =
                crate::sim::sample::referral(i, now, chrono::Duration::days(1), "New", "Pending");
            for _ in 0..rng.usize(0..4) {
                let key = keys[rng.usize(..keys.len())];
                raw[key] = shapes[rng.usize(..shapes.len())].clone();
            }
            if rng.u8(0..10) == 0 && raw["details"].is_object() {
                raw["details"]["notes"] = json!(crate::config::hostile_text(&mut rng, 40));
            }
            let text = raw.to_string();
            assert_eq!(
                Facts::microsoft_text(&text),
                Facts::microsoft(&raw),
                "{text}"
            );
        }
        for junk in ["", "null", "[]", "{", "{\"details\": {\"dealValue\": }"] {
            assert_eq!(Facts::microsoft_text(junk).customer, None);
        }
    }
}
