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
    /// Run against the built-in simulator with sample data; needs no config and no network.
    Demo {
        /// How many sample referrals the simulated inbox holds.
        #[arg(long, default_value_t = 240)]
        referrals: usize,
    },
}
