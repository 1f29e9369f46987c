//! Configuration: compiled-in defaults, then the TOML file, then `COSELL_SECTION__KEY` env
//! variables (figment); secrets inline or from `_file` paths (relative ones in systemd's
//! `$CREDENTIALS_DIRECTORY`); validation whose every message names the offending key; and the
//! redacted view `check-config` prints.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::http::RetryPolicy;

/// Where the configuration file is looked for when neither `--config` nor `COSELL_CONFIG` say.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cosell-sync/config.toml";
/// Prefix of environment overrides: `COSELL_MICROSOFT__TENANT` sets `microsoft.tenant`.
pub const ENV_PREFIX: &str = "COSELL_";
/// Name of the rotated Microsoft refresh-token file, kept beside the database (never in it).
pub const TOKEN_FILE_NAME: &str = "microsoft-refresh-token";

/// A configuration problem, always tied to the key that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
    fn missing(key: &str) -> Self {
        ConfigError::new(key, "is missing")
    }
}

/// `microsoft.tenant is missing`, `schedule.sync: invalid cron expression ...`: the key leads.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.starts_with("is ") {
            write!(f, "{} {}", self.key, self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Several problems at once, so an operator fixes the file in one go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// No duration in the configuration may exceed this (ten years): beyond it a number is a
/// typo, and time arithmetic with it could overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
const MAX_DURATION_TEXT: &str = "3650d";

/// A duration written the way people write them: `"90m"`, `"72h"`, `"14d"`, `"1h30m"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub fn as_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration {s:?}: expected a number followed by a unit (ms, s, m, h, d, w), e.g. \"72h\""
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let seconds_per_unit: f64 = match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                "w" => 604_800.0,
                _ => {
                    return Err(format!(
                        "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)"
                    ))
                }
            };
            // Checked: a number no clock can hold is an error naming the key, not a panic.
            total = Duration::try_from_secs_f64(number as f64 * seconds_per_unit)
                .ok()
                .and_then(|part| total.checked_add(part))
                .filter(|t| *t <= MAX_DURATION)
                .ok_or_else(|| {
                    format!("invalid duration {s:?}: too large (at most {MAX_DURATION_TEXT})")
                })?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        // Whole days only from a week up ("14d", "30d"); below that hours read better
        // ("72h", "24h"), matching how thresholds are written.
        let day = 86_400_000u128;
        if ms.is_multiple_of(day) && ms >= 7 * day {
            return write!(f, "{}d", ms / day);
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1000)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Seconds(n) if Duration::from_secs(n) <= MAX_DURATION => Ok(HumanDuration::secs(n)),
            Raw::Seconds(n) => Err(serde::de::Error::custom(format!(
                "{n} seconds is too large (at most {MAX_DURATION_TEXT})"
            ))),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Secrets are printed as `[redacted]`, whatever serializes the configuration.
fn redact<S: Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
}

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
    pub webhook: Option<crate::webhook::PartnerWebhookConfig>,
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
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: PathBuf::from("/var/lib/cosell-sync/state.db"),
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
    pub changes_every: HumanDuration,
    /// Between full plans of every candidate referral, a safety net beside the plan queue
    /// (the deadline lane plans only referrals whose inputs changed). Runs in the refresh lane.
    pub full_plan_every: HumanDuration,
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
    pub stuck_after: HumanDuration,
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
pub struct RetryConfig {
    pub max_retries: usize,
    pub min_delay: HumanDuration,
    pub max_delay: HumanDuration,
    pub max_total: HumanDuration,
    pub max_retry_after: HumanDuration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        RetryConfig {
            max_retries: p.max_retries,
            min_delay: HumanDuration(p.min_delay),
            max_delay: HumanDuration(p.max_delay),
            max_total: HumanDuration(p.max_total),
            max_retry_after: HumanDuration(p.max_retry_after),
        }
    }
}

impl RetryConfig {
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.max_retries,
            min_delay: self.min_delay.0,
            max_delay: self.max_delay.0,
            max_total: self.max_total.0,
            max_retry_after: self.max_retry_after.0,
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
    pub client_id: Option<String>,
    #[serde(serialize_with = "redact")]
    pub client_secret: Option<SecretString>,
    pub client_secret_file: Option<PathBuf>,
    /// Only the first token: every grant returns a new one, kept in the token file.
    #[serde(serialize_with = "redact")]
    pub refresh_token: Option<SecretString>,
    pub refresh_token_file: Option<PathBuf>,
    pub requests_per_second: f64,
    /// `$top` of list queries; Partner Center serves at most 100 per page.
    pub page_size: u32,
    pub timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    /// The incremental query re-reads this much before the watermark, so nothing slips between
    /// pages or clocks.
    pub incremental_overlap: HumanDuration,
    /// On the very first cycle the incremental query starts this far back.
    pub initial_lookback: HumanDuration,
    pub retry: RetryConfig,
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
    pub partner_id: Option<String>,
    pub credentials_file: Option<PathBuf>,
    pub requests_per_second: f64,
    /// Whole-request timeout of one Google call.
    pub timeout: HumanDuration,
    pub connect_timeout: HumanDuration,
    /// In-call retries of idempotent Google calls (gets, opportunity patches); never creates.
    pub retry: RetryConfig,
    pub lead: GoogleLeadConfig,
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
    pub min_interval: HumanDuration,
    /// The longest wait between reads of a record that matters now: an opportunity in play
    /// (not in a final stage), a lead whose referral is near its deadline.
    pub hot_max_interval: HumanDuration,
    /// The longest wait between reads of any other tracked record.
    pub max_interval: HumanDuration,
    /// A referral still New this close to its deadline makes its lead "hot".
    pub near_deadline: HumanDuration,
    /// Reads in flight at once.
    pub concurrency: usize,
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
pub struct GoogleLeadConfig {
    pub submitter_email: Option<String>,
    pub engagement_model: String,
    pub deal_transaction_type: String,
    pub support_level: String,
    /// Deal term (a string in the API, e.g. months).
    pub deal_term: String,
    pub delivery_model: String,
    pub contract_vehicle: String,
    pub isv_solution_connect_deal: bool,
    pub is_confidential: Option<bool>,
    /// The Google `ProductFamily` when no entry of `product_families` matches the referral.
    pub product_family: Option<String>,
    /// Microsoft product or solution id (`details.requirements.products[].id`,
    /// `solutions[].id`) → Google `ProductFamily`. The first match wins.
    pub product_families: std::collections::BTreeMap<String, String>,
    /// Used when the referral has no currency.
    pub default_currency: Option<String>,
    /// Used when the referral has no deal value.
    pub default_deal_value: Option<f64>,
    /// When the referral has no closing date: today plus this.
    pub default_close_in: Option<HumanDuration>,
    /// The field of the Google `Customer` object that carries the customer's name. The
    /// Customer schema is not in the published pages ([?] in the API reference), so it is a
    /// setting rather than a guess baked into the code.
    pub customer_name_field: String,
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
    pub concurrency: usize,
    /// Attempts before a failing write is dead-lettered.
    pub max_attempts: u32,
    /// The outbox's retry schedule: exponential from `retry_min` to `retry_max`, jittered.
    pub retry_min: HumanDuration,
    pub retry_max: HumanDuration,
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
    pub substatuses: Vec<String>,
    /// Empty = any qualification.
    pub qualifications: Vec<String>,
    /// ISO country codes of the customer; empty = any.
    pub countries: Vec<String>,
    pub min_deal_value: f64,
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
    pub failed_cycles: u32,
    /// Link to a referral in Partner Center; `{id}` is replaced by the referral id.
    pub referral_url: String,
    /// Delivery tries per sink and alert within one cycle; what is left is retried next cycle.
    pub delivery_attempts: usize,
    /// The deadline in alert texts (the log and command sinks): `UTC` or an offset `+01:00`.
    /// Slack and Teams show each reader's own local time whatever this says.
    pub timezone: String,
    pub webhook: Vec<WebhookConfig>,
    pub command: Vec<CommandConfig>,
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
pub enum AlertFormat {
    Json,
    Slack,
    Teams,
}

/// A webhook URL as it may be shown: scheme, host and port; the path and query (the secret
/// of a Slack or Teams webhook) become `[redacted]`.
pub fn redacted_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.path() == "/" && u.query().is_none() && u.password().is_none() => {
            u.origin().ascii_serialization()
        }
        Ok(u) => format!("{}/[redacted]", u.origin().ascii_serialization()),
        Err(_) => "[redacted]".into(),
    }
}

fn redact_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

impl WebhookConfig {
    /// The key deliveries are stored and shown under: `webhook:NAME`, or the redacted URL
    /// with a stable hash of the whole URL (two webhooks on one host stay apart).
    pub fn sink_key(&self) -> String {
        match &self.name {
            Some(name) => format!("webhook:{name}"),
            None => format!(
                "webhook:{} #{:016x}",
                redacted_url(&self.url),
                fnv1a(self.url.as_bytes())
            ),
        }
    }
}

/// FNV-1a, 64 bits: stable across Rust versions and platforms (std's hasher is not), which
/// a key stored in the database needs.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Header values carry credentials (`Authorization = "Bearer ..."`): always redacted.
fn redact_headers<S: Serializer>(
    headers: &std::collections::BTreeMap<String, SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(headers.len()))?;
    for key in headers.keys() {
        map.serialize_entry(key, "[redacted]")?;
    }
    map.end()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The path of a Slack or Teams webhook URL is its key: printed only as
    /// [`redacted_url`], never stored (deliveries are keyed by [`WebhookConfig::sink_key`]).
    #[serde(serialize_with = "redact_url")]
    pub url: String,
    /// What deliveries are recorded and shown under; default: the host and a hash of the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_format")]
    pub format: AlertFormat,
    /// Extra request headers, e.g. for authentication.
    #[serde(default, serialize_with = "redact_headers")]
    pub headers: std::collections::BTreeMap<String, SecretString>,
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandConfig {
    /// The program and its arguments; the JSON alert arrives on stdin.
    pub argv: Vec<String>,
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
}

fn default_format() -> AlertFormat {
    AlertFormat::Json
}

fn default_sink_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// Where the configuration came from, for messages and `check-config`.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub file: PathBuf,
}

/// What a command needs from the configuration beyond its keys.
#[derive(Debug, Clone, Copy)]
struct Needs {
    /// Read the secret files (`*_file`) into the config.
    secrets: bool,
    /// A refresh token must be configured or stored.
    refresh_token: bool,
}

impl Needs {
    const ALL: Needs = Needs {
        secrets: true,
        refresh_token: true,
    };
    const READ_ONLY: Needs = Needs {
        secrets: false,
        refresh_token: false,
    };
}

/// The path the command line, then `COSELL_CONFIG`, then the default name.
pub fn config_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("COSELL_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

impl Config {
    /// Layers defaults, the file and the environment, loads secret files, and validates.
    pub fn load(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, true)
    }

    /// For `auth microsoft`, which is how the first refresh token is obtained: the same as
    /// [`Config::load`] without requiring one.
    pub fn load_for_auth(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_checked(file, false)
    }

    /// For the commands that only read the database (`status`, `alerts list`, `outbox list`,
    /// `audit`): the same validation, but no secret is read and no refresh token is needed, so
    /// they work from any shell that can read the config and the database.
    pub fn load_read_only(file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::load_with(file, Needs::READ_ONLY)
    }

    fn load_checked(file: &Path, require_refresh_token: bool) -> Result<Loaded, ConfigErrors> {
        let needs = Needs {
            secrets: true,
            refresh_token: require_refresh_token,
        };
        Self::load_with(file, needs)
    }

    fn load_with(file: &Path, needs: Needs) -> Result<Loaded, ConfigErrors> {
        check_readable(file)?;
        let figment = Figment::new()
            .merge(Toml::file_exact(file))
            .merge(Env::prefixed(ENV_PREFIX).ignore(&["CONFIG"]).split("__"));
        Self::from_figment_checked(figment, file, needs)
    }

    /// The part of [`Config::load`] after the file check; tests feed it a figment directly.
    pub fn from_figment(figment: Figment, file: &Path) -> Result<Loaded, ConfigErrors> {
        Self::from_figment_checked(figment, file, Needs::ALL)
    }

    fn from_figment_checked(
        figment: Figment,
        file: &Path,
        needs: Needs,
    ) -> Result<Loaded, ConfigErrors> {
        let mut config: Config = figment.extract().map_err(figment_errors)?;
        let base_dir = file.parent().unwrap_or(Path::new("."));
        if needs.secrets {
            config.resolve_secrets(base_dir)?;
        } else if let Some(path) = &config.google.credentials_file {
            config.google.credentials_file = Some(resolve_secret_path(path, base_dir));
        }
        config.validate_checked(needs.refresh_token)?;
        Ok(Loaded {
            config,
            file: file.to_path_buf(),
        })
    }

    fn resolve_secrets(&mut self, base_dir: &Path) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let ms = &mut self.microsoft;
        for (key, inline, file) in [
            (
                "microsoft.client_secret",
                &mut ms.client_secret,
                &ms.client_secret_file,
            ),
            (
                "microsoft.refresh_token",
                &mut ms.refresh_token,
                &ms.refresh_token_file,
            ),
        ] {
            if let Err(e) = resolve_secret(key, inline, file.as_deref(), base_dir) {
                errors.push(e);
            }
        }
        if let Some(path) = &self.google.credentials_file {
            self.google.credentials_file = Some(resolve_secret_path(path, base_dir));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Per key, the longest duration that makes sense; longer is a typo (a grace period of a
    /// year, a timeout of a month) and is refused by key. A table, one row a key.
    fn duration_ceilings(&self) -> Vec<(String, Duration, Duration)> {
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        let ms = &self.microsoft;
        let r = &ms.retry;
        let mut out: Vec<(String, Duration, Duration)> = vec![
            (
                "daemon.shutdown_grace".into(),
                self.daemon.shutdown_grace.0,
                HOUR,
            ),
            (
                "daemon.stuck_after".into(),
                self.daemon.stuck_after.0,
                7 * DAY,
            ),
            ("microsoft.timeout".into(), ms.timeout.0, HOUR),
            (
                "microsoft.connect_timeout".into(),
                ms.connect_timeout.0,
                HOUR,
            ),
            (
                "microsoft.incremental_overlap".into(),
                ms.incremental_overlap.0,
                7 * DAY,
            ),
            (
                "microsoft.initial_lookback".into(),
                ms.initial_lookback.0,
                3650 * DAY,
            ),
            ("microsoft.retry.min_delay".into(), r.min_delay.0, DAY),
            ("microsoft.retry.max_delay".into(), r.max_delay.0, DAY),
            ("microsoft.retry.max_total".into(), r.max_total.0, DAY),
            (
                "microsoft.retry.max_retry_after".into(),
                r.max_retry_after.0,
                DAY,
            ),
            ("google.timeout".into(), self.google.timeout.0, HOUR),
            (
                "google.connect_timeout".into(),
                self.google.connect_timeout.0,
                HOUR,
            ),
            (
                "google.retry.min_delay".into(),
                self.google.retry.min_delay.0,
                DAY,
            ),
            (
                "google.retry.max_delay".into(),
                self.google.retry.max_delay.0,
                DAY,
            ),
            (
                "google.retry.max_total".into(),
                self.google.retry.max_total.0,
                DAY,
            ),
            (
                "google.retry.max_retry_after".into(),
                self.google.retry.max_retry_after.0,
                DAY,
            ),
            ("sync.retry_min".into(), self.sync.retry_min.0, 7 * DAY),
            ("sync.retry_max".into(), self.sync.retry_max.0, 30 * DAY),
            (
                "alerts.response_window".into(),
                self.alerts.response_window.0,
                365 * DAY,
            ),
        ];
        if let Some(d) = self.google.lead.default_close_in {
            out.push(("google.lead.default_close_in".into(), d.0, 3650 * DAY));
        }
        for (i, t) in self.alerts.thresholds.iter().enumerate() {
            out.push((format!("alerts.thresholds[{i}]"), t.0, 365 * DAY));
        }
        for (i, w) in self.alerts.webhook.iter().enumerate() {
            out.push((format!("alerts.webhook[{i}].timeout"), w.timeout.0, HOUR));
        }
        for (i, c) in self.alerts.command.iter().enumerate() {
            out.push((format!("alerts.command[{i}].timeout"), c.timeout.0, HOUR));
        }
        out
    }

    /// Checks every key and reports all problems together, each naming its key, one helper
    /// per section (in this order, so the messages come in the order of the file).
    fn validate_checked(&self, require_refresh_token: bool) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        self.check_state_and_urls(&mut errors);
        self.check_microsoft(&mut errors, require_refresh_token);
        self.check_google(&mut errors);
        self.check_sync_alerts_metrics(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn check_state_and_urls(&self, errors: &mut Vec<ConfigError>) {
        if self.state.path.as_os_str().is_empty() {
            errors.push(ConfigError::missing("state.path"));
        }
        if let Err(e) = parse_cron(&self.schedule.sync) {
            errors.push(ConfigError::new("schedule.sync", e));
        }
        let ms = &self.microsoft;
        for (key, value) in [
            ("microsoft.api_base", &ms.api_base),
            ("microsoft.authority", &ms.authority),
            ("google.api_base", &self.google.api_base),
        ] {
            if let Err(e) = check_base_url(value) {
                errors.push(ConfigError::new(key, e));
            }
        }
    }

    fn check_microsoft(&self, errors: &mut Vec<ConfigError>, require_refresh_token: bool) {
        let ms = &self.microsoft;
        for (key, value) in [
            ("microsoft.tenant", &ms.tenant),
            ("microsoft.client_id", &ms.client_id),
        ] {
            if value.as_deref().is_none_or(|v| v.trim().is_empty()) {
                errors.push(ConfigError::missing(key));
            }
        }
        if require_refresh_token && ms.refresh_token.is_none() && !self.token_file().exists() {
            errors.push(ConfigError::new(
                "microsoft.refresh_token",
                format!(
                    "is missing and there is no stored token at {} (run `cosell-sync auth microsoft`, or set microsoft.refresh_token or microsoft.refresh_token_file)",
                    self.token_file().display()
                ),
            ));
        }
        for (key, rps) in [
            ("microsoft.requests_per_second", ms.requests_per_second),
            (
                "google.requests_per_second",
                self.google.requests_per_second,
            ),
        ] {
            if !(rps.is_finite() && rps > 0.0) {
                errors.push(ConfigError::new(
                    key,
                    format!("must be a positive number, got {rps}"),
                ));
            }
        }
        if !(1..=100).contains(&ms.page_size) {
            errors.push(ConfigError::new(
                "microsoft.page_size",
                format!(
                    "must be between 1 and 100 (the API's maximum), got {}",
                    ms.page_size
                ),
            ));
        }
        if ms.timeout.0.is_zero() {
            errors.push(ConfigError::new(
                "microsoft.timeout",
                "must be more than 0s",
            ));
        }
    }

    fn check_google(&self, errors: &mut Vec<ConfigError>) {
        let lead = &self.google.lead;
        for (key, value) in [
            ("google.lead.engagement_model", &lead.engagement_model),
            (
                "google.lead.deal_transaction_type",
                &lead.deal_transaction_type,
            ),
            ("google.lead.support_level", &lead.support_level),
            ("google.lead.delivery_model", &lead.delivery_model),
            ("google.lead.contract_vehicle", &lead.contract_vehicle),
        ] {
            if value.trim().is_empty() || value.ends_with("_UNSPECIFIED") {
                errors.push(ConfigError::new(
                    key,
                    format!("{value:?} is not a value the API accepts on create"),
                ));
            }
        }
        if self.google_enabled() {
            if self.google.credentials_file.is_none() {
                errors.push(ConfigError::missing("google.credentials_file"));
            }
            if lead
                .submitter_email
                .as_deref()
                .is_none_or(|e| !e.contains('@'))
            {
                errors.push(ConfigError::new(
                    "google.lead.submitter_email",
                    "is missing (every lead create must carry the submitting partner user's email)",
                ));
            }
        }
        if self.google_enabled()
            && lead
                .product_family
                .as_deref()
                .is_none_or(|f| f.trim().is_empty())
            && lead.product_families.is_empty()
        {
            errors.push(ConfigError::new(
                "google.lead.product_family",
                "is missing, and google.lead.product_families is empty: no referral could ever become a Google lead (set product_family, e.g. \"GOOGLE_CLOUD_PLATFORM\", or map Microsoft products in product_families)",
            ));
        }
    }

    /// `[sync]`, `[refresh]`, `[alerts]` and `[metrics]` checks: a flat list of independent
    /// rules, each naming its key; long only because there are many keys.
    fn check_sync_alerts_metrics(&self, errors: &mut Vec<ConfigError>) {
        for (key, value, max) in self.duration_ceilings() {
            if value > max {
                errors.push(ConfigError::new(
                    key,
                    format!(
                        "{} is too long (at most {})",
                        HumanDuration(value),
                        HumanDuration(max)
                    ),
                ));
            }
        }
        if self.sync.concurrency == 0 {
            errors.push(ConfigError::new("sync.concurrency", "must be at least 1"));
        }
        if self.refresh.concurrency == 0 {
            errors.push(ConfigError::new(
                "refresh.concurrency",
                "must be at least 1",
            ));
        }
        if self.refresh.max_interval.0 < self.refresh.min_interval.0 {
            errors.push(ConfigError::new(
                "refresh.max_interval",
                "must not be shorter than refresh.min_interval",
            ));
        }
        if self.google.timeout.0.is_zero() {
            errors.push(ConfigError::new("google.timeout", "must be more than 0s"));
        }
        if self.sync.max_attempts == 0 {
            errors.push(ConfigError::new("sync.max_attempts", "must be at least 1"));
        }
        if self.alerts.response_window.0.is_zero() {
            errors.push(ConfigError::new(
                "alerts.response_window",
                "must be more than 0s",
            ));
        }
        for (i, hook) in self.alerts.webhook.iter().enumerate() {
            if check_base_url(&hook.url).is_err() {
                // Not quoted: the URL is a secret.
                errors.push(ConfigError::new(
                    format!("alerts.webhook[{i}].url"),
                    "must be an http(s) URL",
                ));
            }
        }
        for (i, command) in self.alerts.command.iter().enumerate() {
            if command.argv.is_empty() || command.argv[0].trim().is_empty() {
                errors.push(ConfigError::new(
                    format!("alerts.command[{i}].argv"),
                    "must name a program",
                ));
            }
        }
        if let Some(listen) = &self.metrics.listen {
            if listen.parse::<std::net::SocketAddr>().is_err() {
                errors.push(ConfigError::new(
                    "metrics.listen",
                    format!("{listen:?} is not host:port (e.g. \"127.0.0.1:9464\")"),
                ));
            }
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate(errors);
        }
        if self.alerts.failed_cycles == 0 {
            errors.push(ConfigError::new(
                "alerts.failed_cycles",
                "must be at least 1",
            ));
        }
        if self.alerts.thresholds.iter().any(|t| t.0.is_zero()) {
            errors.push(ConfigError::new(
                "alerts.thresholds",
                "a threshold must be more than 0s",
            ));
        }
        if crate::timefmt::parse_offset(&self.alerts.timezone).is_none() {
            errors.push(ConfigError::new(
                "alerts.timezone",
                format!(
                    "{:?} is not UTC or an offset like \"+01:00\" (zone names are not supported)",
                    self.alerts.timezone
                ),
            ));
        }
    }

    /// The Google side runs when a partner id is configured.
    pub fn google_enabled(&self) -> bool {
        self.google
            .partner_id
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty())
    }

    /// The rotated Microsoft refresh token's file, beside the database.
    pub fn token_file(&self) -> PathBuf {
        self.state.path.with_file_name(TOKEN_FILE_NAME)
    }

    /// The effective configuration as TOML, secrets shown as `[redacted]`.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Converts figment's error list into key-named errors.
fn figment_errors(err: figment::Error) -> ConfigErrors {
    ConfigErrors(
        err.into_iter()
            .map(|e| {
                let key = e.path.join(".");
                let source = e
                    .metadata
                    .as_ref()
                    .map(|m| match &m.source {
                        Some(src) => format!(" (from {} {src})", m.name),
                        None => format!(" (from {})", m.name),
                    })
                    .unwrap_or_default();
                ConfigError::new(
                    if key.is_empty() { "config".into() } else { key },
                    format!("{}{source}", e.kind),
                )
            })
            .collect(),
    )
}

/// The configuration file exists, is a file and this process may read it; each failure says
/// which (a permission problem is not "does not exist": under systemd's `DynamicUser=` the
/// service cannot read a root-only `/etc/cosell-sync`).
fn check_readable(file: &Path) -> Result<(), ConfigErrors> {
    let error = |why: String| -> ConfigErrors {
        ConfigError::new(
            "config",
            format!("configuration file {} {why}", file.display()),
        )
        .into()
    };
    let permission = |e: std::io::Error| {
        error(format!(
            "cannot be read: permission denied ({e}): the file must be readable, and every directory above it searchable, by the user the daemon runs as (under systemd's DynamicUser= that is not root); it holds no secrets, so 0644 in a 0755 directory is fine"
        ))
    };
    match std::fs::metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(error(
            "does not exist (set --config or COSELL_CONFIG)".into(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission(e)),
        Err(e) => Err(error(format!("cannot be read: {e}"))),
        Ok(m) if !m.is_file() => Err(error("is not a regular file".into())),
        Ok(_) => match std::fs::File::open(file) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(permission(e)),
            Err(e) => Err(error(format!("cannot be read: {e}"))),
        },
    }
}

/// The directory beside the configuration file that holds the secrets: the unit's
/// `LoadCredential=` lines copy from it, and a root shell reads from it directly.
pub const CREDENTIALS_DIR_NAME: &str = "credentials";

/// A relative secret path is looked up in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential`)
/// when it is set, else in `credentials/` beside the configuration file: the same file either
/// way, so the service and a root shell (`check-config`, `auth check`) read the same secret.
pub fn resolve_secret_path(path: &Path, base_dir: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(path),
        _ => base_dir.join(CREDENTIALS_DIR_NAME).join(path),
    }
}

fn resolve_secret(
    key: &str,
    inline: &mut Option<SecretString>,
    file: Option<&Path>,
    base_dir: &Path,
) -> Result<(), ConfigError> {
    let Some(file) = file else {
        if inline
            .as_ref()
            .is_some_and(|s| s.expose_secret().trim().is_empty())
        {
            *inline = None;
        }
        return Ok(());
    };
    if inline.is_some() {
        return Err(ConfigError::new(
            key,
            format!("both {key} and {key}_file are set; keep one"),
        ));
    }
    let path = resolve_secret_path(file, base_dir);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        ConfigError::new(
            format!("{key}_file"),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(ConfigError::new(
            format!("{key}_file"),
            format!("{} is empty", path.display()),
        ));
    }
    *inline = Some(SecretString::from(value.to_string()));
    Ok(())
}

/// Parses a 6-field cron (seconds first) exactly as the scheduler will.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map_err(|e| {
            format!("invalid cron expression {expr:?}: {e} (6 fields, seconds first, e.g. \"0 */5 * * * *\")")
        })
}

fn check_base_url(value: &str) -> Result<(), String> {
    match reqwest::Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(()),
        Ok(url) => Err(format!(
            "{value:?} must be an http(s) URL, not {}",
            url.scheme()
        )),
        Err(e) => Err(format!("{value:?} is not a URL: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_parse_and_print() {
        for (text, secs) in [
            ("90m", 5400),
            ("72h", 259_200),
            ("14d", 1_209_600),
            ("1h30m", 5400),
            ("2w", 1_209_600),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_secs(secs), "{text}");
        }
        assert_eq!(HumanDuration::secs(72 * 3600).to_string(), "72h");
        assert_eq!(HumanDuration::secs(14 * 86_400).to_string(), "14d");
        assert_eq!(HumanDuration::secs(5400).to_string(), "90m");
        assert_eq!(
            "500ms".parse::<HumanDuration>().unwrap().to_string(),
            "500ms"
        );
        for bad in ["", "h", "12", "3 days", "5y", "-3h"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad:?} must fail");
        }
    }

    #[test]
    fn cron_needs_six_fields() {
        assert!(parse_cron("0 */5 * * * *").is_ok());
        let err = parse_cron("*/5 * * * *").unwrap_err();
        assert!(err.contains("invalid cron expression"), "{err}");
    }
}
