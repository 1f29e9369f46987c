//! The triage rules' decisions and the rule answers queued (migration 13): the referrals
//! awaiting an answer as the rules read them (raw JSON), one decision row per referral
//! rewritten every cycle, the log of rule answers whose last hour is the cap's window, and
//! the reads `status`, `rules test`, the alerts and the pages show. Plain data: deciding is
//! [`crate::triage`]'s.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// A referral awaiting an answer, as the rules read it.
#[derive(Debug, Clone)]
pub(crate) struct Awaiting {
    pub(crate) id: String,
    pub(crate) raw: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// `referrals.source`: `microsoft` or `aws`.
    pub(crate) source: String,
}

/// Incoming, New (Pending or Received), with no answer queued or sent (an open or finished
/// answer row; a refused one leaves the referral to people again) and never answered by a
/// rule. The deadline is the caller's to check (it needs `[alerts] response_window`).
/// `only`: these referrals alone (a page that just arrived).
pub(crate) fn awaiting(
    conn: &Connection,
    only: Option<&[String]>,
    mut f: impl FnMut(Awaiting),
) -> Result<(), StoreError> {
    // Both sources: an AWS invitation is New/Pending while `PENDING` (spec §7's "awaiting").
    let sql = "SELECT r.id, r.raw_json, r.created_at, r.expires_at, r.source FROM referrals r
         WHERE r.status = 'New' AND r.substatus IN ('Pending', 'Received')
           AND (r.direction = 'Incoming' OR r.direction IS NULL)
           AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.referral_id = r.id
                 AND (o.kind = 'answer_referral' OR o.kind = 'aws_accept' OR o.kind = 'aws_decline')
                 AND o.state IN ('pending', 'in_flight', 'done'))
           AND NOT EXISTS (SELECT 1 FROM triage_answers t WHERE t.referral_id = r.id)";
    let read = |row: &rusqlite::Row| -> rusqlite::Result<Awaiting> {
        let created: String = row.get(2)?;
        let expires: Option<String> = row.get(3)?;
        Ok(Awaiting {
            id: row.get(0)?,
            raw: row.get(1)?,
            created_at: parse_timestamp(&created).unwrap_or_default(),
            expires_at: expires.as_deref().and_then(parse_timestamp),
            source: row.get(4)?,
        })
    };
    match only {
        None => {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                f(read(row)?);
            }
        }
        Some(ids) => {
            let mut stmt = conn.prepare_cached(&format!("{sql} AND r.id = ?1"))?;
            for id in ids {
                if let Some(a) = stmt.query_row([id], read).optional()? {
                    f(a);
                }
            }
        }
    }
    Ok(())
}

/// One referral's decision as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct DecisionRow {
    pub(crate) referral_id: String,
    pub(crate) source: String,
    pub(crate) rule: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) mode: String,
    /// `shown`, `held` or `queued`.
    pub(crate) state: String,
    pub(crate) deadline: DateTime<Utc>,
}

/// A decision shown, not acted on: dry-run, `none`, or no rule matched.
pub(crate) const SHOWN: &str = "shown";
/// An apply decision waiting for the hourly cap (not yet an answer).
pub(crate) const HELD: &str = "held";
/// An apply decision queued as an answer.
pub(crate) const QUEUED: &str = "queued";

/// Replaces the decisions: every row (`only` = None, a full pass: a referral no longer
/// awaiting loses its row) or those of `only`'s referrals.
pub(crate) fn replace(
    conn: &Connection,
    only: Option<&[String]>,
    rows: &[DecisionRow],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match only {
        None => {
            conn.execute("DELETE FROM triage_decisions", [])?;
        }
        Some(ids) => {
            let mut del =
                conn.prepare_cached("DELETE FROM triage_decisions WHERE referral_id = ?1")?;
            for id in ids {
                del.execute([id])?;
            }
        }
    }
    let mut insert = conn.prepare_cached(
        "INSERT OR REPLACE INTO triage_decisions
           (referral_id, source, rule, decision, reason, mode, state, deadline, decided_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    let at = db_timestamp(now);
    for r in rows {
        insert.execute(params![
            r.referral_id,
            r.source,
            r.rule,
            r.decision,
            r.reason,
            r.mode,
            r.state,
            db_timestamp(r.deadline),
            at
        ])?;
    }
    Ok(())
}

/// Records a rule answer just queued (the cap's window counts it from `now`).
pub(crate) fn record_answer(
    conn: &Connection,
    referral_id: &str,
    rule: &str,
    decision: &str,
    outbox_id: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO triage_answers (referral_id, rule, decision, outbox_id, queued_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        referral_id,
        rule,
        decision,
        outbox_id,
        db_timestamp(now)
    ])?;
    Ok(())
}

/// Rule answers queued in the hour before `now` (the sliding window of the cap).
pub(crate) fn answers_in_last_hour(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let since = db_timestamp(now - chrono::Duration::hours(1));
    let n: i64 = conn
        .prepare_cached("SELECT COUNT(*) FROM triage_answers WHERE queued_at > ?1")?
        .query_row([since], |r| r.get(0))?;
    Ok(n as u64)
}

/// When the oldest answer of the last hour leaves the window (the next free slot).
pub(crate) fn next_slot(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let since = db_timestamp(now - chrono::Duration::hours(1));
    let oldest: Option<String> = conn
        .prepare_cached("SELECT MIN(queued_at) FROM triage_answers WHERE queued_at > ?1")?
        .query_row([since], |r| r.get(0))?;
    Ok(oldest
        .as_deref()
        .and_then(parse_timestamp)
        .map(|t| t + chrono::Duration::hours(1)))
}

fn decision_row(r: &rusqlite::Row) -> rusqlite::Result<DecisionRow> {
    let deadline: String = r.get(7)?;
    Ok(DecisionRow {
        referral_id: r.get(0)?,
        source: r.get(1)?,
        rule: r.get(2)?,
        decision: r.get(3)?,
        reason: r.get(4)?,
        mode: r.get(5)?,
        state: r.get(6)?,
        deadline: parse_timestamp(&deadline).unwrap_or_default(),
    })
}

const DECISION_COLUMNS: &str = "referral_id, source, rule, decision, reason, mode, state, deadline";

/// One referral's recorded decision (the action page, `status --referral`, alerts).
pub(crate) fn decision_of(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<DecisionRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {DECISION_COLUMNS} FROM triage_decisions WHERE referral_id = ?1"
        ))?
        .query_row([referral_id], decision_row)
        .optional()?)
}

/// A rule answer, for `status --referral`: which rule answered and when it was queued.
pub(crate) fn rule_answer_of(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<(String, String, DateTime<Utc>)>, StoreError> {
    let row: Option<(String, String, String)> = conn
        .prepare_cached(
            "SELECT rule, decision, queued_at FROM triage_answers WHERE referral_id = ?1",
        )?
        .query_row([referral_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(row.map(|(rule, d, at)| (rule, d, parse_timestamp(&at).unwrap_or_default())))
}

/// `status`: referrals per (rule, decision, state) among those awaiting an answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct RuleCount {
    pub(crate) rule: Option<String>,
    pub(crate) decision: Option<String>,
    pub(crate) state: String,
    pub(crate) count: u64,
}

pub(crate) fn counts(conn: &Connection) -> Result<Vec<RuleCount>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT rule, decision, state, COUNT(*) FROM triage_decisions
         GROUP BY rule, decision, state ORDER BY rule IS NULL, rule, decision, state",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RuleCount {
            rule: r.get(0)?,
            decision: r.get(1)?,
            state: r.get(2)?,
            count: r.get::<_, i64>(3)? as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rule answers queued per rule and decision in the last `since` (for `status`).
pub(crate) fn answered_since(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<Vec<(String, String, u64)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT rule, decision, COUNT(*) FROM triage_answers WHERE queued_at > ?1
         GROUP BY rule, decision ORDER BY rule, decision",
    )?;
    let rows = stmt.query_map([db_timestamp(since)], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One row of the inbox page: a referral awaiting an answer and what the rules decided.
#[derive(Debug, Clone)]
pub(crate) struct InboxRow {
    pub(crate) referral: super::referrals::ReferralSummary,
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) decision: Option<DecisionRow>,
}

/// Whether an answer is queued or was sent for this referral (then it no longer awaits one).
fn answered(conn: &Connection, referral_id: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM outbox WHERE referral_id = ?1
               AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
               AND state IN ('pending', 'in_flight', 'done') LIMIT 1",
        )?
        .query_row([referral_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The inbox (spec §7): every incoming referral awaiting an answer (New, before its
/// deadline, no answer queued or sent), nearest deadline first; `page` counted from 1,
/// `per_page` a page. Returns how many there are in all, and the page's rows.
pub(crate) fn inbox(
    conn: &Connection,
    window: chrono::Duration,
    now: DateTime<Utc>,
    page: usize,
    per_page: usize,
) -> Result<(usize, Vec<InboxRow>), StoreError> {
    // The referrals with an answer queued or sent, at once: a few rows, where a lookup per
    // awaiting referral was ten thousand statements per page view.
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT referral_id FROM outbox
         WHERE (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
           AND state IN ('pending', 'in_flight', 'done')",
    )?;
    let answered: std::collections::HashSet<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut all = Vec::new();
    super::referrals::each_awaiting_response(conn, |r| {
        let deadline = crate::deadline::deadline(r.created_at, r.expires_at, window);
        if deadline > now && !answered.contains(&r.id) {
            all.push((deadline, r));
        }
        Ok(())
    })?;
    all.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
    let total = all.len();
    let start = page.saturating_sub(1).saturating_mul(per_page);
    let mut rows = Vec::new();
    for (deadline, referral) in all.into_iter().skip(start).take(per_page) {
        let decision = decision_of(conn, &referral.id)?;
        rows.push(InboxRow {
            referral,
            deadline,
            decision,
        });
    }
    Ok((total, rows))
}

/// Whether one referral awaits an answer now (the inbox POST checks each checked one).
pub(crate) fn awaits_answer(
    conn: &Connection,
    referral_id: &str,
    window: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let Some(r) = super::referrals::awaiting_response_one(conn, referral_id)? else {
        return Ok(false);
    };
    let deadline = crate::deadline::deadline(r.created_at, r.expires_at, window);
    Ok(deadline > now && !answered(conn, referral_id)?)
}

/// How a referral's latest answer stands, for the inbox's results page: `queued`, `sent`
/// or `refused` (with the row's message), or `None` when it has no answer row.
pub(crate) fn answer_state(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<(&'static str, Option<String>)>, StoreError> {
    let row: Option<(String, Option<String>)> = conn
        .prepare_cached(
            "SELECT state, COALESCE(json_extract(result, '$.message'), last_error)
             FROM outbox WHERE referral_id = ?1
               AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
             ORDER BY id DESC LIMIT 1",
        )?
        .query_row([referral_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(state, message)| match state.as_str() {
        "pending" | "in_flight" => ("queued", None),
        "done" => ("sent", message),
        _ => ("refused", message),
    }))
}
