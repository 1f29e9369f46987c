//! Answers to referrals (accept / decline) in the outbox: queued by the command line or the
//! action page, then an ordinary action: taken, claimed, finished and audited (with the
//! person who asked) by the one executor like every kind ([`super::outbox`]; sent by
//! [`crate::sync::push::answer_referral`]). What is answer-specific lives here: one open
//! answer per referral, the look for due ones, the latest finished one and the page's facts.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::outbox::{self, OutboxRow, ANSWER_REFERRAL};
use super::StoreError;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// Queues an answer, or finds the one already open for this referral (a double click, two
/// people at once: one row, one PATCH). Returns the row id and whether this call added it.
pub(crate) fn enqueue(
    conn: &Connection,
    referral_id: &str,
    payload: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(i64, bool), StoreError> {
    if outbox::enqueue(
        conn,
        referral_id,
        ANSWER_REFERRAL,
        Some(referral_id),
        payload,
        now,
    )? {
        return Ok((conn.last_insert_rowid(), true));
    }
    let open: i64 = conn.query_row(
        "SELECT id FROM outbox WHERE referral_id = ?1 AND kind = 'answer_referral'
           AND state IN ('pending', 'in_flight') ORDER BY id DESC LIMIT 1",
        [referral_id],
        |r| r.get(0),
    )?;
    Ok((open, false))
}

/// Queues an answer to an AWS invitation (`kind` is `aws_accept` or `aws_decline`), or finds
/// the one already open for it, of either kind (a double click, two people at once, an accept
/// whose task is still followed: one row, one write). Returns the row id and whether this call
/// added it.
pub(crate) fn enqueue_aws(
    conn: &Connection,
    invitation_id: &str,
    kind: &str,
    payload: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(i64, bool), StoreError> {
    // One statement, so it is atomic inside a caller's transaction (a rule's) or alone.
    let added = conn
        .prepare_cached(
            "INSERT INTO outbox (referral_id, kind, target, payload, state, next_attempt_at,
                 created_at, updated_at)
             SELECT ?1, ?2, ?1, ?3, 'pending', ?4, ?4, ?4
             WHERE NOT EXISTS (SELECT 1 FROM outbox WHERE referral_id = ?1
                 AND (kind = 'aws_accept' OR kind = 'aws_decline')
                 AND state IN ('pending', 'in_flight'))
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            invitation_id,
            kind,
            payload.to_string(),
            db_timestamp(now)
        ])?;
    if added > 0 {
        return Ok((conn.last_insert_rowid(), true));
    }
    let open: i64 = conn.query_row(
        "SELECT id FROM outbox WHERE referral_id = ?1
           AND (kind = 'aws_accept' OR kind = 'aws_decline')
           AND state IN ('pending', 'in_flight') ORDER BY id DESC LIMIT 1",
        [invitation_id],
        |r| r.get(0),
    )?;
    Ok((open, false))
}

/// An answered invitation that is also a row of `referrals` (the AWS inbox stores it so):
/// its state as the answer left it (`Active`/`Accepted`, `Closed`/`Declined`), so status, the
/// service level and the alerts see it answered before the next pull.
pub(crate) fn mark_invitation_answered(
    conn: &Connection,
    invitation_id: &str,
    status: &str,
    substatus: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let now = db_timestamp(now);
    let changed = conn
        .prepare_cached(
            "UPDATE referrals SET status = ?2, substatus = ?3, updated_at = ?4,
                last_changed_at = ?4
             WHERE id = ?1 AND (status IS NOT ?2 OR substatus IS NOT ?3)",
        )?
        .execute(params![invitation_id, status, substatus, now])?;
    Ok(changed > 0)
}

/// Whether an answer is due now (the daemon polls this and runs its answer sender: the
/// command line, in another process, cannot wake it otherwise).
pub(crate) fn any_due(conn: &Connection, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM outbox WHERE state = 'pending'
               AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
               AND next_attempt_at <= ?1 LIMIT 1",
        )?
        .query_row([db_timestamp(now)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The latest finished answer of a referral (who answered it here, and how), for the page.
pub(crate) fn latest_finished(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<OutboxRow>, StoreError> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM outbox WHERE referral_id = ?1
               AND (kind = 'answer_referral' OR kind = 'aws_accept' OR kind = 'aws_decline')
               AND state IN ('done', 'superseded', 'dead') AND result IS NOT NULL
             ORDER BY (state = 'done') DESC, id DESC LIMIT 1",
            [referral_id],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => outbox::get(conn, id),
        None => Ok(None),
    }
}

/// What the action page shows about a referral: the stored copy and its Google records.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PageFacts {
    pub(crate) id: String,
    pub(crate) raw: serde_json::Value,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) lead: Option<String>,
    pub(crate) opportunity: Option<String>,
}

pub(crate) fn page_facts(
    conn: &Connection,
    referral_id: &str,
) -> Result<Option<PageFacts>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT r.raw_json, r.created_at, r.expires_at, l.lead_name, l.opportunity_name
             FROM referrals r LEFT JOIN links l ON l.referral_id = r.id WHERE r.id = ?1",
            [referral_id],
            |r| {
                let raw: String = r.get(0)?;
                let created: String = r.get(1)?;
                let expires: Option<String> = r.get(2)?;
                Ok(PageFacts {
                    id: referral_id.to_string(),
                    raw: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
                    created_at: parse_timestamp(&created).unwrap_or_default(),
                    expires_at: expires.as_deref().and_then(parse_timestamp),
                    lead: r.get(3)?,
                    opportunity: r.get(4)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use serde_json::json;

    #[test]
    fn one_open_answer_per_referral_taken_first_by_the_one_executor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = Utc::now();
        store
            .call_blocking(|c| {
                let (first, added) = enqueue(c, "r1", &json!({"a": 1}), now)?;
                assert!(added);
                let (again, added) = enqueue(c, "r1", &json!({"a": 2}), now)?;
                assert_eq!(
                    (again, added),
                    (first, false),
                    "a double click joins the open one"
                );
                outbox::enqueue(c, "r2", outbox::CREATE_LEAD, None, &json!({}), now)?;
                assert!(any_due(c, now)?);
                let only = outbox::Kinds::Answers;
                let row = outbox::take_due_of(c, now, &[], only)?.expect("due");
                assert_eq!((row.id, row.attempts), (first, 1));
                assert!(
                    outbox::take_due_of(c, now, &[row.id], only)?.is_none(),
                    "an answers-only taker leaves the create"
                );
                assert_eq!(
                    outbox::take_due_of(c, now, &[], outbox::Kinds::All)?.map(|r| r.id),
                    Some(first),
                    "the one executor takes the answer first"
                );
                let row = outbox::get(c, first)?.expect("stored");
                assert_eq!(
                    outbox::mark_sending(c, &row, now)?,
                    outbox::SendClaim::Won,
                    "the latest taker sends it"
                );
                let held = |c: &Connection| {
                    outbox::mark_attempt_sending(c, row.id, row.attempts, true, now)
                };
                assert_eq!(held(c)?, outbox::SendClaim::Won);
                assert_eq!(
                    held(c)?,
                    outbox::SendClaim::Won,
                    "again after a 412 re-read"
                );
                let done = outbox::ActionOutcome::Done { result: None };
                outbox::finish(c, (row.id, row.attempts), &done, Some("{}"), None, now)?;
                assert!(!any_due(c, now)?);
                assert_eq!(latest_finished(c, "r1")?.map(|r| r.id), Some(first));
                let (next, added) = enqueue(c, "r1", &json!({}), now)?;
                assert!(
                    added && next != first,
                    "a finished answer does not block a new one"
                );
                Ok(())
            })
            .unwrap();
    }
}
