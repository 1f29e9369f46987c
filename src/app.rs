//! Wiring: builds the store and the clients from a validated [`Config`], and the commands on
//! top of them: one function per command in [`commands`] (`main` only parses and calls it),
//! `link` in [`link`], one cycle (`sync`), the daemon (`run`, via
//! [`scheduler`]).

pub(crate) mod answer;
pub(crate) mod aws_answer;
mod aws_auth;
pub mod commands;
pub(crate) mod demo;
pub(crate) mod link;
pub(crate) mod scheduler;
pub(crate) mod status_line;

use std::sync::Arc;

use chrono::Utc;

pub(crate) use crate::status::status;

use crate::alerts::deliver::AlertSettings;
use crate::config::{Config, ConfigErrors};
use crate::google::{GoogleAuth, GoogleClient};
use crate::http::RateLimiter;
pub(crate) use crate::lanes::Cycle;
use crate::lanes::{self, TickOptions};
use crate::microsoft::{MicrosoftClient, TokenSource};
use crate::store::outbox;
use crate::store::runs;
use crate::store::{Store, StoreError};
use crate::sync::{
    self, CycleContext, GoogleSide, Policy, PullSettings, RefreshSettings, SendSettings,
};
use crate::wake::{DeadlineWake, TickAsk};
use tokio_util::sync::CancellationToken;

/// Why a command could not run, mapped to an exit code by `main`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("configuration: {0}")]
    Config(String),
    /// The configuration file did not load or validate: every problem, each naming its key.
    #[error("configuration {} is not valid:{}", .file.display(), indented(.errors))]
    InvalidConfig {
        file: std::path::PathBuf,
        errors: ConfigErrors,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process holds the worker lock of this database.
    #[error("{0}")]
    Busy(String),
    /// The command was refused (bad argument, remote check failed).
    #[error("{0}")]
    Refused(String),
    /// An argument names something the command must not touch (exit 2, like clap's own).
    #[error("{0}")]
    Usage(String),
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Config(_) | AppError::InvalidConfig { .. } => crate::exit::CONFIG,
            AppError::Usage(_) => crate::exit::USAGE,
            AppError::Store(StoreError::Replaced { .. }) => crate::exit::STORE_REPLACED,
            AppError::Store(_) | AppError::Busy(_) | AppError::Refused(_) => {
                crate::exit::CYCLE_FAILED
            }
        }
    }
}

/// One error a paragraph, within 80 columns: continuation lines indented under the key, so
/// a list of several errors still reads as a list in a terminal.
fn indented(errors: &ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| {
            format!(
                "\n  {}",
                crate::render::wrap(&e.to_string(), 4).trim_start()
            )
        })
        .collect()
}

/// Everything a cycle needs, built once per process.
#[derive(Debug, Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    pub cycle: CycleContext,
    pub(crate) alerts: AlertSettings,
    /// Held by the process that runs cycles (`run`, `sync`); see [`App::become_worker`].
    worker_lock: Option<Arc<std::fs::File>>,
    /// Dry run: the directory of the throw-away database copy (removed on drop).
    dry_run_dir: Option<Arc<tempfile::TempDir>>,
}

impl App {
    /// The action page's settings (`None` without `[actions]`): built here, so the page takes
    /// what it uses and never the app.
    pub(crate) fn page_settings(&self) -> Option<crate::actions::page::PageSettings> {
        Some(crate::actions::page::PageSettings {
            signer: self.alerts.links.clone()?,
            config: self.config.actions.clone()?,
            window: self.config.alerts.response_window.as_chrono(),
            referral_url: self.config.alerts.referral_url.clone(),
        })
    }

    /// Builds the store and the clients. No cycle may run until [`App::become_worker`].
    pub fn build(config: Config) -> Result<App, AppError> {
        let (store, dry_run_dir) = if config.daemon.dry_run {
            let (store, dir) = dry_run_copy(&config.state.path)?;
            tracing::warn!(copy = %store.path().display(), "DRY RUN: no remote write is sent; state changes go to a throw-away copy of the database");
            (store, Some(Arc::new(dir)))
        } else {
            (Store::open(&config.state.path)?, None)
        };
        let ms = &config.microsoft;
        let http = crate::http::client(ms.timeout.0, ms.connect_timeout.0);
        let tokens = TokenSource::from_config(http.clone(), &config)
            .map_err(|e| AppError::Config(e.to_string()))?;
        let microsoft = MicrosoftClient::new(
            http,
            &ms.api_base,
            Arc::new(tokens),
            Arc::new(RateLimiter::new(ms.requests_per_second)),
        )
        .map_err(|e| AppError::Config(e.to_string()))?;
        let pull = PullSettings {
            page_size: ms.page_size,
            overlap: ms.incremental_overlap.0,
            initial_lookback: ms.initial_lookback.0,
        };
        let google = if config.google_enabled() {
            Some(google_side(&config)?)
        } else {
            if config.microsoft_enabled() {
                tracing::info!("[google] partner_id is not set: only the Microsoft side runs");
            }
            None
        };
        let links = match &config.actions {
            Some(actions) => Some(Arc::new(
                crate::actions::LinkSigner::load(actions, &config.state_dir())
                    .map_err(|e| AppError::Config(format!("actions.key_file: {e}")))?,
            )),
            None => None,
        };
        let mut alerts = AlertSettings::from_config(&config.alerts);
        alerts.links = links;
        alerts.invitation_url = config
            .aws
            .as_ref()
            .and_then(|a| a.invitation_url.clone())
            .filter(|u| !u.trim().is_empty());
        alerts.inbox_url = config.actions.as_ref().and_then(|a| {
            a.actor_header()
                .map(|_| format!("{}/inbox", a.public_url.trim_end_matches('/')))
        });
        Ok(App {
            alerts,
            cycle: CycleContext {
                store: store.clone(),
                microsoft_on: config.microsoft_enabled(),
                microsoft,
                microsoft_retry: ms.retry.policy(),
                pull,
                google,
                aws: aws_side(&config)?,
                stop: tokio_util::sync::CancellationToken::new(),
                send: send_settings(&config),
                triage: config.triage.clone(),
                rules: config.rules.clone().into(),
            },
            config: Arc::new(config),
            store,
            worker_lock: None,
            dry_run_dir,
        })
    }

    /// Takes the worker lock (one process runs cycles on a database at a time), then
    /// recovers what a stopped process left: cycles marked interrupted, in-flight lead
    /// creates quarantined (they may have reached Google), other in-flight writes re-queued.
    pub fn become_worker(&mut self) -> Result<(), AppError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Keyed on the file, not on how the config names it: a symlink, `..` or an env
        // override naming the same database finds the same lock.
        let canonical = std::fs::canonicalize(self.store.path())
            .unwrap_or_else(|_| self.store.path().to_path_buf());
        let lock_path = canonical.with_extension("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| {
                AppError::Busy(format!(
                    "cannot open lock file {}: {e}",
                    lock_path.display()
                ))
            })?;
        if let Err(e) = file.try_lock() {
            return Err(AppError::Busy(format!(
                "another cosell-sync process is running cycles on {} ({e}); stop it or wait",
                self.config.state.path.display()
            )));
        }
        self.worker_lock = Some(Arc::new(file));
        let now = Utc::now();
        let (interrupted, (quarantined, requeued)) = self.store.call_blocking(|c| {
            Ok((
                runs::mark_interrupted(c, now)?,
                outbox::recover_in_flight(c, now)?,
            ))
        })?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "cycles of a stopped process were left running; marked interrupted"
            );
        }
        if quarantined > 0 {
            tracing::error!(quarantined, "lead creates of a stopped process may have reached Google; quarantined for a person (cosell-sync outbox list)");
        }
        if requeued > 0 {
            tracing::info!(requeued, "writes of a stopped process queued again");
        }
        Ok(())
    }

    /// A reloaded app keeps the worker lock of the one it replaces (and skips recovery:
    /// the old app's writes may still be in flight).
    pub(crate) fn inherit_worker(&mut self, from: &App) {
        self.worker_lock = from.worker_lock.clone();
        self.cycle.stop = from.cycle.stop.clone();
        // The page and the answer sender hold the executor's doorbell: it outlives a reload.
        self.cycle.send.answers = from.cycle.send.answers.clone();
        self.alerts.unrecorded = from.alerts.unrecorded.clone();
        if same_credentials(&self.config.microsoft, &from.config.microsoft) {
            let tokens = from.cycle.microsoft.tokens();
            self.cycle.microsoft = self.cycle.microsoft.with_tokens(tokens);
        }
        if let (Some(new), Some(old)) = (&mut self.cycle.aws, &from.cycle.aws) {
            // One process, one write limit: a reload must not restart AWS's second.
            let rate = |c: &Config| c.aws.as_ref().map(|a| a.requests_per_second());
            let same = rate(&self.config) == rate(&from.config);
            new.client.keep_limits_of(&old.client, same);
        }
        if let (Some(new), Some(old)) = (&mut self.cycle.google, &from.cycle.google) {
            new.fresh_since = old.fresh_since;
        }
    }

    /// What the webhook's hand-off uses (the store, the Microsoft client, the deadline
    /// lane's `wake`), never the whole app.
    pub fn webhook_handoff(&self, wake: &DeadlineWake) -> crate::webhook::forward::Handoff {
        crate::webhook::forward::Handoff {
            cycle: self.cycle.clone(),
            wake: wake.clone(),
            max_attempts: self.config.webhook.as_ref().map_or(5, |w| w.max_attempts),
        }
    }

    /// One deadline tick as `ask` wants it (the daemon's lane and [`App::serve_wakes`]).
    pub(crate) async fn asked_tick(&self, full_plan: bool, ask: TickAsk) -> Cycle {
        let options = TickOptions::deadline(full_plan);
        match ask.pull {
            true => self.cycle_with(options).await,
            false => self.cycle_with(options.without_pull()).await,
        }
    }

    /// A bare deadline lane over `wake` until `stop`, for a process without the daemon's
    /// scheduler (the demo, tests): one tick per ask, never two at once.
    pub async fn serve_wakes(self: Arc<App>, wake: DeadlineWake, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = wake.asked() => {}
                _ = stop.cancelled() => return,
            }
            let ask = wake.begin();
            self.asked_tick(false, ask).await;
            wake.finish();
        }
    }

    /// One full cycle (`sync`): a full pull, the Google records due now, a full plan, the
    /// push and the alerts (raised and delivered; never failing the cycle).
    pub async fn sync_once(&self) -> Cycle {
        self.cycle_with(TickOptions::one_shot()).await
    }

    /// `sync --all`: [`App::sync_once`] re-reading every tracked Google record that is not
    /// final, whatever its schedule.
    pub async fn sync_all(&self) -> Cycle {
        self.cycle_with(TickOptions::one_shot_all()).await
    }

    /// One tick of the daemon's deadline lane: never a Google re-read.
    /// `full_plan` plans every candidate referral, not only those whose inputs changed.
    pub async fn deadline_tick(&self, full_plan: bool) -> Cycle {
        self.cycle_with(TickOptions::deadline(full_plan)).await
    }

    async fn cycle_with(&self, options: TickOptions) -> Cycle {
        debug_assert!(
            self.worker_lock.is_some(),
            "cycles run only in the worker process"
        );
        lanes::run_cycle(
            &self.cycle,
            &self.alerts,
            options,
            self.dry_run_dir.is_some(),
        )
        .await
    }
}

/// Whether a reload keeps the Microsoft token source: the same token endpoint, app and first
/// token (a SIGHUP alone never costs a grant, and never loses a rotated token held in memory).
fn same_credentials(
    a: &crate::config::MicrosoftConfig,
    b: &crate::config::MicrosoftConfig,
) -> bool {
    use secrecy::ExposeSecret;
    let secret =
        |s: &Option<secrecy::SecretString>| s.as_ref().map(|s| s.expose_secret().to_string());
    a.authority == b.authority
        && a.tenant == b.tenant
        && a.client_id == b.client_id
        && secret(&a.client_secret) == secret(&b.client_secret)
        && secret(&a.refresh_token) == secret(&b.refresh_token)
        && a.timeout.0 == b.timeout.0
        && a.connect_timeout.0 == b.connect_timeout.0
}

/// A copy of the database (or a new one) in a temporary directory, for a dry run.
fn dry_run_copy(real: &std::path::Path) -> Result<(Store, tempfile::TempDir), AppError> {
    let dir = tempfile::tempdir().map_err(|e| {
        AppError::Refused(format!("dry run: cannot make a temporary directory: {e}"))
    })?;
    let copy = dir.path().join("dry-run.db");
    if real.exists() {
        crate::store::snapshot_copy(real, &copy)?;
    }
    Ok((Store::open(&copy)?, dir))
}

/// How the one executor sends, whatever the action kind: the `[sync]` retry schedule (built
/// here only) and concurrency, the response window answers are checked against, dry run.
fn send_settings(config: &Config) -> SendSettings {
    let sync = &config.sync;
    let schedule = sync::Schedule {
        max_attempts: sync.max_attempts,
        min: sync.retry_min.0,
        max: sync.retry_max.0,
    };
    let window = config.alerts.response_window.as_chrono();
    SendSettings::new(schedule, sync.concurrency, config.daemon.dry_run, window)
}

/// The AWS client of `[aws]` (spec §8), with the credentials found in §8's order; `None`
/// without the section, or when this command read no secrets.
fn aws_side(config: &Config) -> Result<Option<crate::sync::AwsSide>, AppError> {
    let Some(aws) = &config.aws else {
        return Ok(None);
    };
    // Loaded without its secrets (a command that sends nothing to AWS): no client.
    let Some(found) = aws.credentials() else {
        return Ok(None);
    };
    tracing::debug!(catalog = aws.catalog(), credentials = %found.source, "AWS Partner Central inbox on");
    let client = crate::aws::client::AwsClient::from_config(aws)
        .map_err(|e| AppError::Config(e.to_string()))?;
    Ok(Some(crate::sync::AwsSide {
        client,
        retry: aws.retry.policy(),
    }))
}

/// The Google client and the sync policy, from configuration.
fn google_side(config: &Config) -> Result<GoogleSide, AppError> {
    let g = &config.google;
    let key = g
        .credentials_file
        .as_ref()
        .ok_or_else(|| AppError::Config("google.credentials_file is missing".into()))?;
    let auth = GoogleAuth::from_key_file(key)
        .map_err(|e| AppError::Config(format!("google.credentials_file: {e}")))?;
    // Google's own timeouts: its calls are small and its quota is not Microsoft's.
    let http = crate::http::client(g.timeout.0, g.connect_timeout.0);
    let client = GoogleClient::new(
        http,
        &g.api_base,
        Arc::new(auth),
        Arc::new(RateLimiter::new(g.requests_per_second)),
    )
    .map_err(|e| AppError::Config(e.to_string()))?;
    let sync = &config.sync;
    Ok(GoogleSide {
        client,
        policy: Policy {
            partner_id: g.partner_id.clone().unwrap_or_default(),
            conflict: sync.conflict,
            lost_stages: sync.lost_stages.clone(),
            won_stages: sync.won_stages.clone(),
            close_google_on_microsoft_close: sync.close_google_on_microsoft_close,
            forward: config.forward.clone(),
            lead: g.lead.clone(),
        },
        retry: g.retry.policy(),
        refresh: refresh_settings(config),
        fresh_since: Utc::now(),
    })
}

fn refresh_settings(config: &Config) -> RefreshSettings {
    let r = &config.refresh;
    RefreshSettings {
        reads_per_hour: r.reads_per_hour,
        min_interval: r.min_interval.0,
        hot_max_interval: r.hot_max_interval.0,
        max_interval: r.max_interval.0,
        near_deadline: r.near_deadline.as_chrono(),
        response_window: config.alerts.response_window.as_chrono(),
        concurrency: r.concurrency,
        batch: 50,
    }
}
