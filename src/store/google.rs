//! Links between referrals and Google records, the last copy of each tracked Google record,
//! the merge base, conflicts and forward blocks — and the batched snapshot the planner reads.

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;

use super::StoreError;
use crate::google::{Lead, Opportunity};
use crate::microsoft::ParsedReferral;
use crate::timefmt::db_timestamp;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Link {
    pub(crate) referral_id: String,
    pub(crate) lead_name: Option<String>,
    pub(crate) opportunity_name: Option<String>,
}

/// Values both sides agreed on at the last successful sync.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Base {
    pub(crate) deal_value: Option<f64>,
    pub(crate) close_date: Option<NaiveDate>,
}

/// A change to the base: `Some(v)` sets the field to `v`, `None` leaves it. Stored, an absent
/// key leaves the field and `null` empties it (plain serde would read both as "leave").
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub(crate) struct BaseUpdate {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) deal_value: Option<Option<f64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub(crate) close_date: Option<Option<NaiveDate>>,
}

/// A key that is present (even as `null`) is a change.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

impl BaseUpdate {
    pub(crate) fn is_empty(&self) -> bool {
        self.deal_value.is_none() && self.close_date.is_none()
    }
}

pub(crate) fn link(conn: &Connection, referral_id: &str) -> Result<Option<Link>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT referral_id, lead_name, opportunity_name FROM links WHERE referral_id = ?1",
        )?
        .query_row([referral_id], |r| {
            Ok(Link {
                referral_id: r.get(0)?,
                lead_name: r.get(1)?,
                opportunity_name: r.get(2)?,
            })
        })
        .optional()?)
}

/// Which referral a Google resource is linked to, if any.
pub(crate) fn linked_referral(
    conn: &Connection,
    resource: &str,
) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT referral_id FROM links WHERE lead_name = ?1 OR opportunity_name = ?1",
        )?
        .query_row([resource], |r| r.get(0))
        .optional()?)
}

/// Records that `resource` (a lead or an opportunity) belongs to `referral_id`.
pub(crate) fn set_link(
    tx: &Transaction,
    referral_id: &str,
    lead: Option<&str>,
    opportunity: Option<&str>,
    source: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = db_timestamp(now);
    tx.prepare_cached(
        "INSERT INTO links (referral_id, lead_name, opportunity_name, source, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)
         ON CONFLICT (referral_id) DO UPDATE SET
            lead_name = COALESCE(excluded.lead_name, links.lead_name),
            opportunity_name = COALESCE(excluded.opportunity_name, links.opportunity_name),
            updated_at = excluded.updated_at",
    )?
    .execute(params![referral_id, lead, opportunity, source, now])?;
    tx.prepare_cached(
        "INSERT INTO plan_queue (referral_id, queued_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
    )?
    .execute(params![referral_id, now])?;
    Ok(())
}

/// Whether the stored copy of `name` in `table` differs from `raw` (true when there is none).
fn copy_differs(conn: &Connection, table: &str, name: &str, raw: &str) -> Result<bool, StoreError> {
    let stored: Option<String> = conn
        .prepare_cached(&format!("SELECT raw_json FROM {table} WHERE name = ?1"))?
        .query_row([name], |r| r.get(0))
        .optional()?;
    Ok(stored.as_deref() != Some(raw))
}

/// A changed Google record queues its referral for the next plan.
fn queue_plan_if(
    conn: &Connection,
    changed: bool,
    referral_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if let Some(id) = referral_id.filter(|_| changed) {
        super::schedule::mark_for_plan(conn, id, now)?;
    }
    Ok(())
}

/// Stores the current copy of a lead; returns whether it differed from the last copy (a
/// changed record queues its referral for planning).
pub(crate) fn save_lead(
    tx: &Connection,
    lead: &Lead,
    referral_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let changed = copy_differs(tx, "google_leads", &lead.name, &lead.raw)?;
    tx.prepare_cached(
        "INSERT INTO google_leads (name, referral_id, external_system_id, lead_status, approval_status, raw_json, fetched_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (name) DO UPDATE SET referral_id = COALESCE(excluded.referral_id, google_leads.referral_id),
            external_system_id = excluded.external_system_id, lead_status = excluded.lead_status,
            approval_status = excluded.approval_status, raw_json = excluded.raw_json,
            fetched_at = excluded.fetched_at",
    )?
    .execute(params![
        lead.name,
        referral_id,
        lead.external_system_id,
        lead.lead_status,
        lead.approval_status,
        lead.raw,
        db_timestamp(now)
    ])?;
    queue_plan_if(tx, changed, referral_id, now)?;
    Ok(changed)
}

/// Stores the current copy of an opportunity; returns whether it differed from the last copy.
pub(crate) fn save_opportunity(
    tx: &Connection,
    opp: &Opportunity,
    referral_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let changed = copy_differs(tx, "google_opportunities", &opp.name, &opp.raw)?;
    tx.prepare_cached(
        "INSERT INTO google_opportunities (name, referral_id, external_system_id, sales_stage, deal_size, close_date, raw_json, fetched_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (name) DO UPDATE SET referral_id = COALESCE(excluded.referral_id, google_opportunities.referral_id),
            external_system_id = excluded.external_system_id, sales_stage = excluded.sales_stage,
            deal_size = excluded.deal_size, close_date = excluded.close_date,
            raw_json = excluded.raw_json, fetched_at = excluded.fetched_at",
    )?
    .execute(params![
        opp.name,
        referral_id,
        opp.external_system_id,
        opp.sales_stage,
        opp.deal_size,
        opp.close_date.map(|d| d.to_string()),
        opp.raw,
        db_timestamp(now)
    ])?;
    queue_plan_if(tx, changed, referral_id, now)?;
    Ok(changed)
}

pub(crate) fn update_base(
    conn: &Connection,
    referral_id: &str,
    update: &BaseUpdate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if update.is_empty() {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO field_base (referral_id, deal_value, close_date, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (referral_id) DO UPDATE SET
            deal_value = CASE WHEN ?5 THEN excluded.deal_value ELSE field_base.deal_value END,
            close_date = CASE WHEN ?6 THEN excluded.close_date ELSE field_base.close_date END,
            updated_at = excluded.updated_at",
    )?
    .execute(params![
        referral_id,
        update.deal_value.flatten(),
        update.close_date.flatten().map(|d| d.to_string()),
        db_timestamp(now),
        update.deal_value.is_some(),
        update.close_date.is_some(),
    ])?;
    Ok(())
}

pub(crate) fn record_conflict(
    conn: &Connection,
    referral_id: &str,
    field: &str,
    microsoft: &str,
    google: &str,
    base: &str,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let inserted = conn.prepare_cached(
        "INSERT INTO conflicts (referral_id, field, microsoft_value, google_value, base_value, detected_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (referral_id, field) DO UPDATE SET microsoft_value = excluded.microsoft_value,
            google_value = excluded.google_value, base_value = excluded.base_value
         WHERE conflicts.microsoft_value IS NOT excluded.microsoft_value
            OR conflicts.google_value IS NOT excluded.google_value",
    )?
    .execute(params![referral_id, field, microsoft, google, base, db_timestamp(now)])?;
    Ok(inserted > 0)
}

/// Clears the conflicts of a referral except those still present.
pub(crate) fn clear_conflicts(
    conn: &Connection,
    referral_id: &str,
    keep: &[&str],
) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("SELECT field FROM conflicts WHERE referral_id = ?1")?;
    let fields: Vec<String> = stmt
        .query_map([referral_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for field in fields.iter().filter(|f| !keep.contains(&f.as_str())) {
        conn.execute(
            "DELETE FROM conflicts WHERE referral_id = ?1 AND field = ?2",
            params![referral_id, field],
        )?;
    }
    Ok(())
}

pub(crate) fn set_forward_blocked(
    conn: &Connection,
    referral_id: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match reason {
        Some(reason) => conn
            .prepare_cached(
                "INSERT INTO forward_blocked (referral_id, reason, detected_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (referral_id) DO UPDATE SET reason = excluded.reason
                 WHERE forward_blocked.reason <> excluded.reason",
            )?
            .execute(params![referral_id, reason, db_timestamp(now)])?,
        None => conn
            .prepare_cached("DELETE FROM forward_blocked WHERE referral_id = ?1")?
            .execute([referral_id])?,
    };
    Ok(())
}

/// Everything the planner needs about one referral.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotRow {
    pub(crate) referral: ParsedReferral,
    pub(crate) link: Option<Link>,
    pub(crate) opportunity: Option<Opportunity>,
    pub(crate) base: Option<Base>,
    /// A lead create exists that was not dropped (open, done, dead or quarantined).
    pub(crate) create_exists: bool,
    /// Kinds of writes already pending, in flight, dead or quarantined for this referral.
    pub(crate) blocked_kinds: Vec<String>,
}

/// A batch of referrals that may need work, in id order after `after`: incoming referrals
/// still New (forward candidates), every linked referral, and every unlinked one that names
/// a Google record (recovery adopts it). Batches keep memory flat.
///
/// With `planned_since`, a referral new or changed at or after it and no longer in the plan
/// queue is left out: the queue planned it after that change (a change queues its referral
/// in the same transaction), so a full plan at the end of a cycle does not plan again what
/// the cycle's own pages just planned.
pub(crate) fn snapshot_batch(
    conn: &Connection,
    after: &str,
    limit: usize,
    planned_since: Option<DateTime<Utc>>,
) -> Result<Vec<SnapshotRow>, StoreError> {
    let since = planned_since.map(db_timestamp);
    snapshots(conn, SNAPSHOT_BATCH, params![after, limit as i64, since])
}

/// A batch of the full plan: the next candidates in id order, from the id index (see
/// [`snapshot_sql`] on why the source is not an index term).
const SNAPSHOT_BATCH: &str =
    "r.id > ?1 AND (l.referral_id IS NOT NULL OR (r.status = 'New' AND r.direction = 'Incoming')
                         OR r.external_reference_id LIKE 'partners/%')
         AND NOT (?3 IS NOT NULL AND r.last_changed_at >= ?3
                  AND NOT EXISTS (SELECT 1 FROM plan_queue q WHERE q.referral_id = r.id))
         ORDER BY r.id LIMIT ?2";

/// One referral's snapshot, whatever its state (Partner Center referrals only: every
/// snapshot feeds the lead planner, and Google leads are not made for AWS invitations).
pub(crate) fn snapshot_one(conn: &Connection, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
    Ok(snapshots(conn, "r.id = ?1", params![id])?.pop())
}

/// The snapshot query under `condition`. The source is tested with a unary `+`, which keeps
/// it out of index choice: as an index term it made SQLite walk `referrals_by_source` for
/// every batch, read every Partner Center referral's snapshot and sort them by id to keep 500
/// (a no-change re-sync of 10,000 referrals cost twice its CPU).
fn snapshot_sql(condition: &str) -> String {
    format!(
        "SELECT r.id, r.raw_json, l.lead_name, l.opportunity_name, o.raw_json,
                b.referral_id IS NOT NULL, b.deal_value, b.close_date,
                EXISTS (SELECT 1 FROM outbox c WHERE c.referral_id = r.id AND c.kind = 'create_lead'
                        AND c.state <> 'dropped'),
                (SELECT group_concat(kind) FROM outbox k WHERE k.referral_id = r.id
                        AND k.state IN ('pending', 'in_flight', 'dead', 'quarantined'))
         FROM referrals r
         LEFT JOIN links l ON l.referral_id = r.id
         LEFT JOIN google_opportunities o ON o.name = l.opportunity_name
         LEFT JOIN field_base b ON b.referral_id = r.id
         WHERE +r.source = 'microsoft' AND {condition}"
    )
}

fn snapshots(
    conn: &Connection,
    condition: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<SnapshotRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&snapshot_sql(condition))?;
    let rows = stmt.query_map(args, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, bool>(5)?,
            r.get::<_, Option<f64>>(6)?,
            r.get::<_, Option<String>>(7)?,
            r.get::<_, bool>(8)?,
            r.get::<_, Option<String>>(9)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, raw, lead, opp_name, opp_raw, has_base, deal, close, create_exists, kinds) = row?;
        let Ok(referral) = ParsedReferral::from_stored(raw) else {
            continue;
        };
        let link = (lead.is_some() || opp_name.is_some()).then(|| Link {
            referral_id: id.clone(),
            lead_name: lead,
            opportunity_name: opp_name,
        });
        let opportunity = opp_raw
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok())
            .and_then(|v: serde_json::Value| Opportunity::from_value(&v).ok());
        out.push(SnapshotRow {
            referral,
            link,
            opportunity,
            base: has_base.then(|| Base {
                deal_value: deal,
                close_date: close.and_then(|c| c.parse().ok()),
            }),
            create_exists,
            blocked_kinds: kinds
                .map(|k| k.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ConflictRow {
    pub(crate) referral_id: String,
    pub(crate) field: String,
    pub(crate) microsoft_value: Option<String>,
    pub(crate) google_value: Option<String>,
    pub(crate) base_value: Option<String>,
    pub(crate) detected_at: String,
}

impl ConflictRow {
    /// `Microsoft 111, Google 222 (last agreed 100)`: the one wording `status` and the
    /// conflict alert share.
    pub(crate) fn values(&self) -> String {
        format!(
            "Microsoft {}, Google {} (last agreed {})",
            self.microsoft_value.as_deref().unwrap_or("-"),
            self.google_value.as_deref().unwrap_or("-"),
            self.base_value.as_deref().unwrap_or("-")
        )
    }
}

pub(crate) fn conflicts(conn: &Connection) -> Result<Vec<ConflictRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT referral_id, field, microsoft_value, google_value, base_value, detected_at
         FROM conflicts ORDER BY detected_at, referral_id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ConflictRow {
            referral_id: r.get(0)?,
            field: r.get(1)?,
            microsoft_value: r.get(2)?,
            google_value: r.get(3)?,
            base_value: r.get(4)?,
            detected_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn forward_blocked(conn: &Connection) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT referral_id, reason FROM forward_blocked ORDER BY referral_id")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::{snapshot_sql, SNAPSHOT_BATCH};

    /// The full plan reads its batches in id order from the id index: a batch never reads or
    /// sorts the referrals outside it (with the source as an index term it did, for every
    /// batch: a no-change re-sync of 10,000 referrals read 200,000 snapshots).
    #[test]
    fn a_plan_batch_walks_the_id_index_and_never_sorts() {
        let conditions = [SNAPSHOT_BATCH, "r.id = ?1"];
        let sqls = conditions.map(snapshot_sql);
        let plans = crate::store::query_plans_on_a_new_store(&sqls.each_ref().map(|s| s.as_str()));
        for (condition, plan) in conditions.iter().zip(plans) {
            let first = plan.lines().next().unwrap_or_default();
            assert!(
                first.contains("SEARCH r USING INDEX sqlite_autoindex_referrals_1 (id"),
                "{condition}\n{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{condition}\n{plan}");
        }
    }
}
