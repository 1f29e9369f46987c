//! What the two lanes keep between runs: the plan queue (referrals whose inputs changed since
//! they were last planned — the deadline lane plans only these), the per-record refresh
//! schedule of tracked Google records, and the log of refresh reads the hourly budget counts.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// Queues a referral for the next plan (idempotent).
pub(crate) fn mark_for_plan(
    conn: &Connection,
    referral_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO plan_queue (referral_id, queued_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?
    .execute(params![referral_id, db_timestamp(now)])?;
    Ok(())
}

/// Up to `limit` queued referrals, in id order after `after`.
pub(crate) fn queued_for_plan(
    conn: &Connection,
    after: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT referral_id FROM plan_queue WHERE referral_id > ?1 ORDER BY referral_id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a referral waits to be planned.
pub(crate) fn is_queued(conn: &Connection, referral_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM plan_queue WHERE referral_id = ?1")?
        .query_row([referral_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Takes a referral off the plan queue (in the transaction that planned it).
pub(crate) fn planned(conn: &Connection, referral_id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM plan_queue WHERE referral_id = ?1")?
        .execute([referral_id])?;
    Ok(())
}

/// Takes every referral queued up to `at` off the plan queue (a full plan started at `at`).
pub(crate) fn planned_before(conn: &Connection, at: DateTime<Utc>) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM plan_queue WHERE queued_at <= ?1")?
        .execute([db_timestamp(at)])?;
    Ok(())
}

/// How many referrals wait to be planned.
pub(crate) fn plan_queue_len(conn: &Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row("SELECT COUNT(*) FROM plan_queue", [], |r| {
        r.get::<_, i64>(0)
    })? as u64)
}

/// Gives every linked Google record without a schedule row one, due at once. Covers links
/// made by any path (`link`, a created lead, a database from before the schedule existed).
pub(crate) fn adopt_linked(conn: &Connection, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let now = db_timestamp(now);
    let mut added = 0;
    for column in ["lead_name", "opportunity_name"] {
        added += conn
            .prepare_cached(&format!(
                "INSERT INTO refresh_schedule (name, referral_id, next_check_at)
                 SELECT l.{column}, l.referral_id, ?1 FROM links l
                 WHERE l.{column} IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM refresh_schedule s WHERE s.name = l.{column})"
            ))?
            .execute([&now])?;
    }
    Ok(added as u64)
}

/// Records that `name` was just read (or written and answered with its current copy): the
/// next check is `interval` from now.
pub(crate) fn checked_fresh(
    conn: &Connection,
    name: &str,
    referral_id: &str,
    interval: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let next = now
        .checked_add_signed(chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX))
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    conn.prepare_cached(
        "INSERT INTO refresh_schedule (name, referral_id, next_check_at, interval_s, last_checked_at, last_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (name) DO UPDATE SET next_check_at = excluded.next_check_at,
            interval_s = excluded.interval_s, last_checked_at = excluded.last_checked_at,
            last_changed_at = excluded.last_changed_at, failures = 0",
    )?
    .execute(params![
        name,
        referral_id,
        db_timestamp(next),
        interval.as_secs().min(i64::MAX as u64) as i64,
        db_timestamp(now)
    ])?;
    Ok(())
}

/// A tracked record whose check is due, with what the schedule policy needs of its referral.
#[derive(Debug, Clone)]
pub(crate) struct DueRecord {
    pub(crate) name: String,
    pub(crate) referral_id: String,
    /// The current back-off step (0 = never checked).
    pub(crate) interval: std::time::Duration,
    pub(crate) failures: u32,
    /// The referral's status, direction, creation and expiry (for "near a deadline").
    pub(crate) referral_status: Option<String>,
    pub(crate) referral_incoming: bool,
    pub(crate) referral_created_at: Option<DateTime<Utc>>,
    pub(crate) referral_expires_at: Option<DateTime<Utc>>,
}

/// Makes every tracked record that is not final due at `now`, whatever its schedule
/// (`sync --all`). Returns how many there are.
pub(crate) fn make_all_due(conn: &Connection, now: DateTime<Utc>) -> Result<u64, StoreError> {
    adopt_linked(conn, now)?;
    conn.prepare_cached(
        "UPDATE refresh_schedule SET next_check_at = ?1
         WHERE next_check_at IS NOT NULL AND next_check_at > ?1",
    )?
    .execute([db_timestamp(now)])?;
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM refresh_schedule WHERE next_check_at IS NOT NULL",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// When the next tracked record falls due (`None`: none is tracked, or all are final).
pub(crate) fn next_due_at(conn: &Connection) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at: Option<String> = conn.query_row(
        "SELECT MIN(next_check_at) FROM refresh_schedule WHERE next_check_at IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(at.as_deref().and_then(parse_timestamp))
}

/// Up to `limit` records due at `now`, the longest overdue first.
pub(crate) fn due_records(
    conn: &Connection,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<DueRecord>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.name, s.referral_id, s.interval_s, s.failures, r.status,
                r.direction, r.created_at, r.expires_at
         FROM refresh_schedule s LEFT JOIN referrals r ON r.id = s.referral_id
         WHERE s.next_check_at IS NOT NULL AND s.next_check_at <= ?1
         ORDER BY s.next_check_at LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![db_timestamp(now), limit as i64], |r| {
        Ok(DueRecord {
            name: r.get(0)?,
            referral_id: r.get(1)?,
            interval: std::time::Duration::from_secs(r.get::<_, i64>(2)?.max(0) as u64),
            failures: r.get::<_, i64>(3)?.clamp(0, u32::MAX as i64) as u32,
            referral_status: r.get(4)?,
            referral_incoming: r
                .get::<_, Option<String>>(5)?
                .is_none_or(|d| d == "Incoming"),
            referral_created_at: r
                .get::<_, Option<String>>(6)?
                .as_deref()
                .and_then(parse_timestamp),
            referral_expires_at: r
                .get::<_, Option<String>>(7)?
                .as_deref()
                .and_then(parse_timestamp),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What a check of one record decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CheckResult {
    /// Read; `changed` says whether its copy differed. Next check after `interval`.
    Read {
        changed: bool,
        interval: std::time::Duration,
    },
    /// The read failed; try again after `retry_in` (the back-off step is kept).
    Failed { retry_in: std::time::Duration },
    /// It can no longer matter: never read again.
    Final,
}

pub(crate) fn record_check(
    conn: &Connection,
    name: &str,
    result: CheckResult,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let after = |d: std::time::Duration| {
        db_timestamp(
            now.checked_add_signed(chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        )
    };
    let at = db_timestamp(now);
    match result {
        CheckResult::Read { changed, interval } => conn
            .prepare_cached(
                "UPDATE refresh_schedule SET next_check_at = ?2, interval_s = ?3,
                    last_checked_at = ?4, failures = 0,
                    last_changed_at = CASE WHEN ?5 THEN ?4 ELSE last_changed_at END
                 WHERE name = ?1",
            )?
            .execute(params![
                name,
                after(interval),
                interval.as_secs().min(i64::MAX as u64) as i64,
                at,
                changed
            ])?,
        CheckResult::Failed { retry_in } => conn
            .prepare_cached(
                "UPDATE refresh_schedule SET next_check_at = ?2, failures = failures + 1 WHERE name = ?1",
            )?
            .execute(params![name, after(retry_in)])?,
        CheckResult::Final => conn
            .prepare_cached(
                "UPDATE refresh_schedule SET next_check_at = NULL, last_checked_at = ?2 WHERE name = ?1",
            )?
            .execute(params![name, at])?,
    };
    Ok(())
}

/// Counts `n` refresh reads at `now` against the budget, and forgets reads older than an hour.
pub(crate) fn log_reads(conn: &Connection, n: u64, now: DateTime<Utc>) -> Result<(), StoreError> {
    let at = db_timestamp(now);
    let mut insert = conn.prepare_cached("INSERT INTO refresh_reads (at) VALUES (?1)")?;
    for _ in 0..n {
        insert.execute([&at])?;
    }
    conn.prepare_cached("DELETE FROM refresh_reads WHERE at < ?1")?
        .execute([db_timestamp(now - chrono::Duration::hours(1))])?;
    Ok(())
}

/// Refresh reads made after `since`.
pub(crate) fn reads_since(conn: &Connection, since: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM refresh_reads WHERE at > ?1",
        [db_timestamp(since)],
        |r| r.get::<_, i64>(0),
    )? as u64)
}

/// The refresh lane's backlog, for `status` and the metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RefreshBacklog {
    /// Records still tracked (not final).
    pub tracked: u64,
    /// Records whose check is due now.
    pub(crate) due: u64,
    /// The tracked record checked longest ago (never checked first).
    pub(crate) oldest_unchecked: Option<OldestUnchecked>,
    /// Refresh reads in the last hour (what the budget counts).
    pub(crate) reads_last_hour: u64,
    /// Referrals waiting to be planned.
    pub(crate) plan_queue: u64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct OldestUnchecked {
    pub(crate) name: String,
    pub(crate) referral_id: String,
    /// `None` when it was never read since it became tracked.
    pub(crate) last_checked_at: Option<DateTime<Utc>>,
    pub(crate) next_check_at: Option<DateTime<Utc>>,
}

pub(crate) fn backlog(conn: &Connection, now: DateTime<Utc>) -> Result<RefreshBacklog, StoreError> {
    let (tracked, due): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(next_check_at <= ?1), 0) FROM refresh_schedule
         WHERE next_check_at IS NOT NULL",
        [db_timestamp(now)],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let oldest = conn
        .query_row(
            "SELECT name, referral_id, last_checked_at, next_check_at FROM refresh_schedule
             WHERE next_check_at IS NOT NULL
             ORDER BY last_checked_at IS NOT NULL, last_checked_at, next_check_at LIMIT 1",
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )
        .optional()?
        .map(|(name, referral_id, last, next)| OldestUnchecked {
            name,
            referral_id,
            last_checked_at: last.as_deref().and_then(parse_timestamp),
            next_check_at: next.as_deref().and_then(parse_timestamp),
        });
    Ok(RefreshBacklog {
        tracked: tracked as u64,
        due: due as u64,
        oldest_unchecked: oldest,
        reads_last_hour: reads_since(conn, now - chrono::Duration::hours(1))?,
        plan_queue: plan_queue_len(conn)?,
    })
}
