//! The Microsoft pull (spec §2): (a) the inbox query for incoming Pending referrals, newest
//! first; (b) the incremental query `updatedDateTime gt <watermark - overlap>`, oldest first, to
//! catch changes to referrals already tracked. Pages are streamed: each is committed in its own
//! transaction (with the watermark it justifies) before the next is fetched, so memory stays
//! flat and a crash loses at most the page in flight, which the next cycle reads again.
//!
//! A *full* pull reads the whole inbox, and the incremental query leaves Pending referrals
//! out (the inbox brought them all). A *quick* pull — most deadline-lane ticks — reads the
//! inbox newest first only until a page holds a referral already known (everything older is
//! known too), and the incremental query then includes Pending referrals, so a change to a
//! known Pending referral still arrives. A tick thus costs what is new, not the inbox size.

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
    full: bool,
    now: DateTime<Utc>,
) -> Result<PullStats, (PullStats, CycleError)> {
    let mut stats = PullStats::default();
    let inbox = PageRequest::Query {
        filter: INBOX_FILTER.into(),
        orderby: "createdDateTime desc".into(),
        top: settings.page_size,
    };
    let stop = if full {
        StopAt::End
    } else {
        StopAt::KnownReferral
    };
    pull_query(
        store, client, settings, "inbox", inbox, None, stop, &mut stats,
    )
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
    // After a full inbox read every Pending referral is in, so the incremental query leaves
    // them out (each referral read once per cycle, not twice); after a quick one it must not.
    let pending = if full {
        " and substatus ne 'Pending'"
    } else {
        ""
    };
    let incremental = PageRequest::Query {
        filter: format!(
            "direction eq 'Incoming'{pending} and updatedDateTime gt {}",
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
        StopAt::End,
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

/// Where a query's paging ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum StopAt {
    /// At the last page.
    End,
    /// After the first page holding a referral already in the store (newest-first order).
    KnownReferral,
}

#[allow(clippy::too_many_arguments)] // one call site per query; a struct would only rename them
async fn pull_query(
    store: &Store,
    client: &MicrosoftClient,
    settings: &PullSettings,
    query: &'static str,
    first: PageRequest,
    watermark: Option<&'static str>,
    stop: StopAt,
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
        let on_page = referrals.len() as u64;
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
        let reached_known = stop == StopAt::KnownReferral && counts.new < on_page;
        match next {
            Some(link) if !reached_known => request = paging.next(link)?,
            _ => break,
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
