//! cosell-sync keeps a partner's Microsoft Partner Center co-sell referrals and its Google Cloud
//! partner leads in step, and warns before a referral expires unanswered.
//!
//! Data flows one way through a cycle: the clients pull remote records, the store keeps them
//! (raw JSON included, so no field is ever lost), and the pure planners decide what to do next.
//! Nothing flows backwards: clients never touch the store, the store never calls a client.
//!
//! Work reaches Partner Center and Google through one executor (`sync::push::Executor`).
//! Producers store what they learned and ring a doorbell ([`wake`]): the cron job (pull the
//! inbox), the refresh lane and the background change reader (a record changed: plan it) and
//! the webhook forwarder (the event's referral is fetched and committed: "no pull needed")
//! ring the deadline lane's, which plans, runs the executor and raises and delivers alerts;
//! the action page rings the executor's own for answers (an accept or decline is queued in
//! the outbox and sent at once, without a cycle; one queued by the command line beside a
//! running daemon is seen within a quarter second). Every run of the executor takes answers
//! first and shares one `[sync] concurrency`; an outbox row is sent only by the taker that
//! claimed it last.
//!
//! How an action kind plugs in (the next cloud's too: AWS Partner Central invitations): one
//! variant of `sync::reconcile::Action` (what is queued, and how it is stored: `encode` /
//! `decode` in `sync::plan`, a new `kind` name in `store::outbox`), and one file in
//! `sync::push` with one entry point, `execute(&Executor, ..., row, payload) -> Outcome`,
//! called from `Executor::execute`. The kind decides and sends; the executor gives it what
//! it needs: the clients with their retry policies, `claim` (right before the request; a
//! check that reads the store runs `Claim::run` in its own store call), `failure` (retry or
//! dead by the `[sync]` schedule) and `record` / `record_with` (state, retry time, result,
//! audit row and what a success changes, one transaction). A one-call kind (a decline) is
//! claim → request → record; a long-running one (an accept that starts an AWS task) records
//! `Outcome::Retry` with the task's id in `result` until the task settles, each poll one
//! attempt. A new client (an AWS one) joins the executor beside `microsoft` and `google`.
//!
//! Module map, one owner per concern:
//! - [`cli`]: the command line (fixed names, spec §4); `main` calls one [`app::commands`]
//!   function per command.
//! - [`config`]: a leaf (imports no feature module): figment layers (defaults → file → env),
//!   secrets, validation naming keys, redaction, the `[webhook]` section.
//! - [`app`]: wiring: builds the clients and the store; `sync_once`; the commands
//!   ([`app::commands`]), `link` and the demo.
//! - [`status`]: what `status` knows (and `status --referral`), read from the store.
//! - [`service_level`]: how fast referrals are answered, how many expire: metrics and `status`.
//! - [`progress`]: progress of long work: a bar on a terminal, periodic log lines otherwise.
//! - [`render`]: the commands' tables, listings and JSON (one-line confirmations are written
//!   by the command, in `app/`).
//! - [`timefmt`]: one time format for people (`2026-12-01 14:05 UTC`, `2 d 12 h`), pure.
//! - [`app::scheduler`]: the daemon (`run`): the cron job, the no-overlap guard, SIGHUP reload,
//!   shutdown with a grace period; part of the wiring, since a reload rebuilds the app. Two
//!   lanes (deadline, refresh) and the answer sender (the executor, answers only).
//! - [`serve`]: the one HTTP server layer of every listener: header, body and idle timeouts,
//!   a connection cap below the fd limit, refusals counted and logged in aggregate.
//! - [`reload`]: `cosell-sync reload`: SIGHUP to the daemon and its answer (`ExecReload=`).
//! - [`systemd`]: sd_notify (READY, STATUS, WATCHDOG, STOPPING) without libsystemd.
//! - [`health`]: liveness per lane (plain data in, no import of `app`), the `/metrics` +
//!   `/healthz` endpoint.
//! - [`metrics`]: the Prometheus registry, a leaf every module may record into.
//! - [`http`]: what every client shares: error taxonomy, Retry-After, backoff, rate limit.
//! - [`microsoft`]: Entra refresh-token grant with a rotating token file, and the Referrals client.
//! - [`google`]: service-account tokens and the Cloud CRM Partners client (four methods).
//! - [`aws`]: AWS Partner Central engagement invitations (spec §8): own SigV4 signer and
//!   verifier, the tolerant model of the five operations, the client. Answers (`accept` /
//!   `decline engi-…`, the page, the rules) go through the one executor (`sync::push::aws_accept`,
//!   `aws_decline`); the pull (`sync::aws_pull`) stores invitations as `referrals` rows with
//!   `source = 'aws'`, so alerts, `status` and the rules read them. `pub` so tests reach it.
//! - [`store`]: SQLite (WAL, migrations, schema version), one thread per connection; an
//!   action's short steps run in place when that thread is idle (`Store::call_short`).
//! - [`lanes`]: the deadline lane (pull → expiry alerts → plan → push → alerts) and the
//!   refresh lane (Google re-reads on a per-record schedule), joining `sync` and `alerts`.
//! - [`sync`]: the primitives: Microsoft pull (and the one "refresh this referral"), Google
//!   refresh, the pure `reconcile`, the outbox and its one executor (`sync::push::Executor`,
//!   every action kind, accept/decline included).
//! - [`deadline`]: the 14-day response window arithmetic, pure.
//! - [`alerts`]: expiry and health alerts (pure planner), formats, durable delivery to sinks.
//! - [`outside`]: text set outside the company (referral and customer names), typed so no
//!   chat format can forget to escape it; a leaf.
//! - [`open_enum`]: `open_enum!`, the string enums of the API models that keep unknown values.
//! - [`pem`]: certificate files (DER/PEM, trust roots), a leaf for config and the verifier.
//! - [`sim`]: the simulator of both clouds' APIs, used by `demo` and the tests.
//! - [`telemetry`]: tracing subscriber set-up (text, json, journald).
//! - [`files`]: the one bounded reader of every file the configuration names (regular files
//!   only, a cap per kind), a leaf.
//! - [`generate`]: the man page and shell completions from the clap definitions.
//! - [`actions`]: accept / decline from the alert: `[actions]` and the page (a producer: it
//!   queues the answer and rings the executor's doorbell for answers).
//! - [`links`]: the signed action links (HMAC, one referral, until its deadline), a leaf.
//! - [`webhook`]: Partner Center referral events (optional): receiver, verification, the
//!   producer hand-off (GET + commit + wake), registration.
//! - [`triage`]: spec §7's rules: what a rule reads of a referral (source-neutral) and the
//!   pure evaluator (first match decides; `none` stops).
//! - [`wake`]: the doorbells, a leaf: the deadline lane's (asks coalesce; "pull" or "no pull
//!   needed"), rung by the cron job, the refresh lane and the webhook forwarder; the
//!   executor's for answers, rung by the action page and the inbox.
//!
//! Visibility: every item is `pub(crate)` unless the binary (`main.rs`), an integration test
//! or a bench names it, and the modules none of them reach are private, so the compiler keeps
//! the boundary and reports dead code. The `pub` modules below are those namespaces; inside
//! them only what those callers use is `pub`.

// Errors here travel the slow path (after a network round trip or an HTTP answer); a few hundred
// bytes moved per error is nothing next to that, and boxing would only add noise.
#![allow(clippy::result_large_err)]

pub mod actions;
pub(crate) mod alerts;
pub mod app;
pub mod aws;
pub mod cli;
pub mod config;
pub(crate) mod deadline;
pub(crate) mod files;
pub mod generate;
pub(crate) mod google;
pub(crate) mod health;
pub mod http;
pub mod lanes;
pub(crate) mod links;
pub mod metrics;
pub mod microsoft;
pub(crate) mod open_enum;
pub(crate) mod outside;
pub(crate) mod pem;
pub(crate) mod progress;
pub(crate) mod reload;
pub(crate) mod render;
pub mod serve;
pub(crate) mod service_level;
pub mod sim;
pub(crate) mod status;
pub mod store;
pub mod sync;
pub(crate) mod systemd;
pub mod telemetry;
pub mod timefmt;
pub(crate) mod triage;
pub mod wake;
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
    /// The database file was deleted or replaced while `run` had it open (EX_TEMPFAIL): the
    /// daemon stopped instead of writing into a file that is gone. A restart opens the file
    /// now at the path (a new one re-links every lead from Partner Center), so the unit
    /// restarts on it: a restart cannot meet the same condition again.
    pub const STORE_REPLACED: i32 = 75;
}
