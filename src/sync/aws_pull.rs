//! The AWS pull (spec §8): the engagement invitations this account received that are still
//! `PENDING` (`ListEngagementInvitations` with `ParticipantType: RECEIVER`, `Status:
//! [PENDING]`, page by page until no `NextToken`), the details of each new invitation and of
//! each whose list summary changed (`GetEngagementInvitation`), each page committed in its own
//! transaction; then every invitation the store still holds as pending that left the list is
//! read once more to learn how it ended (`ACCEPTED` in the console, `REJECTED`, `EXPIRED`).
//!
//! Reads go through the client's rate limiter (`[aws] requests_per_second`) and `[aws.retry]`
//! (throttling and 5xx back off); an authentication refusal (`AccessDeniedException`, naming
//! the IAM action) fails the pull, and the caller goes on with the Microsoft and Google parts
//! of the cycle. A repeated `NextToken` ends the listing with an error logged (never an
//! endless loop) and skips the "left the list" reads: an unfinished list proves nothing.
//! An invitation AWS no longer knows (`ResourceNotFoundException`) is marked vanished, which
//! raises its alert once and is never read again.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;

use super::{AwsSide, CycleError};
use crate::aws::client::is_invitation_id;
use crate::aws::model::{Invitation, InvitationStatus, ParsedInvitation, RejectedItem};
use crate::http::{with_retry, ApiError, ErrorClass};
use crate::store::invitations;
use crate::store::referrals::UpsertCounts;
use crate::store::Store;

/// A listing longer than this many pages is cut (10,000 pending invitations at 100 a page
/// would be 100 pages; this bounds a server that never stops handing out tokens).
pub(crate) const MAX_PAGES: u64 = 1000;
/// Detail reads in flight at once: the rate limiter spaces them, this hides their latency.
const CONCURRENT_READS: usize = 4;

/// What one AWS pull did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct AwsPullStats {
    pub pages: u64,
    pub counts: UpsertCounts,
    /// Tracked invitations that left the PENDING list and were read again.
    pub ended: u64,
    /// ... of which AWS no longer knows.
    pub vanished: u64,
}

/// The AWS pull as a sequence of pages (see the module docs): each [`AwsPull::next_page`]
/// reads, details and commits one list page and returns the ids of its new invitations, so
/// the caller alerts them before the next page (a first sync over a large inbox is the read
/// quota's time: 100 detail reads a page at 10 a second); after the last page, the tracked
/// invitations that left the list are read once more.
pub(crate) struct AwsPull<'a> {
    store: &'a Store,
    aws: &'a AwsSide,
    now: DateTime<Utc>,
    stats: AwsPullStats,
    listed: HashSet<String>,
    seen_tokens: HashSet<String>,
    token: Option<String>,
    done: bool,
}

impl<'a> AwsPull<'a> {
    pub(crate) fn new(store: &'a Store, aws: &'a AwsSide, now: DateTime<Utc>) -> Self {
        AwsPull {
            store,
            aws,
            now,
            stats: AwsPullStats::default(),
            listed: HashSet::new(),
            seen_tokens: HashSet::new(),
            token: None,
            done: false,
        }
    }

    /// What was pulled so far.
    pub(crate) fn stats(&self) -> AwsPullStats {
        self.stats
    }

    /// Reads and commits the next list page: the ids of its new invitations; `None` once the
    /// pull (the ended invitations' reads included) is complete.
    pub(crate) async fn next_page(&mut self) -> Result<Option<Vec<String>>, CycleError> {
        if self.done {
            return Ok(None);
        }
        let (store, aws, now) = (self.store, self.aws, self.now);
        let page = with_retry(&aws.retry, "list engagement invitations", || {
            aws.client.list_pending_invitations(self.token.as_deref())
        })
        .await?;
        self.stats.pages += 1;
        let (items, rejected) = usable(page.items, page.rejected);
        self.listed
            .extend(items.iter().map(|p| p.invitation.id.clone()));
        let (fresh, new_ids) = details(store, aws, items, &mut self.stats.counts).await?;
        let counts = store
            .call(move |c| invitations::commit_invitations(c, &fresh, &rejected, now))
            .await?;
        self.stats.counts.add(counts);
        let complete = match page.next_token {
            None => true,
            Some(next) if !self.seen_tokens.insert(next.clone()) => {
                tracing::error!(
                    pages = self.stats.pages,
                    "ListEngagementInvitations handed out a NextToken it gave before: the listing stops here (what was read is kept); invitations that left the list are checked next time"
                );
                self.done = true;
                false
            }
            Some(_) if self.stats.pages >= MAX_PAGES => {
                tracing::error!(
                    pages = self.stats.pages,
                    "ListEngagementInvitations: more than {MAX_PAGES} pages; the listing stops here"
                );
                self.done = true;
                false
            }
            Some(next) => {
                self.token = Some(next);
                false
            }
        };
        if complete {
            self.done = true;
            settle_ended(store, aws, &self.listed, now, &mut self.stats).await?;
        }
        if self.done {
            self.log_done();
        }
        Ok(Some(new_ids))
    }

    fn log_done(&self) {
        let stats = &self.stats;
        if stats.pages > 1 || stats.counts.new > 0 || stats.ended > 0 {
            tracing::info!(
                pages = stats.pages,
                new = stats.counts.new,
                changed = stats.counts.changed,
                ended = stats.ended,
                vanished = stats.vanished,
                "AWS invitations pulled"
            );
        }
    }
}

/// A page's readable items whose id the API can be asked about, and everything else kept as
/// rejected (an id outside the model's pattern can never be read or answered).
fn usable(
    items: Vec<ParsedInvitation>,
    mut rejected: Vec<RejectedItem>,
) -> (Vec<ParsedInvitation>, Vec<RejectedItem>) {
    for bad in &rejected {
        tracing::warn!(
            invitation_id = bad.id.as_deref().unwrap_or("?"),
            error = %bad.error,
            "skipping an AWS invitation that cannot be read (kept in rejected_records)"
        );
    }
    let (items, unusable): (Vec<_>, Vec<_>) =
        (items.into_iter()).partition(|p| is_invitation_id(&p.invitation.id));
    for bad in unusable {
        tracing::warn!(invitation_id = %bad.invitation.id, "skipping an AWS invitation whose Id is not engi-… nor an ARN (kept in rejected_records)");
        rejected.push(RejectedItem {
            id: Some(bad.invitation.id),
            error: "Id is not engi- and 13 lower-case letters or digits, nor an ARN".into(),
            raw: bad.raw,
        });
    }
    (items, rejected)
}

/// The facts of a list summary that, when they differ from the stored invitation's, call
/// for a new detail read.
type SummaryKey<'a> = (
    Option<&'a InvitationStatus>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a crate::aws::model::PayloadType>,
);

fn summary_key(inv: &Invitation) -> SummaryKey<'_> {
    (
        inv.status.as_ref(),
        inv.expiration_date,
        inv.invitation_date,
        inv.engagement_title.as_deref(),
        inv.sender_company_name.as_deref(),
        inv.payload_type.as_ref(),
    )
}

/// The invitations of a page worth storing: each new one, and each whose summary changed,
/// read in full, and the ids of the new ones. An unchanged one is counted and left alone (no
/// read).
async fn details(
    store: &Store,
    aws: &AwsSide,
    items: Vec<ParsedInvitation>,
    counts: &mut UpsertCounts,
) -> Result<(Vec<ParsedInvitation>, Vec<String>), CycleError> {
    let ids: Vec<String> = items.iter().map(|p| p.invitation.id.clone()).collect();
    let stored = store
        .call(move |c| {
            ids.iter()
                .map(|id| invitations::stored_raw(c, id))
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    let mut wanted = Vec::new();
    for (summary, stored) in items.into_iter().zip(stored) {
        let before = stored
            .as_deref()
            .and_then(|raw| serde_json::from_str::<serde_json::Value>(raw).ok());
        let stale = match &before {
            None => true,
            // A copy stored from a summary alone (its detail read failed) is read again.
            Some(v) if v.get("Payload").is_none() => true,
            Some(v) => Invitation::from_value(v).map_or(true, |b| {
                summary_key(&b) != summary_key(&summary.invitation)
            }),
        };
        match stale {
            true => wanted.push((summary, stored.is_none())),
            false => counts.unchanged += 1,
        }
    }
    let reads = stream::iter(wanted)
        .map(|(summary, is_new)| async move {
            let read = read_one(aws, &summary.invitation.id).await;
            (summary, is_new, read)
        })
        .buffered(CONCURRENT_READS)
        .collect::<Vec<_>>()
        .await;
    let (mut fresh, mut new_ids) = (Vec::new(), Vec::new());
    for (summary, is_new, read) in reads {
        let id = summary.invitation.id.clone();
        if is_new {
            new_ids.push(id.clone());
        }
        match read {
            Ok(mut full) => {
                // The list asked for PENDING: a detail without a status is still pending.
                if full.invitation.status.is_none() {
                    full.invitation.status = summary.invitation.status.clone();
                }
                full.invitation.id = id;
                fresh.push(full);
            }
            Err(e) if e.is_auth() => return Err(e.into()),
            Err(e) if e.named_class() == Some(ErrorClass::NotFound) => {
                tracing::info!(invitation_id = %id, "AWS invitation gone between the list and its read: {e}");
            }
            Err(e) if is_new => {
                // Its deadline is in the summary: stored now, alerted, read in full next time.
                tracing::warn!(invitation_id = %id, error = %e, "AWS invitation stored from its list summary: its details could not be read (tried again next cycle)");
                fresh.push(summary);
            }
            Err(e) => {
                tracing::warn!(invitation_id = %id, error = %e, "AWS invitation changed but could not be read again (tried again next cycle)");
            }
        }
    }
    Ok((fresh, new_ids))
}

async fn read_one(aws: &AwsSide, id: &str) -> Result<ParsedInvitation, ApiError> {
    with_retry(&aws.retry, "get engagement invitation", || {
        aws.client.get_invitation(id)
    })
    .await
}

/// Reads once more every invitation the store holds as pending that the (complete) PENDING
/// list no longer has, and stores how it ended; one AWS no longer knows is marked vanished.
async fn settle_ended(
    store: &Store,
    aws: &AwsSide,
    listed: &HashSet<String>,
    now: DateTime<Utc>,
    stats: &mut AwsPullStats,
) -> Result<(), CycleError> {
    let pending = store.call(|c| invitations::pending_ids(c)).await?;
    for id in pending.into_iter().filter(|id| !listed.contains(id)) {
        stats.ended += 1;
        match read_one(aws, &id).await {
            Ok(mut full) => {
                full.invitation.id = id.clone();
                let status = full.invitation.status.clone();
                if status.is_none() {
                    tracing::warn!(invitation_id = %id, "AWS invitation left the PENDING list but its read has no Status; read again next cycle");
                    continue;
                }
                if status == Some(InvitationStatus::Pending) {
                    tracing::debug!(invitation_id = %id, "AWS invitation still reads PENDING though the list left it out");
                }
                tracing::info!(invitation_id = %id, status = %status.as_ref().map_or("?", |s| s.as_str()), "AWS invitation is no longer pending");
                let counts = store
                    .call(move |c| invitations::commit_invitations(c, &[full], &[], now))
                    .await?;
                stats.counts.add(counts);
            }
            Err(e) if e.is_auth() => return Err(e.into()),
            Err(e) if e.named_class() == Some(ErrorClass::NotFound) => {
                tracing::warn!(invitation_id = %id, "AWS invitation vanished: {e}");
                stats.vanished += 1;
                let vanished = id.clone();
                store
                    .call(move |c| invitations::mark_vanished(c, &vanished, now))
                    .await?;
            }
            Err(e) => {
                tracing::warn!(invitation_id = %id, error = %e, "AWS invitation left the PENDING list; how it ended could not be read (tried again next cycle)");
            }
        }
    }
    Ok(())
}
