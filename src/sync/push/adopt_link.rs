//! The adoption (recovery, issue 15; the pure test of a name is [`crate::sync::adopt`]): the
//! Google record a referral's `externalReferenceId` names is read, and linked when its
//! `externalSystemId` is this referral — never a create, never an overwrite of the name. A
//! name that does not resolve, or resolves to another referral's record, is a dead action (an
//! `action_failed` alert) for a person.

use super::executor::Executor;
use crate::google::model::{resource_kind, ResourceKind};
use crate::http::{with_retry, ApiError};
use crate::store::google as gstore;
use crate::store::outbox::{self, ActionOutcome, OutboxRow};
use crate::store::{schedule, StoreError};
use crate::sync::GoogleSide;

/// Executes an adoption (the one entry point of this kind): the record is read and linked
/// when it names this referral.
pub(super) async fn execute(
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: OutboxRow,
    name: String,
) -> Result<ActionOutcome, StoreError> {
    let referral_id = row.referral_id.clone();
    let (owner, existing) = {
        let (id, n) = (referral_id.clone(), name.clone());
        exec.store
            .call(move |c| Ok((gstore::linked_referral(c, &n)?, gstore::link(c, &id)?)))
            .await?
    };
    if let Some(other) = owner.filter(|o| *o != referral_id) {
        let error = format!(
            "externalReferenceId names {name}, which is linked to referral {other}: not linked, no lead created; a person decides (cosell-sync status --referral {referral_id})"
        );
        return exec
            .record(&row, ActionOutcome::Dead { error }.into())
            .await;
    }
    if existing.is_some() {
        let reason = "already linked; nothing to adopt".to_string();
        return exec
            .record(&row, ActionOutcome::Superseded { reason }.into())
            .await;
    }
    let Some(kind) = resource_kind(&name) else {
        let error = format!("{name} is not a Google resource name");
        return exec
            .record(&row, ActionOutcome::Dead { error }.into())
            .await;
    };
    let read = read_record(google, &name, kind).await;
    let outcome = match read {
        Ok(record) if record.external_system_id() == Some(referral_id.as_str()) => {
            return link_adopted(exec, google, &row, record).await;
        }
        Ok(record) => ActionOutcome::Dead {
            error: format!(
                "externalReferenceId names {name}, whose externalSystemId is {} (not this referral): not linked, no lead created. If it is this referral's, run `cosell-sync link {referral_id} {name}`; if not, correct externalReferenceId in Partner Center",
                record.external_system_id().unwrap_or("absent")
            ),
        },
        Err(e) if e.status() == Some(404) => ActionOutcome::Dead {
            error: format!(
                "externalReferenceId names {name}, which does not exist in Google (404): not linked, no lead created. Correct externalReferenceId in Partner Center, or link the right record (cosell-sync link {referral_id} NAME)"
            ),
        },
        Err(e) => exec.failure(&row, &e),
    };
    if let ActionOutcome::Dead { error } = &outcome {
        tracing::error!(referral_id = %referral_id, error, "link cannot be recovered");
    }
    exec.record(&row, outcome.into()).await
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

    fn name(&self) -> &str {
        match self {
            Record::Lead(l) => &l.name,
            Record::Opportunity(o) => &o.name,
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
    exec: &Executor<'_>,
    google: &GoogleSide,
    row: &OutboxRow,
    record: Record,
) -> Result<ActionOutcome, StoreError> {
    let referral_id = row.referral_id.clone();
    let first_check = google.refresh.min_interval;
    let name = record.name().to_string();
    let also = Box::new(move |tx: &rusqlite::Transaction, now| {
        match &record {
            Record::Lead(lead) => {
                gstore::set_link(tx, &referral_id, Some(&lead.name), None, "adopted", now)?;
                gstore::save_lead(tx, lead, Some(&referral_id), now)?;
                outbox::resolve_quarantined_create(tx, &referral_id, &lead.name, now)?;
            }
            Record::Opportunity(opp) => {
                gstore::set_link(tx, &referral_id, None, Some(&opp.name), "adopted", now)?;
                gstore::save_opportunity(tx, opp, Some(&referral_id), now)?;
            }
        }
        schedule::checked_fresh(tx, record.name(), &referral_id, first_check, now)?;
        Ok(())
    });
    let done = ActionOutcome::Done {
        result: Some(name.clone()),
    };
    let outcome = exec.record_with(row, done.into(), also).await?;
    tracing::info!(referral_id = %row.referral_id, record = %name, "link recovered from Partner Center (externalReferenceId)");
    Ok(outcome)
}
