//! Referral → Google lead (pure): every field the Lead reference marks Required, from the
//! referral where it has the value and from `[google.lead]` otherwise. A referral that cannot
//! make a valid lead gets the name of what is missing instead of a half-filled request.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::config::GoogleLeadConfig;
use crate::google::GoogleDate;
use crate::microsoft::Referral;

/// Why a referral cannot make a valid lead: the missing field, as a person reads it (the
/// `forward_blocked` alert's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unmappable {
    #[error("customerProfile.name is missing")]
    NoCustomer,
    /// `details.dealValue` holds something that is not an amount: why, in the parser's words.
    #[error("{0}")]
    UnusableDealValue(String),
    #[error("details.dealValue is missing and google.lead.default_deal_value is not set")]
    NoDealValue,
    #[error("details.currency is missing and google.lead.default_currency is not set")]
    NoCurrency,
    #[error("details.closingDateTime is missing and google.lead.default_close_in is not set")]
    NoCloseDate,
    #[error("google.lead.submitter_email is not set")]
    NoSubmitter,
    /// The referral's Microsoft products and solutions, none of them mapped.
    #[error("no Google product family for Microsoft products/solutions [{}]; set google.lead.product_family or add them to google.lead.product_families", .0.join(", "))]
    NoProductFamily(Vec<String>),
}

/// Builds the `leads.create` body for a referral.
pub(crate) fn lead_for(
    referral: &Referral,
    raw: &Value,
    defaults: &GoogleLeadConfig,
    now: DateTime<Utc>,
) -> Result<Value, Unmappable> {
    let details = referral.details.clone().unwrap_or_default();
    let customer = referral
        .customer_name()
        .filter(|n| !n.trim().is_empty())
        .ok_or(Unmappable::NoCustomer)?;
    if let Some(unusable) = &details.deal_value_error {
        // Never replaced by a default nor sent as null: a person must correct it.
        return Err(Unmappable::UnusableDealValue(unusable.clone()));
    }
    let value = details
        .deal_value
        .or(defaults.default_deal_value)
        .ok_or(Unmappable::NoDealValue)?;
    let currency = details
        .currency
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| defaults.default_currency.clone())
        .ok_or(Unmappable::NoCurrency)?;
    let close = match details.closing_date_time {
        Some(t) => t.date_naive(),
        None => {
            let within = defaults.default_close_in.ok_or(Unmappable::NoCloseDate)?;
            (now + within.as_chrono()).date_naive()
        }
    };
    let submitter = defaults
        .submitter_email
        .clone()
        .ok_or(Unmappable::NoSubmitter)?;
    let product = product_family(raw, defaults)
        .ok_or_else(|| Unmappable::NoProductFamily(microsoft_products(raw)))?;
    let title = referral
        .name
        .clone()
        .unwrap_or_else(|| customer.to_string());
    let summary = details
        .notes
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("Microsoft co-sell referral: {title}"));

    let mut customer_obj = Map::new();
    customer_obj.insert(defaults.customer_name_field.clone(), json!(customer));
    let mut lead = json!({
        "engagementModel": defaults.engagement_model,
        "dealTransactionType": defaults.deal_transaction_type,
        "customer": Value::Object(customer_obj),
        "partnerAnnualContractValue": value,
        "leadCurrencyCode": currency,
        "estimatedCloseDate": GoogleDate::json(close),
        "dealTerm": defaults.deal_term,
        "opportunitySummary": summary,
        "supportLevel": defaults.support_level,
        "productInterests": [product],
        "submitterEmail": submitter,
        "externalSystemId": referral.id,
        "description": format!("Microsoft co-sell referral {}: {title}", referral.id),
        "customerContactRequested": raw["details"]["customerRequestedContact"].as_bool().unwrap_or(false),
        "deliveryModel": defaults.delivery_model,
        "contractVehicle": defaults.contract_vehicle,
        "isvSolutionConnectDeal": defaults.isv_solution_connect_deal,
    });
    if let Some(confidential) = defaults.is_confidential {
        lead["isConfidential"] = json!(confidential);
    }
    Ok(lead)
}

fn microsoft_products(raw: &Value) -> Vec<String> {
    let requirements = &raw["details"]["requirements"];
    ["products", "solutions"]
        .iter()
        .flat_map(|k| requirements[k].as_array().into_iter().flatten())
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect()
}

fn product_family(raw: &Value, defaults: &GoogleLeadConfig) -> Option<String> {
    microsoft_products(raw)
        .iter()
        .find_map(|p| defaults.product_families.get(p).cloned())
        .or_else(|| defaults.product_family.clone())
        .filter(|f| !f.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::microsoft::ParsedReferral;

    fn fixture(i: usize) -> ParsedReferral {
        let page: Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/microsoft-referrals-page.json"
        ))
        .unwrap();
        ParsedReferral::from_value(page["value"][i].clone()).unwrap()
    }

    fn defaults() -> GoogleLeadConfig {
        GoogleLeadConfig {
            submitter_email: Some("cosell@northwind.example".into()),
            product_families: [("Azure".to_string(), "GOOGLE_CLOUD_PLATFORM".to_string())].into(),
            ..GoogleLeadConfig::default()
        }
    }

    #[test]
    fn the_fixture_referral_makes_the_fixture_lead() {
        let r = fixture(0);
        let raw: Value = serde_json::from_str(&r.raw).unwrap();
        let lead = lead_for(&r.referral, &raw, &defaults(), Utc::now()).unwrap();
        let expected: Value =
            serde_json::from_str(include_str!("../../tests/fixtures/google-lead-create.json"))
                .unwrap();
        let expected = &expected["request"];
        for key in [
            "engagementModel",
            "dealTransactionType",
            "partnerAnnualContractValue",
            "leadCurrencyCode",
            "estimatedCloseDate",
            "dealTerm",
            "opportunitySummary",
            "supportLevel",
            "submitterEmail",
            "externalSystemId",
            "description",
            "customerContactRequested",
            "deliveryModel",
            "contractVehicle",
            "isvSolutionConnectDeal",
        ] {
            assert_eq!(lead[key], expected[key], "{key}");
        }
        assert_eq!(lead["productInterests"], json!(["GOOGLE_CLOUD_PLATFORM"]));
        assert_eq!(
            lead["customer"],
            json!({"organizationName": "Fabrikam Inc"})
        );
    }

    #[test]
    fn a_referral_without_close_date_is_reported_by_field() {
        let r = fixture(1);
        let raw: Value = serde_json::from_str(&r.raw).unwrap();
        let mut d = defaults();
        d.product_family = Some("GOOGLE_WORKSPACE".into());
        let err = lead_for(&r.referral, &raw, &d, Utc::now())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("details.closingDateTime is missing"),
            "{err}"
        );
        d.default_close_in = Some(crate::config::HumanDuration::secs(90 * 86_400));
        let lead = lead_for(&r.referral, &raw, &d, Utc::now()).unwrap();
        assert_eq!(lead["productInterests"], json!(["GOOGLE_WORKSPACE"]));
        assert_eq!(lead["partnerAnnualContractValue"], json!(0.0));
    }

    #[test]
    fn an_unmapped_product_is_reported() {
        let r = fixture(0);
        let raw: Value = serde_json::from_str(&r.raw).unwrap();
        let mut d = defaults();
        d.product_families.clear();
        let err = lead_for(&r.referral, &raw, &d, Utc::now())
            .unwrap_err()
            .to_string();
        assert!(err.contains("[Azure, SOL-DataPlatform]"), "{err}");
    }
}
