//! cosell-sync keeps a partner's Microsoft Partner Center co-sell referrals and its Google Cloud
//! partner leads in step, and warns before a referral expires unanswered.
//!
//! Data flows one way through a cycle: the clients pull remote records, the store keeps them
//! (raw JSON included, so no field is ever lost), and the pure planners decide what to do next.
//! Nothing flows backwards: clients never touch the store, the store never calls a client.
//!
//! Module map, one owner per concern:
//! - [`cli`]: the command line (fixed names, spec §4); each command calls one function of [`app`].
//! - [`config`]: figment layers (defaults → file → env), secrets, validation naming keys, redaction.
//! - [`app`]: wiring: builds the clients and the store; `sync_once`, `run`, `status`.
//! - [`scheduler`]: the cron job, the no-overlap guard, SIGHUP reload, shutdown with a grace period.
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG, STOPPING) without libsystemd.
//! - [`health`]: liveness, counters, and the `/metrics` + `/healthz` endpoint.
//! - [`http`]: what every client shares: error taxonomy, Retry-After, backoff, rate limit.
//! - [`microsoft`]: Entra refresh-token grant with a rotating token file, and the Referrals client.
//! - [`google`]: service-account tokens and the Cloud CRM Partners client (four methods).
//! - [`store`]: SQLite (WAL, migrations, schema version) behind a blocking-thread boundary.
//! - [`sync`]: one cycle: pull both sides, plan with the pure `reconcile`, push the outbox.
//! - [`deadline`]: the 14-day response window arithmetic, pure.
//! - [`alerts`]: expiry and health alerts (pure planner), formats, durable delivery to sinks.
//! - [`sim`]: the simulator of both clouds' APIs, used by `demo` and the tests.
//! - [`demo`]: `cosell-sync demo`.
//! - [`telemetry`]: tracing subscriber set-up.
//! - [`webhook`]: Partner Center referral events (optional): receiver, verification, hand-off, registration.

// Errors here travel the slow path (after a network round trip or an HTTP answer); a few hundred
// bytes moved per error is nothing next to that, and boxing would only add noise.
#![allow(clippy::result_large_err)]

pub mod alerts;
pub mod app;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod google;
pub mod health;
pub mod http;
pub mod microsoft;
pub mod scheduler;
pub mod sim;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
pub mod webhook;

/// Process exit codes (spec §4 and the foundation issue).
pub mod exit {
    /// The command did what it was asked.
    pub const OK: i32 = 0;
    /// A cycle ran and failed (remote API, authentication refused, database unusable).
    pub const CYCLE_FAILED: i32 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: i32 = 2;
    /// Configuration error (EX_CONFIG); systemd's `RestartPreventExitStatus=78` keys on it.
    pub const CONFIG: i32 = 78;
}
