//! `link`: tracks an existing Google lead or opportunity for a referral, after a `get`
//! proves it exists; resolves a quarantined create the lead answers for.

use chrono::Utc;

use super::{App, AppError};
use crate::google::model::{resource_kind, ResourceKind};
use crate::store::google as gstore;
use crate::store::outbox;
use crate::store::views;

/// `link REFERRAL_ID RESOURCE`: tracks an existing lead or opportunity for a referral,
/// after checking with a `get` that it exists.
pub(crate) async fn link(app: &App, referral_id: &str, resource: &str) -> Result<String, AppError> {
    let google = app.cycle.google.as_ref().ok_or_else(|| {
        AppError::Config("google.partner_id: is missing; linking needs the Google side".into())
    })?;
    let kind = resource_kind(resource).ok_or_else(|| {
            AppError::Refused(format!(
                "{resource:?} is not a Google resource name (partners/P/leads/L or partners/P/opportunities/O)"
            ))
        })?;
    check_free(app, referral_id, resource, kind).await?;
    let retry = google.retry;
    let now = Utc::now();
    let (id, res) = (referral_id.to_string(), resource.to_string());
    let message = match kind {
        ResourceKind::Lead => {
            let lead =
                crate::http::with_retry(&retry, "get lead", || google.client.get_lead(resource))
                    .await
                    .map_err(|e| AppError::Refused(format!("cannot link {resource}: {e}")))?
                    .value;
            let note = external_id_note(lead.external_system_id.as_deref(), referral_id);
            app.store
                .call(move |c| {
                    let tx = c.transaction()?;
                    gstore::set_link(&tx, &id, Some(&res), None, "operator", now)?;
                    gstore::save_lead(&tx, &lead, Some(&id), now)?;
                    outbox::resolve_quarantined_create(&tx, &id, &res, now)?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            format!("linked {referral_id} to lead {resource}{note}")
        }
        ResourceKind::Opportunity => {
            let opp = crate::http::with_retry(&retry, "get opportunity", || {
                google.client.get_opportunity(resource)
            })
            .await
            .map_err(|e| AppError::Refused(format!("cannot link {resource}: {e}")))?
            .value;
            let note = external_id_note(opp.external_system_id.as_deref(), referral_id);
            app.store
                .call(move |c| {
                    let tx = c.transaction()?;
                    gstore::set_link(&tx, &id, None, Some(&res), "operator", now)?;
                    gstore::save_opportunity(&tx, &opp, Some(&id), now)?;
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            format!("linked {referral_id} to opportunity {resource}{note}")
        }
    };
    Ok(message)
}

/// Refuses a link to an unknown referral, or one that would move a link already made.
async fn check_free(
    app: &App,
    referral_id: &str,
    resource: &str,
    kind: ResourceKind,
) -> Result<(), AppError> {
    let (id, res) = (referral_id.to_string(), resource.to_string());
    let (known, source, owner, existing) = app
        .store
        .call(move |c| {
            Ok((
                views::referral_exists(c, &id)?,
                crate::store::invitations::source_of(c, &id)?,
                gstore::linked_referral(c, &res)?,
                gstore::link(c, &id)?,
            ))
        })
        .await?;
    if !known {
        return Err(AppError::Refused(format!(
            "referral {referral_id} is not in the database yet; run `cosell-sync sync` first"
        )));
    }
    if source.as_deref() == Some(crate::store::invitations::AWS) {
        // A linked record would be re-read and synced as a Partner Center referral's.
        return Err(AppError::Refused(format!(
            "{referral_id} is an AWS invitation: Google leads and opportunities are linked to Partner Center referrals only"
        )));
    }
    if let Some(other) = owner.filter(|o| o != referral_id) {
        return Err(AppError::Refused(format!(
            "{resource} is already linked to referral {other}"
        )));
    }
    let current = existing.as_ref().and_then(|l| match kind {
        ResourceKind::Lead => l.lead_name.clone(),
        ResourceKind::Opportunity => l.opportunity_name.clone(),
    });
    if let Some(current) = current.filter(|c| c != resource) {
        return Err(AppError::Refused(format!(
            "referral {referral_id} is already linked to {current}"
        )));
    }
    Ok(())
}

fn external_id_note(found: Option<&str>, referral_id: &str) -> String {
    match found {
        Some(id) if id == referral_id => String::new(),
        Some(other) => format!(" (its externalSystemId is {other}; the next cycle sets it to {referral_id} where the API allows)"),
        None => " (it has no externalSystemId yet)".into(),
    }
}
