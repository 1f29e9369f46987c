//! `cosell-sync reload --pid PID`: sends SIGHUP to the daemon and waits for its answer, so
//! `systemctl reload` (the unit's `ExecReload=`) fails when the reload is refused. systemd 252
//! has no `Type=notify-reload` (253+), and `kill -HUP` alone returns 0 whatever the daemon
//! decides. The daemon writes each reload's outcome to `reload-result` beside the database;
//! the command waits until that file changes. A reload is all or nothing: a change to a key
//! only read at start ([`RESTART_ONLY`]) refuses it whole, naming the key.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file beside the database that holds the last reload's outcome.
pub(crate) const RESULT_FILE_NAME: &str = "reload-result";

pub(crate) fn result_file(state_path: &Path) -> PathBuf {
    state_path.with_file_name(RESULT_FILE_NAME)
}

/// The daemon's side: records a reload's outcome (the first line is unique per reload, so a
/// waiting command sees a change even when two reloads end alike).
pub(crate) fn record<E: std::fmt::Display>(state_path: &Path, outcome: &Result<(), E>) {
    let stamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let text = match outcome {
        Ok(()) => format!("{stamp} {}\nok\n", std::process::id()),
        Err(e) => format!("{stamp} {}\nrefused\n{e}\n", std::process::id()),
    };
    let file = result_file(state_path);
    let tmp = file.with_extension("tmp");
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &file));
    if let Err(e) = written {
        tracing::warn!(file = %file.display(), error = %e, "cannot record the reload's outcome; `cosell-sync reload` will time out");
    }
}

/// The keys (or whole tables) the daemon reads only at start: listeners bound, the log's
/// subscriber installed, the Google key handed over by `LoadCredential=` (present only from the
/// next start), the database opened. Listed in docs/operations.md and config.example.toml.
pub(crate) const RESTART_ONLY: &[&str] = &[
    "state.path",
    "log",
    "metrics",
    "webhook",
    "actions",
    "google.partner_id",
    "google.credentials_file",
];

/// The restart-only keys whose value differs between the running and the new configuration,
/// as dotted keys (`metrics.listen`, `actions` when the table appears or goes).
pub(crate) fn restart_needed(
    running: &crate::config::Config,
    new: &crate::config::Config,
) -> Vec<String> {
    let (a, b) = (to_value(running), to_value(new));
    let mut keys = Vec::new();
    for key in RESTART_ONLY {
        let path: Vec<&str> = key.split('.').collect();
        let (x, y) = (lookup(&a, &path), lookup(&b, &path));
        if x != y {
            differing(key, x, y, &mut keys);
        }
    }
    keys
}

fn to_value(config: &crate::config::Config) -> serde_json::Value {
    serde_json::to_value(config).unwrap_or_default()
}

fn lookup<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// The leaf keys under `key` that differ (the table's own name when it appears or goes).
fn differing(
    key: &str,
    x: Option<&serde_json::Value>,
    y: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    match (x, y) {
        (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                if a.get(name) != b.get(name) {
                    differing(&format!("{key}.{name}"), a.get(name), b.get(name), out);
                }
            }
        }
        _ => out.push(key.to_string()),
    }
}

/// What a refused reload says when keys need a restart.
pub(crate) fn needs_restart_message(keys: &[String]) -> String {
    format!(
        "needs a restart: {} (read only at start; `systemctl restart cosell-sync` applies it); nothing of this reload was applied",
        keys.join(", ")
    )
}

/// What the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReloadReply {
    Reloaded,
    Refused(String),
}

/// Why `reload` got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{0} is not the daemon's process id")]
    NotDaemon(i32),
    #[error("cannot send SIGHUP to process {pid}: {error}")]
    Signal { pid: i32, error: std::io::Error },
    #[error("process {pid} did not answer within {} s (no change to {}); see `journalctl -u cosell-sync`", wait.as_secs(), file.display())]
    NoAnswer {
        pid: i32,
        wait: Duration,
        file: PathBuf,
    },
}

/// Signals `pid` and waits up to `wait` for the daemon's answer.
pub(crate) fn request(
    state_path: &Path,
    pid: i32,
    wait: Duration,
) -> Result<ReloadReply, ReloadError> {
    let file = result_file(state_path);
    let before = std::fs::read_to_string(&file).ok();
    if pid <= 1 {
        return Err(ReloadError::NotDaemon(pid));
    }
    // SAFETY: kill(2) with a plain pid and signal number; no memory is shared.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(ReloadError::Signal {
            pid,
            error: std::io::Error::last_os_error(),
        });
    }
    let started = Instant::now();
    while started.elapsed() < wait {
        let now = std::fs::read_to_string(&file).ok();
        if now.is_some() && now != before {
            return Ok(parse(now.as_deref().unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ReloadError::NoAnswer { pid, wait, file })
}

fn parse(text: &str) -> ReloadReply {
    let mut lines = text.lines().skip(1);
    match lines.next() {
        Some("ok") => ReloadReply::Reloaded,
        _ => ReloadReply::Refused(lines.collect::<Vec<_>>().join("\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn restart_only_keys_are_named_and_the_rest_reloads() {
        let running = Config::default();
        assert!(restart_needed(&running, &running.clone()).is_empty());
        let mut new = running.clone();
        new.metrics.listen = Some("127.0.0.1:9464".into());
        new.log.format = crate::config::LogFormat::Json;
        new.alerts.thresholds.pop();
        new.schedule.sync = "0 */10 * * * *".into();
        assert_eq!(
            restart_needed(&running, &new),
            ["log.format", "metrics.listen"]
        );
        let mut google = running.clone();
        google.google.partner_id = Some("1234567".into());
        assert_eq!(restart_needed(&running, &google), ["google.partner_id"]);
        let mut moved = running.clone();
        moved.state.path = "/elsewhere/state.db".into();
        assert_eq!(restart_needed(&running, &moved), ["state.path"]);
        // Alert sinks, routing and the schedule always reload.
        let mut sinks = running.clone();
        sinks.alerts.failed_cycles += 1;
        sinks.schedule.sync = "0 */10 * * * *".into();
        assert!(restart_needed(&running, &sinks).is_empty());
    }

    #[test]
    fn a_recorded_outcome_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        record(&db, &Ok::<(), String>(()));
        let first = std::fs::read_to_string(result_file(&db)).unwrap();
        assert_eq!(parse(&first), ReloadReply::Reloaded);
        record(
            &db,
            &Err::<(), String>("schedule.sync: bad\nsecond line".into()),
        );
        let second = std::fs::read_to_string(result_file(&db)).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            parse(&second),
            ReloadReply::Refused("schedule.sync: bad\nsecond line".into())
        );
    }
}
