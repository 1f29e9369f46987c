//! Read-only queries behind the operator commands (`status`, `status --referral`, `link`'s
//! checks): what they show, kept here so no SQL lives outside `store/`.

use chrono::Utc;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::StoreError;
use crate::store::referrals::{summary_row, ReferralSummary, SUMMARY_COLUMNS};
use crate::timefmt::parse_timestamp;

/// How many leads and opportunities are linked to referrals.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct LinkCounts {
    pub(crate) leads: u64,
    pub(crate) opportunities: u64,
}

pub(crate) fn link_counts(conn: &Connection) -> Result<LinkCounts, StoreError> {
    Ok(conn.query_row(
        "SELECT COUNT(lead_name), COUNT(opportunity_name) FROM links",
        [],
        |r| {
            Ok(LinkCounts {
                leads: r.get::<_, i64>(0)? as u64,
                opportunities: r.get::<_, i64>(1)? as u64,
            })
        },
    )?)
}

pub(crate) fn referral_exists(conn: &Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM referrals WHERE id = ?1)",
        [id],
        |r| r.get(0),
    )?)
}

/// One referral as `status --referral` shows it.
pub(crate) fn referral(conn: &Connection, id: &str) -> Result<Option<ReferralSummary>, StoreError> {
    Ok(conn
        .query_row(
            &format!("SELECT {SUMMARY_COLUMNS} FROM referrals WHERE id = ?1"),
            [id],
            summary_row,
        )
        .optional()?)
}

/// A referral's (or invitation's) raw JSON as received.
pub(crate) fn raw_json(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT raw_json FROM referrals WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?)
}

/// The last copy of a tracked Google record, as the referral view shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GoogleRecord {
    pub(crate) name: String,
    /// Lead status (and approval) or opportunity sales stage.
    pub(crate) state: Option<String>,
    pub(crate) deal_size: Option<f64>,
    pub(crate) fetched_at: chrono::DateTime<Utc>,
}

pub(crate) fn lead(conn: &Connection, name: &str) -> Result<Option<GoogleRecord>, StoreError> {
    record(
        conn,
        "SELECT name, TRIM(COALESCE(lead_status, '') || ' ' || COALESCE(approval_status, '')),
                NULL, fetched_at FROM google_leads WHERE name = ?1",
        name,
    )
}

pub(crate) fn opportunity(
    conn: &Connection,
    name: &str,
) -> Result<Option<GoogleRecord>, StoreError> {
    record(
        conn,
        "SELECT name, sales_stage, deal_size, fetched_at FROM google_opportunities WHERE name = ?1",
        name,
    )
}

fn record(conn: &Connection, sql: &str, name: &str) -> Result<Option<GoogleRecord>, StoreError> {
    Ok(conn
        .query_row(sql, params![name], |r| {
            let state: Option<String> = r.get(1)?;
            let fetched: String = r.get(3)?;
            Ok(GoogleRecord {
                name: r.get(0)?,
                state: state.filter(|s| !s.is_empty()),
                deal_size: r.get(2)?,
                fetched_at: parse_timestamp(&fetched).unwrap_or_default(),
            })
        })
        .optional()?)
}
