//! Logging: a tracing subscriber filtered by `RUST_LOG` or `[log] level`, in one of three
//! formats: `text` for people (colour only when stderr is a terminal and `NO_COLOR` is unset),
//! `json` (one JSON object per line, the command's final error line included), and
//! `journald`: native journal entries (priority, and every field as a journal field, so
//! `journalctl REFERRAL_ID=…` works) when stderr is the journal, plain text on a terminal,
//! else (a pipe to a collector) `<N>`-prefixed lines on stderr with the prefix on every line
//! of a multi-line message. `text` under systemd (stderr is the journal: `JOURNAL_STREAM`)
//! writes those `<N>` lines too, so `journalctl -p warning` finds warnings and each line has
//! one timestamp, the journal's. Logs go to stderr;
//! stdout stays for command output such as `status --json`.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Libraries whose INFO lines are noise for an operator ("Uninited", "Job creator created").
const QUIET: &[&str] = &["tokio_cron_scheduler"];

/// The format the installed subscriber writes, for [`print_error`].
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Whether the installed subscriber writes `<N>` priority prefixes, for [`print_error`].
static PREFIXED: OnceLock<bool> = OnceLock::new();

/// Installs the global subscriber once; later calls are ignored (tests, `demo`).
pub fn init(format: LogFormat, level: &str) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref(), level);
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(crate::progress::stderr_writer)
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    let journal = stderr_is_journal();
    let prefixed = match format {
        LogFormat::Text => journal,
        LogFormat::Json => false,
        LogFormat::Journald => !std::io::stderr().is_terminal(),
    };
    let installed = match format {
        // Under systemd the journal stamps each line and reads its priority from `<N>`: no
        // second timestamp, no level word, priorities that `journalctl -p` filters on.
        LogFormat::Text if journal => registry
            .with(fmt.with_ansi(false).event_format(PriorityPrefix))
            .try_init(),
        LogFormat::Text => registry.with(fmt.with_ansi(colour)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_ansi(false),
            )
            .try_init(),
        LogFormat::Journald => match native_journal() {
            Some(journal) => registry.with(journal).try_init(),
            // A person at a terminal (`check-config`, `status` with the service's config)
            // reads plain lines; `<N>` prefixes are for a log collector on a pipe.
            None if std::io::stderr().is_terminal() => {
                registry.with(fmt.with_ansi(colour)).try_init()
            }
            None => registry
                .with(fmt.with_ansi(false).event_format(PriorityPrefix))
                .try_init(),
        },
    };
    if installed.is_ok() {
        let _ = FORMAT.set(format);
        let _ = PREFIXED.set(prefixed);
    }
}

/// `RUST_LOG` when set and valid, else `[log] level`, else `info`; the [`QUIET`] libraries
/// at `warn` unless the filter names them itself.
fn filter(rust_log: Option<&str>, level: &str) -> EnvFilter {
    let chosen = rust_log
        .filter(|s| !s.trim().is_empty() && EnvFilter::try_new(s).is_ok())
        .or(Some(level).filter(|s| EnvFilter::try_new(s).is_ok()))
        .unwrap_or("info");
    let mut directives = chosen.to_string();
    for quiet in QUIET {
        if !chosen.contains(quiet) {
            directives.push_str(&format!(",{quiet}=warn"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to anything non-empty
/// (<https://no-color.org>).
pub(crate) fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The journal's native protocol when stderr is connected to it (systemd sets
/// `JOURNAL_STREAM` to stderr's `device:inode`) and its socket answers; `None` otherwise, so
/// `format = "journald"` in a terminal or a container still logs, with priority prefixes.
fn native_journal() -> Option<tracing_journald::Layer> {
    if !stderr_is_journal() {
        return None;
    }
    tracing_journald::layer()
        .ok()
        .map(|l| l.with_field_prefix(None))
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to its
/// `device:inode` (a child whose stderr was redirected inherits the variable, not the match).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|stderr| journal_stream_is(&stream, stderr.dev(), stderr.ino()))
}

/// Whether `JOURNAL_STREAM` (`device:inode`, decimal) names the file stderr is.
pub(crate) fn journal_stream_is(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// Prints a command's final error in the log's format, so a `json` log stays all JSON and a
/// `journald` one has its priority on every line. Before [`init`], plain text on stderr.
pub fn print_error(message: &str) {
    match FORMAT.get() {
        Some(LogFormat::Json) => {
            let line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "message": message,
            });
            eprintln!("{line}");
        }
        Some(_) if PREFIXED.get() == Some(&true) => {
            eprint!("{}", prefix_lines(3, &format!("cosell-sync: {message}")))
        }
        _ => eprintln!("cosell-sync: {message}"),
    }
}

/// `<N>` before every line of `text` (journald reads the priority per line of stderr).
fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for line in text.lines() {
        out.push_str(&format!("<{priority}>{line}\n"));
    }
    out
}

/// `<priority>span{fields}: message fields` — the shape journald parses from stderr, the
/// prefix repeated on each line of a multi-line message.
struct PriorityPrefix;

impl<S, N> FormatEvent<S, N> for PriorityPrefix
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        let mut line = String::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                line.push_str(span.name());
                if let Some(fields) = span.extensions().get::<FormattedFields<N>>() {
                    if !fields.is_empty() {
                        line.push_str(&format!("{{{fields}}}"));
                    }
                }
                line.push_str(": ");
            }
        }
        ctx.field_format()
            .format_fields(Writer::new(&mut line), event)?;
        write!(writer, "{}", prefix_lines(priority, &line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }

    #[test]
    fn journal_stream_matches_only_stderrs_device_and_inode() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("garbage", 8, 1234));
        assert!(!journal_stream_is("", 0, 0));
    }

    #[test]
    fn every_line_of_a_multi_line_message_has_its_priority() {
        assert_eq!(
            prefix_lines(
                3,
                "refused:\n  schedule.sync: bad\n  microsoft.tenant is missing"
            ),
            "<3>refused:\n<3>  schedule.sync: bad\n<3>  microsoft.tenant is missing\n"
        );
    }

    #[test]
    fn the_cron_library_is_quiet_unless_asked_for() {
        assert_eq!(
            filter(None, "info").to_string(),
            "tokio_cron_scheduler=warn,info"
        );
        assert_eq!(
            filter(Some("tokio_cron_scheduler=debug"), "info").to_string(),
            "tokio_cron_scheduler=debug"
        );
    }
}
