//! Alerts, their delivery per sink, and the small health facts that outlive a process.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::outside::Outside;
use crate::timefmt::db_timestamp;

/// One alert, exactly as the JSON sinks receive it (and as it is stored: the store owns the
/// record, so it imports nothing from `alerts`). The referral's name and customer stay
/// [`Outside`] text up to the chat formats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Alert {
    /// Stable dedupe key: the same across retries and restarts.
    pub(crate) id: String,
    /// `referral_expiring`, `referral_expired`, `sync_unhealthy`, `sync_recovered`,
    /// `action_failed`, `conflict`, `forward_blocked` (or `test` from `alerts test`).
    pub(crate) kind: String,
    /// `info`, `warning` or `critical`.
    pub(crate) severity: String,
    pub(crate) referral_id: Option<String>,
    /// The referral's name in Partner Center. Fields added after the first release default,
    /// so alerts stored by an older version still decode.
    #[serde(default)]
    pub(crate) referral_name: Option<Outside>,
    pub(crate) customer: Option<Outside>,
    #[serde(default)]
    pub(crate) deal_value: Option<f64>,
    #[serde(default)]
    pub(crate) currency: Option<String>,
    /// RFC 3339.
    pub(crate) deadline: Option<String>,
    /// The alert threshold crossed, as configured (`"24h"`).
    pub(crate) threshold: Option<String>,
    pub(crate) remaining_hours: Option<f64>,
    pub(crate) message: String,
    /// The referral in Partner Center.
    pub(crate) link: Option<String>,
    /// The command that shows everything about it (`cosell-sync status --referral ID`).
    #[serde(default)]
    pub(crate) command: Option<String>,
    pub(crate) created_at: String,
    /// `referral_expiring` with `[actions]`: the signed link to the page that accepts or
    /// declines the referral. Added at delivery, never stored (it is a capability).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) action_url: Option<String>,
    /// The triage rule that decided the referral (spec §3, §7), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rule: Option<String>,
    /// Its decision: `accept`, `decline` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rule_decision: Option<String>,
    /// `dry-run` (shown only) or `apply` (sent as an answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rule_mode: Option<String>,
    /// Whose record the alert is about: `microsoft` (a referral) or `aws` (an engagement
    /// invitation; spec §3, §8). Absent on alerts about no one referral.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
}

impl Alert {
    /// An alert about no referral in particular.
    pub(crate) fn general(
        id: String,
        kind: &str,
        severity: &str,
        message: String,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Alert {
        Alert {
            id,
            kind: kind.into(),
            severity: severity.into(),
            referral_id: None,
            referral_name: None,
            customer: None,
            deal_value: None,
            currency: None,
            deadline: None,
            threshold: None,
            remaining_hours: None,
            message,
            link: None,
            command: None,
            created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            action_url: None,
            rule: None,
            rule_decision: None,
            rule_mode: None,
            source: None,
        }
    }
}

/// Records an alert and a pending delivery for each sink — unless an alert with this id
/// exists already (then nothing happens: an alert is raised once, ever). Returns whether it
/// was new.
pub(crate) fn raise(
    conn: &Connection,
    alert: &Alert,
    sinks: &[String],
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    raise_routed(conn, alert, now, |_| Ok(sinks.to_vec()))
}

/// [`raise`], with the sinks decided only for a new alert, after it is recorded (`sinks`
/// may read the store, e.g. [`expiring_thresholds`]; an alert already raised costs nothing).
pub(crate) fn raise_routed(
    conn: &Connection,
    alert: &Alert,
    now: DateTime<Utc>,
    sinks: impl FnOnce(&Connection) -> Result<Vec<String>, StoreError>,
) -> Result<bool, StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO alerts (id, kind, severity, referral_id, payload, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (id) DO NOTHING",
        )?
        .execute(params![
            alert.id,
            alert.kind,
            alert.severity,
            alert.referral_id,
            serde_json::to_string(alert).expect("alerts serialize"),
            db_timestamp(now)
        ])?;
    if inserted == 0 {
        return Ok(false);
    }
    for sink in sinks(conn)? {
        conn.prepare_cached(
            "INSERT INTO alert_deliveries (alert_id, sink, state) VALUES (?1, ?2, 'pending')
             ON CONFLICT DO NOTHING",
        )?
        .execute(params![alert.id, sink])?;
    }
    Ok(true)
}

/// The thresholds (`"72h"`) this referral has a `referral_expiring` alert for, for routing
/// (spec §3). Reads the primary key's range of `referral_expiring:{id}:` ids, so it costs
/// an index seek, not a scan.
pub(crate) fn expiring_thresholds(
    conn: &Connection,
    referral_id: &str,
) -> Result<Vec<String>, StoreError> {
    // ';' sorts right after ':', so the range holds exactly the ids with this prefix.
    let from = format!("referral_expiring:{referral_id}:");
    let to = format!("referral_expiring:{referral_id};");
    let mut stmt = conn.prepare_cached(
        "SELECT substr(id, length(?1) + 1) FROM alerts
         WHERE id > ?1 AND id < ?2 AND referral_id = ?3",
    )?;
    let rows = stmt.query_map(params![from, to, referral_id], |r| r.get::<_, String>(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Re-keys deliveries recorded under an old sink key (`(old, new)` pairs), so no webhook URL
/// stays in the database; a delivery already under the new key wins.
pub(crate) fn rename_sinks(
    conn: &Connection,
    renames: &[(String, String)],
) -> Result<(), StoreError> {
    for (old, new) in renames {
        conn.execute(
            "UPDATE OR IGNORE alert_deliveries SET sink = ?2 WHERE sink = ?1",
            params![old, new],
        )?;
        conn.execute("DELETE FROM alert_deliveries WHERE sink = ?1", params![old])?;
    }
    Ok(())
}

/// Deliveries still to make, oldest first, for the given sinks.
pub(crate) fn pending(
    conn: &Connection,
    limit: usize,
) -> Result<Vec<(Alert, String, u32)>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT a.payload, d.sink, d.attempts FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
         WHERE d.state = 'pending' ORDER BY a.created_at, a.id LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)? as u32,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (payload, sink, attempts) = row?;
        if let Ok(alert) = serde_json::from_str(&payload) {
            out.push((alert, sink, attempts));
        }
    }
    Ok(out)
}

pub(crate) fn delivered(
    conn: &Connection,
    alert_id: &str,
    sink: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE alert_deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = ?3
         WHERE alert_id = ?1 AND sink = ?2",
    )?
    .execute(params![alert_id, sink, db_timestamp(now)])?;
    Ok(())
}

pub(crate) fn failed(
    conn: &Connection,
    alert_id: &str,
    sink: &str,
    error: &str,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?3
         WHERE alert_id = ?1 AND sink = ?2",
    )?
    .execute(params![alert_id, sink, error])?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct AlertRow {
    #[serde(flatten)]
    pub(crate) alert: Alert,
    /// Per sink: `delivered`, or `pending (N attempts: last error)`.
    pub(crate) deliveries: Vec<(String, String)>,
}

/// Alerts, newest first; only those with an undelivered sink when `pending_only`.
pub(crate) fn list(
    conn: &Connection,
    pending_only: bool,
    limit: usize,
) -> Result<Vec<AlertRow>, StoreError> {
    list_where(conn, pending_only, None, limit)
}

/// The alerts about one referral, newest first.
pub(crate) fn for_referral(
    conn: &Connection,
    referral_id: &str,
    limit: usize,
) -> Result<Vec<AlertRow>, StoreError> {
    list_where(conn, false, Some(referral_id), limit)
}

fn list_where(
    conn: &Connection,
    pending_only: bool,
    referral_id: Option<&str>,
    limit: usize,
) -> Result<Vec<AlertRow>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT payload, id FROM alerts a
         WHERE (?1 = 0 OR EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id AND d.state = 'pending'))
           AND (?3 IS NULL OR a.referral_id = ?3)
         ORDER BY created_at DESC, id LIMIT ?2",
    )?;
    let rows: Vec<(String, String)> = stmt
        .query_map(
            params![pending_only as i64, limit as i64, referral_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    let mut deliveries = conn.prepare(
        "SELECT sink, state, attempts, last_error FROM alert_deliveries WHERE alert_id = ?1 ORDER BY sink",
    )?;
    for (payload, id) in rows {
        let Ok(alert) = serde_json::from_str::<Alert>(&payload) else {
            continue;
        };
        let d = deliveries
            .query_map([&id], |r| {
                let (sink, state, attempts, error): (String, String, i64, Option<String>) =
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                let text = if state == "delivered" {
                    "delivered".to_string()
                } else {
                    format!(
                        "pending ({attempts} attempts{})",
                        error.map(|e| format!(": {e}")).unwrap_or_default()
                    )
                };
                Ok((sink, text))
            })?
            .collect::<Result<_, _>>()?;
        out.push(AlertRow {
            alert,
            deliveries: d,
        });
    }
    Ok(out)
}

pub(crate) fn get_health(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    Ok(conn
        .query_row("SELECT value FROM health WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub(crate) fn set_health(
    conn: &Connection,
    key: &str,
    value: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO health (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        params![key, value, db_timestamp(now)],
    )?;
    Ok(())
}

/// Marks many deliveries to one sink done at once (a digest replaced them), in one transaction.
pub(crate) fn delivered_many(
    conn: &mut Connection,
    alert_ids: &[String],
    sink: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for id in alert_ids {
        delivered(&tx, id, sink, now)?;
    }
    tx.commit()?;
    Ok(())
}

/// A digest that failed: one more attempt and the error on each delivery it carried.
pub(crate) fn failed_many(
    conn: &mut Connection,
    alert_ids: &[String],
    sink: &str,
    error: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for id in alert_ids {
        failed(&tx, id, sink, error)?;
    }
    tx.commit()?;
    Ok(())
}

/// Pending deliveries a sink no longer takes (its `kinds`, `min_severity` or `thresholds`
/// changed since the alert was raised): dropped, as if the alert had been raised under the
/// new routing, so they are neither sent nor counted as undelivered. Delivered ones stay.
pub(crate) fn drop_unrouted(
    conn: &mut Connection,
    alert_ids: &[String],
    sink: &str,
) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for id in alert_ids {
        tx.prepare_cached(
            "DELETE FROM alert_deliveries WHERE alert_id = ?1 AND sink = ?2 AND state = 'pending'",
        )?
        .execute(params![id, sink])?;
    }
    tx.commit()?;
    Ok(())
}
