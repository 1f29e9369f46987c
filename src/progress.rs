//! Progress of long work (a first sync over thousands of referrals, `sync --all`): a progress
//! bar (indicatif) when stderr is a terminal, else one structured log line every
//! [`LOG_EVERY`] — done so far, rate, and total and time left when the total is known.
//!
//! Log lines and the bar share stderr: [`stderr_writer`] (the log's writer) hides the bar for
//! the moment a line is written, so neither garbles the other.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often the log says how far long work got (when there is no bar).
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Pages the running cycle has read, for the daemon's `STATUS=` line (reset at each cycle's
/// start; one cycle runs at a time).
static CYCLE_PAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A cycle starts: no page read yet.
pub(crate) fn cycle_started() {
    CYCLE_PAGES.store(0, std::sync::atomic::Ordering::Relaxed);
}

/// The running cycle read one more page.
pub(crate) fn page_read() {
    CYCLE_PAGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Pages the running cycle has read so far.
pub(crate) fn cycle_pages() -> u64 {
    CYCLE_PAGES.load(std::sync::atomic::Ordering::Relaxed)
}

/// The bar on screen, if any: the log writer hides it while it writes.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A bar on stderr (a terminal).
    Bar,
    /// A log line now and then.
    Log,
}

impl Mode {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub(crate) fn detect() -> Mode {
        match std::io::stderr().is_terminal() {
            true => Mode::Bar,
            false => Mode::Log,
        }
    }
}

/// One piece of long work. Dropping it finishes it.
#[derive(Debug)]
pub(crate) struct Progress {
    what: &'static str,
    bar: Option<ProgressBar>,
    done: u64,
    total: Option<u64>,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// `what` names the work in the log and on the bar (`"inbox"`); `total` when known.
    pub(crate) fn new(what: &'static str, total: Option<u64>) -> Progress {
        Self::with_mode(what, total, Mode::detect())
    }

    pub(crate) fn with_mode(what: &'static str, total: Option<u64>, mode: Mode) -> Progress {
        let bar = (mode == Mode::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
            bar.set_style(style(total.is_some()));
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            if let Ok(mut active) = ACTIVE.lock() {
                *active = Some(bar.clone());
            }
            bar
        });
        Progress {
            what,
            bar,
            done: 0,
            total,
            started: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// The total became known (or changed).
    pub(crate) fn set_total(&mut self, total: u64) {
        self.total = Some(total);
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_style(style(true));
        }
    }

    /// `n` more done.
    pub(crate) fn inc(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.log("in progress");
                self.last_log = Instant::now();
            }
            None => {}
        }
    }

    pub(crate) fn done(&self) -> u64 {
        self.done
    }

    /// The work ended: the bar goes, and the log says how it went.
    pub(crate) fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE.lock() {
                *active = None;
            }
        }
        // Short work needs no line: the cycle's own summary says what it did.
        if self.started.elapsed() >= LOG_EVERY {
            self.log("finished");
        }
    }

    fn log(&self, state: &'static str) {
        let elapsed = self.started.elapsed();
        let rate = rate(self.done, elapsed);
        let left = self.total.and_then(|t| time_left(self.done, t, elapsed));
        tracing::info!(
            work = self.what,
            done = self.done,
            total = self.total,
            per_second = (rate * 10.0).round() / 10.0,
            elapsed_s = elapsed.as_secs(),
            left_s = left.map(|d| d.as_secs()),
            "progress: {} {state}",
            self.what
        );
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            if let Ok(mut active) = ACTIVE.lock() {
                *active = None;
            }
        }
    }
}

fn style(known_total: bool) -> ProgressStyle {
    let template = match known_total {
        true => "{spinner} {msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
        false => "{spinner} {msg} {pos} ({per_sec}, {elapsed})",
    };
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// Items per second so far.
pub(crate) fn rate(done: u64, elapsed: Duration) -> f64 {
    match elapsed.as_secs_f64() {
        s if s > 0.0 => done as f64 / s,
        _ => 0.0,
    }
}

/// Time left at the rate so far; `None` before any progress or past the total.
pub(crate) fn time_left(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 || done >= total {
        return None;
    }
    let per_item = elapsed.as_secs_f64() / done as f64;
    Duration::try_from_secs_f64(per_item * (total - done) as f64).ok()
}

/// The log's stderr writer: hides the bar (if one is on screen) while a line is written.
pub(crate) fn stderr_writer() -> StderrAroundBar {
    StderrAroundBar
}

pub(crate) struct StderrAroundBar;

impl Write for StderrAroundBar {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().ok().and_then(|a| a.clone());
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_follows_the_rate_so_far() {
        let ten_s = Duration::from_secs(10);
        assert_eq!(time_left(100, 300, ten_s), Some(Duration::from_secs(20)));
        assert_eq!(time_left(0, 300, ten_s), None);
        assert_eq!(time_left(300, 300, ten_s), None);
        assert_eq!(time_left(400, 300, ten_s), None);
        assert_eq!(rate(100, ten_s), 10.0);
        assert_eq!(rate(100, Duration::ZERO), 0.0);
    }

    #[test]
    fn generated_counts_never_panic_or_go_negative() {
        let mut rng = fastrand::Rng::with_seed(4);
        for _ in 0..10_000 {
            let (done, total) = (rng.u64(..), rng.u64(..));
            let elapsed = Duration::from_nanos(rng.u64(..));
            if let Some(left) = time_left(done, total, elapsed) {
                assert!(done < total);
                assert!(left.as_secs_f64() >= 0.0);
            }
            assert!(rate(done, elapsed) >= 0.0);
        }
    }

    #[test]
    fn log_mode_counts_without_a_bar() {
        let mut p = Progress::with_mode("inbox", None, Mode::Log);
        p.inc(100);
        p.set_total(300);
        p.inc(50);
        assert_eq!(p.done(), 150);
        assert!(p.bar.is_none());
        p.finish();
        assert!(ACTIVE.lock().unwrap().is_none());
    }
}
