//! How fast referrals are answered: one `referral_responses` row per incoming referral seen
//! while New, settled once (accepted, declined, expired, closed). Derived from the stored
//! referrals after each cycle, never from in-memory events, so every answer and expiry is
//! counted once whatever restarts or which code path (pull, webhook, `accept`) stored it.

use chrono::{DateTime, Duration, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection};
use serde::Serialize;

use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// The condition `referrals::each_awaiting_response` uses: incoming, New, clock running.
const AWAITING: &str = "status = 'New' AND substatus IN ('Pending', 'Received')
    AND (direction = 'Incoming' OR direction IS NULL)";

/// A referral's wait that just ended.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Settled {
    pub(crate) referral_id: String,
    /// `accepted`, `declined`, `expired` or `closed` (closed some other way).
    pub(crate) outcome: &'static str,
    /// From creation to the answer (accepted, declined) or to the deadline (expired).
    pub(crate) seconds: i64,
}

/// Opens a row for every referral now waiting, then settles the open rows whose referral
/// was answered, closed, or passed its deadline. Returns what was settled now (each row is
/// settled once: the update only touches open rows).
pub(crate) fn settle(
    conn: &mut Connection,
    window: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Settled>, StoreError> {
    let tx = conn.transaction()?;
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO referral_responses (referral_id, created_at)
             SELECT id, created_at FROM referrals WHERE {AWAITING}"
        ),
        [],
    )?;
    // The open rows are read as a stream and only the waits that ended are kept: every
    // referral still waiting has an open row, so collecting them all made each cycle's memory
    // grow with the inbox (~40 MB at 100,000 referrals).
    let mut ending = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT r.id, r.status, r.substatus, r.created_at, r.expires_at, r.updated_at
             FROM referral_responses x JOIN referrals r ON r.id = x.referral_id
             WHERE x.outcome IS NULL",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            // Text read in place; anything else (NULL, a stray number) reads as absent.
            let text = |i: usize| -> rusqlite::Result<Option<&str>> {
                Ok(match row.get_ref(i)? {
                    ValueRef::Text(t) => std::str::from_utf8(t).ok(),
                    _ => None,
                })
            };
            let open = OpenRow {
                status: text(1)?,
                substatus: text(2)?,
                created_at: text(3)?.unwrap_or_default(),
                expires_at: text(4)?,
                updated_at: text(5)?.unwrap_or_default(),
            };
            let Some((outcome, at)) = open.outcome(window, now) else {
                continue;
            };
            let created = parse_timestamp(open.created_at).unwrap_or(at);
            let seconds = (at - created).num_seconds().max(0);
            ending.push((row.get::<_, String>(0)?, outcome, at, seconds));
        }
    }
    let mut settled = Vec::with_capacity(ending.len());
    for (referral_id, outcome, at, seconds) in ending {
        tx.prepare_cached(
            "UPDATE referral_responses SET outcome = ?2, settled_at = ?3, seconds = ?4
             WHERE referral_id = ?1 AND outcome IS NULL",
        )?
        .execute(params![referral_id, outcome, db_timestamp(at), seconds])?;
        settled.push(Settled {
            referral_id,
            outcome,
            seconds,
        });
    }
    tx.commit()?;
    Ok(settled)
}

/// An open row, borrowed from the statement's current row (no allocation per referral).
struct OpenRow<'a> {
    status: Option<&'a str>,
    substatus: Option<&'a str>,
    created_at: &'a str,
    expires_at: Option<&'a str>,
    updated_at: &'a str,
}

impl OpenRow<'_> {
    /// How the wait ended and when, or `None` while it goes on.
    fn outcome(
        &self,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Option<(&'static str, DateTime<Utc>)> {
        let created = parse_timestamp(self.created_at)?;
        let expires = self.expires_at.and_then(parse_timestamp);
        let deadline = crate::deadline::deadline(created, expires, window);
        // The answer's time: Partner Center's updatedDateTime when the answer was first seen
        // (never after now, never before the referral existed).
        let answered = parse_timestamp(self.updated_at)
            .unwrap_or(now)
            .clamp(created, now.max(created));
        match (self.status, self.substatus) {
            (Some("New"), _) => (deadline <= now).then_some(("expired", deadline)),
            (Some("Active"), _) => Some(("accepted", answered)),
            (Some("Closed"), Some("Declined")) => Some(("declined", answered)),
            (Some("Closed"), Some("Expired")) => Some(("expired", deadline.min(answered))),
            _ => Some(("closed", answered)),
        }
    }
}

/// The last `days` days (by settlement time): answered, time to answer, expired.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ResponseWindow {
    pub(crate) days: i64,
    pub(crate) accepted: u64,
    pub(crate) declined: u64,
    /// Seconds from creation to answer, accepted and declined, ascending.
    #[serde(skip)]
    pub(crate) answer_seconds: Vec<i64>,
    pub(crate) expired: u64,
}

/// What was settled since `now - days`.
pub(crate) fn window(
    conn: &Connection,
    days: i64,
    now: DateTime<Utc>,
) -> Result<ResponseWindow, StoreError> {
    let since = db_timestamp(now - Duration::days(days));
    let mut out = ResponseWindow {
        days,
        ..ResponseWindow::default()
    };
    let mut stmt = conn.prepare(
        "SELECT outcome, seconds FROM referral_responses
         WHERE outcome IS NOT NULL AND settled_at >= ?1 ORDER BY seconds",
    )?;
    let rows = stmt.query_map([since], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
    })?;
    for row in rows {
        let (outcome, seconds) = row?;
        match outcome.as_str() {
            "accepted" | "declined" => {
                if outcome == "accepted" {
                    out.accepted += 1;
                } else {
                    out.declined += 1;
                }
                out.answer_seconds.push(seconds);
            }
            "expired" => out.expired += 1,
            _ => {}
        }
    }
    Ok(out)
}

/// One source's part of the service level: settled since the window's start (accepted,
/// declined, expired), and waiting now.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct SourceCounts {
    /// `microsoft` or `aws`.
    pub(crate) source: String,
    pub(crate) accepted: u64,
    pub(crate) declined: u64,
    pub(crate) expired: u64,
    pub(crate) waiting: u64,
}

/// [`SourceCounts`] of each source that has any, Microsoft first.
pub(crate) fn by_source(
    conn: &Connection,
    days: i64,
    now: DateTime<Utc>,
) -> Result<Vec<SourceCounts>, StoreError> {
    let since = db_timestamp(now - Duration::days(days));
    let mut out = std::collections::BTreeMap::<(bool, String), SourceCounts>::new();
    fn of(
        out: &mut std::collections::BTreeMap<(bool, String), SourceCounts>,
        source: String,
    ) -> &mut SourceCounts {
        let key = (source != super::invitations::MICROSOFT, source.clone());
        out.entry(key).or_insert_with(|| SourceCounts {
            source,
            ..SourceCounts::default()
        })
    }
    let mut settled = conn.prepare(
        "SELECT r.source, x.outcome, COUNT(*) FROM referral_responses x
           JOIN referrals r ON r.id = x.referral_id
         WHERE x.outcome IS NOT NULL AND x.settled_at >= ?1 GROUP BY 1, 2",
    )?;
    let mut rows = settled.query([&since])?;
    while let Some(r) = rows.next()? {
        let (outcome, n) = (r.get::<_, String>(1)?, r.get::<_, i64>(2)? as u64);
        let c = of(&mut out, r.get(0)?);
        match outcome.as_str() {
            "accepted" => c.accepted += n,
            "declined" => c.declined += n,
            "expired" => c.expired += n,
            _ => {}
        }
    }
    let mut waiting = conn.prepare(&format!(
        "SELECT source, COUNT(*) FROM referrals WHERE {AWAITING} GROUP BY 1"
    ))?;
    let mut rows = waiting.query([])?;
    while let Some(r) = rows.next()? {
        let n = r.get::<_, i64>(1)? as u64;
        of(&mut out, r.get(0)?).waiting += n;
    }
    Ok(out.into_values().collect())
}

/// How many incoming referrals wait for an answer now.
pub(crate) fn count_awaiting(conn: &mut Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        &format!("SELECT COUNT(*) FROM referrals WHERE {AWAITING}"),
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}
