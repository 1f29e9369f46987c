//! The Microsoft pull (spec §2): (a) the inbox query for incoming Pending referrals, newest
//! first; (b) the incremental query `updatedDateTime gt <watermark - overlap>`, oldest first, to
//! catch changes to referrals already tracked. Pages are streamed: each is committed in its own
//! transaction (with the watermark it justifies) before the next is fetched, so memory stays
//! flat and a crash loses at most the page in flight, which the next cycle reads again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::CycleError;
use crate::http::{with_retry, RetryPolicy};
use crate::microsoft::{odata, MicrosoftClient, PageRequest};
use crate::store::referrals::{self, UpsertCounts};
use crate::store::Store;

/// The watermark of the incremental query.
pub const INCREMENTAL_WATERMARK: &str = "microsoft.referrals.updated";
/// The inbox query of the spec: every incoming referral nobody has answered yet.
pub const INBOX_FILTER: &str = "direction eq 'Incoming' and substatus eq 'Pending'";

#[derive(Debug, Clone)]
pub struct PullSettings {
    pub page_size: u32,
    pub retry: RetryPolicy,
    pub overlap: Duration,
    pub initial_lookback: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PullStats {
    pub pages: u64,
    pub counts: UpsertCounts,
}

/// Runs both queries. On failure returns what was done so far with the error; every page
/// committed before the failure stays committed.
pub async fn pull_microsoft(
    store: &Store,
    client: &MicrosoftClient,
    settings: &PullSettings,
    now: DateTime<Utc>,
) -> Result<PullStats, (PullStats, CycleError)> {
    let mut stats = PullStats::default();
    let inbox = PageRequest::Query {
        filter: INBOX_FILTER.into(),
        orderby: "createdDateTime desc".into(),
        top: settings.page_size,
    };
    pull_query(store, client, settings, "inbox", inbox, None, &mut stats)
        .await
        .map_err(|e| (stats, e))?;

    let watermark = store
        .call(|c| referrals::watermark(c, INCREMENTAL_WATERMARK))
        .await
        .map_err(|e| (stats, e.into()))?;
    let since = match watermark {
        Some(w) => w - chrono::Duration::from_std(settings.overlap).unwrap_or_default(),
        None => now - chrono::Duration::from_std(settings.initial_lookback).unwrap_or_default(),
    };
    // Pending referrals come in full with the inbox query every cycle, so the incremental
    // query leaves them out: each referral is read once per cycle, not twice.
    let incremental = PageRequest::Query {
        filter: format!(
            "direction eq 'Incoming' and substatus ne 'Pending' and updatedDateTime gt {}",
            odata::datetime_literal(since)
        ),
        orderby: "updatedDateTime asc".into(),
        top: settings.page_size,
    };
    pull_query(
        store,
        client,
        settings,
        "incremental",
        incremental,
        Some(INCREMENTAL_WATERMARK),
        &mut stats,
    )
    .await
    .map_err(|e| (stats, e))?;
    // The whole query was read: nothing older than its start is missing, so the watermark
    // may move up to it even when no referral changed (the overlap covers clock skew).
    store
        .call(move |c| {
            referrals::commit_page(c, &[], &[], Some((INCREMENTAL_WATERMARK, now)), Utc::now())
        })
        .await
        .map_err(|e| (stats, e.into()))?;
    Ok(stats)
}

async fn pull_query(
    store: &Store,
    client: &MicrosoftClient,
    settings: &PullSettings,
    query: &'static str,
    first: PageRequest,
    watermark: Option<&'static str>,
    stats: &mut PullStats,
) -> Result<(), CycleError> {
    let started = Instant::now();
    let mut request = first;
    let mut pages = 0u64;
    let mut seen = 0u64;
    let mut last_progress = Instant::now();
    let mut paging = crate::microsoft::Paging::new(crate::microsoft::MAX_PAGES);
    loop {
        let page = with_retry(&settings.retry, "list referrals", || {
            client.list_page(&request)
        })
        .await?;
        for bad in &page.rejected {
            tracing::warn!(
                query,
                referral_id = bad.id.as_deref().unwrap_or("?"),
                request_id = page.request_id.as_deref().unwrap_or("-"),
                error = %bad.error,
                "skipping a referral that cannot be read (kept in rejected_records)"
            );
        }
        let high_water = page.referrals.iter().map(|r| r.referral.updated_at()).max();
        let mark = watermark.zip(high_water);
        let next = page.next_link.clone();
        let (referrals, rejected) = (page.referrals, page.rejected);
        seen += (referrals.len() + rejected.len()) as u64;
        let counts = store
            .call(move |c| referrals::commit_page(c, &referrals, &rejected, mark, Utc::now()))
            .await?;
        pages += 1;
        stats.pages += 1;
        stats.counts.add(counts);
        if last_progress.elapsed() >= Duration::from_secs(10) || pages.is_multiple_of(20) {
            tracing::info!(
                query,
                pages,
                referrals = seen,
                elapsed_s = started.elapsed().as_secs(),
                "sync in progress"
            );
            last_progress = Instant::now();
        }
        match next {
            Some(link) => request = paging.next(link)?,
            None => break,
        }
    }
    tracing::debug!(
        query,
        pages,
        referrals = seen,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "query done"
    );
    Ok(())
}

/// What the Google pull did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct GooglePullStats {
    pub fetched: u64,
    pub failed: u64,
}

/// The Google pull (spec §2): `get` every tracked lead and every opportunity not in a final
/// stage, with bounded concurrency, in batches so memory stays flat. A record that cannot be
/// read is logged and skipped; an authentication failure fails the cycle.
pub async fn pull_google(
    store: &Store,
    google: &crate::sync::push::GoogleSide,
) -> Result<GooglePullStats, CycleError> {
    use futures_util::StreamExt;
    let mut stats = GooglePullStats::default();
    let finals = google.policy.final_stages();
    let mut after = String::new();
    loop {
        let (cursor, finals_batch) = (after.clone(), finals.clone());
        let (batch, last) = store
            .call(move |c| crate::store::google::tracked_batch(c, &cursor, 200, &finals_batch))
            .await?;
        let Some(last) = last else {
            return Ok(stats);
        };
        let results: Vec<Result<(), CycleError>> = futures_util::stream::iter(batch)
            .map(|(name, referral_id)| async move {
                let now = Utc::now();
                match crate::google::model::resource_kind(&name) {
                    Some(crate::google::model::ResourceKind::Lead) => {
                        let lead =
                            with_retry(&google.retry, "get lead", || google.client.get_lead(&name))
                                .await?;
                        store
                            .call(move |c| {
                                crate::store::google::save_lead(
                                    c,
                                    &lead.value,
                                    Some(&referral_id),
                                    now,
                                )
                            })
                            .await?;
                        Ok(())
                    }
                    _ => {
                        let opp = with_retry(&google.retry, "get opportunity", || {
                            google.client.get_opportunity(&name)
                        })
                        .await?;
                        store
                            .call(move |c| {
                                crate::store::google::save_opportunity(
                                    c,
                                    &opp.value,
                                    Some(&referral_id),
                                    now,
                                )
                            })
                            .await?;
                        Ok(())
                    }
                }
            })
            .buffer_unordered(google.concurrency)
            .collect()
            .await;
        for result in results {
            match result {
                Ok(()) => stats.fetched += 1,
                Err(e @ CycleError::Store(_)) => return Err(e),
                Err(e) if e.is_auth() => return Err(e),
                Err(e) => {
                    stats.failed += 1;
                    tracing::warn!(error = %e, "cannot read a tracked Google record; keeping the last copy");
                }
            }
        }
        after = last;
    }
}
