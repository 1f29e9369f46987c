//! Referrals, rejected records and sync watermarks: a page of referrals is committed in one
//! transaction together with the watermark it justifies.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::microsoft::{ParsedReferral, RejectedRecord};
use crate::outside::Outside;
use crate::timefmt::{db_timestamp, parse_timestamp};

/// What one committed page did to the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpsertCounts {
    pub new: u64,
    pub changed: u64,
    pub(crate) unchanged: u64,
    pub(crate) rejected: u64,
}

impl UpsertCounts {
    pub(crate) fn add(&mut self, other: UpsertCounts) {
        self.new += other.new;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.rejected += other.rejected;
    }
}

/// Stores a page: upserts its referrals, keeps its rejected records, and (when given) moves
/// the named watermark forward — all or nothing.
pub(crate) fn commit_page(
    conn: &mut Connection,
    referrals: &[ParsedReferral],
    rejected: &[RejectedRecord],
    watermark: Option<(&str, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<UpsertCounts, StoreError> {
    let tx = conn.transaction()?;
    let counts = store_page(&tx, referrals, rejected, watermark, now)?;
    tx.commit()?;
    Ok(counts)
}

/// [`commit_page`] inside a transaction the caller commits (a write's outcome and the
/// referral copy its answer carries are one transaction: one WAL commit, never half).
pub(crate) fn store_page(
    tx: &Connection,
    referrals: &[ParsedReferral],
    rejected: &[RejectedRecord],
    watermark: Option<(&str, DateTime<Utc>)>,
    now: DateTime<Utc>,
) -> Result<UpsertCounts, StoreError> {
    let mut counts = UpsertCounts::default();
    for referral in referrals {
        match upsert(tx, referral, now)? {
            Upserted::New => counts.new += 1,
            Upserted::Changed => counts.changed += 1,
            Upserted::Unchanged => {
                counts.unchanged += 1;
                continue;
            }
        }
        // A new or changed referral is planned by the next deadline tick.
        super::schedule::mark_for_plan(tx, &referral.referral.id, now)?;
    }
    for record in rejected {
        let (id, error, raw) = (record.id.as_deref(), &record.error, &record.raw);
        keep_rejected(tx, "microsoft.referral", (id, error, raw), now)?;
        counts.rejected += 1;
    }
    if let Some((name, value)) = watermark {
        advance_watermark(tx, name, value, now)?;
    }
    Ok(counts)
}

enum Upserted {
    New,
    Changed,
    Unchanged,
}

fn upsert(
    tx: &Connection,
    parsed: &ParsedReferral,
    now: DateTime<Utc>,
) -> Result<Upserted, StoreError> {
    let r = &parsed.referral;
    let updated_at = db_timestamp(r.updated_at());
    let existing: Option<(String, String)> = tx
        .prepare_cached("SELECT raw_json, updated_at FROM referrals WHERE id = ?1")?
        .query_row([&r.id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let outcome = match &existing {
        None => Upserted::New,
        Some((raw, _)) if *raw == parsed.raw => return Ok(Upserted::Unchanged),
        // An older snapshot (a slow page racing a newer one) never overwrites a newer one.
        Some((_, stored_updated)) if *stored_updated > updated_at => {
            return Ok(Upserted::Unchanged)
        }
        Some(_) => Upserted::Changed,
    };
    let details = r.details.as_ref();
    let now_text = db_timestamp(now);
    tx.prepare_cached(
        "INSERT INTO referrals (id, engagement_id, name, customer_name, customer_country, status,
            substatus, direction, qualification, referral_type, deal_value, currency, closing_at,
            external_reference_id, etag, created_at, updated_at, expires_at, raw_json,
            first_seen_at, last_changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?20)
         ON CONFLICT (id) DO UPDATE SET engagement_id = excluded.engagement_id,
            name = excluded.name, customer_name = excluded.customer_name,
            customer_country = excluded.customer_country, status = excluded.status,
            substatus = excluded.substatus, direction = excluded.direction,
            qualification = excluded.qualification, referral_type = excluded.referral_type,
            deal_value = excluded.deal_value, currency = excluded.currency,
            closing_at = excluded.closing_at,
            external_reference_id = excluded.external_reference_id, etag = excluded.etag,
            created_at = excluded.created_at, updated_at = excluded.updated_at,
            expires_at = excluded.expires_at, raw_json = excluded.raw_json,
            last_changed_at = excluded.last_changed_at",
    )?
    .execute(params![
        r.id,
        r.engagement_id,
        r.name,
        r.customer_name(),
        r.customer_country(),
        r.status.as_ref().map(|s| s.as_str()),
        r.substatus.as_ref().map(|s| s.as_str()),
        r.direction.as_ref().map(|s| s.as_str()),
        r.qualification,
        r.referral_type,
        details.and_then(|d| d.deal_value),
        details.and_then(|d| d.currency.clone()),
        details.and_then(|d| d.closing_date_time).map(db_timestamp),
        r.external_reference_id,
        r.e_tag,
        db_timestamp(r.created_date_time),
        updated_at,
        r.expiration_date_time.map(db_timestamp),
        parsed.raw,
        now_text,
    ])?;
    Ok(outcome)
}

/// Keeps a record an API returned that could not be read: (its id, the error, its raw JSON).
pub(super) fn keep_rejected(
    tx: &Connection,
    source: &str,
    (id, error, raw): (Option<&str>, &str, &str),
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = db_timestamp(now);
    tx.prepare_cached(
        "INSERT INTO rejected_records (source, record_id, error, raw_json, first_seen_at, last_seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (source, raw_json) DO UPDATE SET last_seen_at = excluded.last_seen_at,
            error = excluded.error",
    )?
    .execute(params![source, id, error, raw, now])?;
    Ok(())
}

/// Moves a watermark forward only (a smaller value never moves it back).
fn advance_watermark(
    tx: &Connection,
    name: &str,
    value: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO sync_watermarks (name, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
         WHERE excluded.value > sync_watermarks.value",
    )?
    .execute(params![name, db_timestamp(value), db_timestamp(now)])?;
    Ok(())
}

pub(crate) fn watermark(
    conn: &Connection,
    name: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let text: Option<String> = conn
        .query_row(
            "SELECT value FROM sync_watermarks WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(text.as_deref().and_then(parse_timestamp))
}

/// A referral as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReferralSummary {
    pub(crate) id: String,
    /// Set outside the company: [`Outside`] up to whoever renders it.
    pub(crate) name: Option<Outside>,
    pub(crate) customer: Option<Outside>,
    pub(crate) status: Option<String>,
    pub(crate) substatus: Option<String>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    pub(crate) deal_value: Option<f64>,
    pub(crate) currency: Option<String>,
    /// `microsoft` or `aws` (an engagement invitation; migration 14).
    pub(crate) source: String,
    /// The deadline is an estimate: an AWS invitation without `ExpirationDate` (spec §8).
    pub(crate) deadline_estimated: bool,
}

impl ReferralSummary {
    /// An AWS engagement invitation (not a Partner Center referral).
    pub(crate) fn is_aws(&self) -> bool {
        self.source == super::invitations::AWS
    }
}

/// Incoming referrals in status New (Pending or Received): their response clock is running.
pub(crate) fn awaiting_response(conn: &Connection) -> Result<Vec<ReferralSummary>, StoreError> {
    let mut out = Vec::new();
    each_awaiting_response(conn, |r| {
        out.push(r);
        Ok(())
    })?;
    Ok(out)
}

/// The same, one at a time, so a large inbox is never held in memory.
pub(crate) fn each_awaiting_response(
    conn: &Connection,
    mut f: impl FnMut(ReferralSummary) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(&awaiting_sql())?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        f(summary_row(row)?)?;
    }
    Ok(())
}

/// Read every cycle: the index `referrals_awaiting` holds every column it reads (migration 12).
fn awaiting_sql() -> String {
    format!(
        "SELECT {SUMMARY_COLUMNS} FROM referrals
         WHERE status = 'New' AND substatus IN ('Pending', 'Received')
           AND (direction = 'Incoming' OR direction IS NULL)"
    )
}

/// One referral, when it is an incoming one still New (its response clock is running).
pub(crate) fn awaiting_response_one(
    conn: &Connection,
    id: &str,
) -> Result<Option<ReferralSummary>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM referrals
             WHERE id = ?1 AND status = 'New' AND substatus IN ('Pending', 'Received')
               AND (direction = 'Incoming' OR direction IS NULL)"
        ))?
        .query_row([id], summary_row)
        .optional()?)
}

/// The columns [`summary_row`] reads, in its order.
pub(crate) const SUMMARY_COLUMNS: &str = "id, name, customer_name, status, substatus, created_at,
    expires_at, deal_value, currency, source, deadline_estimated";

pub(crate) fn summary_row(row: &rusqlite::Row) -> rusqlite::Result<ReferralSummary> {
    let created: String = row.get(5)?;
    let expires: Option<String> = row.get(6)?;
    Ok(ReferralSummary {
        id: row.get(0)?,
        name: row.get::<_, Option<String>>(1)?.map(Outside::from),
        customer: row.get::<_, Option<String>>(2)?.map(Outside::from),
        status: row.get(3)?,
        substatus: row.get(4)?,
        created_at: parse_timestamp(&created).unwrap_or_default(),
        expires_at: expires.as_deref().and_then(parse_timestamp),
        deal_value: row.get(7)?,
        currency: row.get(8)?,
        source: row.get(9)?,
        deadline_estimated: row.get(10)?,
    })
}

/// A count of referrals in one (source, status, substatus).
pub(crate) type StateCount = (String, String, String, u64);

/// Referral counts by (source, status, substatus): Microsoft's, then AWS's invitations.
pub(crate) fn counts_by_state(conn: &Connection) -> Result<Vec<StateCount>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT source, COALESCE(status, '?'), COALESCE(substatus, '?'), COUNT(*) FROM referrals
         GROUP BY 1, 2, 3 ORDER BY source <> 'microsoft', 1, 2, 3",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn count_rejected(conn: &Connection) -> Result<u64, StoreError> {
    Ok(
        conn.query_row("SELECT COUNT(*) FROM rejected_records", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// A referral's stored `externalReferenceId` and when this database last saw it change.
pub(crate) type ReferenceAndChange = (Option<String>, DateTime<Utc>);

/// [`ReferenceAndChange`] of one referral (the lead-create guard of recovery: an old copy is
/// read again before a create).
pub(crate) fn reference_and_change(
    conn: &Connection,
    id: &str,
) -> Result<Option<ReferenceAndChange>, StoreError> {
    let row: Option<(Option<String>, String)> = conn
        .prepare_cached(
            "SELECT external_reference_id, last_changed_at FROM referrals WHERE id = ?1",
        )?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.map(|(reference, changed)| {
        let changed = crate::microsoft::model::parse_timestamp(&changed).unwrap_or_default();
        (reference, changed)
    }))
}

/// What decides the write-back after a lead create
/// ([`crate::sync::reconcile::after_create`]): the referral's externalReferenceId, its status,
/// and whether a patch of it is open, dead or quarantined (the planner then queues none).
pub(crate) struct WriteBackInputs {
    pub(crate) reference: Option<String>,
    pub(crate) status: Option<String>,
    pub(crate) patch_blocked: bool,
}

pub(crate) fn write_back_inputs(
    conn: &Connection,
    id: &str,
) -> Result<Option<WriteBackInputs>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT r.external_reference_id, r.status,
                    EXISTS (SELECT 1 FROM outbox k WHERE k.referral_id = r.id
                            AND k.kind = 'patch_referral'
                            AND k.state IN ('pending', 'in_flight', 'dead', 'quarantined'))
             FROM referrals r WHERE r.id = ?1",
        )?
        .query_row([id], |r| {
            Ok(WriteBackInputs {
                reference: r.get(0)?,
                status: r.get(1)?,
                patch_blocked: r.get(2)?,
            })
        })
        .optional()?)
}

/// The stored referral as a patch needs it: its status, its eTag (sent as `If-Match`) and
/// its raw JSON (a value already there is never written).
pub(crate) struct ForPatch {
    pub(crate) status: Option<String>,
    pub(crate) etag: Option<String>,
    pub(crate) raw: serde_json::Value,
}

pub(crate) fn for_patch(conn: &Connection, id: &str) -> Result<Option<ForPatch>, StoreError> {
    let row: Option<(Option<String>, Option<String>, String)> = conn
        .prepare_cached("SELECT status, etag, raw_json FROM referrals WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(row.map(|(status, etag, raw)| ForPatch {
        status,
        etag,
        raw: serde_json::from_str(&raw).unwrap_or(serde_json::Value::Null),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every cycle reads the referrals whose response clock runs, three times: from an index
    /// that holds the columns, never from the table's rows with their raw JSON.
    #[test]
    fn the_referrals_awaiting_a_response_are_read_from_an_index_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let awaiting = "status = 'New' AND substatus IN ('Pending', 'Received')
            AND (direction = 'Incoming' OR direction IS NULL)";
        for sql in [
            awaiting_sql(),
            format!("SELECT id, created_at FROM referrals WHERE {awaiting}"),
            format!("SELECT COUNT(*) FROM referrals WHERE {awaiting}"),
        ] {
            let plan = store
                .call_blocking(|c| Ok(crate::store::query_plan(c, &sql)?))
                .unwrap();
            assert!(
                plan.contains("COVERING INDEX referrals_awaiting"),
                "{sql}\n{plan}"
            );
        }
    }
    use crate::store::Store;
    use serde_json::json;

    fn referral(id: &str, updated: &str, value: f64) -> ParsedReferral {
        ParsedReferral::from_value(json!({
            "id": id, "createdDateTime": "2026-11-01T00:00:00Z", "updatedDateTime": updated,
            "status": "New", "substatus": "Pending", "direction": "Incoming",
            "details": {"dealValue": value}
        }))
        .unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        parse_timestamp(s).unwrap()
    }

    #[test]
    fn upsert_counts_new_changed_unchanged_and_ignores_older_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = t("2026-11-22T00:00:00Z");
        store
            .call_blocking(|c| {
                let a = referral("a", "2026-11-02T00:00:00Z", 1.0);
                let counts = commit_page(c, std::slice::from_ref(&a), &[], None, now)?;
                assert_eq!(counts.new, 1);
                let counts = commit_page(c, &[a], &[], None, now)?;
                assert_eq!(counts.unchanged, 1);
                let newer = referral("a", "2026-11-03T00:00:00Z", 2.0);
                assert_eq!(commit_page(c, &[newer], &[], None, now)?.changed, 1);
                let older = referral("a", "2026-11-02T12:00:00Z", 3.0);
                assert_eq!(commit_page(c, &[older], &[], None, now)?.unchanged, 1);
                let value: f64 =
                    c.query_row("SELECT deal_value FROM referrals", [], |r| r.get(0))?;
                assert_eq!(value, 2.0);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn watermark_moves_forward_only_and_with_its_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now = t("2026-11-22T00:00:00Z");
        store
            .call_blocking(|c| {
                let a = referral("a", "2026-11-02T00:00:00Z", 1.0);
                commit_page(c, &[a], &[], Some(("w", t("2026-11-02T00:00:00Z"))), now)?;
                let b = referral("b", "2026-11-01T00:00:00Z", 1.0);
                commit_page(c, &[b], &[], Some(("w", t("2026-11-01T00:00:00Z"))), now)?;
                assert_eq!(watermark(c, "w")?, Some(t("2026-11-02T00:00:00Z")));
                Ok(())
            })
            .unwrap();
    }

    /// A crash between fetching a page and committing it: the transaction never commits,
    /// so neither the referrals nor the watermark move, and the retry imports each once.
    #[test]
    fn a_page_that_fails_mid_commit_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let now = t("2026-11-22T00:00:00Z");
        let page = vec![
            referral("a", "2026-11-02T00:00:00Z", 1.0),
            referral("b", "2026-11-03T00:00:00Z", 1.0),
        ];
        {
            let mut conn = Connection::open(&path).unwrap();
            drop(Store::open(&path).unwrap());
            let tx = conn.transaction().unwrap();
            upsert(&tx, &page[0], now).unwrap();
            advance_watermark(&tx, "w", t("2026-11-03T00:00:00Z"), now).unwrap();
            // The process dies here: the transaction is dropped without commit.
            drop(tx);
        }
        let store = Store::open(&path).unwrap();
        store
            .call_blocking(|c| {
                let n: i64 = c.query_row("SELECT COUNT(*) FROM referrals", [], |r| r.get(0))?;
                assert_eq!(n, 0);
                assert_eq!(watermark(c, "w")?, None);
                let counts =
                    commit_page(c, &page, &[], Some(("w", t("2026-11-03T00:00:00Z"))), now)?;
                assert_eq!(counts.new, 2);
                let again =
                    commit_page(c, &page, &[], Some(("w", t("2026-11-03T00:00:00Z"))), now)?;
                assert_eq!(again.unchanged, 2);
                let n: i64 = c.query_row("SELECT COUNT(*) FROM referrals", [], |r| r.get(0))?;
                assert_eq!(n, 2);
                assert_eq!(super::super::integrity_check(c)?, "ok");
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn rejected_records_are_kept_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let bad = RejectedRecord {
            id: Some("x".into()),
            error: "bad".into(),
            raw: "{\"id\":\"x\"}".into(),
        };
        let now = t("2026-11-22T00:00:00Z");
        store
            .call_blocking(|c| {
                commit_page(c, &[], std::slice::from_ref(&bad), None, now)?;
                commit_page(c, &[], std::slice::from_ref(&bad), None, now)?;
                assert_eq!(count_rejected(c)?, 1);
                Ok(())
            })
            .unwrap();
    }
}
