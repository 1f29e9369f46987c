//! Retention (`[state] retention`, `[state] audit_retention`): what the database stops
//! keeping once it is old and finished. Pruned in small batches (each its own short
//! transaction, so the daemon's writer waits at most one batch), from the background lane.
//!
//! Never pruned, whatever its age: an open, dead or quarantined outbox row (a person or a retry
//! needs it); any lead create row (it enforces one create per referral, ever); an alert that
//! is not delivered everywhere, or that belongs to a referral still New, or one with a dead
//! write, a conflict or a forward block (its id is the dedupe key that keeps it from being
//! raised again); a webhook event not yet processed; a running cycle.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::{Store, StoreError};
use crate::microsoft::model::db_timestamp;

/// Rows per batch: each batch is one short write transaction.
pub(crate) const BATCH: usize = 500;

/// What one prune removed, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Pruned {
    pub(crate) cycle_runs: u64,
    pub(crate) webhook_events: u64,
    pub(crate) outbox: u64,
    pub(crate) alerts: u64,
    pub(crate) rejected_records: u64,
    pub(crate) audit_log: u64,
}

impl Pruned {
    pub(crate) fn total(&self) -> u64 {
        self.cycle_runs
            + self.webhook_events
            + self.outbox
            + self.alerts
            + self.rejected_records
            + self.audit_log
    }
}

/// The cut-offs: rows older than these (and finished) go.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cutoffs {
    pub(crate) history: DateTime<Utc>,
    pub(crate) audit: DateTime<Utc>,
}

impl Cutoffs {
    pub(crate) fn from(
        now: DateTime<Utc>,
        retention: std::time::Duration,
        audit: std::time::Duration,
    ) -> Cutoffs {
        let back = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        Cutoffs {
            history: back(retention),
            audit: back(audit),
        }
    }
}

/// The delete of each family, one batch: `?1` is the cut-off, `?2` the batch size.
const CYCLE_RUNS: &str = "DELETE FROM cycle_runs WHERE id IN (SELECT id FROM cycle_runs
    WHERE started_at < ?1 AND outcome <> 'running' LIMIT ?2)";
const WEBHOOK_EVENTS: &str = "DELETE FROM webhook_events WHERE id IN (SELECT id FROM webhook_events
    WHERE received_at < ?1 AND state IN ('processed', 'failed') LIMIT ?2)";
/// Finished actions by age: the partial index `outbox_finished`, its predicate repeated word
/// for word (migration 0011), so the walk starts at the oldest instead of reading every
/// finished row of the retention window.
const OUTBOX: &str =
    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox INDEXED BY outbox_finished
    WHERE (state = 'done' OR state = 'superseded' OR state = 'dropped') AND updated_at < ?1
      AND kind <> 'create_lead' LIMIT ?2)";
const REJECTED: &str = "DELETE FROM rejected_records WHERE id IN (SELECT id FROM rejected_records
    WHERE last_seen_at < ?1 LIMIT ?2)";
const AUDIT: &str = "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log
    WHERE at < ?1 LIMIT ?2)";
/// Alerts that may go: old, delivered to every sink, and about nothing still live.
const ALERTS_DUE: &str = "SELECT a.id FROM alerts a WHERE a.created_at < ?1
    AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id AND d.state = 'pending')
    AND (a.referral_id IS NULL OR (
        NOT EXISTS (SELECT 1 FROM referrals r WHERE r.id = a.referral_id AND r.status = 'New')
        AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.referral_id = a.referral_id
                        AND o.state IN ('pending', 'in_flight', 'dead', 'quarantined'))
        AND NOT EXISTS (SELECT 1 FROM conflicts c WHERE c.referral_id = a.referral_id)
        AND NOT EXISTS (SELECT 1 FROM forward_blocked f WHERE f.referral_id = a.referral_id)))
    LIMIT ?2";

/// One batch of one family; returns the rows deleted (fewer than [`BATCH`]: done).
fn batch(conn: &Connection, sql: &str, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(sql)?
        .execute(params![db_timestamp(cutoff), BATCH as i64])? as u64)
}

/// One batch of alerts with their deliveries, in one transaction.
fn alerts_batch(conn: &mut Connection, cutoff: DateTime<Utc>) -> Result<u64, StoreError> {
    let tx = conn.transaction()?;
    let ids: Vec<String> = {
        let mut stmt = tx.prepare_cached(ALERTS_DUE)?;
        let rows = stmt.query_map(params![db_timestamp(cutoff), BATCH as i64], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    let list = serde_json::to_string(&ids).expect("strings serialize");
    tx.execute(
        "DELETE FROM alert_deliveries WHERE alert_id IN (SELECT value FROM json_each(?1))",
        [&list],
    )?;
    let n = tx.execute(
        "DELETE FROM alerts WHERE id IN (SELECT value FROM json_each(?1))",
        [&list],
    )?;
    tx.commit()?;
    Ok(n as u64)
}

/// Prunes everything past its cut-off, batch after batch, each batch its own call on the
/// store (other work interleaves between them).
pub(crate) async fn prune(store: &Store, cutoffs: Cutoffs) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    type Family = (&'static str, DateTime<Utc>, fn(&mut Pruned) -> &mut u64);
    let families: [Family; 5] = [
        (CYCLE_RUNS, cutoffs.history, |p| &mut p.cycle_runs),
        (WEBHOOK_EVENTS, cutoffs.history, |p| &mut p.webhook_events),
        (OUTBOX, cutoffs.history, |p| &mut p.outbox),
        (REJECTED, cutoffs.history, |p| &mut p.rejected_records),
        (AUDIT, cutoffs.audit, |p| &mut p.audit_log),
    ];
    for (sql, cutoff, slot) in families {
        loop {
            let n = store.call(move |c| batch(c, sql, cutoff)).await?;
            *slot(&mut pruned) += n;
            if n < BATCH as u64 {
                break;
            }
        }
    }
    loop {
        let n = store
            .call(move |c| alerts_batch(c, cutoffs.history))
            .await?;
        pruned.alerts += n;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ago(days: i64) -> String {
        db_timestamp(Utc::now() - chrono::Duration::days(days))
    }

    fn count(store: &Store, sql: &str) -> i64 {
        let sql = sql.to_string();
        store
            .call_blocking(move |c| Ok(c.query_row(&sql, [], |r| r.get(0))?))
            .unwrap()
    }

    fn seed(c: &Connection) -> rusqlite::Result<()> {
        let (old, new, ancient) = (ago(120), ago(1), ago(500));
        for (i, outcome) in ["ok"; 1200].iter().enumerate() {
            c.execute(
                "INSERT INTO cycle_runs (cycle_id, started_at, outcome) VALUES (?1, ?2, ?3)",
                params![format!("old-{i}"), old, outcome],
            )?;
        }
        c.execute("INSERT INTO cycle_runs (cycle_id, started_at, outcome) VALUES ('old-running', ?1, 'running')", [&old])?;
        c.execute(
            "INSERT INTO cycle_runs (cycle_id, started_at, outcome) VALUES ('new', ?1, 'ok')",
            [&new],
        )?;
        for (key, state, at) in [
            ("e1", "processed", &old),
            ("e2", "accepted", &old),
            ("e3", "processed", &new),
        ] {
            c.execute(
                "INSERT INTO webhook_events (dedupe_key, event_name, resource_uri, changed_at, body, received_at, state)
                 VALUES (?1, 'referral-updated', 'u', ?2, '{}', ?2, ?3)",
                params![key, at, state],
            )?;
        }
        for (referral, kind, state, at) in [
            ("r-closed", "patch_referral", "done", &old),
            ("r-closed", "create_lead", "done", &old),
            ("r-dead", "patch_referral", "dead", &old),
            ("r-closed", "patch_opportunity", "done", &new),
        ] {
            c.execute(
                "INSERT INTO outbox (referral_id, kind, payload, state, next_attempt_at, created_at, updated_at)
                 VALUES (?1, ?2, '{}', ?3, ?4, ?4, ?4)",
                params![referral, kind, state, at],
            )?;
        }
        for (id, status) in [
            ("r-new", "New"),
            ("r-closed", "Closed"),
            ("r-dead", "Active"),
        ] {
            c.execute(
                "INSERT INTO referrals (id, status, created_at, updated_at, raw_json, first_seen_at, last_changed_at)
                 VALUES (?1, ?2, ?3, ?3, '{}', ?3, ?3)",
                params![id, status, old],
            )?;
        }
        for (id, referral, delivery) in [
            ("referral_expiring:r-new:72h", Some("r-new"), "delivered"),
            (
                "referral_expiring:r-closed:72h",
                Some("r-closed"),
                "delivered",
            ),
            (
                "referral_expiring:r-closed:24h",
                Some("r-closed"),
                "pending",
            ),
            ("action_failed:3:dead", Some("r-dead"), "delivered"),
            ("sync_unhealthy:x", None, "delivered"),
        ] {
            c.execute(
                "INSERT INTO alerts (id, kind, severity, referral_id, payload, created_at) VALUES (?1, 'k', 'info', ?2, '{}', ?3)",
                params![id, referral, old],
            )?;
            c.execute(
                "INSERT INTO alert_deliveries (alert_id, sink, state) VALUES (?1, 'log', ?2)",
                params![id, delivery],
            )?;
        }
        for at in [&old, &ancient] {
            c.execute(
                "INSERT INTO audit_log (at, api, method, resource, outcome) VALUES (?1, 'google', 'x', 'r', 'ok')",
                [at],
            )?;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn prunes_old_finished_rows_in_batches_and_keeps_what_a_live_referral_needs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        store.call_blocking(|c| Ok(seed(c)?)).unwrap();
        let days = |d: u64| std::time::Duration::from_secs(d * 86_400);
        let cutoffs = Cutoffs::from(Utc::now(), days(90), days(400));
        let pruned = prune(&store, cutoffs).await.unwrap();
        assert_eq!(
            pruned,
            Pruned {
                cycle_runs: 1200,
                webhook_events: 1,
                outbox: 1,
                alerts: 2,
                rejected_records: 0,
                audit_log: 1,
            }
        );
        let kept = |sql: &str| count(&store, sql);
        assert_eq!(
            kept("SELECT COUNT(*) FROM cycle_runs"),
            2,
            "running and recent"
        );
        assert_eq!(
            kept("SELECT COUNT(*) FROM webhook_events WHERE dedupe_key IN ('e2','e3')"),
            2
        );
        assert_eq!(
            kept("SELECT COUNT(*) FROM outbox WHERE kind = 'create_lead'"),
            1,
            "one create per referral, ever"
        );
        assert_eq!(kept("SELECT COUNT(*) FROM outbox WHERE state = 'dead'"), 1);
        assert_eq!(
            kept("SELECT COUNT(*) FROM outbox WHERE kind = 'patch_opportunity'"),
            1,
            "recent"
        );
        for id in [
            "referral_expiring:r-new:72h",
            "referral_expiring:r-closed:24h",
            "action_failed:3:dead",
        ] {
            assert_eq!(
                kept(&format!("SELECT COUNT(*) FROM alerts WHERE id = '{id}'")),
                1,
                "{id} is still needed"
            );
        }
        assert_eq!(
            kept("SELECT COUNT(*) FROM alert_deliveries"),
            3,
            "deliveries go with their alert"
        );
        assert_eq!(
            kept("SELECT COUNT(*) FROM audit_log"),
            1,
            "audit rows keep their own, longer key"
        );
        assert_eq!(
            prune(&store, cutoffs).await.unwrap().total(),
            0,
            "a second prune finds nothing"
        );
    }
}
