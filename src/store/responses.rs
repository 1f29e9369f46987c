//! How fast referrals are answered: one `referral_responses` row per incoming referral seen
//! while New, settled once (accepted, declined, expired, closed). Derived from the stored
//! referrals after each cycle, never from in-memory events, so every answer and expiry is
//! counted once whatever restarts or which code path (pull, webhook, `accept`) stored it.

use chrono::{DateTime, Duration, Utc};
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
    let open: Vec<OpenRow> = tx
        .prepare(
            "SELECT r.id, r.status, r.substatus, r.created_at, r.expires_at, r.updated_at
             FROM referral_responses x JOIN referrals r ON r.id = x.referral_id
             WHERE x.outcome IS NULL",
        )?
        .query_map([], |row| {
            Ok(OpenRow {
                id: row.get(0)?,
                status: row.get(1)?,
                substatus: row.get(2)?,
                created_at: row.get(3)?,
                expires_at: row.get(4)?,
                updated_at: row.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut settled = Vec::new();
    for row in open {
        let Some((outcome, at)) = row.outcome(window, now) else {
            continue;
        };
        let created = parse_timestamp(&row.created_at).unwrap_or(at);
        let seconds = (at - created).num_seconds().max(0);
        tx.prepare_cached(
            "UPDATE referral_responses SET outcome = ?2, settled_at = ?3, seconds = ?4
             WHERE referral_id = ?1 AND outcome IS NULL",
        )?
        .execute(params![row.id, outcome, db_timestamp(at), seconds])?;
        settled.push(Settled {
            referral_id: row.id,
            outcome,
            seconds,
        });
    }
    tx.commit()?;
    Ok(settled)
}

struct OpenRow {
    id: String,
    status: Option<String>,
    substatus: Option<String>,
    created_at: String,
    expires_at: Option<String>,
    updated_at: String,
}

impl OpenRow {
    /// How the wait ended and when, or `None` while it goes on.
    fn outcome(
        &self,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Option<(&'static str, DateTime<Utc>)> {
        let created = parse_timestamp(&self.created_at)?;
        let expires = self.expires_at.as_deref().and_then(parse_timestamp);
        let deadline = crate::deadline::deadline(created, expires, window);
        // The answer's time: Partner Center's updatedDateTime when the answer was first seen
        // (never after now, never before the referral existed).
        let answered = parse_timestamp(&self.updated_at)
            .unwrap_or(now)
            .clamp(created, now.max(created));
        match (self.status.as_deref(), self.substatus.as_deref()) {
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

/// How many incoming referrals wait for an answer now.
pub(crate) fn count_awaiting(conn: &mut Connection) -> Result<u64, StoreError> {
    Ok(conn.query_row(
        &format!("SELECT COUNT(*) FROM referrals WHERE {AWAITING}"),
        [],
        |r| r.get::<_, i64>(0),
    )? as u64)
}
