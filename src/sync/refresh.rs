//! The refresh lane's work (spec §2 "Pull, Google"): re-read tracked Google records on a
//! per-record schedule under an hourly read budget, so the deadline lane never waits on them.
//!
//! Policy (pure, [`next_interval`] and [`allowance`]):
//! - a record is read again `min_interval` after it changed (or was first tracked);
//! - each unchanged read doubles its interval, up to `hot_max_interval` while it matters now
//!   (an opportunity not in a final stage is in play; a lead whose referral is still New and
//!   within `near_deadline` of its deadline) and up to `max_interval` otherwise;
//! - a record that can no longer matter (a converted or rejected lead, an opportunity in a
//!   final stage, a referral Closed in Partner Center) is never read again;
//! - reads never exceed `reads_per_hour` in any hour, nor a twelfth of it in any five
//!   minutes (so the budget is spread over the hour, leaving the quota to writes), and they
//!   take the rate limiter only when no write or deadline-lane request waits for it.
//!
//! A changed record queues its referral for planning; the deadline lane plans and pushes it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;

use super::{CycleError, GoogleSide};
use crate::google::model::{resource_kind, ResourceKind};
use crate::store::schedule::{self, CheckResult, DueRecord};
use crate::store::{google as gstore, Store};

/// How the refresh lane schedules its reads (`[refresh]`).
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    pub reads_per_hour: u64,
    pub(crate) min_interval: Duration,
    pub(crate) hot_max_interval: Duration,
    pub(crate) max_interval: Duration,
    /// A referral this close to its deadline makes its lead "hot".
    pub(crate) near_deadline: chrono::Duration,
    /// Microsoft's response window, for referrals without `expirationDateTime`.
    pub(crate) response_window: chrono::Duration,
    pub(crate) concurrency: usize,
    /// Records read per pass at most (a pass is one budget decision).
    pub(crate) batch: usize,
}

/// The next interval after a read: back to the minimum on change, doubled otherwise, capped.
pub(crate) fn next_interval(
    previous: Duration,
    changed: bool,
    hot: bool,
    s: &RefreshSettings,
) -> Duration {
    if changed || previous.is_zero() {
        return s.min_interval;
    }
    let cap = if hot {
        s.hot_max_interval
    } else {
        s.max_interval
    };
    previous.saturating_mul(2).min(cap).max(s.min_interval)
}

/// How long to wait after a failed read: the same doubling, by failures, never below a minute.
pub(crate) fn retry_after_failure(failures: u32, s: &RefreshSettings) -> Duration {
    let step = s.min_interval.max(Duration::from_secs(60));
    step.saturating_mul(1u32 << failures.min(16))
        .min(s.max_interval.max(step))
}

/// Reads the budget still allows now, given the reads of the last hour and last five minutes.
pub(crate) fn allowance(reads_last_hour: u64, reads_last_5min: u64, reads_per_hour: u64) -> u64 {
    let hour_left = reads_per_hour.saturating_sub(reads_last_hour);
    let slice = reads_per_hour.div_ceil(12);
    hour_left.min(slice.saturating_sub(reads_last_5min))
}

/// What one refresh pass did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RefreshStats {
    pub read: u64,
    pub changed: u64,
    pub(crate) failed: u64,
    /// Records found final (never read again).
    pub finalized: u64,
    /// The budget allowed no read now.
    pub budget_exhausted: bool,
    /// More records were due than this pass read.
    pub(crate) more_due: bool,
}

impl RefreshStats {
    pub(crate) fn add(&mut self, o: RefreshStats) {
        self.read += o.read;
        self.changed += o.changed;
        self.failed += o.failed;
        self.finalized += o.finalized;
        self.budget_exhausted |= o.budget_exhausted;
        self.more_due = o.more_due;
    }
}

/// One pass: reads the records due at `now` that the budget allows (`now` is the clock of
/// the schedule and the budget, so tests can step it). An authentication failure
/// ends the pass with the error (after recording what was read); other failures are
/// scheduled again with back-off.
pub async fn refresh_pass(
    store: &Store,
    google: &GoogleSide,
    settings: &RefreshSettings,
    now: DateTime<Utc>,
) -> Result<RefreshStats, CycleError> {
    let mut stats = RefreshStats::default();
    let Some(due) = due_within_budget(store, settings, now).await? else {
        stats.budget_exhausted = true;
        return Ok(stats);
    };
    stats.more_due = due.more;
    stats.finalized += due.closed.len() as u64;
    let (closed, reads) = (due.closed, due.to_read.len() as u64);
    store
        .call(move |c| {
            let tx = c.transaction()?;
            for name in &closed {
                schedule::record_check(&tx, name, CheckResult::Final, now)?;
            }
            // Counted before they are sent: a read cut short still spent quota.
            schedule::log_reads(&tx, reads, now)?;
            tx.commit()?;
            Ok(())
        })
        .await?;
    let finals = google.policy.final_stages();
    let to_read = due.to_read;
    let results: Vec<Result<CheckResult, CycleError>> = futures_util::stream::iter(to_read)
        .map(|record| check_one(store, google, settings, &finals, record, now))
        .buffer_unordered(settings.concurrency.max(1))
        .collect()
        .await;
    let mut auth_error = None;
    for result in results {
        match result {
            Ok(CheckResult::Read { changed, .. }) => {
                stats.read += 1;
                stats.changed += changed as u64;
            }
            Ok(CheckResult::Final) => {
                stats.read += 1;
                stats.finalized += 1;
            }
            Ok(CheckResult::Failed { .. }) => stats.failed += 1,
            Err(e @ CycleError::Store(_)) => return Err(e),
            Err(e) => {
                stats.failed += 1;
                auth_error.get_or_insert(e);
            }
        }
    }
    match auth_error {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// What a pass may do: the records to read (as many as the budget allows), those whose
/// referral is Closed (final without a read), and whether more are due.
struct Due {
    to_read: Vec<DueRecord>,
    closed: Vec<String>,
    more: bool,
}

/// `None` when the budget allows no read now.
async fn due_within_budget(
    store: &Store,
    settings: &RefreshSettings,
    now: DateTime<Utc>,
) -> Result<Option<Due>, CycleError> {
    let (budget, batch) = (settings.reads_per_hour, settings.batch.max(1));
    let (due, allowed) = store
        .call(move |c| {
            schedule::adopt_linked(c, now)?;
            let hour = schedule::reads_since(c, now - chrono::Duration::hours(1))?;
            let five = schedule::reads_since(c, now - chrono::Duration::minutes(5))?;
            let allowed = allowance(hour, five, budget);
            let due = if allowed == 0 {
                Vec::new()
            } else {
                // One more than a pass reads, to know whether more are due.
                schedule::due_records(c, now, (allowed as usize).min(batch) + 1)?
            };
            Ok((due, allowed))
        })
        .await?;
    if allowed == 0 {
        return Ok(None);
    }
    let limit = (allowed as usize).min(batch);
    let more = due.len() > limit;
    let (closed, mut to_read): (Vec<DueRecord>, Vec<DueRecord>) = due
        .into_iter()
        .partition(|d| d.referral_status.as_deref() == Some("Closed"));
    to_read.truncate(limit);
    Ok(Some(Due {
        to_read,
        closed: closed.into_iter().map(|d| d.name).collect(),
        more,
    }))
}

/// Reads one record, stores it and its next check in one transaction.
async fn check_one(
    store: &Store,
    google: &GoogleSide,
    settings: &RefreshSettings,
    finals: &[String],
    record: DueRecord,
    now: DateTime<Utc>,
) -> Result<CheckResult, CycleError> {
    let client = google.client.background();
    let fetched = match resource_kind(&record.name) {
        Some(ResourceKind::Lead) => client.get_lead(&record.name).await.map(|a| {
            let final_ = lead_is_final(
                a.value.lead_status.as_deref(),
                a.value.approval_status.as_deref(),
            );
            (Fetched::Lead(a.value), final_)
        }),
        _ => client.get_opportunity(&record.name).await.map(|a| {
            let stage = a.value.sales_stage.clone().unwrap_or_default();
            (Fetched::Opportunity(a.value), finals.contains(&stage))
        }),
    };
    let (name, referral_id) = (record.name.clone(), record.referral_id.clone());
    match fetched {
        Ok((value, is_final)) => {
            let hot = match &value {
                Fetched::Opportunity(_) => true, // not final = in play
                Fetched::Lead(_) => near_deadline(&record, settings, now),
            };
            let settings = settings.clone();
            let previous = record.interval;
            let result = store
                .call(move |c| {
                    let tx = c.transaction()?;
                    let changed = match &value {
                        Fetched::Lead(l) => gstore::save_lead(&tx, l, Some(&referral_id), now)?,
                        Fetched::Opportunity(o) => {
                            gstore::save_opportunity(&tx, o, Some(&referral_id), now)?
                        }
                    };
                    let result = if is_final {
                        CheckResult::Final
                    } else {
                        CheckResult::Read {
                            changed,
                            interval: next_interval(previous, changed, hot, &settings),
                        }
                    };
                    schedule::record_check(&tx, &name, result, checked_at(now))?;
                    tx.commit()?;
                    Ok(result)
                })
                .await?;
            if let CheckResult::Read { changed: true, .. } = result {
                tracing::info!(resource = %record.name, referral_id = %record.referral_id, "Google record changed");
            }
            Ok(result)
        }
        Err(e) => {
            let result = CheckResult::Failed {
                retry_in: retry_after_failure(record.failures, settings),
            };
            store
                .call(move |c| schedule::record_check(c, &name, result, checked_at(now)))
                .await?;
            if e.is_auth() {
                return Err(e.into());
            }
            tracing::warn!(resource = %record.name, error = %e, "cannot read a tracked Google record; keeping the last copy and trying again later");
            Ok(result)
        }
    }
}

/// When a read counts as done: the pass's clock, or the wall clock if that is later (a read
/// takes time), so a record read in a pass is never due again within the same pass — also
/// with `min_interval = "0s"`.
fn checked_at(pass_now: DateTime<Utc>) -> DateTime<Utc> {
    pass_now.max(Utc::now())
}

enum Fetched {
    Lead(crate::google::Lead),
    Opportunity(crate::google::Opportunity),
}

/// A lead Google converted or rejected is not read again.
pub(crate) fn lead_is_final(status: Option<&str>, approval: Option<&str>) -> bool {
    status == Some("STATE_CONVERTED") || approval == Some("APPROVAL_STATE_NOT_APPROVED")
}

fn near_deadline(record: &DueRecord, s: &RefreshSettings, now: DateTime<Utc>) -> bool {
    let waiting = record.referral_status.as_deref() == Some("New") && record.referral_incoming;
    let Some(created) = record.referral_created_at.filter(|_| waiting) else {
        return false;
    };
    let due = crate::deadline::deadline(created, record.referral_expires_at, s.response_window);
    due.signed_duration_since(now) <= s.near_deadline
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RefreshSettings {
        RefreshSettings {
            reads_per_hour: 3600,
            min_interval: Duration::from_secs(300),
            hot_max_interval: Duration::from_secs(1800),
            max_interval: Duration::from_secs(6 * 3600),
            near_deadline: chrono::Duration::hours(72),
            response_window: chrono::Duration::days(14),
            concurrency: 2,
            batch: 50,
        }
    }

    #[test]
    fn unchanged_records_back_off_to_their_cap_and_a_change_resets() {
        let s = settings();
        let mut interval = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..10 {
            interval = next_interval(interval, false, false, &s);
            seen.push(interval.as_secs());
        }
        assert_eq!(
            seen,
            [300, 600, 1200, 2400, 4800, 9600, 19200, 21600, 21600, 21600]
        );
        assert_eq!(next_interval(interval, true, false, &s), s.min_interval);
        // A hot record never waits longer than the hot cap.
        let mut hot = Duration::ZERO;
        for _ in 0..10 {
            hot = next_interval(hot, false, true, &s);
        }
        assert_eq!(hot, s.hot_max_interval);
    }

    #[test]
    fn a_cap_below_the_minimum_keeps_the_minimum() {
        let mut s = settings();
        s.max_interval = Duration::from_secs(10);
        assert_eq!(
            next_interval(Duration::from_secs(300), false, false, &s),
            s.min_interval
        );
    }

    #[test]
    fn allowance_spreads_the_budget_and_never_exceeds_it() {
        assert_eq!(allowance(0, 0, 3600), 300);
        assert_eq!(allowance(3500, 0, 3600), 100);
        assert_eq!(allowance(3600, 0, 3600), 0);
        assert_eq!(allowance(100, 300, 3600), 0);
        assert_eq!(allowance(0, 0, 5), 1);
        assert_eq!(allowance(0, 0, 0), 0);
    }

    #[test]
    fn failures_back_off_and_stay_bounded() {
        let s = settings();
        assert_eq!(retry_after_failure(0, &s), Duration::from_secs(300));
        assert_eq!(retry_after_failure(1, &s), Duration::from_secs(600));
        assert_eq!(retry_after_failure(u32::MAX, &s), s.max_interval);
    }
}
