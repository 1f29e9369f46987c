//! The daemon's `STATUS=` line (`systemctl status`): the cycle running now and how far it got,
//! the last cycle's result, and the last cycle that did something, so a quiet cycle 0.4 s after
//! a busy one does not hide it ("0 new, 0 changed" over a first sync of 240 leads).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::lanes::Cycle;

/// What the line remembers between cycles.
#[derive(Debug, Default)]
pub(crate) struct StatusLine {
    /// The last cycle that read something new, wrote, raised alerts or failed.
    last_change: Option<String>,
}

/// How far the running cycle got: pages read, and the writes done since it started and
/// still open (the leads being created, the referrals being written back).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) pages: u64,
    pub(crate) writes_done: u64,
    pub(crate) writes_open: u64,
}

impl StatusLine {
    /// While a cycle runs.
    pub(crate) fn running(
        &self,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
        p: Progress,
    ) -> String {
        let elapsed = (now - started).to_std().unwrap_or_default();
        let mut line = format!(
            "cycle running for {}: {} page{} read",
            seconds(elapsed),
            p.pages,
            if p.pages == 1 { "" } else { "s" }
        );
        if p.writes_done + p.writes_open > 0 {
            line.push_str(&format!(
                ", {} of {} writes done",
                p.writes_done,
                p.writes_done + p.writes_open
            ));
        }
        self.with_last_change(line)
    }

    /// When a cycle ends: its result, and (when it did nothing) the last one that did.
    pub(crate) fn finished(&mut self, cycle: &Cycle) -> String {
        let r = &cycle.report;
        let at = r.started_at.format("%Y-%m-%d %H:%M UTC");
        let took = seconds(r.elapsed);
        if let Some(e) = &r.error {
            let line = format!("last cycle FAILED at {at} after {took}: {e}");
            self.last_change = Some(format!("{at}: FAILED"));
            return line;
        }
        let busy = r.counts.new + r.counts.changed + r.pushed.done + cycle.alerts.raised > 0;
        let what = format!(
            "{} new, {} changed, {} written, {} alerts",
            r.counts.new, r.counts.changed, r.pushed.done, cycle.alerts.raised
        );
        if busy {
            self.last_change = Some(format!("{at} ({took}): {what}"));
            return format!("last cycle ok at {at} ({took}): {what}");
        }
        self.with_last_change(format!("last cycle ok at {at} ({took}): nothing new"))
    }

    fn with_last_change(&self, line: String) -> String {
        match &self.last_change {
            Some(change) => format!("{line}; last change {change}"),
            None => line,
        }
    }
}

/// `31 ms`, `95.8 s`, `3 min 12 s`: the elapsed time as the log's `elapsed_ms` has it.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{} ms", d.as_millis())
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{} min {} s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::CycleReport;

    fn cycle(new: u64, written: u64, elapsed_ms: u64, at: DateTime<Utc>) -> Cycle {
        let mut report = CycleReport::new(at);
        report.counts.new = new;
        report.pushed.done = written;
        report.elapsed = Duration::from_millis(elapsed_ms);
        Cycle {
            report,
            alerts: Default::default(),
        }
    }

    #[test]
    fn a_quiet_cycle_after_a_busy_one_keeps_the_busy_one_in_view() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T11:32:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut line = StatusLine::default();
        assert_eq!(
            line.finished(&cycle(240, 480, 95_800, at)),
            "last cycle ok at 2026-12-07 11:32 UTC (95.8 s): 240 new, 0 changed, 480 written, 0 alerts"
        );
        let quiet = line.finished(&cycle(0, 0, 400, at + chrono::Duration::seconds(96)));
        assert_eq!(
            quiet,
            "last cycle ok at 2026-12-07 11:33 UTC (400 ms): nothing new; last change 2026-12-07 11:32 UTC (95.8 s): 240 new, 0 changed, 480 written, 0 alerts"
        );
    }

    #[test]
    fn a_running_cycle_shows_its_progress_and_elapsed_time() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T11:32:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let line = StatusLine::default();
        let progress = Progress {
            pages: 3,
            writes_done: 12,
            writes_open: 8,
        };
        assert_eq!(
            line.running(at, at + chrono::Duration::milliseconds(95_800), progress),
            "cycle running for 95.8 s: 3 pages read, 12 of 20 writes done"
        );
        assert_eq!(seconds(Duration::from_secs(192)), "3 min 12 s");
        assert_eq!(seconds(Duration::from_millis(31)), "31 ms");
    }
}
