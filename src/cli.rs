//! The command line. Its names are fixed by spec §4; each command calls into [`crate::app`].

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cosell-sync",
    version,
    max_term_width = 80,
    about = "Keeps Microsoft co-sell referrals and Google Cloud partner leads in step, and warns before referrals expire."
)]
pub struct Cli {
    /// Configuration file [default: /etc/cosell-sync/config.toml]
    #[arg(long, global = true, env = "COSELL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Only with `run` and `sync`: plan and log every remote write without sending it; the
    /// database is left as it was.
    #[arg(long)]
    pub dry_run: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: a cycle on every tick of [schedule] sync, until SIGTERM.
    Run {
        /// Plan and log every remote write without sending it; the database is left as it was.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run one tick of `run`, then exit (0 when it ran, 1 when it failed, 78 on a config error).
    ///
    /// Like a tick of `run`: the Partner Center pull, the tracked Google records that are
    /// due under [refresh] (not all of them), planning, pushing and alerts. The last line
    /// says how many Google records were re-read, how many were not (not due) and when the
    /// next falls due. `--all` re-reads every tracked record that is not final, now.
    Sync {
        /// Plan and log every remote write without sending it; the database is left as it was.
        #[arg(long)]
        dry_run: bool,
        /// Re-read every tracked Google record that is not final, whatever its schedule.
        #[arg(long)]
        all: bool,
    },
    /// Accept an incoming New referral in Partner Center (status Active, substatus Accepted).
    /// Exit 0 when it is accepted (also when it already was), 1 when it cannot be.
    Accept {
        /// The Microsoft referral id, or an AWS engagement invitation id (`engi-…`: the
        /// command then waits up to 60 s for AWS's accept task).
        referral_id: String,
        /// A note kept with the answer in the audit log.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// Print the PATCH it would send; send nothing and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Decline an incoming New referral in Partner Center (Closed / Declined, the reason as
    /// statusReason). Exit 0 when it is declined (also when it already was), 1 when it
    /// cannot be.
    Decline {
        /// The Microsoft referral id, or an AWS engagement invitation id (`engi-…`).
        referral_id: String,
        /// Why (becomes the referral's statusReason; for an AWS invitation its
        /// RejectionReason, at most 80 characters).
        #[arg(long, value_name = "TEXT", value_parser = parse_reason)]
        reason: String,
        /// A note kept with the answer in the audit log.
        #[arg(long, value_name = "TEXT")]
        note: Option<String>,
        /// Print the PATCH it would send; send nothing and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show what the daemon knows: referrals nearest expiry, counts by state, last cycles.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// How many referrals awaiting response to list.
        #[arg(long, default_value_t = 25)]
        limit: usize,
        /// One referral instead: its timeline from the audit log, lead, opportunity, alerts.
        #[arg(long, value_name = "ID")]
        referral: Option<String>,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// The triage rules ([[rules]]): `rules test` previews their decisions.
    Rules {
        #[command(subcommand)]
        action: RulesCommand,
    },
    /// Track an existing Google lead or opportunity for a referral (checked with a `get` first).
    Link {
        /// The Microsoft referral id.
        referral_id: String,
        /// partners/P/leads/L or partners/P/opportunities/O
        #[arg(value_parser = parse_resource_name)]
        google_resource_name: String,
    },
    /// First-run sign-in to Microsoft (device code), or a check of both clouds' credentials.
    Auth {
        #[command(subcommand)]
        action: AuthCommand,
    },
    /// Every remote write: when, which API and record, fields changed, outcome, request id.
    Audit {
        /// Only writes about this referral (or its linked Google records).
        #[arg(long)]
        referral: Option<String>,
        /// Only writes at or after this time (RFC 3339 or YYYY-MM-DD, UTC).
        #[arg(long, value_parser = parse_since)]
        since: Option<DateTime<Utc>>,
        /// How many writes to list (the newest).
        #[arg(long, default_value_t = 200)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Alerts raised and their delivery, or a test alert to every sink.
    Alerts {
        #[command(subcommand)]
        action: AlertsCommand,
    },
    /// The outbox of remote writes: list them, retry a dead or quarantined one, or drop one.
    Outbox {
        #[command(subcommand)]
        action: Option<OutboxCommand>,
    },
    /// Write a consistent copy of the database to PATH (safe while `run` is active; restore:
    /// stop the daemon, `cosell-sync restore PATH`, start it).
    Backup {
        /// Where the copy goes (replaced whole when it exists).
        path: PathBuf,
    },
    /// Install a backup at [state] path with the state directory's owner and mode 0600, on a
    /// fresh host too (refused while the daemon runs; the copy is checked first).
    Restore {
        /// The backup to install (`cosell-sync backup` wrote it).
        backup: PathBuf,
    },
    /// Print the man page, cosell-sync(1), in roff (`cosell-sync man | man -l -`).
    Man,
    /// Print a shell completion script (`cosell-sync completions bash > /etc/bash_completion.d/cosell-sync`).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Partner Center webhooks ([webhook]): manage the registration, or test the receiver.
    Webhook {
        #[command(subcommand)]
        action: WebhookCommand,
    },
    /// Run against the built-in simulator with sample data; needs no config and no network.
    Demo {
        /// How many sample referrals the simulated inbox holds.
        #[arg(long, default_value_t = 240)]
        referrals: usize,
    },
    /// Reload the running daemon's configuration (SIGHUP) and wait for its answer: exits 0
    /// when it reloaded, 1 when it refused (the reason is printed) — the unit's ExecReload=.
    Reload {
        /// The daemon's process id (`$MAINPID` in the unit).
        #[arg(long)]
        pid: i32,
        /// How long to wait for the answer, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Probe the running daemon: GET /healthz on [metrics] listen; exit 0 when it answers
    /// 200, 1 when it answers otherwise or not at all, 78 without [metrics] listen. For a
    /// container's HEALTHCHECK (the image has no shell or curl); reads no secret.
    Health {
        /// How long to wait for the answer, in seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Serve the simulator of both clouds with sample data until stopped, to rehearse an
    /// install: it prints the config keys that point at it.
    Sim {
        /// The address to listen on (plain HTTP; keep it on a loopback).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8600")]
        listen: std::net::SocketAddr,
        /// How many sample referrals the simulated inbox holds.
        #[arg(long, default_value_t = 240)]
        referrals: usize,
        /// Write the secret files the printed keys name (microsoft-client-secret,
        /// google-key.json, mode 0600) into this directory.
        #[arg(long, value_name = "DIR")]
        credentials_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Every stored referral awaiting an answer, the rule that decides it and the decision,
    /// with the rules of the config as it is now; sends nothing (exit 0; 78 on a config error).
    Test {
        /// One JSON array: {referral_id, source, rule, decision, reason} per referral.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List actions (newest first).
    List {
        /// Only actions in this state (repeatable).
        #[arg(long = "state", value_parser = outbox_states())]
        states: Vec<String>,
        /// How many actions to list (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send a dead or quarantined action again (for a quarantined lead create: only once you
    /// know the lead does not exist in Google; otherwise `link` it).
    Retry {
        /// The action's id (`outbox list`).
        id: i64,
        /// Needed to retry a quarantined lead create: it may have reached Google already, and
        /// sending it again may make a second lead.
        #[arg(long)]
        force: bool,
    },
    /// Never send this action.
    Drop {
        /// The action's id (`outbox list`).
        id: i64,
    },
}

/// The states of an outbox action, as `outbox list --state` takes them: the store's own names,
/// so the two can never list different states.
fn outbox_states() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(crate::store::outbox::State::ALL.map(|s| s.as_str()))
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts raised, newest first, with each sink's delivery.
    List {
        /// Only alerts not yet delivered to every sink.
        #[arg(long)]
        pending: bool,
        /// How many alerts to list (the newest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Send a test alert to every configured sink and report each result.
    Test,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Sign in with the OAuth device-code flow and store the refresh token in the token file
    /// beside the database (mode 0600).
    Microsoft,
    /// Get a token from each cloud and say what is wrong, if anything.
    Check,
}

impl Cli {
    /// Parses the command line; usage errors (including `--dry-run` before a command it means
    /// nothing to) exit 2 with clap's message.
    pub fn parse_checked() -> Cli {
        Self::check(Cli::parse())
    }

    /// As [`Cli::parse_checked`], from given arguments (the first is the program name).
    pub fn try_parse_checked<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        cli.dry_run_applies()?;
        Ok(cli)
    }

    fn check(cli: Cli) -> Cli {
        if let Err(e) = cli.dry_run_applies() {
            e.exit()
        }
        cli
    }

    /// `--dry-run` means something only to the commands that run cycles: elsewhere (say
    /// `--dry-run outbox drop 43`) it would promise a safety the command does not give.
    fn dry_run_applies(&self) -> Result<(), clap::Error> {
        let applies = matches!(
            self.command,
            Command::Run { .. }
                | Command::Sync { .. }
                | Command::Accept { .. }
                | Command::Decline { .. }
        );
        if self.dry_run && !applies {
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "--dry-run applies only to `run` and `sync` (and `accept`, `decline`); other commands would ignore it",
            ));
        }
        Ok(())
    }

    /// Whether an `accept` or `decline` is a dry run (`--dry-run` before or after it).
    pub fn is_answer_dry_run(&self) -> bool {
        self.dry_run
            || matches!(
                self.command,
                Command::Accept { dry_run: true, .. } | Command::Decline { dry_run: true, .. }
            )
    }

    /// Whether this invocation is a dry run (`--dry-run` before or after `run`/`sync`).
    pub fn is_dry_run(&self) -> bool {
        if matches!(
            self.command,
            Command::Accept { .. } | Command::Decline { .. }
        ) {
            // Answers handle their own dry run (a preview); see `is_answer_dry_run`.
            return false;
        }
        self.dry_run
            || matches!(
                self.command,
                Command::Run { dry_run: true } | Command::Sync { dry_run: true, .. }
            )
    }
}

fn parse_resource_name(text: &str) -> Result<String, String> {
    crate::google::model::resource_kind(text)
        .map(|_| text.to_string())
        .ok_or_else(|| {
            "not a Google resource name: use partners/P/leads/L or partners/P/opportunities/O"
                .into()
        })
}

/// A decline reason becomes `statusReason`: never empty, one line, of sane length.
fn parse_reason(text: &str) -> Result<String, String> {
    let reason = text.trim();
    if reason.is_empty() {
        return Err("a decline needs a reason (it becomes the referral's statusReason)".into());
    }
    if reason.chars().any(char::is_control) {
        return Err("the reason must be one line of text".into());
    }
    if reason.chars().count() > crate::config::actions::MAX_REASON_CHARS {
        return Err(format!(
            "the reason is longer than {} characters",
            crate::config::actions::MAX_REASON_CHARS
        ));
    }
    Ok(reason.to_string())
}

fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    crate::timefmt::parse_timestamp(text)
        .ok_or_else(|| "use RFC 3339 (2026-11-22T10:00:00Z) or a date (2026-11-22)".into())
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register [webhook] public_url for [webhook] events (replaces an existing registration).
    Register,
    /// Show the registration Partner Center has.
    Show,
    /// Ask Partner Center for a test-created event and report whether it arrived and verified
    /// (serves a temporary receiver on [webhook] listen when the daemon is not running).
    Test {
        /// How long to wait for the event, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Remove the registration (events stop; polling goes on).
    Unregister,
}
