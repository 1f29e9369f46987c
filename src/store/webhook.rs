//! Partner Center webhook events (migration 0006): accepted events stored before the receiver
//! answers, de-duplicated on (event name + resource + change time), marked processed once
//! forwarded; and the receiver's counters, kept here so `status` in another process sees them.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// An event as the receiver stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewEvent {
    pub(crate) event_name: String,
    pub(crate) resource_uri: String,
    pub(crate) referral_id: Option<String>,
    pub(crate) changed_at: String,
    pub(crate) body: String,
}

impl NewEvent {
    /// The de-duplication key: the same delivery repeated maps to the same key.
    pub(crate) fn dedupe_key(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.event_name, self.resource_uri, self.changed_at
        )
    }
}

/// An accepted event waiting to be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OpenEvent {
    pub(crate) id: i64,
    pub(crate) event_name: String,
    pub(crate) referral_id: Option<String>,
    pub(crate) received_at: DateTime<Utc>,
}

/// Stores an accepted event. Returns its row id, or `None` when it is a duplicate.
pub(crate) fn accept(
    conn: &mut Connection,
    event: &NewEvent,
    now: DateTime<Utc>,
) -> Result<Option<i64>, StoreError> {
    let tx = conn.transaction()?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO webhook_events (dedupe_key, event_name, resource_uri, referral_id,
                 changed_at, body, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (dedupe_key) DO NOTHING",
        )?
        .execute(params![
            event.dedupe_key(),
            event.event_name,
            event.resource_uri,
            event.referral_id,
            event.changed_at,
            event.body,
            db_timestamp(now),
        ])?;
    let id = (inserted > 0).then(|| tx.last_insert_rowid());
    bump(&tx, "received")?;
    bump(
        &tx,
        if id.is_some() {
            "verified"
        } else {
            "duplicate"
        },
    )?;
    tx.commit()?;
    Ok(id)
}

/// Counts `n` events refused by the receiver (they are not stored: forgeries are not kept).
pub(crate) fn reject(conn: &mut Connection, n: u64) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    add(&tx, "received", n)?;
    add(&tx, "rejected", n)?;
    tx.commit()?;
    Ok(())
}

/// Adds one to a counter (`received`, `verified`, `rejected`, `duplicate`).
pub(crate) fn bump(conn: &Connection, name: &str) -> Result<(), StoreError> {
    add(conn, name, 1)
}

fn add(conn: &Connection, name: &str, n: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO webhook_counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + ?2",
    )?
    .execute(params![name, n as i64])?;
    Ok(())
}

/// Accepted events not yet forwarded (after a crash, a full channel or a failed attempt),
/// oldest first.
pub(crate) fn open_events(conn: &Connection, limit: usize) -> Result<Vec<OpenEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_name, referral_id, received_at FROM webhook_events
         WHERE state = 'accepted' ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        let received: String = r.get(3)?;
        Ok(OpenEvent {
            id: r.get(0)?,
            event_name: r.get(1)?,
            referral_id: r.get(2)?,
            received_at: parse_timestamp(&received).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Accepted events of one referral (all of them are settled by one forward).
pub(crate) fn open_for_referral(
    conn: &Connection,
    referral_id: &str,
) -> Result<Vec<OpenEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, event_name, referral_id, received_at FROM webhook_events
         WHERE state = 'accepted' AND referral_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([referral_id], |r| {
        let received: String = r.get(3)?;
        Ok(OpenEvent {
            id: r.get(0)?,
            event_name: r.get(1)?,
            referral_id: r.get(2)?,
            received_at: parse_timestamp(&received).unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks an event forwarded, with the receipt-to-lead time when it led to a lead create.
pub(crate) fn mark_processed(
    conn: &Connection,
    id: i64,
    lead_ms: Option<i64>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE webhook_events SET state = 'processed', processed_at = ?2, lead_ms = ?3,
             attempts = attempts + 1, last_error = NULL
         WHERE id = ?1",
    )?
    .execute(params![id, db_timestamp(now), lead_ms])?;
    Ok(())
}

/// Records a failed forward; after `max_attempts` the event is `failed` (polling covers it).
pub(crate) fn mark_attempt_failed(
    conn: &Connection,
    id: i64,
    error: &str,
    max_attempts: u32,
) -> Result<bool, StoreError> {
    conn.prepare_cached(
        "UPDATE webhook_events SET attempts = attempts + 1, last_error = ?2,
             state = CASE WHEN attempts + 1 >= ?3 THEN 'failed' ELSE state END
         WHERE id = ?1",
    )?
    .execute(params![id, error, max_attempts])?;
    let state: String = conn.query_row(
        "SELECT state FROM webhook_events WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    Ok(state == "failed")
}

/// When the referral's lead create finished (`done`), if it did.
pub(crate) fn lead_created_at(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let at: Option<String> = conn
        .query_row(
            "SELECT updated_at FROM outbox
             WHERE referral_id = ?1 AND kind = 'create_lead' AND state = 'done'",
            [referral_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(at.as_deref().and_then(parse_timestamp))
}

/// Whether an event with this name arrived verified since `since` (for `webhook test`).
pub(crate) fn arrived_since(
    conn: &Connection,
    event_name: &str,
    since: DateTime<Utc>,
) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM webhook_events WHERE event_name = ?1 AND received_at >= ?2)",
        params![event_name, db_timestamp(since)],
        |r| r.get(0),
    )?)
}

/// What `status` shows about webhooks.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct WebhookStats {
    pub(crate) received: u64,
    pub(crate) verified: u64,
    pub(crate) rejected: u64,
    pub(crate) duplicate: u64,
    /// Accepted and not yet forwarded.
    pub(crate) open: u64,
    pub(crate) failed: u64,
    /// Receipt → lead created, over the last 1,000 events that led to a lead.
    pub(crate) lead_ms_p50: Option<i64>,
    pub(crate) lead_ms_p95: Option<i64>,
    pub(crate) last_event_at: Option<String>,
}

pub(crate) fn stats(conn: &Connection) -> Result<WebhookStats, StoreError> {
    let mut s = WebhookStats::default();
    let mut stmt = conn.prepare("SELECT name, value FROM webhook_counters")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (name, value) = row?;
        let value = value.max(0) as u64;
        match name.as_str() {
            "received" => s.received = value,
            "verified" => s.verified = value,
            "rejected" => s.rejected = value,
            "duplicate" => s.duplicate = value,
            _ => {}
        }
    }
    let (open, failed, last): (i64, i64, Option<String>) = conn.query_row(
        "SELECT COUNT(*) FILTER (WHERE state = 'accepted'), COUNT(*) FILTER (WHERE state = 'failed'),
                MAX(received_at)
         FROM webhook_events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    (s.open, s.failed, s.last_event_at) = (open as u64, failed as u64, last);
    let mut stmt = conn.prepare(
        "SELECT lead_ms FROM (SELECT lead_ms FROM webhook_events WHERE lead_ms IS NOT NULL
                              ORDER BY id DESC LIMIT 1000)
         ORDER BY lead_ms",
    )?;
    let times: Vec<i64> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    s.lead_ms_p50 = percentile(&times, 0.50);
    s.lead_ms_p95 = percentile(&times, 0.95);
    Ok(s)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(change: &str) -> NewEvent {
        NewEvent {
            event_name: "referral-created".into(),
            resource_uri: "https://api.partnercenter.microsoft.com/engagements/v1/referrals/r1"
                .into(),
            referral_id: Some("r1".into()),
            changed_at: change.into(),
            body: "{}".into(),
        }
    }

    fn db() -> (tempfile::TempDir, crate::store::Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn a_repeated_delivery_is_a_duplicate_and_a_new_change_is_not() {
        let (_d, store) = db();
        store
            .call_blocking(|c| {
                let now = Utc::now();
                let first = accept(c, &event("2026-01-01T00:00:00Z"), now)?;
                assert!(first.is_some());
                assert_eq!(accept(c, &event("2026-01-01T00:00:00Z"), now)?, None);
                assert!(accept(c, &event("2026-01-01T00:00:01Z"), now)?.is_some());
                let s = stats(c)?;
                assert_eq!((s.received, s.verified, s.duplicate, s.open), (3, 2, 1, 2));
                mark_processed(c, first.unwrap(), Some(40), now)?;
                let s = stats(c)?;
                assert_eq!((s.open, s.lead_ms_p95), (1, Some(40)));
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn an_event_fails_after_its_attempts_and_leaves_the_open_list() {
        let (_d, store) = db();
        store
            .call_blocking(|c| {
                let id = accept(c, &event("x"), Utc::now())?.unwrap();
                assert!(!mark_attempt_failed(c, id, "503", 2)?);
                assert_eq!(open_events(c, 10)?.len(), 1);
                assert!(mark_attempt_failed(c, id, "503", 2)?);
                assert!(open_events(c, 10)?.is_empty());
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.95), Some(95));
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&[7], 0.95), Some(7));
        assert_eq!(percentile(&[], 0.95), None);
    }
}
