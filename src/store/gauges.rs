//! The state `/metrics` shows (outbox by state, referrals awaiting a response by time left
//! and whether a Google record is linked, alerts by kind and delivery, the refresh lane's
//! backlog), read on a connection
//! of its own opened read-only: in WAL mode a reader never waits for the daemon's writer nor
//! holds it up, so scrapes do not slow cycles (issue 9, finding 10).

use std::path::Path;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags};

use super::StoreError;
use crate::metrics::StateSnapshot;
use crate::timefmt::parse_timestamp;

/// A read-only connection for the metrics endpoint (never creates or migrates anything).
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(open_err)?;
    Ok(conn)
}

/// Reads the whole snapshot in one read transaction (a consistent view).
pub(crate) fn read(
    conn: &mut Connection,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> Result<StateSnapshot, StoreError> {
    let tx = conn.transaction()?;
    let outbox = super::outbox::counts_by_state(&tx)?;
    let awaiting = awaiting_by_time_left(&tx, now, window)?;
    let alerts = alerts_by_delivery(&tx)?;
    let backlog = super::schedule::backlog(&tx, now)?;
    tx.finish()?;
    // Never read since tracked: unchecked since it fell due.
    let oldest_age = backlog.oldest_unchecked.and_then(|o| {
        let since = o.last_checked_at.or(o.next_check_at)?;
        (now - since).to_std().ok()
    });
    Ok(StateSnapshot {
        outbox,
        awaiting,
        alerts,
        refresh_backlog: Some((backlog.due, oldest_age)),
        // The caller knows the configuration; the database does not.
        google_enabled: false,
    })
}

/// The time-left bucket of a deadline (one of `metrics::TIME_LEFT_BUCKETS`).
pub(crate) fn time_left_bucket(left: chrono::Duration) -> &'static str {
    if left <= chrono::Duration::zero() {
        "expired"
    } else if left < chrono::Duration::hours(4) {
        "lt_4h"
    } else if left < chrono::Duration::hours(24) {
        "lt_24h"
    } else if left < chrono::Duration::hours(72) {
        "lt_72h"
    } else {
        "gte_72h"
    }
}

fn awaiting_by_time_left(
    conn: &Connection,
    now: DateTime<Utc>,
    window: chrono::Duration,
) -> Result<Vec<(&'static str, bool, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        // An AWS invitation never gets a Google lead (spec §8): it counts as awaiting, never
        // as "awaiting without a lead" (that gauge watches the forward path).
        "SELECT r.created_at, r.expires_at,
                (l.lead_name IS NOT NULL OR l.opportunity_name IS NOT NULL OR r.source = 'aws')
         FROM referrals r LEFT JOIN links l ON l.referral_id = r.id
         WHERE r.status = 'New' AND r.substatus IN ('Pending', 'Received')
           AND (r.direction = 'Incoming' OR r.direction IS NULL)",
    )?;
    let mut counts: std::collections::BTreeMap<(&'static str, bool), u64> = Default::default();
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let created: String = row.get(0)?;
        let expires: Option<String> = row.get(1)?;
        let linked: bool = row.get(2)?;
        let created = parse_timestamp(&created).unwrap_or_default();
        let expires = expires.as_deref().and_then(parse_timestamp);
        let left = crate::deadline::deadline(created, expires, window) - now;
        *counts.entry((time_left_bucket(left), linked)).or_default() += 1;
    }
    Ok(counts.into_iter().map(|((b, l), n)| (b, l, n)).collect())
}

fn alerts_by_delivery(conn: &Connection) -> Result<Vec<(String, String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.kind, COALESCE(d.state, 'log_only'), COUNT(*) FROM alerts a
         LEFT JOIN alert_deliveries d ON d.alert_id = a.id GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
