//! Realistic sample referrals for the simulator, shaped like the documented payloads
//! (`tests/fixtures/microsoft-referrals-page.json`), deterministic for a given index and clock.

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::timefmt::db_timestamp;

const CUSTOMERS: &[(&str, &str, &str)] = &[
    ("Fabrikam Inc", "Seattle", "US"),
    ("Contoso Retail", "Lyon", "FR"),
    ("Northwind Traders", "London", "GB"),
    ("Adventure Works", "Munich", "DE"),
    ("Tailspin Toys", "Toronto", "CA"),
    ("Wide World Importers", "Sydney", "AU"),
    ("Woodgrove Bank", "New York", "US"),
    ("Litware Health", "Madrid", "ES"),
    ("Proseware Logistics", "Rotterdam", "NL"),
    ("O'Brien & Daughters", "Dublin", "IE"),
];
const NEEDS: &[(&str, &str)] = &[
    ("Data platform modernisation", "Azure"),
    ("Analytics and BI rollout", "PowerBI"),
    ("Move SAP to the cloud", "Azure"),
    ("Secure remote work", "Microsoft365"),
    ("AI assistant for support", "AzureOpenAI"),
];

/// A stable GUID-shaped id for sample number `i`.
pub fn referral_id(i: usize) -> String {
    format!("5a3e{:04x}-7c1e-4f0e-9d8a-{:012x}", i % 0xffff, i)
}

/// One incoming referral, created `age` before `now`, in the given status.
pub fn referral(
    i: usize,
    now: DateTime<Utc>,
    age: Duration,
    status: &str,
    substatus: &str,
) -> Value {
    let (customer, city, country) = CUSTOMERS[i % CUSTOMERS.len()];
    let (need, product) = NEEDS[i % NEEDS.len()];
    let created = now - age;
    let value = 5_000.0 + ((i * 7919) % 200) as f64 * 1_250.0;
    json!({
        "id": referral_id(i),
        "engagementId": format!("e7c0{:04x}-51b8-4c3e-8f21-{:012x}", i % 0xffff, i),
        "organizationId": "11aa22bb-33cc-44dd-55ee-66ff77aa88bb",
        "organizationName": "Northwind Cloud Partners",
        "name": format!("{customer} - {need}"),
        "externalReferenceId": null,
        "createdDateTime": db_timestamp(created),
        "updatedDateTime": db_timestamp(created),
        "expirationDateTime": null,
        "status": status,
        "substatus": substatus,
        "statusReason": null,
        "type": if i.is_multiple_of(3) { "Independent" } else { "Shared" },
        "qualification": if i.is_multiple_of(3) { "Direct" } else { "SalesQualified" },
        "direction": "Incoming",
        "salesStage": null,
        "eTag": format!("\"{}\"", uuid::Uuid::new_v4()),
        "customerProfile": {
            "name": customer,
            "address": {"addressLine1": format!("{} Main Street", i + 1), "city": city, "country": country},
            "size": "51to500employees",
            "team": [{"firstName": "Dana", "lastName": "Lee", "email": format!("contact{i}@customer.example")}],
            "ids": [{"profileType": "External", "id": format!("CUST-{i:05}")}]
        },
        "consent": {"consentToToShareInfoWithOthers": true, "consentToContact": true, "consentToShareReferralWithMicrosoftSellers": true},
        "details": {
            "notes": format!("{customer} asks for help with: {need}."),
            "dealValue": value,
            "currency": if country == "US" { "USD" } else { "EUR" },
            "closingDateTime": db_timestamp(created + Duration::days(120)),
            "customerRequestedContact": i.is_multiple_of(2),
            "requirements": {"products": [{"id": product}], "solutions": [{"id": format!("SOL-{product}"), "name": need, "type": "None"}]}
        },
        "inviteContext": {"invitedBy": {"organizationId": "msft", "organizationName": "Microsoft"}, "assistanceRequestCode": "GeneralOrOther"},
        "target": [{"type": "BusinessProfileLocation", "id": "msft"}],
        "tags": [],
        "favorite": false
    })
}

/// An inbox of `n` incoming Pending referrals spread over the 14-day window.
pub fn pending_inbox(n: usize, now: DateTime<Utc>) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let age = Duration::minutes(((i * 4957) % (13 * 24 * 60)) as i64 + 30);
            referral(i, now, age, "New", "Pending")
        })
        .collect()
}

/// The demo's mix: an inbox of `n` with referrals just inside each alert threshold (72h, 24h,
/// 4h left), one past its deadline, one with an explicit `expirationDateTime`, plus a few
/// already answered (Received, Accepted, Declined) that only the incremental query sees.
pub fn demo_set(n: usize, now: DateTime<Utc>) -> Vec<Value> {
    let mut all = pending_inbox(n.max(5), now);
    let window = Duration::days(14);
    for (slot, left) in [Duration::hours(70), Duration::hours(20), Duration::hours(3)]
        .into_iter()
        .enumerate()
    {
        all[slot] = referral(slot, now, window - left, "New", "Pending");
    }
    all[3] = referral(3, now, window + Duration::hours(2), "New", "Pending");
    all[4]["expirationDateTime"] = json!(db_timestamp(now + Duration::days(5)));
    let base = all.len();
    for (k, (status, substatus)) in [
        ("New", "Received"),
        ("Active", "Accepted"),
        ("Closed", "Declined"),
    ]
    .into_iter()
    .enumerate()
    {
        all.push(referral(
            base + k,
            now,
            Duration::days(2 + k as i64),
            status,
            substatus,
        ));
    }
    all
}
