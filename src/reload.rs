//! `cosell-sync reload --pid PID`: sends SIGHUP to the daemon and waits for its answer, so
//! `systemctl reload` (the unit's `ExecReload=`) fails when the reload is refused. systemd 252
//! has no `Type=notify-reload` (253+), and `kill -HUP` alone returns 0 whatever the daemon
//! decides. The daemon writes each reload's outcome to `reload-result` beside the database;
//! the command waits until that file changes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file beside the database that holds the last reload's outcome.
pub(crate) const RESULT_FILE_NAME: &str = "reload-result";

pub(crate) fn result_file(state_path: &Path) -> PathBuf {
    state_path.with_file_name(RESULT_FILE_NAME)
}

/// The daemon's side: records a reload's outcome (the first line is unique per reload, so a
/// waiting command sees a change even when two reloads end alike).
pub(crate) fn record(state_path: &Path, outcome: &Result<(), String>) {
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

/// What the daemon answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReloadReply {
    Reloaded,
    Refused(String),
}

/// Signals `pid` and waits up to `wait` for the daemon's answer.
pub(crate) fn request(state_path: &Path, pid: i32, wait: Duration) -> Result<ReloadReply, String> {
    let file = result_file(state_path);
    let before = std::fs::read_to_string(&file).ok();
    if pid <= 1 {
        return Err(format!("{pid} is not the daemon's process id"));
    }
    // SAFETY: kill(2) with a plain pid and signal number; no memory is shared.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(format!(
            "cannot send SIGHUP to process {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let started = Instant::now();
    while started.elapsed() < wait {
        let now = std::fs::read_to_string(&file).ok();
        if now.is_some() && now != before {
            return Ok(parse(now.as_deref().unwrap_or_default()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "process {pid} did not answer within {} s (no change to {}); see `journalctl -u cosell-sync`",
        wait.as_secs(),
        file.display()
    ))
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

    #[test]
    fn a_recorded_outcome_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        record(&db, &Ok(()));
        let first = std::fs::read_to_string(result_file(&db)).unwrap();
        assert_eq!(parse(&first), ReloadReply::Reloaded);
        record(&db, &Err("schedule.sync: bad\nsecond line".into()));
        let second = std::fs::read_to_string(result_file(&db)).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            parse(&second),
            ReloadReply::Refused("schedule.sync: bad\nsecond line".into())
        );
    }
}
