//! Health alerts when the store cannot record them (a full disk, a database that fails every
//! write): alerts are normally recorded before they are sent, so a store that refuses writes
//! would silence exactly the alarm about it. Here the health episode and its alerts are kept
//! in memory, delivered to every sink from memory (once per sink), and recorded — with the
//! deliveries already made marked delivered — as soon as the store takes writes again.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use super::deliver::{AlertSettings, Sink};
use super::due::{health_alert, HealthEpisode};
use super::Alert;
use crate::store::{alerts as astore, Store, StoreError};

/// What this process knows and the store does not hold yet.
#[derive(Debug, Default)]
pub(crate) struct Unrecorded {
    /// The health episode, newer than the stored one while set.
    pub(crate) episode: Option<HealthEpisode>,
    /// Alerts raised from memory, each with the sinks that have it.
    pub(crate) alerts: Vec<(Alert, Vec<String>)>,
}

/// Shared by every cycle of the process (a reload keeps it).
pub(crate) type Memory = Arc<Mutex<Unrecorded>>;

fn lock(memory: &Memory) -> std::sync::MutexGuard<'_, Unrecorded> {
    memory.lock().unwrap_or_else(|p| p.into_inner())
}

/// The episode to continue from: memory's when the store is behind, else the stored one.
pub(crate) fn episode(memory: &Memory, stored: Option<HealthEpisode>) -> HealthEpisode {
    lock(memory).episode.clone().or(stored).unwrap_or_default()
}

/// Raising failed to record: the health alert is decided from memory (the stored episode is
/// read if the store still reads) and kept there. Returns how many alerts were raised.
pub(crate) async fn raise(
    store: &Store,
    settings: &AlertSettings,
    error: Option<&str>,
    auth_failed: bool,
    now: DateTime<Utc>,
) -> u64 {
    let stored = store
        .call(|c| astore::get_health(c, "sync"))
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_str(&v).ok());
    let memory = &settings.unrecorded;
    let mut episode = episode(memory, stored);
    let alert = health_alert(
        &mut episode,
        error,
        auth_failed,
        settings.failed_cycles,
        now,
    );
    let mut held = lock(memory);
    held.episode = Some(episode);
    let Some(alert) = alert else {
        return 0;
    };
    tracing::error!(alert_id = %alert.id, kind = %alert.kind, "ALERT (not recorded: the database refuses writes; sent from memory): {}", alert.message);
    held.alerts.push((alert, Vec::new()));
    1
}

/// Raises one alert outside the planner (once: its id is its dedupe key): recorded with a
/// pending delivery per sink, or held in memory when the store refuses the write.
pub(crate) async fn raise_one(store: &Store, settings: &AlertSettings, alert: Alert) -> u64 {
    let sinks = settings.sinks_taking(&alert);
    let to_record = alert.clone();
    let now = Utc::now();
    let recorded = store
        .call(move |c| {
            let tx = c.transaction()?;
            let new = astore::raise(&tx, &to_record, &sinks, now)?;
            tx.commit()?;
            Ok(new)
        })
        .await;
    match recorded {
        Ok(new) => {
            if new {
                tracing::error!(alert_id = %alert.id, kind = %alert.kind, "ALERT: {}", alert.message);
            }
            u64::from(new)
        }
        Err(e) => {
            let mut held = lock(&settings.unrecorded);
            if held.alerts.iter().any(|(a, _)| a.id == alert.id) {
                return 0;
            }
            tracing::error!(error = %e, alert_id = %alert.id, "ALERT (not recorded; sent from memory): {}", alert.message);
            held.alerts.push((alert, Vec::new()));
            1
        }
    }
}

/// `token_unsaved`: the rotated Microsoft refresh token lives only in memory (once per
/// episode: keyed on when the first write failed).
pub(crate) fn token_unsaved_alert(unsaved: &crate::microsoft::auth::UnsavedToken) -> Alert {
    let since = unsaved
        .since
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    Alert::general(
        format!("token_unsaved:{since}"),
        "token_unsaved",
        "critical",
        format!(
            "The rotated Microsoft refresh token cannot be written to {} ({}). The daemon keeps it in memory, uses it and retries the write on every use; if it stops before a write succeeds, the sign-in is lost (run `cosell-sync auth microsoft`). Free space or fix the state directory.",
            unsaved.token_file.display(),
            unsaved.error
        ),
        Utc::now(),
    )
}

/// Sends the alerts held in memory to each sink that does not have them yet.
pub(crate) async fn deliver(settings: &AlertSettings, broken: &mut HashSet<String>) -> (u64, u64) {
    let held: Vec<(Alert, Vec<String>)> = lock(&settings.unrecorded).alerts.clone();
    let (mut delivered, mut undelivered) = (0, 0);
    for (alert, done) in held {
        for sink in settings
            .sinks
            .iter()
            .filter(|s| s.route().takes(&alert, &[]))
        {
            let key = sink.key();
            if done.contains(&key) {
                continue;
            }
            if broken.contains(&key) {
                undelivered += 1;
                continue;
            }
            match send(settings, sink, &alert).await {
                Ok(()) => {
                    delivered += 1;
                    let mut memory = lock(&settings.unrecorded);
                    if let Some((_, sinks)) =
                        memory.alerts.iter_mut().find(|(a, _)| a.id == alert.id)
                    {
                        sinks.push(key);
                    }
                }
                Err(error) => {
                    undelivered += 1;
                    tracing::warn!(sink = %key, alert_id = %alert.id, %error, "alert not delivered; kept in memory and retried next cycle");
                    broken.insert(key);
                }
            }
        }
    }
    (delivered, undelivered)
}

async fn send(
    settings: &AlertSettings,
    sink: &Sink,
    alert: &Alert,
) -> Result<(), super::deliver::SinkError> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(200))
        .with_max_delay(std::time::Duration::from_secs(2))
        .with_max_times(settings.attempts.saturating_sub(1))
        .with_jitter();
    (|| sink.send(&settings.http, alert)).retry(backoff).await
}

/// The store takes writes again: records the held alerts (with a pending delivery for every
/// sink, then the ones already made marked delivered), inside the caller's transaction.
/// Returns what was recorded, to forget once the transaction commits.
pub(crate) fn record(
    tx: &rusqlite::Connection,
    settings: &AlertSettings,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let held: Vec<(Alert, Vec<String>)> = lock(&settings.unrecorded).alerts.clone();
    let mut recorded = Vec::new();
    for (alert, delivered) in held {
        astore::raise(tx, &alert, &settings.sinks_taking(&alert), now)?;
        for sink in &delivered {
            astore::delivered(tx, &alert.id, sink, now)?;
        }
        recorded.push(alert.id);
    }
    Ok(recorded)
}

/// After the commit that recorded `ids` and the episode: memory holds nothing the store lacks.
pub(crate) fn forget(memory: &Memory, ids: &[String]) {
    let mut held = lock(memory);
    held.episode = None;
    held.alerts.retain(|(a, _)| !ids.contains(&a.id));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::deliver::{raise_and_deliver, CycleDelivery, Raise};
    use crate::config::{AlertsConfig, CommandConfig, HumanDuration};

    /// A full disk, simulated on the store's own connection: the alerts table's page is
    /// filled, free pages are vacuumed away, and `PRAGMA max_page_count` holds the file at its
    /// size, so the next alert needs a page SQLite may not add (SQLITE_FULL).
    fn fill_the_disk(store: &Store) {
        store
            .call_blocking(|c| {
                c.execute(
                    "INSERT INTO alerts (id, kind, severity, payload, created_at) VALUES ('filler', 'test', 'info', ?1, 'x')",
                    [ "f".repeat(3900) ],
                )?;
                c.execute_batch("VACUUM")?;
                let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
                Ok(())
            })
            .unwrap();
        let err = store
            .call_blocking(|c| {
                c.execute(
                    "INSERT INTO alerts (id, kind, severity, payload, created_at) VALUES ('probe', 'test', 'info', ?1, 'x')",
                    ["p".repeat(600)],
                )?;
                Ok(())
            })
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains("DISK FULL"), "{err}");
    }

    fn sent(out: &std::path::Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(out)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_full_disk_still_sends_the_health_alert_once_and_records_it_when_space_is_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("state.db")).unwrap();
        let out = dir.path().join("sink.jsonl");
        let config = AlertsConfig {
            failed_cycles: 2,
            command: vec![CommandConfig {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("cat >> '{0}'; echo >> '{0}'", out.display()),
                ],
                timeout: HumanDuration::secs(10),
                kinds: Vec::new(),
                min_severity: Default::default(),
                thresholds: Vec::new(),
            }],
            ..AlertsConfig::default()
        };
        let settings = AlertSettings::from_config(&config);
        fill_the_disk(&store);
        let failing = || Raise::All {
            error: Some("database: DISK FULL: database or disk is full".into()),
            auth_failed: false,
        };
        let mut delivered = 0;
        for _ in 0..4 {
            let stats = raise_and_deliver(
                &store,
                &settings,
                failing(),
                Utc::now(),
                false,
                &mut CycleDelivery::default(),
            )
            .await;
            delivered += stats.delivered;
        }
        let got = sent(&out);
        assert_eq!(got.len(), 1, "one alert per episode, from memory: {got:?}");
        assert_eq!(got[0]["kind"], "sync_unhealthy");
        assert!(got[0]["message"].as_str().unwrap().contains("DISK FULL"));
        assert_eq!(delivered, 1);
        let recorded: i64 = store
            .call_blocking(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM alerts WHERE kind = 'sync_unhealthy'",
                    [],
                    |r| r.get(0),
                )?)
            })
            .unwrap();
        assert_eq!(recorded, 0, "the disk is full: nothing could be recorded");

        // Space again: still failing for another reason, then healthy.
        store
            .call_blocking(|c| Ok(c.execute_batch("PRAGMA max_page_count = 1073741823")?))
            .unwrap();
        raise_and_deliver(
            &store,
            &settings,
            failing(),
            Utc::now(),
            false,
            &mut CycleDelivery::default(),
        )
        .await;
        assert_eq!(sent(&out).len(), 1, "the recorded alert is not sent again");
        let (state, episode): (String, String) = store
            .call_blocking(|c| {
                Ok(c.query_row(
                    "SELECT d.state, (SELECT value FROM health WHERE key = 'sync')
                     FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id WHERE a.kind = 'sync_unhealthy'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .unwrap();
        assert_eq!(state, "delivered");
        assert!(episode.contains("\"failing_in_a_row\":5"), "{episode}");
        raise_and_deliver(
            &store,
            &settings,
            Raise::All {
                error: None,
                auth_failed: false,
            },
            Utc::now(),
            false,
            &mut CycleDelivery::default(),
        )
        .await;
        let got = sent(&out);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["kind"], "sync_recovered");
    }
}
