//! The command line. Its names are fixed by spec §4; each command calls into [`crate::app`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cosell-sync",
    version,
    about = "Keeps Microsoft co-sell referrals and Google Cloud partner leads in step, and warns before referrals expire."
)]
pub struct Cli {
    /// Configuration file [default: /etc/cosell-sync/config.toml]
    #[arg(long, global = true, env = "COSELL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Plan and log every remote write without sending it; the database is left as it was.
    #[arg(long, global = true)]
    pub dry_run: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: a cycle on every tick of [schedule] sync, until SIGTERM.
    Run,
    /// Run one full cycle, then exit (0 when it ran, 1 when it failed, 78 on a config error).
    Sync,
    /// Show what the daemon knows: referrals nearest expiry, counts by state, last cycles.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// How many referrals awaiting response to list.
        #[arg(long, default_value_t = 25)]
        limit: usize,
    },
    /// Validate the configuration and print it with secrets redacted.
    CheckConfig,
    /// Track an existing Google lead or opportunity for a referral (checked with a `get` first).
    Link {
        /// The Microsoft referral id.
        referral_id: String,
        /// partners/P/leads/L or partners/P/opportunities/O
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
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 200)]
        limit: usize,
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
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List actions (newest first).
    List {
        /// Only these states (pending, in_flight, done, dead, quarantined, dropped, superseded).
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send a dead or quarantined action again (for a quarantined lead create: only once you
    /// know the lead does not exist in Google; otherwise `link` it).
    Retry { id: i64 },
    /// Never send this action.
    Drop { id: i64 },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Alerts raised, newest first, with each sink's delivery.
    List {
        /// Only alerts not yet delivered to every sink.
        #[arg(long)]
        pending: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
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
