//! Cycle bookkeeping: one `cycle_runs` row per cycle, from `running` to `ok`/`failed`; rows a
//! killed process left `running` are marked `interrupted` at the next start.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::referrals::UpsertCounts;
use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

pub(crate) fn start_cycle(
    conn: &Connection,
    cycle_id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO cycle_runs (cycle_id, started_at, outcome) VALUES (?1, ?2, 'running')",
        params![cycle_id, db_timestamp(now)],
    )?;
    Ok(())
}

/// The running cycle's writes done since `?1` (what `STATUS=` shows while a tick runs): the
/// partial index `outbox_finished` by time, its predicate repeated word for word (how SQLite
/// matches a partial index). Without `INDEXED BY`, SQLite picked `outbox_due (state=?)` and
/// read every done write's row.
const WRITES_DONE_SINCE: &str = "SELECT COUNT(*) FROM outbox INDEXED BY outbox_finished
   WHERE (state = 'done' OR state = 'superseded' OR state = 'dropped')
     AND updated_at >= ?1 AND state = 'done'";

/// The writes still open (pending or in flight).
const WRITES_OPEN: &str = "SELECT (SELECT COUNT(*) FROM outbox WHERE state = 'pending')
      + (SELECT COUNT(*) FROM outbox WHERE state = 'in_flight')";

/// The running cycle's writes for the `STATUS=` line: `(done since `since`, still open)`.
/// Both counts read an index (`outbox_finished` on `updated_at`, `outbox_due` on `state`);
/// the test below holds them to it.
pub(crate) fn writes_since(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<(u64, u64), StoreError> {
    let done: i64 = conn.query_row(WRITES_DONE_SINCE, [db_timestamp(since)], |r| r.get(0))?;
    let open: i64 = conn.query_row(WRITES_OPEN, [], |r| r.get(0))?;
    Ok((done.max(0) as u64, open.max(0) as u64))
}

pub(crate) fn finish_cycle(
    conn: &Connection,
    cycle_id: &str,
    now: DateTime<Utc>,
    pages: u64,
    counts: UpsertCounts,
    actions: (u64, u64),
    error: Option<&str>,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE cycle_runs SET finished_at = ?2, outcome = ?3, pages = ?4,
            referrals_seen = ?5, referrals_new = ?6, referrals_changed = ?7,
            records_rejected = ?8, error = ?9, actions_done = ?10, actions_failed = ?11
         WHERE cycle_id = ?1",
        params![
            cycle_id,
            db_timestamp(now),
            if error.is_some() { "failed" } else { "ok" },
            pages as i64,
            (counts.new + counts.changed + counts.unchanged) as i64,
            counts.new as i64,
            counts.changed as i64,
            counts.rejected as i64,
            error,
            actions.0 as i64,
            actions.1 as i64,
        ],
    )?;
    Ok(())
}

/// Marks cycles a dead process left `running`. Returns how many.
pub(crate) fn mark_interrupted(conn: &Connection, now: DateTime<Utc>) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "UPDATE cycle_runs SET outcome = 'interrupted', finished_at = ?1,
            error = 'the process stopped before the cycle finished'
         WHERE outcome = 'running'",
        [db_timestamp(now)],
    )?)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct CycleRun {
    pub(crate) cycle_id: String,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) outcome: String,
    pub(crate) pages: u64,
    pub(crate) referrals_seen: u64,
    pub(crate) referrals_new: u64,
    pub(crate) referrals_changed: u64,
    pub(crate) records_rejected: u64,
    pub(crate) actions_done: u64,
    pub(crate) actions_failed: u64,
    pub(crate) error: Option<String>,
}

pub(crate) fn recent_cycles(conn: &Connection, limit: usize) -> Result<Vec<CycleRun>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT cycle_id, started_at, finished_at, outcome, pages, referrals_seen, referrals_new,
                referrals_changed, records_rejected, error, actions_done, actions_failed
         FROM cycle_runs ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let started: String = r.get(1)?;
        let finished: Option<String> = r.get(2)?;
        Ok(CycleRun {
            cycle_id: r.get(0)?,
            started_at: parse_timestamp(&started).unwrap_or_default(),
            finished_at: finished.as_deref().and_then(parse_timestamp),
            outcome: r.get(3)?,
            pages: r.get::<_, i64>(4)? as u64,
            referrals_seen: r.get::<_, i64>(5)? as u64,
            referrals_new: r.get::<_, i64>(6)? as u64,
            referrals_changed: r.get::<_, i64>(7)? as u64,
            records_rejected: r.get::<_, i64>(8)? as u64,
            error: r.get(9)?,
            actions_done: r.get::<_, i64>(10)? as u64,
            actions_failed: r.get::<_, i64>(11)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `STATUS=` counts run at the start of every tick, on the one store thread the tick
    /// needs: they must read only the rows they count. Counting done writes through
    /// `outbox_due (state=?)` read every finished write's row (1.1 ms per tick at 1,000
    /// tracked leads, measured in the webhook bench), ahead of the tick's own calls.
    #[test]
    fn the_status_counts_read_only_recent_and_open_writes() {
        let [done, open] = <[String; 2]>::try_from(crate::store::query_plans_on_a_new_store(&[
            WRITES_DONE_SINCE,
            WRITES_OPEN,
        ]))
        .unwrap();
        assert!(
            done.contains("USING INDEX outbox_finished (updated_at>?)"),
            "{done}"
        );
        assert_eq!(
            open.matches("USING COVERING INDEX outbox_due (state=?)")
                .count(),
            2,
            "{open}"
        );
    }
}
