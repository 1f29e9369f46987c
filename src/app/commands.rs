//! One function per command: `main` parses the command line and calls exactly one of these.
//! Each returns what to print ([`Printed`]) or an [`AppError`] that names what went wrong and
//! carries its exit code; rendering is [`crate::render`]'s.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{scheduler, App, AppError};
use crate::cli::OutboxCommand;
use crate::config::Config;
use crate::google::GoogleAuth;
use crate::microsoft::TokenSource;
use crate::store::{outbox, Store};
use crate::{exit, render};

/// What a command prints on stdout and the exit code it ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Printed {
    pub stdout: String,
    pub code: i32,
}

impl Printed {
    pub fn ok(stdout: impl Into<String>) -> Printed {
        Printed {
            stdout: stdout.into(),
            code: exit::OK,
        }
    }
}

pub type Outcome = Result<Printed, AppError>;

/// Loads and validates the configuration; `force_dry_run` is the command line's `--dry-run`.
pub fn load_config(file: &Path, force_dry_run: bool) -> Result<Config, AppError> {
    let mut config = Config::load(file)
        .map_err(|errors| AppError::InvalidConfig {
            file: file.to_path_buf(),
            errors,
        })?
        .config;
    config.daemon.dry_run |= force_dry_run;
    Ok(config)
}

/// The configuration as `command` needs it: the commands that only read the database load
/// no secret (they never use one), `check-config` and `auth microsoft` need no refresh token
/// yet, every other command needs everything.
pub fn load_config_for(
    command: &crate::cli::Command,
    file: &Path,
    force_dry_run: bool,
) -> Result<Config, AppError> {
    use crate::cli::{AlertsCommand, AuthCommand, Command};
    let read_only = matches!(
        command,
        Command::Status { .. }
            | Command::Rules { .. }
            | Command::Health { .. }
            | Command::Reload { .. }
            | Command::Backup { .. }
            | Command::Restore { .. }
            | Command::Audit { .. }
            | Command::Alerts {
                action: AlertsCommand::List { .. }
            }
            | Command::Outbox {
                action: None | Some(OutboxCommand::List { .. })
            }
    );
    if read_only {
        return Config::load_read_only(file)
            .map(|l| l.config)
            .map_err(|errors| AppError::InvalidConfig {
                file: file.to_path_buf(),
                errors,
            });
    }
    match command {
        Command::CheckConfig
        | Command::Auth {
            action: AuthCommand::Microsoft,
        } => load_config_for_auth(file),
        _ => load_config(file, force_dry_run),
    }
}

/// For `auth microsoft`, which runs before there is a refresh token.
pub fn load_config_for_auth(file: &Path) -> Result<Config, AppError> {
    Config::load_for_auth(file)
        .map(|l| l.config)
        .map_err(|errors| AppError::InvalidConfig {
            file: file.to_path_buf(),
            errors,
        })
}

/// The one place the read-only commands (`status`, `audit`, `alerts list`, `outbox list`)
/// open the database.
/// Read-only: never creates, migrates or writes ("no database at PATH" when it is missing).
pub(crate) fn open_for_reading(config: &Config) -> Result<Store, AppError> {
    Ok(Store::open_read_only(&config.state.path)?)
}

/// The database for commands that change it on the operator's word (`outbox retry|drop`).
fn open_for_writing(config: &Config) -> Result<Store, AppError> {
    Ok(Store::open(&config.state.path)?)
}

/// A listing as JSON (`--json`) or as its table: the one place a command chooses.
fn show<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    table: impl Fn(&T) -> String,
) -> Outcome {
    Ok(Printed::ok(if json {
        render::json(value)
    } else {
        table(value)
    }))
}

/// `check-config`: validates, then checks what `sync` would refuse at start (the Google key
/// file), and prints the effective configuration with secrets redacted.
pub(crate) fn check_config(config: &Config, file: &Path) -> Outcome {
    warn_open_secrets(config, file);
    if config.google_enabled() {
        let key = config
            .google
            .credentials_file
            .as_ref()
            .ok_or_else(|| AppError::Config("google.credentials_file is missing".into()))?;
        GoogleAuth::from_key_file(key)
            .map_err(|e| AppError::Config(format!("google.credentials_file: {e}")))?;
    }
    let settings = crate::alerts::AlertSettings::from_config(&config.alerts);
    Ok(Printed::ok(format!(
        "# configuration from {} (secrets redacted)\n{}{}",
        file.display(),
        config.redacted_toml(),
        render::routing(&settings)
    )))
}

/// `status [--json] [--limit N] [--referral ID]`.
pub(crate) fn status(config: &Config, json: bool, limit: usize, referral: Option<&str>) -> Outcome {
    let store = open_for_reading(config)?;
    let now = Utc::now();
    if let Some(id) = referral {
        let view = crate::status::referral_view(&store, config, id, now)?.ok_or_else(|| {
            AppError::Refused(format!(
                "referral {id} is not in the database {}; run `cosell-sync sync` first, or check the id",
                store.path().display()
            ))
        })?;
        return show(json, &view, render::referral);
    }
    let report = super::status(&store, config, now)?;
    show(json, &report, |r| render::status(r, limit))
}

/// `rules test [--json]`: the current rules over the stored referrals awaiting an answer,
/// read-only (nothing recorded, nothing sent).
pub(crate) fn rules_test(config: &Config, json: bool) -> Outcome {
    let store = open_for_reading(config)?;
    let settings = crate::triage::cycle::Settings::from_config(config);
    let now = Utc::now();
    let rows =
        store.call_blocking(move |c| crate::triage::cycle::decide_all(c, &settings, None, now))?;
    let preview: Vec<render::RuleTest> = rows.iter().map(render::RuleTest::from).collect();
    show(json, preview.as_slice(), |p| {
        render::rules_test(p, config.triage.mode.as_str(), config.rules.len())
    })
}

/// `alerts list [--pending] [--limit N] [--json]`.
pub(crate) fn alerts_list(config: &Config, pending: bool, limit: usize, json: bool) -> Outcome {
    let store = open_for_reading(config)?;
    let mut rows = store.call_blocking(|c| crate::store::alerts::list(c, pending, limit))?;
    crate::status::with_action_urls(&store, config, &mut rows, Utc::now())?;
    show(json, rows.as_slice(), render::alerts)
}

/// `alerts test`: one test alert to every sink, each result reported; 1 when one failed.
pub(crate) async fn alerts_test(config: &Config) -> Outcome {
    let settings = crate::alerts::AlertSettings::from_config(&config.alerts);
    if settings.sinks.is_empty() {
        return Ok(Printed::ok(
            "no alert sinks configured ([[alerts.webhook]] or [[alerts.command]]);\nalerts go to the log only\n",
        ));
    }
    let mut out = String::new();
    let mut failed = false;
    for test in crate::alerts::deliver::send_test(&settings).await {
        failed |= test.result.is_err();
        out.push_str(&render::sink_test(&test));
    }
    if let Some(warning) = settings.routing_warning() {
        out.push_str(&render::wrap(&warning, 0));
        out.push('\n');
    }
    Ok(Printed {
        stdout: out,
        code: if failed { exit::CYCLE_FAILED } else { exit::OK },
    })
}

/// `audit [--referral ID] [--since T] [--limit N] [--json]`.
pub(crate) fn audit(
    config: &Config,
    referral: Option<&str>,
    since: Option<DateTime<Utc>>,
    limit: usize,
    json: bool,
) -> Outcome {
    let store = open_for_reading(config)?;
    let rows = store.call_blocking(|c| outbox::audit_rows(c, referral, since, limit))?;
    show(json, rows.as_slice(), render::audit)
}

/// `outbox [list|retry|drop]`.
pub(crate) fn outbox(config: &Config, command: Option<OutboxCommand>) -> Outcome {
    let now = Utc::now();
    match command.unwrap_or(OutboxCommand::List {
        states: vec![],
        limit: 50,
        json: false,
    }) {
        OutboxCommand::List {
            states,
            limit,
            json,
        } => {
            let store = open_for_reading(config)?;
            // Clap let only the store's own names through.
            let states: Vec<outbox::State> = states
                .iter()
                .filter_map(|s| outbox::State::parse(s))
                .collect();
            let rows = store.call_blocking(|c| outbox::list(c, &states, limit))?;
            show(json, rows.as_slice(), render::outbox)
        }
        OutboxCommand::Retry { id, force } => {
            let store = open_for_writing(config)?;
            store
                .call_blocking(|c| {
                    let current = outbox::get(c, id)?;
                    if let Some(refused) = current.and_then(|a| needs_force(&a, force)) {
                        return Ok(Err(refused));
                    }
                    Ok(outbox::retry(c, id, now)?.map_err(|e| e.to_string()))
                })?
                .map_err(AppError::Refused)?;
            Ok(Printed::ok(format!(
                "action {id} will be sent at the next cycle\n"
            )))
        }
        OutboxCommand::Drop { id } => {
            let store = open_for_writing(config)?;
            store
                .call_blocking(|c| outbox::drop_action(c, id, now))?
                .map_err(|e| AppError::Refused(e.to_string()))?;
            Ok(Printed::ok(format!("action {id} dropped\n")))
        }
    }
}

/// A quarantined lead create may already have made its lead: sending it again may make a
/// second one, so it takes `--force` (after checking Google), or `link` for the lead found.
fn needs_force(action: &outbox::OutboxRow, force: bool) -> Option<String> {
    (action.state == outbox::State::Quarantined && action.kind == outbox::CREATE_LEAD && !force).then(|| {
        format!(
            "action {} is a quarantined lead create: its first attempt may have reached Google, and sending it again may create a second lead for referral {}. Look for the lead in Google first: if it exists, `cosell-sync link {} partners/…/leads/…`; if it does not, `cosell-sync outbox retry {} --force`",
            action.id, action.referral_id, action.referral_id, action.id
        )
    })
}

/// `link REFERRAL_ID RESOURCE`.
pub(crate) async fn link(config: Config, referral_id: &str, resource: &str) -> Outcome {
    let app = App::build(config)?;
    let message = super::link::link(&app, referral_id, resource).await?;
    Ok(Printed::ok(message + "\n"))
}

/// `auth check`: a token from each cloud and one read from AWS, nothing else. The database
/// is not opened. Entra answers every refresh-token grant with a new refresh token and may
/// retire the one redeemed, so a check cannot avoid rotating it; dropping the new token could
/// leave the daemon with a retired one. The new token is kept in the token file, as the daemon
/// keeps it, and the output says so.
pub(crate) async fn auth_check(config: &Config) -> Outcome {
    let mut out = String::new();
    let mut failed = false;
    match config.microsoft_enabled() {
        true => failed |= microsoft_token(config, &mut out).await?,
        false => out.push_str("skip    microsoft: [microsoft] is not configured\n"),
    }
    match google_token(config).await {
        None => out.push_str("skip    google: [google] partner_id is not set\n"),
        Some(Ok(())) => out
            .push_str("ok      google: a service-account token for cloudcrmpartners was granted\n"),
        Some(Err(e)) => {
            failed = true;
            out.push_str(&format!("FAILED  google: {e}\n"));
        }
    }
    if let Some(aws) = &config.aws {
        let (line, aws_failed) = super::aws_auth::check(aws).await;
        out.push_str(&line);
        failed |= aws_failed;
    }
    Ok(Printed {
        stdout: out,
        code: if failed { exit::CYCLE_FAILED } else { exit::OK },
    })
}

/// `auth check`'s Microsoft line: a token grant (and the rotated token kept); whether it failed.
async fn microsoft_token(config: &Config, out: &mut String) -> Result<bool, AppError> {
    let ms = &config.microsoft;
    let token_file = config.token_file();
    let before = std::fs::read_to_string(&token_file).ok();
    let http = crate::http::client(ms.timeout.0, ms.connect_timeout.0);
    let tokens =
        TokenSource::from_config(http, config).map_err(|e| AppError::Config(e.to_string()))?;
    match tokens.access_token().await {
        Ok(_) => {
            out.push_str("ok      microsoft: a token for the Referrals API was granted\n");
            if std::fs::read_to_string(&token_file).ok() != before {
                out.push_str(&format!(
                    "        Entra rotated the refresh token; the new one is stored in {} (the daemon uses it from now on)\n",
                    token_file.display()
                ));
            }
            Ok(false)
        }
        Err(e) => {
            out.push_str(&format!("FAILED  microsoft: {e}\n"));
            Ok(true)
        }
    }
}

/// Why `auth check` got no Google token.
#[derive(Debug, thiserror::Error)]
enum GoogleTokenError {
    #[error("google.credentials_file is missing")]
    NoKeyFile,
    #[error("google.credentials_file: {0}")]
    Key(crate::google::auth::KeyError),
    #[error("{0}")]
    Token(crate::http::ApiError),
}

async fn google_token(config: &Config) -> Option<Result<(), GoogleTokenError>> {
    if !config.google_enabled() {
        return None;
    }
    let Some(key) = config.google.credentials_file.as_ref() else {
        return Some(Err(GoogleTokenError::NoKeyFile));
    };
    let result = match GoogleAuth::from_key_file(key) {
        Ok(auth) => auth
            .token()
            .await
            .map(|_| ())
            .map_err(GoogleTokenError::Token),
        Err(e) => Err(GoogleTokenError::Key(e)),
    };
    Some(result)
}

/// `auth microsoft`: the device-code sign-in; `show` prints the instructions as they come.
pub(crate) async fn auth_microsoft(config: &Config, show: impl Fn(&str)) -> Outcome {
    if !config.microsoft_enabled() {
        return Err(AppError::Config(
            "auth microsoft: [microsoft] is not configured, so Microsoft is off (an AWS-only set-up needs no Microsoft sign-in); add [microsoft] with tenant and client_id to co-sell with Microsoft too".into(),
        ));
    }
    let ms = &config.microsoft;
    let http = crate::http::client(ms.timeout.0, ms.connect_timeout.0);
    let token_file = config.token_file();
    crate::microsoft::auth::device_code_flow(
        &http,
        &ms.authority,
        ms.tenant.as_deref().unwrap_or_default(),
        ms.client_id.as_deref().unwrap_or_default(),
        ms.client_secret.as_ref(),
        &token_file,
        show,
    )
    .await
    .map_err(|e| AppError::Refused(format!("auth microsoft: {e}")))?;
    Ok(Printed::ok(format!(
        "Signed in. The refresh token is stored in {} (mode 0600); the daemon rotates it from now on.\n",
        token_file.display()
    )))
}

/// `restore BACKUP`: the backup installed at `[state] path`, owned as the service needs.
pub(crate) fn restore(config: &Config, backup: &Path) -> Outcome {
    use crate::store::restore::RestoreError;
    match crate::store::restore::restore(backup, &config.state.path) {
        Ok(report) => Ok(Printed::ok(render::restored(backup, &report))),
        Err(e @ RestoreError::Running { .. }) => Err(AppError::Busy(e.to_string())),
        Err(e) => Err(AppError::Refused(e.to_string())),
    }
}

/// `backup PATH`: a consistent copy of the database (SQLite's online backup), safe while the
/// daemon runs.
pub(crate) fn backup(config: &Config, path: &Path) -> Outcome {
    let db = &config.state.path;
    let dest = crate::store::backup::destination(db, path, chrono::Utc::now())
        .map_err(|e| AppError::Usage(e.to_string()))?;
    let report = crate::store::backup::backup(db, &dest)?;
    Ok(Printed::ok(render::backup(&report.path, &report)))
}

/// `sync [--dry-run]`: one full cycle with its alerts, then a one-line summary.
pub(crate) async fn sync(config: Config, all: bool) -> Outcome {
    let mut app = App::build(config)?;
    app.become_worker()?;
    let cycle = match all {
        true => app.sync_all().await,
        false => app.sync_once().await,
    };
    match &cycle.report.error {
        None => Ok(Printed::ok(render::cycle(&cycle.report, &cycle.alerts))),
        Some(e) => Err(AppError::Refused(format!("cycle failed: {e}"))),
    }
}

/// `check-config` and `run`: a secret or key file that other users can read is named with its
/// key (a warning: the service still starts; the file's owner decides).
fn warn_open_secrets(config: &Config, file: &Path) {
    if let Some(mode) = crate::files::readable_by_others(file) {
        for key in config.inline_secrets() {
            tracing::warn!(
                key,
                path = %file.display(),
                "{key}: {} is readable by other users (mode {mode:03o}) and holds this secret inline: move it to {key}_file (a relative path is read from credentials/ beside the config, or systemd's $CREDENTIALS_DIRECTORY), or `chmod 600` the config",
                file.display()
            );
        }
    }
    let base = file.parent().unwrap_or(Path::new("."));
    for (key, path) in config.secret_files(base) {
        if let Some(mode) = crate::files::readable_by_others(&path) {
            tracing::warn!(
                key,
                path = %path.display(),
                "{key}: {} is readable by other users (mode {mode:03o}); it holds a secret: `chmod 600` it",
                path.display()
            );
        }
    }
}

/// `run [--dry-run]`: the daemon, until SIGTERM or SIGINT.
pub(crate) async fn run(config: Config, file: &Path, force_dry_run: bool) -> Outcome {
    warn_open_secrets(&config, file);
    let mut app = App::build(config)?;
    app.become_worker()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    scheduler::cancel_on_signals(shutdown.clone())
        .map_err(|e| AppError::Refused(format!("cannot install signal handlers: {e}")))?;
    let health = Arc::new(crate::health::Health::default());
    health.set_google_enabled(app.config.google_enabled());
    // The action page (bound here, before start-up) rings the executor's doorbell for
    // answers (`app.cycle.send.answers`); the deadline lane has its own.
    let webhook_events = listen(&app, &health, &shutdown).await?;
    let wake = crate::wake::DeadlineWake::new();
    let reload = scheduler::Reload {
        config_file: file.to_path_buf(),
        force_dry_run,
    };
    scheduler::run(app, shutdown, reload, health, webhook_events, wake)
        .await
        .map_err(|e| match e.downcast::<crate::store::StoreError>() {
            Ok(store) => AppError::Store(store),
            Err(e) => AppError::Refused(format!("daemon stopped: {e:#}")),
        })?;
    Ok(Printed::ok(""))
}

/// Binds every listener of `run` (metrics, webhook, action page) on the one server layer and
/// starts serving, before any token is asked for: an address in use or a privileged port is a
/// configuration error (exit 78), not a crash after a refresh-token grant. The action page
/// shares the receiver's socket when `[actions] listen` equals `[webhook] listen`. Returns the
/// webhook's accepted events, for the forwarder the scheduler starts.
async fn listen(
    app: &App,
    health: &Arc<crate::health::Health>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Option<crate::webhook::Events>, AppError> {
    // The fd limit is the unit's LimitNOFILE (setrlimit is outside its system-call filter).
    let limits = crate::serve::Limits::daemon();
    tracing::debug!(
        nofile = crate::serve::fd_limit(),
        max_connections = limits.max_connections,
        "HTTP connection cap"
    );
    let mut listeners = crate::serve::Listeners::new(limits);
    let config = &app.config;
    if let Some(listen) = &config.metrics.listen {
        let router = crate::health::router(health.clone(), app.store.clone(), config);
        listeners.mount("metrics.listen", listen, router);
    }
    let mut events = None;
    if let Some(webhook) = &config.webhook {
        let (router, rx) = crate::webhook::receiver_router(webhook, app.store.clone())
            .map_err(|e| AppError::Config(e.to_string()))?;
        listeners.mount("webhook.listen", &webhook.listen, router);
        events = Some(rx);
    }
    if let Some(settings) = app.page_settings() {
        let listen = settings.config.listen.clone();
        let answers = app.cycle.send.answers.clone();
        // The inbox's static routes beside the page's `{token}` route (axum prefers them).
        let inbox =
            crate::actions::inbox::router(settings.clone(), app.store.clone(), answers.clone())
                .map_err(|e| AppError::Config(format!("actions.proxy_secret_file: {e}")))?;
        let router =
            crate::actions::page::router(settings, app.store.clone(), answers).merge(inbox);
        listeners.mount("actions.listen", &listen, router);
    }
    let bound = listeners
        .bind()
        .await
        .map_err(|e| AppError::Config(e.to_string()))?;
    if let Some(addr) = bound.addr("metrics.listen") {
        crate::health::listening(addr, config);
    }
    if let (Some(addr), Some(webhook)) = (bound.addr("webhook.listen"), &config.webhook) {
        crate::webhook::receiver::listening(webhook, addr);
    }
    if let Some(addr) = bound.addr("actions.listen") {
        tracing::info!(%addr, "action page listening");
    }
    bound.serve(shutdown.clone());
    Ok(events)
}

/// `accept REFERRAL_ID [--note] [--dry-run]`: status Active / Accepted in Partner Center.
pub(crate) async fn accept(
    config: Config,
    referral_id: &str,
    note: Option<String>,
    dry_run: bool,
) -> Outcome {
    let decision = crate::sync::answer::Decision::Accept;
    super::answer::run(config, referral_id, decision, note, dry_run).await
}

/// `decline REFERRAL_ID --reason TEXT [--note] [--dry-run]`: Closed / Declined, the reason
/// as `statusReason`.
pub(crate) async fn decline(
    config: Config,
    referral_id: &str,
    reason: String,
    note: Option<String>,
    dry_run: bool,
) -> Outcome {
    let decision = crate::sync::answer::Decision::Decline { reason };
    super::answer::run(config, referral_id, decision, note, dry_run).await
}

/// `demo`: the simulator story (printed as it goes).
pub async fn demo(referrals: usize) -> Outcome {
    super::demo::run(referrals)
        .await
        .map_err(|e| AppError::Refused(format!("demo failed: {e:#}")))?;
    Ok(Printed::ok(""))
}

/// `cosell-sync webhook register | show | test | unregister`: one subcommand on the
/// registration client ([`crate::webhook::registration`]); the text is [`render`]'s.
pub async fn webhook(config: &Config, action: crate::cli::WebhookCommand) -> Outcome {
    use crate::cli::WebhookCommand;
    use crate::webhook::registration::{self, RegistrationClient, TestOutcome};
    let webhook = config.webhook.as_ref().ok_or_else(|| {
        AppError::Config(
            "webhook: the [webhook] section is missing (listen, public_url); see config.example.toml"
                .into(),
        )
    })?;
    let client =
        RegistrationClient::from_config(config).map_err(|e| AppError::Config(e.to_string()))?;
    let refused = |e: &dyn std::fmt::Display| AppError::Refused(e.to_string());
    let text = match action {
        WebhookCommand::Register => {
            let r = client.register(webhook).await.map_err(|e| refused(&e))?;
            render::webhook_registered(&r, &webhook.public_url)
        }
        WebhookCommand::Show => {
            let r = client.show().await.map_err(|e| refused(&e))?;
            render::webhook_registration(r.as_ref(), &webhook.public_url)
        }
        WebhookCommand::Unregister => {
            client.unregister().await.map_err(|e| refused(&e))?;
            "registration removed; referrals still arrive by polling\n".into()
        }
        WebhookCommand::Test { wait } => {
            let wait_for = std::time::Duration::from_secs(wait);
            match registration::test(config, &client, wait_for).await.map_err(|e| refused(&e))? {
                TestOutcome::Verified { via_temporary_receiver } => {
                    render::webhook_test_verified(via_temporary_receiver)
                }
                TestOutcome::Rejected => return Err(refused(&"an event arrived but failed verification (see the log: certificate_url_prefixes, ca_file, certificate_subject)")),
                TestOutcome::Missing => return Err(refused(&format!(
                    "no event arrived within {wait}s: check the registration (webhook show), the reverse proxy and the firewall for {}",
                    webhook.public_url
                ))),
            }
        }
    };
    Ok(Printed::ok(text))
}

/// `sim --listen ADDR`: the simulator as a process of its own, until SIGTERM or SIGINT.
pub async fn sim(options: crate::sim::standalone::Options) -> Outcome {
    let stop = tokio_util::sync::CancellationToken::new();
    scheduler::cancel_on_signals(stop.clone())
        .map_err(|e| AppError::Refused(format!("cannot install signal handlers: {e}")))?;
    let bye = crate::sim::standalone::serve(&options, stop)
        .await
        .map_err(|e| AppError::Refused(format!("sim: {e:#}")))?;
    Ok(Printed::ok(bye))
}

/// `reload --pid PID`: SIGHUP, then the daemon's answer; 1 when it refused the new config.
pub fn reload(config: &Config, pid: i32, wait_secs: u64) -> Outcome {
    let answer = crate::reload::request(
        &config.state.path,
        pid,
        std::time::Duration::from_secs(wait_secs),
    )
    .map_err(|e| AppError::Refused(e.to_string()))?;
    match answer {
        crate::reload::ReloadReply::Reloaded => Ok(Printed::ok("configuration reloaded\n")),
        crate::reload::ReloadReply::Refused(why) => Err(AppError::Refused(format!(
            "reload refused; the daemon keeps its running configuration:\n{why}"
        ))),
    }
}

/// `health`: the daemon's own `/healthz` verdict (failing cycles, a stuck lane, a replaced
/// database) as an exit code, so a container's HEALTHCHECK needs no curl. A wildcard listen
/// address (`0.0.0.0:9464` in a container) is probed on the loopback of its family.
pub async fn health(config: &Config, file: &Path, timeout_secs: u64) -> Outcome {
    let invalid = |message: String| AppError::InvalidConfig {
        file: file.to_path_buf(),
        errors: crate::config::ConfigError::new("metrics.listen", message).into(),
    };
    let Some(listen) = config.metrics.listen.as_deref() else {
        return Err(invalid(
            "is not set: the probe asks the daemon's /healthz there (e.g. listen = \"127.0.0.1:9464\")".into(),
        ));
    };
    let url = healthz_url(listen).ok_or_else(|| invalid(format!("{listen:?} is not host:port")))?;
    let timeout = std::time::Duration::from_secs(timeout_secs.max(1));
    let client = crate::http::client_builder()
        .timeout(timeout)
        // The daemon is local: an HTTP(S)_PROXY in the environment must not take the probe.
        .no_proxy()
        .build()
        .map_err(|e| AppError::Refused(format!("cannot build an HTTP client: {e}")))?;
    let response = client.get(&url).send().await.map_err(|e| {
        AppError::Refused(format!(
            "unhealthy: no answer from {url} within {} s ({e}); is the daemon running?",
            timeout.as_secs()
        ))
    })?;
    let code = response.status();
    let body = response.text().await.unwrap_or_default();
    let body = body.trim();
    if code.is_success() {
        Ok(Printed::ok(format!(
            "healthy: {url} answered {code}: {body}\n"
        )))
    } else {
        Err(AppError::Refused(format!(
            "unhealthy: {url} answered {code}: {body}"
        )))
    }
}

/// The URL `health` asks for `[metrics] listen`: a wildcard address (`0.0.0.0:9464` in a
/// container) is asked on the loopback of its family, where the daemon also answers.
fn healthz_url(listen: &str) -> Option<String> {
    let mut addr: std::net::SocketAddr = listen.parse().ok()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Some(format!("http://{addr}/healthz"))
}

/// Runs one command with its loaded configuration: the one `match` from a command to its
/// function, shared by `main` and the tests' in-process driver. `demo`, `sim`, `man` and
/// `completions` need no configuration and never reach it.
pub async fn dispatch(
    command: crate::cli::Command,
    config: Config,
    file: &Path,
    dry_run: bool,
    answer_dry_run: bool,
) -> Outcome {
    use crate::cli::{AlertsCommand, AuthCommand, Command};
    let file = file.to_path_buf();
    match command {
        Command::CheckConfig => check_config(&config, &file),
        Command::Rules {
            action: crate::cli::RulesCommand::Test { json },
        } => rules_test(&config, json),
        Command::Status {
            json,
            limit,
            referral,
        } => status(&config, json, limit, referral.as_deref()),
        Command::Link {
            referral_id,
            google_resource_name,
        } => link(config, &referral_id, &google_resource_name).await,
        Command::Alerts { action } => match action {
            AlertsCommand::Test => alerts_test(&config).await,
            AlertsCommand::List {
                pending,
                limit,
                json,
            } => alerts_list(&config, pending, limit, json),
        },
        Command::Auth { action } => match action {
            AuthCommand::Microsoft => auth_microsoft(&config, |m| println!("{m}")).await,
            AuthCommand::Check => auth_check(&config).await,
        },
        Command::Audit {
            referral,
            since,
            limit,
            json,
        } => audit(&config, referral.as_deref(), since, limit, json),
        Command::Outbox { action } => outbox(&config, action),
        Command::Accept {
            referral_id, note, ..
        } => accept(config, &referral_id, note, answer_dry_run).await,
        Command::Decline {
            referral_id,
            reason,
            note,
            ..
        } => decline(config, &referral_id, reason, note, answer_dry_run).await,
        Command::Sync { all, .. } => sync(config, all).await,
        Command::Backup { path } => backup(&config, &path),
        Command::Restore { backup } => restore(&config, &backup),
        Command::Reload { pid, wait } => reload(&config, pid, wait),
        Command::Health { timeout } => health(&config, &file, timeout).await,
        Command::Run { .. } => run(config, &file, dry_run).await,
        Command::Demo { .. } | Command::Sim { .. } => unreachable!("handled before the config"),
        Command::Man | Command::Completions { .. } => unreachable!("handled in main"),
        Command::Webhook { action } => webhook(&config, action).await,
    }
}

#[cfg(test)]
mod health_tests {
    #[test]
    fn wildcards_are_probed_on_the_loopback() {
        use super::healthz_url as url;
        assert_eq!(
            url("0.0.0.0:9464").unwrap(),
            "http://127.0.0.1:9464/healthz"
        );
        assert_eq!(url("[::]:9464").unwrap(), "http://[::1]:9464/healthz");
        assert_eq!(url("127.0.0.1:1").unwrap(), "http://127.0.0.1:1/healthz");
        assert_eq!(url("localhost:9464"), None);
    }
}
