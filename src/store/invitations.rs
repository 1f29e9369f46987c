//! AWS engagement invitations as rows of `referrals` (migration 14, spec §8): the mapping of
//! an invitation onto a referral row (`source = 'aws'`), the page commit of the AWS pull, the
//! invitations still pending in the store (the pull re-reads those that left AWS's PENDING
//! list), and the invitations AWS no longer knows.
//!
//! AWS statuses map onto the referral states every reader already knows: `PENDING` →
//! New/Pending, `ACCEPTED` → Active/Accepted, `REJECTED` → Closed/Declined, `EXPIRED` →
//! Closed/Expired. An unknown status is kept as the status itself (no substatus), so it is
//! shown and counted but never taken for one awaiting an answer; the raw JSON keeps it too.
//! An invitation is never queued for the lead planner: Google leads are not made for AWS
//! invitations (spec §8).

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::referrals::{keep_rejected, UpsertCounts};
use super::StoreError;
use crate::aws::model::{InvitationStatus, ParsedInvitation, RejectedItem, ESTIMATED_WINDOW};
use crate::timefmt::db_timestamp;

/// `referrals.source` of an AWS invitation.
pub(crate) const AWS: &str = "aws";
/// `referrals.source` of a Partner Center referral.
pub(crate) const MICROSOFT: &str = "microsoft";
/// `rejected_records.source` of an invitation that could not be read.
pub(crate) const REJECTED_SOURCE: &str = "aws.invitation";
/// The substatus of an invitation AWS answered `ResourceNotFoundException` for: it is gone
/// (our marker, not an AWS status), alerted once and never read again.
pub(crate) const VANISHED: &str = "Vanished";

/// The (status, substatus) a referral row holds for an AWS status.
pub(crate) fn row_state(status: Option<&InvitationStatus>) -> (Option<String>, Option<String>) {
    let pair = |a: &str, b: &str| (Some(a.to_string()), Some(b.to_string()));
    match status {
        Some(InvitationStatus::Pending) => pair("New", "Pending"),
        Some(InvitationStatus::Accepted) => pair("Active", "Accepted"),
        Some(InvitationStatus::Rejected) => pair("Closed", "Declined"),
        Some(InvitationStatus::Expired) => pair("Closed", "Expired"),
        Some(InvitationStatus::Other(other)) => (Some(other.clone()), None),
        None => (None, None),
    }
}

/// Stores a page of invitations and keeps its unreadable items, all or nothing.
pub(crate) fn commit_invitations(
    conn: &mut Connection,
    invitations: &[ParsedInvitation],
    rejected: &[RejectedItem],
    now: DateTime<Utc>,
) -> Result<UpsertCounts, StoreError> {
    let tx = conn.transaction()?;
    let mut counts = UpsertCounts::default();
    for parsed in invitations {
        match upsert(&tx, parsed, now)? {
            Some(true) => counts.new += 1,
            Some(false) => counts.changed += 1,
            None => counts.unchanged += 1,
        }
    }
    for bad in rejected {
        let item = (bad.id.as_deref(), bad.error.as_str(), bad.raw.as_str());
        keep_rejected(&tx, REJECTED_SOURCE, item, now)?;
        counts.rejected += 1;
    }
    tx.commit()?;
    Ok(counts)
}

/// Upserts one invitation: `Some(true)` new, `Some(false)` changed, `None` unchanged (the
/// same raw JSON). Never touches a Microsoft row of the same id (ids cannot collide: an
/// invitation's is `engi-…`; the guard costs nothing).
fn upsert(
    tx: &Connection,
    parsed: &ParsedInvitation,
    now: DateTime<Utc>,
) -> Result<Option<bool>, StoreError> {
    let inv = &parsed.invitation;
    let existing: Option<String> = tx
        .prepare_cached("SELECT raw_json FROM referrals WHERE id = ?1")?
        .query_row([&inv.id], |r| r.get(0))
        .optional()?;
    if existing.as_deref() == Some(parsed.raw.as_str()) {
        return Ok(None);
    }
    let created = inv.invitation_date.and_then(plausible).unwrap_or(now);
    // `ExpirationDate`, else `InvitationDate` + 15 days, estimated; with neither date, 15
    // days from when this database first saw it (estimated too), never no deadline at all.
    let (expires, estimated) = match inv.expiration_date.and_then(plausible) {
        Some(at) => (at, false),
        None => (
            created
                .checked_add_signed(ESTIMATED_WINDOW)
                .unwrap_or(created),
            true,
        ),
    };
    let (status, substatus) = row_state(inv.status.as_ref());
    let value: Option<serde_json::Value> = serde_json::from_str(&parsed.raw).ok();
    let spend = value.as_ref().and_then(crate::aws::model::yearly_spend);
    let now_text = db_timestamp(now);
    tx.prepare_cached(
        "INSERT INTO referrals (id, engagement_id, name, customer_name, customer_country, status,
            substatus, direction, referral_type, deal_value, currency, created_at, updated_at,
            expires_at, raw_json, first_seen_at, last_changed_at, source, deadline_estimated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'Incoming', ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?12,
            ?12, 'aws', ?15)
         ON CONFLICT (id) DO UPDATE SET engagement_id = excluded.engagement_id,
            name = excluded.name,
            customer_name = COALESCE(excluded.customer_name, referrals.customer_name),
            customer_country = COALESCE(excluded.customer_country, referrals.customer_country),
            status = excluded.status, substatus = excluded.substatus,
            referral_type = excluded.referral_type,
            deal_value = COALESCE(excluded.deal_value, referrals.deal_value),
            currency = COALESCE(excluded.currency, referrals.currency),
            created_at = excluded.created_at, updated_at = excluded.updated_at,
            expires_at = excluded.expires_at, raw_json = excluded.raw_json,
            last_changed_at = excluded.last_changed_at,
            deadline_estimated = excluded.deadline_estimated
         WHERE referrals.source = 'aws'",
    )?
    .execute(params![
        inv.id,
        inv.engagement_id,
        inv.title,
        inv.customer,
        inv.country,
        status,
        substatus,
        inv.payload_type.as_ref().map(|p| p.as_str()),
        spend.as_ref().map(|s| s.0),
        spend.map(|s| s.1),
        db_timestamp(created),
        now_text,
        db_timestamp(expires),
        parsed.raw,
        estimated,
    ])?;
    Ok(Some(existing.is_none()))
}

/// A date an invitation can carry: between 2000 and 9999. An absurd one (year -29719 from
/// a negative epoch, year 275760) is treated as absent, so a stored deadline is always a
/// timestamp whose text sorts as time and reads back.
fn plausible(at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::Datelike;
    (2000..=9999).contains(&at.year()).then_some(at)
}

/// The raw JSON of a stored invitation (`None`: not stored, or not an invitation).
pub(crate) fn stored_raw(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT raw_json FROM referrals WHERE id = ?1 AND source = 'aws'")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// The invitations the store holds as still pending (New/Pending): the pull reads again
/// each one that is no longer in AWS's PENDING list, to learn how it ended.
pub(crate) fn pending_ids(conn: &Connection) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM referrals WHERE status = 'New' AND substatus = 'Pending'
           AND source = 'aws' ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Marks an invitation AWS no longer knows (`ResourceNotFoundException` on the read after it
/// left the PENDING list): Closed/Vanished, so it is neither awaited nor read again.
pub(crate) fn mark_vanished(
    conn: &Connection,
    id: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE referrals SET status = 'Closed', substatus = ?2, updated_at = ?3,
            last_changed_at = ?3 WHERE id = ?1 AND source = 'aws'",
    )?
    .execute(params![id, VANISHED, db_timestamp(now)])?;
    Ok(())
}

/// Read every cycle: by source first (`INDEXED BY`: never a walk over Microsoft's closed
/// referrals, whatever the planner estimates), the index of migration 14.
const VANISHED_SQL: &str = "SELECT id, name, customer_name, last_changed_at
    FROM referrals INDEXED BY referrals_by_source
    WHERE source = 'aws' AND status = 'Closed' AND substatus = ?1 ORDER BY id LIMIT 1000";

fn expired_sql() -> String {
    format!(
        "SELECT {} FROM referrals INDEXED BY referrals_by_source
         WHERE source = 'aws' AND status = 'Closed' AND substatus = 'Expired'
           AND last_changed_at >= ?1 ORDER BY id LIMIT 1000",
        super::referrals::SUMMARY_COLUMNS
    )
}

/// A vanished invitation, for its alert: (id, title, customer, when it was marked).
pub(crate) type VanishedRow = (String, Option<String>, Option<String>, String);

/// The invitations marked vanished (their alert ids are stable: each is raised once).
pub(crate) fn vanished(conn: &Connection) -> Result<Vec<VanishedRow>, StoreError> {
    let mut stmt = conn.prepare_cached(VANISHED_SQL)?;
    let rows = stmt.query_map([VANISHED], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The invitations AWS marked `EXPIRED` whose change this database saw since `since`: each
/// was tracked while pending (only PENDING ones are listed), so each gets `referral_expired`
/// (its alert id dedupes; the window bounds the reads as the table grows).
pub(crate) fn recently_expired(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<Vec<super::referrals::ReferralSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(&expired_sql())?;
    let rows = stmt.query_map([db_timestamp(since)], super::referrals::summary_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Where a referral row comes from (`None`: unknown id).
pub(crate) fn source_of(conn: &Connection, id: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT source FROM referrals WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::model::parse_invitation;
    use crate::store::Store;
    use serde_json::json;

    fn invitation(id: &str, status: &str, expires: Option<&str>) -> ParsedInvitation {
        let mut v = json!({
            "Id": id, "Catalog": "AWS", "Status": status, "PayloadType": "OpportunityInvitation",
            "InvitationDate": "2026-12-01T09:00:00Z", "SenderCompanyName": "Amazon Web Services",
            "Payload": {"OpportunityInvitation": {
                "Customer": {"CompanyName": "Example Corp", "CountryCode": "US"},
                "Project": {"Title": "Data lake", "ExpectedCustomerSpend": [
                    {"Amount": "1000", "CurrencyCode": "USD", "Frequency": "Monthly"},
                    {"Amount": 500.5, "CurrencyCode": "USD"}]}}}
        });
        if let Some(e) = expires {
            v["ExpirationDate"] = json!(e);
        }
        parse_invitation(&v.to_string()).unwrap()
    }

    type Row = (
        String,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<f64>,
        String,
        bool,
    );

    fn row(c: &Connection, id: &str) -> Row {
        c.query_row(
            "SELECT source, status, substatus, customer_name, deal_value, expires_at,
                    deadline_estimated FROM referrals WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap()
    }

    /// The AWS reads of every cycle go by source first: a large store of Microsoft's closed
    /// referrals is never walked to find a few invitations.
    #[test]
    fn the_aws_reads_use_the_source_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        // The pending ones: the live inbox, read from a covering index either way.
        let pending = "SELECT id FROM referrals WHERE status = 'New' AND substatus = 'Pending'
               AND source = 'aws' ORDER BY id";
        let plan = store
            .call_blocking(|c| Ok(crate::store::query_plan(c, pending)?))
            .unwrap();
        assert!(plan.contains("COVERING INDEX"), "{plan}");
        for sql in [expired_sql(), VANISHED_SQL.to_string()] {
            let plan = store
                .call_blocking(|c| Ok(crate::store::query_plan(c, &sql)?))
                .unwrap();
            assert!(
                plan.contains("INDEX referrals_by_source (source=? AND status=? AND substatus=?"),
                "{sql}\n{plan}"
            );
        }
    }

    #[test]
    fn an_invitation_is_a_referral_row_with_its_states_deadline_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let now: DateTime<Utc> = "2026-12-02T00:00:00Z".parse().unwrap();
        store
            .call_blocking(move |c| {
                let a = invitation(
                    "engi-000000000000a",
                    "PENDING",
                    Some("2026-12-16T09:00:00Z"),
                );
                let b = invitation("engi-000000000000b", "PENDING", None);
                let counts = commit_invitations(c, &[a.clone(), b], &[], now)?;
                assert_eq!((counts.new, counts.changed), (2, 0));
                let (source, status, sub, customer, value, expires, estimated) =
                    row(c, "engi-000000000000a");
                assert_eq!(source, "aws");
                assert_eq!(
                    (status.as_deref(), sub.as_deref()),
                    (Some("New"), Some("Pending"))
                );
                assert_eq!(customer.as_deref(), Some("Example Corp"));
                assert_eq!(value, Some(12.0 * 1500.5));
                assert!(expires.starts_with("2026-12-16T09:00:00"), "{expires}");
                assert!(!estimated);
                let (.., expires, estimated) = row(c, "engi-000000000000b");
                assert!(expires.starts_with("2026-12-16T09:00:00"), "{expires}");
                assert!(estimated, "InvitationDate + 15 days is an estimate");
                // Never queued for the lead planner.
                assert_eq!(crate::store::schedule::plan_queue_len(c)?, 0);
                assert_eq!(commit_invitations(c, &[a], &[], now)?.unchanged, 1);
                assert_eq!(pending_ids(c)?.len(), 2);
                for (aws, state) in [
                    ("ACCEPTED", ("Active", Some("Accepted"))),
                    ("REJECTED", ("Closed", Some("Declined"))),
                    ("EXPIRED", ("Closed", Some("Expired"))),
                    ("ARCHIVED", ("ARCHIVED", None)),
                ] {
                    let next = invitation("engi-000000000000a", aws, Some("2026-12-16T09:00:00Z"));
                    assert_eq!(commit_invitations(c, &[next], &[], now)?.changed, 1);
                    let (_, status, sub, ..) = row(c, "engi-000000000000a");
                    assert_eq!(
                        (status.as_deref(), sub.as_deref()),
                        (Some(state.0), state.1)
                    );
                }
                assert_eq!(pending_ids(c)?, vec!["engi-000000000000b".to_string()]);
                mark_vanished(c, "engi-000000000000b", now)?;
                assert!(pending_ids(c)?.is_empty());
                assert_eq!(vanished(c)?.len(), 1);
                Ok(())
            })
            .unwrap();
    }

    /// The model's hostile member values, plus spend lists that cannot be summed.
    fn hostile(rng: &mut fastrand::Rng) -> Option<serde_json::Value> {
        match rng.u8(..10) {
            0 => Some(json!([{"Amount": "1e308", "CurrencyCode": "USD"}, {"Amount": "x"}])),
            1 => Some(json!(-1e12 + rng.f64())),
            _ => crate::aws::model::tests::hostile(rng),
        }
    }

    /// Generated: pages of invitations with hostile members go through the page parser and
    /// the store mapping without a panic; every readable item is stored (its deadline sane:
    /// a timestamp the readers parse), every unreadable one kept in `rejected_records`.
    #[test]
    fn hostile_invitations_are_stored_or_kept_as_rejected_never_a_panic() {
        const MEMBERS: &[&str] = &[
            "/Id",
            "/Status",
            "/PayloadType",
            "/EngagementTitle",
            "/InvitationDate",
            "/ExpirationDate",
            "/SenderCompanyName",
            "/Payload",
            "/Payload/OpportunityInvitation/Customer",
            "/Payload/OpportunityInvitation/Customer/CompanyName",
            "/Payload/OpportunityInvitation/Customer/CountryCode",
            "/Payload/OpportunityInvitation/Project/Title",
            "/Payload/OpportunityInvitation/Project/ExpectedCustomerSpend",
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let mut rng = fastrand::Rng::with_seed(29_014);
        let now: DateTime<Utc> = "2026-12-02T00:00:00Z".parse().unwrap();
        let (mut kept, mut rejected) = (0u64, 0u64);
        // A hostile `Id` may repeat one seen before: rows are per distinct id.
        let mut distinct = std::collections::HashSet::new();
        for case in 0..150 {
            let mut items = Vec::new();
            for n in 0..rng.usize(1..10) {
                let mut v: serde_json::Value = serde_json::from_str(
                    &invitation(
                        "engi-0000000000000",
                        "PENDING",
                        Some("2026-12-16T09:00:00Z"),
                    )
                    .raw,
                )
                .unwrap();
                v["Id"] = json!(format!("engi-{case:06}{n:07}"));
                for _ in 0..rng.usize(..6) {
                    let pointer = MEMBERS[rng.usize(..MEMBERS.len())];
                    let (parent, key) = pointer.rsplit_once('/').unwrap();
                    if let Some(serde_json::Value::Object(map)) = v.pointer_mut(parent) {
                        match hostile(&mut rng) {
                            Some(h) => map.insert(key.to_string(), h),
                            None => map.remove(key),
                        };
                    }
                }
                items.push(v);
            }
            let body = json!({"EngagementInvitationSummaries": items}).to_string();
            let page = crate::aws::model::parse_invitation_page(&body).unwrap();
            let (good, bad) = (page.items, page.rejected);
            kept += good.len() as u64;
            rejected += bad.len() as u64;
            let ids: Vec<String> = good.iter().map(|p| p.invitation.id.clone()).collect();
            distinct.extend(ids.iter().cloned());
            store
                .call_blocking(move |c| {
                    let counts = commit_invitations(c, &good, &bad, now)?;
                    assert_eq!(
                        counts.new + counts.changed + counts.unchanged,
                        ids.len() as u64
                    );
                    for id in &ids {
                        let expires: String = c.query_row(
                            "SELECT expires_at FROM referrals WHERE id = ?1 AND source = 'aws'",
                            [id],
                            |r| r.get(0),
                        )?;
                        assert!(
                            crate::timefmt::parse_timestamp(&expires).is_some(),
                            "case {case}: {id} has deadline {expires:?}"
                        );
                    }
                    Ok(())
                })
                .unwrap();
        }
        let (rows, kept_bad) = store
            .call_blocking(|c| {
                let rows: i64 = c.query_row(
                    "SELECT COUNT(*) FROM referrals WHERE source = 'aws'",
                    [],
                    |r| r.get(0),
                )?;
                let bad: i64 = c.query_row(
                    "SELECT COUNT(*) FROM rejected_records WHERE source = 'aws.invitation'",
                    [],
                    |r| r.get(0),
                )?;
                Ok((rows as u64, bad as u64))
            })
            .unwrap();
        assert_eq!(
            rows,
            distinct.len() as u64,
            "every readable invitation stored"
        );
        assert!(
            kept > 400 && rejected > 10,
            "kept {kept}, rejected {rejected}"
        );
        assert!(kept_bad > 0 && kept_bad <= rejected);
    }
}
