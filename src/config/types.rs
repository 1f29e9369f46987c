//! The configuration's types: one struct per TOML section, with its compiled-in defaults.

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::routes::Severity;
use super::secrets::{redact, redact_headers, redact_url};
use super::{HumanDuration, PartnerWebhookConfig};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub state: StateConfig,
    pub schedule: ScheduleConfig,
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub microsoft: MicrosoftConfig,
    pub google: GoogleConfig,
    pub sync: SyncConfig,
    pub refresh: RefreshConfig,
    pub forward: ForwardConfig,
    pub alerts: AlertsConfig,
    pub metrics: MetricsConfig,
    /// Partner Center webhooks; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<PartnerWebhookConfig>,
    /// Links in expiry alerts to a page that answers the referral; off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actions: Option<super::ActionsConfig>,
    /// AWS Partner Central engagement invitations (spec §8); off when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aws: Option<super::AwsConfig>,
    /// Triage rules: preview (`dry-run`) or answers (`apply`), and the hourly cap (spec §7).
    pub triage: super::TriageConfig,
    /// Ordered triage rules: the first whose conditions all hold decides (spec §7).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<super::RuleConfig>,
    /// Which optional sections the file or the environment named, set by loading (the
    /// structs above cannot tell a section left out from one with every key at its default).
    #[serde(skip)]
    pub(crate) named: NamedSections,
}

/// The sections whose mere presence decides something (spec §8): `[microsoft]` is on when it
/// is in the file or the environment (`COSELL_MICROSOFT__*`). The default is Microsoft on,
/// as every configuration was before `[aws]`: a `Config` built in code keeps it.
#[derive(Debug, Clone, Default)]
pub(crate) struct NamedSections {
    /// Neither the file nor the environment has `[microsoft]`.
    pub(crate) no_microsoft: bool,
    /// The secrets written inline in the configuration file itself (not the environment,
    /// not a `_file`): a file others can read must not hold them (spec §8).
    pub(crate) inline_secrets: Vec<&'static str>,
}

/// Prometheus metrics and `/healthz` over HTTP, for `run` only.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `host:port` to serve `/metrics` and `/healthz` on, e.g. "127.0.0.1:9464"; off when unset.
    pub listen: Option<String>,
    /// A non-loopback `listen` is warned about at start unless this says it is on purpose
    /// (a firewall or network policy guards the port).
    pub allow_remote: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// The SQLite database. The rotated Microsoft refresh token is kept beside it.
    pub path: PathBuf,
    /// How long finished history is kept: cycle runs, processed webhook events, finished
    /// outbox rows, delivered alerts, rejected records (never what a live referral needs).
    pub retention: HumanDuration,
    /// How long the audit log of remote writes is kept (longer: it answers "who changed
    /// this, when" for a deal's whole life).
    pub audit_retention: HumanDuration,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("/var/lib/cosell-sync/state.db"),
            retention: HumanDuration::secs(90 * 86_400),
            audit_retention: HumanDuration::secs(400 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// 6-field cron, seconds first, UTC: when the deadline lane ticks (Microsoft pull →
    /// expiry alerts → plan → lead creates and write-backs → alert delivery).
    pub sync: String,
    /// Between reads of the changes to referrals already known (the incremental query:
    /// accepted or declined in the portal, values edited). `run` reads them in the background,
    /// at low priority, so they never hold a new referral back; `sync` reads them every time.
    pub(crate) changes_every: HumanDuration,
    /// Between full plans of every candidate referral, a safety net beside the plan queue
    /// (the deadline lane plans only referrals whose inputs changed). Runs in the refresh lane.
    pub(crate) full_plan_every: HumanDuration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            sync: "0 */5 * * * *".into(),
            changes_every: HumanDuration::secs(60),
            full_plan_every: HumanDuration::secs(3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// How long a running cycle may go on after SIGTERM before the process exits anyway.
    /// Keep it below systemd's `TimeoutStopSec`.
    pub shutdown_grace: HumanDuration,
    /// Run a cycle as soon as `run` starts instead of waiting for the first cron tick.
    pub sync_on_start: bool,
    /// Plan and log every remote write without sending it, on a throw-away copy of the
    /// database, so the next real run finds everything as it was (`--dry-run` sets it too).
    pub dry_run: bool,
    /// A cycle running longer than this counts as stuck: the systemd watchdog is no longer
    /// fed (systemd restarts the daemon) and `/healthz` answers 503.
    pub(crate) stuck_after: HumanDuration,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            shutdown_grace: HumanDuration::secs(30),
            sync_on_start: true,
            dry_run: false,
            stuck_after: HumanDuration::secs(3600),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
    /// For systemd's journal: `<N>` priority prefixes, no timestamps or colours.
    Journald,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `cosell_sync=debug,info`); `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Retry settings shared by both APIs' `[*.retry]` tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RetryConfig {
    pub(crate) max_retries: usize,
    pub(crate) min_delay: HumanDuration,
    pub(crate) max_delay: HumanDuration,
    pub(crate) max_total: HumanDuration,
    pub(crate) max_retry_after: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        // The single source of the retry defaults; `http::RetryPolicy::default` reads them.
        RetryConfig {
            max_retries: 5,
            min_delay: HumanDuration(std::time::Duration::from_millis(500)),
            max_delay: HumanDuration::secs(30),
            max_total: HumanDuration::secs(120),
            max_retry_after: HumanDuration::secs(120),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MicrosoftConfig {
    pub api_base: String,
    /// Token endpoint: `{authority}/{tenant}/oauth2/v2.0/token`.
    pub authority: String,
    pub tenant: Option<String>,
    pub(crate) client_id: Option<String>,
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    pub(crate) client_secret_file: Option<PathBuf>,
    /// Only the first token: every grant returns a new one, kept in the token file.
    #[serde(serialize_with = "redact")]
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) refresh_token_file: Option<PathBuf>,
    pub(crate) requests_per_second: f64,
    /// `$top` of list queries; Partner Center serves at most 100 per page.
    pub(crate) page_size: u32,
    pub(crate) timeout: HumanDuration,
    pub(crate) connect_timeout: HumanDuration,
    /// The incremental query re-reads this much before the watermark, so nothing slips between
    /// pages or clocks.
    pub(crate) incremental_overlap: HumanDuration,
    /// On the very first cycle the incremental query starts this far back.
    pub(crate) initial_lookback: HumanDuration,
    pub(crate) retry: RetryConfig,
}

impl Default for MicrosoftConfig {
    fn default() -> Self {
        MicrosoftConfig {
            api_base: "https://api.partner.microsoft.com".into(),
            authority: "https://login.microsoftonline.com".into(),
            tenant: None,
            client_id: None,
            client_secret: None,
            client_secret_file: None,
            refresh_token: None,
            refresh_token_file: None,
            requests_per_second: 5.0,
            page_size: 100,
            timeout: HumanDuration::secs(60),
            connect_timeout: HumanDuration::secs(10),
            incremental_overlap: HumanDuration::secs(10 * 60),
            initial_lookback: HumanDuration::secs(30 * 86_400),
            retry: RetryConfig::default(),
        }
    }
}

/// The Google side (Cloud CRM Partners), with its own timeouts and retry settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GoogleConfig {
    pub api_base: String,
    pub(crate) partner_id: Option<String>,
    pub(crate) credentials_file: Option<PathBuf>,
    pub(crate) requests_per_second: f64,
    /// Whole-request timeout of one Google call.
    pub(crate) timeout: HumanDuration,
    pub(crate) connect_timeout: HumanDuration,
    /// In-call retries of idempotent Google calls (gets, opportunity patches); never creates.
    pub(crate) retry: RetryConfig,
    pub(crate) lead: GoogleLeadConfig,
}

impl Default for GoogleConfig {
    fn default() -> Self {
        GoogleConfig {
            api_base: "https://cloudcrmpartners.googleapis.com".into(),
            partner_id: None,
            credentials_file: None,
            requests_per_second: 5.0,
            timeout: HumanDuration::secs(30),
            connect_timeout: HumanDuration::secs(10),
            retry: RetryConfig::default(),
            lead: GoogleLeadConfig::default(),
        }
    }
}

/// The refresh lane: when tracked Google records are read again (see `sync::refresh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    /// Google reads the refresh lane may make in any hour (at most a twelfth of it in any
    /// five minutes). The default, 3600, is one read a second on average: a fifth of the
    /// default 5 requests/s quota, the rest left to lead creates and patches.
    pub reads_per_hour: u64,
    /// A record that changed (or was just tracked) is read again this soon.
    pub(crate) min_interval: HumanDuration,
    /// The longest wait between reads of a record that matters now: an opportunity in play
    /// (not in a final stage), a lead whose referral is near its deadline.
    pub(crate) hot_max_interval: HumanDuration,
    /// The longest wait between reads of any other tracked record.
    pub(crate) max_interval: HumanDuration,
    /// A referral still New this close to its deadline makes its lead "hot".
    pub(crate) near_deadline: HumanDuration,
    /// Reads in flight at once.
    pub(crate) concurrency: usize,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            reads_per_hour: 3600,
            min_interval: HumanDuration::secs(300),
            hot_max_interval: HumanDuration::secs(1800),
            max_interval: HumanDuration::secs(6 * 3600),
            near_deadline: HumanDuration::secs(72 * 3600),
            concurrency: 2,
        }
    }
}

/// Values for the lead fields a referral cannot supply (every field the API marks Required
/// must be sent; enum values must be real ones, never `*_UNSPECIFIED`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct GoogleLeadConfig {
    pub(crate) submitter_email: Option<String>,
    pub(crate) engagement_model: String,
    pub(crate) deal_transaction_type: String,
    pub(crate) support_level: String,
    /// Deal term (a string in the API, e.g. months).
    pub(crate) deal_term: String,
    pub(crate) delivery_model: String,
    pub(crate) contract_vehicle: String,
    pub(crate) isv_solution_connect_deal: bool,
    pub(crate) is_confidential: Option<bool>,
    /// The Google `ProductFamily` when no entry of `product_families` matches the referral.
    pub(crate) product_family: Option<String>,
    /// Microsoft product or solution id (`details.requirements.products[].id`,
    /// `solutions[].id`) → Google `ProductFamily`. The first match wins.
    pub(crate) product_families: std::collections::BTreeMap<String, String>,
    /// Used when the referral has no currency.
    pub(crate) default_currency: Option<String>,
    /// Used when the referral has no deal value.
    pub(crate) default_deal_value: Option<f64>,
    /// When the referral has no closing date: today plus this.
    pub(crate) default_close_in: Option<HumanDuration>,
    /// The field of the Google `Customer` object that carries the customer's name. The
    /// Customer schema is not in the published pages ([?] in the API reference), so it is a
    /// setting rather than a guess baked into the code.
    pub(crate) customer_name_field: String,
}

impl Default for GoogleLeadConfig {
    fn default() -> Self {
        GoogleLeadConfig {
            submitter_email: None,
            engagement_model: "ENGAGEMENT_MODEL_SERVICE".into(),
            deal_transaction_type: "DEAL_TRANSACTION_TYPE_DEAL_SUBMISSION".into(),
            support_level: "SUPPORT_LEVEL_TECHNICAL_SUPPORT".into(),
            deal_term: "12".into(),
            delivery_model: "DELIVERY_MODEL_OTHER".into(),
            contract_vehicle: "CONTRACT_VEHICLE_NOT_KNOWN_AT_THIS_TIME".into(),
            isv_solution_connect_deal: false,
            is_confidential: None,
            product_family: None,
            product_families: Default::default(),
            default_currency: None,
            default_deal_value: None,
            default_close_in: None,
            customer_name_field: "organizationName".into(),
        }
    }
}

/// Who wins when both sides changed a field to different values since the last sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConflictPolicy {
    Microsoft,
    Google,
    /// Write nothing; record the conflict and alert.
    Manual,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    pub conflict: ConflictPolicy,
    /// Google opportunity stages that close the referral as Closed/Lost.
    pub lost_stages: Vec<String>,
    /// Google opportunity stages that close the referral as Closed/Won (none by default: the
    /// published SalesStage values have no won stage).
    pub won_stages: Vec<String>,
    /// Move a linked open opportunity to SALES_STAGE_CLOSED_LOST when Microsoft closes the
    /// referral as Declined, Lost or Expired.
    pub close_google_on_microsoft_close: bool,
    /// Remote writes and Google reads in flight at once.
    pub(crate) concurrency: usize,
    /// Attempts before a failing write is dead-lettered.
    pub(crate) max_attempts: u32,
    /// The outbox's retry schedule: exponential from `retry_min` to `retry_max`, jittered.
    pub(crate) retry_min: HumanDuration,
    pub(crate) retry_max: HumanDuration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            conflict: ConflictPolicy::Manual,
            lost_stages: vec!["SALES_STAGE_CLOSED_LOST".into()],
            won_stages: Vec::new(),
            close_google_on_microsoft_close: true,
            concurrency: 4,
            max_attempts: 8,
            retry_min: HumanDuration::secs(30),
            retry_max: HumanDuration::secs(3600),
        }
    }
}

/// Which incoming referrals become Google leads (default: every incoming Pending one).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    pub enabled: bool,
    pub(crate) substatuses: Vec<String>,
    /// Empty = any qualification.
    pub(crate) qualifications: Vec<String>,
    /// ISO country codes of the customer; empty = any.
    pub(crate) countries: Vec<String>,
    pub(crate) min_deal_value: f64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            enabled: true,
            substatuses: vec!["Pending".into()],
            qualifications: Vec::new(),
            countries: Vec::new(),
            min_deal_value: 0.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// How long Microsoft waits for an answer when a referral has no `expirationDateTime`.
    pub response_window: HumanDuration,
    /// Warn when this little time is left before the deadline (one alert per threshold).
    pub thresholds: Vec<HumanDuration>,
    /// Cycles failing in a row before `sync_unhealthy` (an authentication failure is at once).
    pub(crate) failed_cycles: u32,
    /// Link to a referral in Partner Center; `{id}` is replaced by the referral id.
    pub(crate) referral_url: String,
    /// Delivery tries per sink and alert within one cycle; what is left is retried next cycle.
    pub(crate) delivery_attempts: usize,
    /// The deadline in alert texts (the log and command sinks): `UTC`, an IANA zone name
    /// (`Europe/Berlin`, daylight saving followed) or a fixed offset `+01:00`.
    /// Slack and Teams show each reader's own local time whatever this says.
    pub timezone: String,
    pub(crate) webhook: Vec<WebhookConfig>,
    pub(crate) command: Vec<CommandConfig>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            response_window: HumanDuration::secs(14 * 86_400),
            thresholds: vec![
                HumanDuration::secs(72 * 3600),
                HumanDuration::secs(24 * 3600),
                HumanDuration::secs(4 * 3600),
            ],
            failed_cycles: 3,
            referral_url: "https://partner.microsoft.com/dashboard/referrals/v2/leads/{id}/details"
                .into(),
            delivery_attempts: 3,
            timezone: "UTC".into(),
            webhook: Vec::new(),
            command: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum AlertFormat {
    Json,
    Slack,
    Teams,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookConfig {
    /// The path of a Slack or Teams webhook URL is its key: printed only as
    /// [`redacted_url`], never stored (deliveries are keyed by [`WebhookConfig::sink_key`]).
    #[serde(serialize_with = "redact_url")]
    pub(crate) url: String,
    /// What deliveries are recorded and shown under; default: the host and a hash of the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) name: Option<String>,
    #[serde(default = "default_format")]
    pub(crate) format: AlertFormat,
    /// Extra request headers, e.g. for authentication.
    #[serde(default, serialize_with = "redact_headers")]
    pub(crate) headers: std::collections::BTreeMap<String, SecretString>,
    #[serde(default = "default_sink_timeout")]
    pub(crate) timeout: HumanDuration,
    /// Routing (spec §4): only these alert kinds; absent or empty = all.
    #[serde(default)]
    pub(crate) kinds: Vec<String>,
    /// Routing: only alerts at least this severe.
    #[serde(default)]
    pub(crate) min_severity: Severity,
    /// Routing: `referral_expiring` only at these thresholds (each one of `[alerts]
    /// thresholds`); absent or empty = all. Other kinds are unaffected.
    #[serde(default)]
    pub(crate) thresholds: Vec<HumanDuration>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandConfig {
    /// The program and its arguments; the JSON alert arrives on stdin.
    pub(crate) argv: Vec<String>,
    #[serde(default = "default_sink_timeout")]
    pub(crate) timeout: HumanDuration,
    /// Routing (spec §4): only these alert kinds; absent or empty = all.
    #[serde(default)]
    pub(crate) kinds: Vec<String>,
    /// Routing: only alerts at least this severe.
    #[serde(default)]
    pub(crate) min_severity: Severity,
    /// Routing: `referral_expiring` only at these thresholds (each one of `[alerts]
    /// thresholds`); absent or empty = all. Other kinds are unaffected.
    #[serde(default)]
    pub(crate) thresholds: Vec<HumanDuration>,
}

fn default_format() -> AlertFormat {
    AlertFormat::Json
}

fn default_sink_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}
