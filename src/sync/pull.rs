//! The Microsoft pull (spec §2): (a) the inbox query for incoming Pending referrals; (b) the
//! incremental query `updatedDateTime gt <watermark - overlap>`, oldest first, to catch changes
//! to referrals already tracked. Pages are streamed ([`MicrosoftPull::next_page`]): each is
//! committed in its own transaction (with the watermark it justifies) before the next is
//! fetched, so memory stays flat and a crash loses at most the page in flight. The caller
//! (the deadline lane) acts on a page's new referrals before it asks for the next page.
//!
//! The inbox is read **oldest first** (`createdDateTime asc`): the response deadline is the
//! creation time plus the window, so the referrals closest to expiry come on the first pages
//! of a large inbox, and a referral that arrives days after its creation is not behind
//! thousands of fresher ones. (The spec's first draft read it newest first.)

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::CycleError;
use crate::http::{with_retry, ApiError, RetryPolicy};
use crate::microsoft::model::{ParsedReferral, RejectedRecord};
use crate::microsoft::{odata, MicrosoftClient, PageRequest, Paging, MAX_PAGES};
use crate::store::referrals::{self, UpsertCounts};
use crate::store::{Store, StoreError};

/// The watermark of the incremental query.
pub(crate) const INCREMENTAL_WATERMARK: &str = "microsoft.referrals.updated";
/// The inbox query of the spec: every incoming referral nobody has answered yet.
pub(crate) const INBOX_FILTER: &str = "direction eq 'Incoming' and substatus eq 'Pending'";

#[derive(Debug, Clone)]
pub struct PullSettings {
    pub page_size: u32,
    pub(crate) overlap: Duration,
    pub(crate) initial_lookback: Duration,
}

/// Reads one referral again (GET, with `[microsoft.retry]`) and stores it, which queues its
/// plan when it changed: the one "refresh this referral" of the webhook forwarder, the lead
/// create guard, the re-read after a 412 and the answers. `Ok(Err(e))`: the read failed and
/// nothing was stored.
pub(crate) async fn refresh_referral(
    store: &Store,
    microsoft: &MicrosoftClient,
    retry: &RetryPolicy,
    referral_id: &str,
) -> Result<Result<ParsedReferral, ApiError>, StoreError> {
    let read = with_retry(retry, "get referral", || {
        microsoft.get_referral(referral_id)
    })
    .await;
    let fresh = match read {
        Ok(fresh) => fresh,
        Err(e) => return Ok(Err(e)),
    };
    let copy = fresh.clone();
    store
        .call(move |c| referrals::commit_page(c, &[copy], &[], None, Utc::now()))
        .await?;
    Ok(Ok(fresh))
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PullStats {
    pub pages: u64,
    pub counts: UpsertCounts,
}

/// Which of the two queries a pull reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Queries {
    Both,
    /// The deadline lane's tick: new referrals.
    InboxOnly,
    /// The changes to referrals already known (the incremental query), read in the
    /// background so a large batch of changes never holds a new referral back.
    ChangesOnly,
}

/// The inbox query's order: nearest deadline first (see the module docs).
pub const INBOX_ORDER: &str = "createdDateTime asc";

/// One committed page of the pull.
#[derive(Debug, Clone)]
pub(crate) struct PageDone {
    pub(crate) query: &'static str,
    pub(crate) counts: UpsertCounts,
    /// The ids of the page's readable referrals.
    pub(crate) ids: Vec<String>,
    /// Records read on this page (readable or not), and the query's total when the API
    /// says (`@odata.count`; a hint for progress only).
    pub(crate) read: u64,
    pub(crate) total_hint: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    Inbox,
    Incremental,
    Watermark,
    Done,
}

/// The pull as a sequence of pages: the inbox query, then the incremental query, then the
/// watermark moved to the start of the pull. On failure, every page committed stays committed.
pub(crate) struct MicrosoftPull<'a> {
    store: &'a Store,
    client: &'a MicrosoftClient,
    /// `[microsoft.retry]`.
    retry: &'a RetryPolicy,
    settings: &'a PullSettings,
    now: DateTime<Utc>,
    queries: Queries,
    stage: Stage,
    request: Option<PageRequest>,
    stats: PullStats,
    query_pages: u64,
    query_seen: u64,
    /// The current query's nextLinks: a repeated one or too many pages end it with an error.
    paging: Paging,
    query_started: Instant,
    last_progress: Instant,
}

impl<'a> MicrosoftPull<'a> {
    pub(crate) fn with(
        store: &'a Store,
        (client, retry): (&'a MicrosoftClient, &'a RetryPolicy),
        settings: &'a PullSettings,
        now: DateTime<Utc>,
        queries: Queries,
    ) -> Self {
        let inbox = PageRequest::Query {
            filter: INBOX_FILTER.into(),
            orderby: INBOX_ORDER.into(),
            top: settings.page_size,
        };
        MicrosoftPull {
            store,
            client,
            retry,
            settings,
            now,
            queries,
            stage: Stage::Inbox,
            // Changes only: no inbox request, so the first page moves on to the changes.
            request: (queries != Queries::ChangesOnly).then_some(inbox),
            stats: PullStats::default(),
            query_pages: 0,
            query_seen: 0,
            paging: Paging::new(MAX_PAGES),
            query_started: Instant::now(),
            last_progress: Instant::now(),
        }
    }

    /// What was pulled so far.
    pub(crate) fn stats(&self) -> PullStats {
        self.stats
    }

    /// Reads and commits the next page; `None` once the pull is complete.
    pub(crate) async fn next_page(&mut self) -> Result<Option<PageDone>, CycleError> {
        loop {
            match self.stage {
                Stage::Done => return Ok(None),
                Stage::Watermark => {
                    // The whole query was read: nothing older than its start is missing, so
                    // the watermark may move up to it even when nothing changed (the overlap
                    // covers clock skew).
                    let now = self.now;
                    self.store
                        .call(move |c| {
                            referrals::commit_page(
                                c,
                                &[],
                                &[],
                                Some((INCREMENTAL_WATERMARK, now)),
                                Utc::now(),
                            )
                        })
                        .await?;
                    self.stage = Stage::Done;
                    return Ok(None);
                }
                Stage::Inbox | Stage::Incremental => match self.request.take() {
                    Some(request) => return self.read(request).await.map(Some),
                    None => self.next_query().await?,
                },
            }
        }
    }

    /// Moves to the query after the one that just ended.
    async fn next_query(&mut self) -> Result<(), CycleError> {
        self.log_query_done();
        if self.stage == Stage::Incremental {
            self.stage = Stage::Watermark;
            return Ok(());
        }
        if self.queries == Queries::InboxOnly {
            self.stage = Stage::Done;
            return Ok(());
        }
        let watermark = self
            .store
            .call(|c| referrals::watermark(c, INCREMENTAL_WATERMARK))
            .await?;
        let back = |by: Duration, from: DateTime<Utc>| {
            chrono::Duration::from_std(by)
                .ok()
                .and_then(|d| from.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        let since = match watermark {
            Some(w) => back(self.settings.overlap, w),
            None => back(self.settings.initial_lookback, self.now),
        };
        // Pending referrals come in full with the inbox query every cycle, so the incremental
        // query leaves them out: each referral is read once per cycle, not twice.
        self.request = Some(PageRequest::Query {
            filter: format!(
                "direction eq 'Incoming' and substatus ne 'Pending' and updatedDateTime gt {}",
                odata::datetime_literal(since)
            ),
            orderby: "updatedDateTime asc".into(),
            top: self.settings.page_size,
        });
        self.stage = Stage::Incremental;
        self.query_pages = 0;
        self.query_seen = 0;
        self.paging = Paging::new(MAX_PAGES);
        self.query_started = Instant::now();
        Ok(())
    }

    async fn read(&mut self, request: PageRequest) -> Result<PageDone, CycleError> {
        let query = self.query_name();
        let client = self.client;
        let page = with_retry(self.retry, "list referrals", || client.list_page(&request)).await?;
        log_rejected(query, &page.rejected, page.request_id.as_deref());
        let watermark = (self.stage == Stage::Incremental).then_some(INCREMENTAL_WATERMARK);
        let high_water = page.referrals.iter().map(|r| r.referral.updated_at()).max();
        let mark = watermark.zip(high_water);
        let next = page.next_link.clone();
        let total_hint = page.count;
        let (referrals, rejected) = (page.referrals, page.rejected);
        let ids: Vec<String> = referrals.iter().map(|r| r.referral.id.clone()).collect();
        let read = (referrals.len() + rejected.len()) as u64;
        self.query_seen += read;
        let counts = self
            .store
            .call(move |c| referrals::commit_page(c, &referrals, &rejected, mark, Utc::now()))
            .await?;
        self.query_pages += 1;
        self.stats.pages += 1;
        self.stats.counts.add(counts);
        // After the commit: a page is kept even when the link it names is refused.
        self.request = next.map(|link| self.paging.next(link)).transpose()?;
        if self.last_progress.elapsed() >= Duration::from_secs(10)
            || self.query_pages.is_multiple_of(20)
        {
            tracing::info!(
                query,
                pages = self.query_pages,
                referrals = self.query_seen,
                elapsed_s = self.query_started.elapsed().as_secs(),
                "sync in progress"
            );
            self.last_progress = Instant::now();
        }
        Ok(PageDone {
            query,
            counts,
            ids,
            read,
            total_hint,
        })
    }

    fn query_name(&self) -> &'static str {
        match self.stage {
            Stage::Inbox => "inbox",
            _ => "incremental",
        }
    }

    fn log_query_done(&self) {
        tracing::debug!(
            query = self.query_name(),
            pages = self.query_pages,
            referrals = self.query_seen,
            elapsed_ms = self.query_started.elapsed().as_millis() as u64,
            "query done"
        );
    }
}

fn log_rejected(query: &str, rejected: &[RejectedRecord], request_id: Option<&str>) {
    for bad in rejected {
        tracing::warn!(
            query,
            referral_id = bad.id.as_deref().unwrap_or("?"),
            request_id = request_id.unwrap_or("-"),
            error = %bad.error,
            "skipping a referral that cannot be read (kept in rejected_records)"
        );
    }
}
