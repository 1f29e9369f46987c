//! Recovery from Partner Center (spec §2 "Forward", issue 15): Google has no list and no
//! lookup by `externalSystemId`, so the write-back into a referral's `externalReferenceId` is
//! the one durable record of a link outside the database. A referral that names a Google
//! record of this partner, and that the database does not link (a lost database, a restored
//! backup), is *adopted*: the record is read, its `externalSystemId` checked against the
//! referral, and the link stored — never a create, never an overwrite of the name. A name
//! that does not resolve, or resolves to another referral's record, is a dead action (an
//! `action_failed` alert) for a person.
//!
//! This module owns the pure test of a name ([`named_record`]), the adoption executor
//! ([`adopt_link`]) and the guard every lead create passes first ([`guard_create`]).

use chrono::Utc;

use super::push::{failure, finish};
use super::reconcile::Action;
use super::GoogleSide;
use crate::google::model::{resource_kind, ResourceKind};
use crate::http::{with_retry, ApiError, RetryPolicy};
use crate::microsoft::MicrosoftClient;
use crate::store::google as gstore;
use crate::store::outbox::{self, OutboxRow, Outcome, ADOPT_LINK};
use crate::store::{referrals, schedule, Store, StoreError};

/// What a referral's `externalReferenceId` names.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Named {
    /// A lead or opportunity of this partner: adopt it.
    Ours(String),
    /// A Google record of another partner: never overwritten, never a create.
    OtherPartner(String),
    /// Nothing Google (empty, or some other system's reference).
    Nothing,
}

/// Reads `externalReferenceId` (pure): a Google resource name of `partner_id` is ours.
pub(crate) fn named_record(external_reference_id: Option<&str>, partner_id: &str) -> Named {
    let Some(name) = external_reference_id
        .map(str::trim)
        .filter(|n| !n.is_empty())
    else {
        return Named::Nothing;
    };
    if resource_kind(name).is_none() {
        return Named::Nothing;
    }
    match name.split('/').nth(1) {
        Some(p) if p == partner_id => Named::Ours(name.to_string()),
        _ => Named::OtherPartner(name.to_string()),
    }
}

/// Whether `name` looks like a Google CRM Partners resource name (of any partner): a value
/// the write-back must never overwrite with another.
pub(crate) fn is_google_name(name: &str) -> bool {
    resource_kind(name.trim()).is_some()
}

/// Executes an adoption: the record is read and linked when it names this referral.
pub(crate) async fn adopt_link(
    store: &Store,
    google: &GoogleSide,
    row: OutboxRow,
    name: String,
) -> Result<Outcome, StoreError> {
    let referral_id = row.referral_id.clone();
    let (owner, existing) = {
        let (id, n) = (referral_id.clone(), name.clone());
        store
            .call(move |c| Ok((gstore::linked_referral(c, &n)?, gstore::link(c, &id)?)))
            .await?
    };
    if let Some(other) = owner.filter(|o| *o != referral_id) {
        let error = format!(
            "externalReferenceId names {name}, which is linked to referral {other}: not linked, no lead created; a person decides (cosell-sync status --referral {referral_id})"
        );
        return finish(store, row.id, Outcome::Dead { error }, None, None).await;
    }
    if existing.is_some() {
        let reason = "already linked; nothing to adopt".to_string();
        return finish(store, row.id, Outcome::Superseded { reason }, None, None).await;
    }
    let Some(kind) = resource_kind(&name) else {
        let error = format!("{name} is not a Google resource name");
        return finish(store, row.id, Outcome::Dead { error }, None, None).await;
    };
    let read = read_record(google, &name, kind).await;
    let outcome = match read {
        Ok(record) if record.external_system_id() == Some(referral_id.as_str()) => {
            return link_adopted(store, google, row, record).await;
        }
        Ok(record) => Outcome::Dead {
            error: format!(
                "externalReferenceId names {name}, whose externalSystemId is {} (not this referral): not linked, no lead created. If it is this referral's, run `cosell-sync link {referral_id} {name}`; if not, correct externalReferenceId in Partner Center",
                record.external_system_id().unwrap_or("absent")
            ),
        },
        Err(e) if e.status() == Some(404) => Outcome::Dead {
            error: format!(
                "externalReferenceId names {name}, which does not exist in Google (404): not linked, no lead created. Correct externalReferenceId in Partner Center, or link the right record (cosell-sync link {referral_id} NAME)"
            ),
        },
        Err(e) => failure(&row, &e, &google.schedule),
    };
    if let Outcome::Dead { error } = &outcome {
        tracing::error!(referral_id = %referral_id, error, "link cannot be recovered");
    }
    finish(store, row.id, outcome, None, None).await
}

/// A record read for adoption.
enum Record {
    Lead(crate::google::Lead),
    Opportunity(crate::google::Opportunity),
}

impl Record {
    fn external_system_id(&self) -> Option<&str> {
        match self {
            Record::Lead(l) => l.external_system_id.as_deref(),
            Record::Opportunity(o) => o.external_system_id.as_deref(),
        }
    }
}

async fn read_record(
    google: &GoogleSide,
    name: &str,
    kind: ResourceKind,
) -> Result<Record, ApiError> {
    Ok(match kind {
        ResourceKind::Lead => Record::Lead(
            with_retry(&google.retry, "get lead", || google.client.get_lead(name))
                .await?
                .value,
        ),
        ResourceKind::Opportunity => Record::Opportunity(
            with_retry(&google.retry, "get opportunity", || {
                google.client.get_opportunity(name)
            })
            .await?
            .value,
        ),
    })
}

/// The record names this referral: the link, the record's copy, its refresh schedule and the
/// done row in one transaction. A lead create left pending or quarantined for this referral
/// is resolved by the lead (as `link` does): it is the lead Partner Center names.
async fn link_adopted(
    store: &Store,
    google: &GoogleSide,
    row: OutboxRow,
    record: Record,
) -> Result<Outcome, StoreError> {
    let (referral_id, id) = (row.referral_id.clone(), row.id);
    let first_check = google.refresh.min_interval;
    let name = store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = Utc::now();
            let name = match &record {
                Record::Lead(lead) => {
                    gstore::set_link(&tx, &referral_id, Some(&lead.name), None, "adopted", now)?;
                    gstore::save_lead(&tx, lead, Some(&referral_id), now)?;
                    outbox::resolve_quarantined_create(&tx, &referral_id, &lead.name, now)?;
                    lead.name.clone()
                }
                Record::Opportunity(opp) => {
                    gstore::set_link(&tx, &referral_id, None, Some(&opp.name), "adopted", now)?;
                    gstore::save_opportunity(&tx, opp, Some(&referral_id), now)?;
                    opp.name.clone()
                }
            };
            schedule::checked_fresh(&tx, &name, &referral_id, first_check, now)?;
            let done = Outcome::Done {
                result: Some(name.clone()),
            };
            outbox::finish(&tx, id, &done, None, now)?;
            tx.commit()?;
            Ok(name)
        })
        .await?;
    tracing::info!(referral_id = %row.referral_id, record = %name, "link recovered from Partner Center (externalReferenceId)");
    Ok(Outcome::Done { result: Some(name) })
}

/// Checked before every lead create is sent: a referral that already names a Google record
/// gets no create. The stored copy is trusted only when this process's own pull wrote it
/// (`fresh_since`); an older copy (a restart, a restored backup) is read again from Partner
/// Center first, since the lead may have been created and written back after that copy.
/// `Some(outcome)`: do not create (the outcome is recorded; an adoption is queued instead
/// when the name is this partner's).
pub(crate) async fn guard_create(
    store: &Store,
    (microsoft, microsoft_retry): (&MicrosoftClient, &RetryPolicy),
    google: &GoogleSide,
    row: &OutboxRow,
) -> Result<Option<Outcome>, StoreError> {
    let id = row.referral_id.clone();
    let stored = {
        let id = id.clone();
        store
            .call(move |c| referrals::reference_and_change(c, &id))
            .await?
    };
    let Some((mut reference, last_changed)) = stored else {
        return Ok(None);
    };
    if last_changed < google.fresh_since {
        match with_retry(microsoft_retry, "get referral", || {
            microsoft.get_referral(&id)
        })
        .await
        {
            Ok(fresh) => {
                reference = fresh.referral.external_reference_id.clone();
                store
                    .call(move |c| referrals::commit_page(c, &[fresh], &[], None, Utc::now()))
                    .await?;
            }
            Err(e) => {
                let outcome = failure(row, &e, &google.schedule);
                let outcome = match outcome {
                    // Never created without knowing: a dead read leaves the create waiting.
                    Outcome::Dead { error } => Outcome::Retry {
                        at: Utc::now() + chrono::Duration::minutes(5),
                        error: format!("re-reading the referral before creating: {error}"),
                    },
                    other => other,
                };
                return finish(store, row.id, outcome, None, None).await.map(Some);
            }
        }
    }
    let named = named_record(reference.as_deref(), &google.policy.partner_id);
    let (name, adopt) = match named {
        Named::Nothing => return Ok(None),
        Named::Ours(name) => (name, true),
        Named::OtherPartner(name) => (name, false),
    };
    let reason = format!(
        "not created: the referral's externalReferenceId already names {name}{}",
        if adopt {
            "; adopting it instead"
        } else {
            ", a record of another partner"
        }
    );
    let (row_id, referral_id) = (row.id, row.referral_id.clone());
    let outcome = Outcome::Superseded { reason };
    let recorded = outcome.clone();
    store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = Utc::now();
            outbox::finish(&tx, row_id, &recorded, None, now)?;
            if adopt {
                let action = Action::AdoptLink { name: name.clone() };
                let payload = super::push::encode(&action);
                outbox::enqueue(&tx, &referral_id, ADOPT_LINK, Some(&name), &payload, now)?;
            }
            schedule::mark_for_plan(&tx, &referral_id, now)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    tracing::warn!(referral_id = %row.referral_id, "lead create stopped: the referral already names a Google record");
    Ok(Some(outcome))
}

/// Whether a write-back of `/externalReferenceId` may replace `current`: never a Google name
/// other than the one being written (checked again right before the PATCH, on the stored
/// copy the PATCH's If-Match is about).
pub(crate) fn may_replace_reference(current: Option<&str>, new: &str) -> bool {
    match current.map(str::trim).filter(|c| !c.is_empty()) {
        Some(c) => c == new || !is_google_name(c),
        None => true,
    }
}

/// The write-back guard on a referral patch: `Some(why)` when one of `ops` would replace
/// the stored `externalReferenceId` that names another Google record.
pub(crate) fn reference_kept(
    stored: &serde_json::Value,
    ops: &[crate::microsoft::PatchOp],
) -> Option<String> {
    let current = stored.get("externalReferenceId").and_then(|v| v.as_str());
    ops.iter()
        .filter(|op| op.path == "/externalReferenceId")
        .find_map(|op| {
            let new = op.value.as_str().unwrap_or_default();
            (!may_replace_reference(current, new)).then(|| {
                format!(
                    "not written: externalReferenceId already names {}, another Google record than {new}",
                    current.unwrap_or_default()
                )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_strictly() {
        let cases = [
            (
                Some("partners/1/leads/7"),
                Named::Ours("partners/1/leads/7".into()),
            ),
            (
                Some(" partners/1/opportunities/9 "),
                Named::Ours("partners/1/opportunities/9".into()),
            ),
            (
                Some("partners/2/leads/7"),
                Named::OtherPartner("partners/2/leads/7".into()),
            ),
            (Some("partners/1/leads/"), Named::Nothing),
            (Some("partners/1/leads/7/x"), Named::Nothing),
            (Some("CRM-1234"), Named::Nothing),
            (Some(""), Named::Nothing),
            (None, Named::Nothing),
        ];
        for (input, expected) in cases {
            assert_eq!(named_record(input, "1"), expected, "{input:?}");
        }
    }

    #[test]
    fn generated_references_never_panic_and_only_exact_names_are_ours() {
        let mut rng = fastrand::Rng::with_seed(15);
        let parts = [
            "partners",
            "1",
            "2",
            "leads",
            "opportunities",
            "",
            "x",
            "/",
            " ",
        ];
        for _ in 0..5000 {
            let n = rng.usize(0..7);
            let text: String = (0..n)
                .map(|_| parts[rng.usize(0..parts.len())])
                .collect::<Vec<_>>()
                .join(if rng.bool() { "/" } else { "" });
            if let Named::Ours(name) = named_record(Some(&text), "1") {
                let p: Vec<&str> = name.split('/').collect();
                assert_eq!(p.len(), 4, "{text:?}");
                assert_eq!((p[0], p[1]), ("partners", "1"), "{text:?}");
                assert!(!p[3].is_empty(), "{text:?}");
            }
        }
    }

    #[test]
    fn a_google_name_is_never_replaced_by_another() {
        assert!(may_replace_reference(None, "partners/1/leads/7"));
        assert!(may_replace_reference(Some(""), "partners/1/leads/7"));
        assert!(may_replace_reference(Some("CRM-12"), "partners/1/leads/7"));
        assert!(may_replace_reference(
            Some("partners/1/leads/7"),
            "partners/1/leads/7"
        ));
        assert!(!may_replace_reference(
            Some("partners/1/leads/8"),
            "partners/1/leads/7"
        ));
        assert!(!may_replace_reference(
            Some("partners/9/opportunities/8"),
            "partners/1/leads/7"
        ));
    }
}
