//! The `[aws]` section (spec §4, §8): AWS Partner Central engagement invitations, off when
//! absent. The catalog, the endpoint, the alerts' `invitation_url`, the read rate, and the
//! credentials in §8's order: `access_key_id` with `secret_access_key(_file)` (and
//! `session_token_file`), else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
//! else the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`;
//! profile `AWS_PROFILE`, else `default`). No instance metadata. Each mistake names its key.
//!
//! Also the rule every `RejectionReason` must meet (1–80 characters of the model's pattern),
//! here because the configuration checks decline reasons with it and the configuration is a
//! leaf; so is the same check of rule reasons with `[aws]`. `auth check` uses the section;
//! the pull, alerts and answers come next.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::secrets::{redact, resolve_secret};
use super::{ActionsConfig, ConfigError, HumanDuration, RetryConfig};

/// The two catalogs (D.1): production, and the sandbox for testing.
pub const CATALOGS: &[&str] = &["AWS", "Sandbox"];
/// The only endpoint (D.1); signed for us-east-1 whatever it is set to.
pub const DEFAULT_ENDPOINT: &str = "https://partnercentral-selling.us-east-1.api.aws";
/// The read quota per partner account (D.3).
pub const DEFAULT_READS_PER_SECOND: f64 = 10.0;

/// AWS Partner Central: where, which catalog, how fast, and with which credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    #[serde(default = "default_catalog")]
    pub(crate) catalog: String,
    #[serde(default = "default_endpoint")]
    pub(crate) endpoint: String,
    /// Empty = the `AWS_*` environment, then the shared credentials file.
    #[serde(default)]
    pub(crate) access_key_id: Option<String>,
    #[serde(default, serialize_with = "redact")]
    pub(crate) secret_access_key: Option<SecretString>,
    #[serde(default)]
    pub(crate) secret_access_key_file: Option<PathBuf>,
    /// Temporary credentials only; a file, never inline.
    #[serde(default)]
    pub(crate) session_token_file: Option<PathBuf>,
    /// Read from `session_token_file`.
    #[serde(skip)]
    pub(crate) session_token: Option<SecretString>,
    /// The link in alerts, with `{id}`; empty = none.
    #[serde(default)]
    pub(crate) invitation_url: Option<String>,
    /// Reads per second; writes are never more than 1 a second.
    #[serde(default = "default_reads")]
    pub(crate) requests_per_second: f64,
    #[serde(default = "default_timeout")]
    pub(crate) timeout: HumanDuration,
    #[serde(default = "default_connect_timeout")]
    pub(crate) connect_timeout: HumanDuration,
    #[serde(default)]
    pub(crate) retry: RetryConfig,
    /// The credentials found, in §8's order (when the command reads secrets).
    #[serde(skip)]
    pub(crate) credentials: Option<AwsCredentials>,
}

fn default_catalog() -> String {
    "AWS".into()
}

fn default_endpoint() -> String {
    DEFAULT_ENDPOINT.into()
}

fn default_reads() -> f64 {
    DEFAULT_READS_PER_SECOND
}

fn default_timeout() -> HumanDuration {
    HumanDuration::secs(60)
}

fn default_connect_timeout() -> HumanDuration {
    HumanDuration::secs(10)
}

/// Where the credentials came from: `auth check` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    Config,
    Environment,
    SharedFile { path: PathBuf, profile: String },
}

impl std::fmt::Display for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CredentialSource::Config => f.write_str("[aws] in the configuration"),
            CredentialSource::Environment => f.write_str("the AWS_* environment"),
            CredentialSource::SharedFile { path, profile } => write!(
                f,
                "the shared credentials file {} (profile {profile})",
                path.display()
            ),
        }
    }
}

/// An access key, its secret and maybe a session token, and where they came from.
#[derive(Debug, Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
    pub source: CredentialSource,
}

impl AwsConfig {
    /// The credentials found (`None` when the command did not read secrets).
    pub fn credentials(&self) -> Option<&AwsCredentials> {
        self.credentials.as_ref()
    }

    pub fn catalog(&self) -> &str {
        &self.catalog
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn requests_per_second(&self) -> f64 {
        self.requests_per_second
    }

    /// The whole-request and the connect timeout of one call.
    pub fn timeouts(&self) -> (std::time::Duration, std::time::Duration) {
        (self.timeout.0, self.connect_timeout.0)
    }

    /// Reads the secret files and finds the credentials in §8's order; `env` is the process
    /// environment (a parameter, so the order is tested without touching it).
    pub(super) fn resolve_secrets(
        &mut self,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<ConfigError>,
    ) {
        let files = [
            (
                "aws.secret_access_key",
                &mut self.secret_access_key,
                &self.secret_access_key_file,
            ),
            (
                "aws.session_token",
                &mut self.session_token,
                &self.session_token_file,
            ),
        ];
        for (key, inline, file) in files {
            if let Err(e) = resolve_secret(key, inline, file.as_deref(), base_dir) {
                errors.push(e);
            }
        }
        if errors.iter().any(|e| e.key.starts_with("aws.")) {
            return;
        }
        match self.find_credentials(base_dir, env) {
            Ok(found) => self.credentials = Some(found),
            Err(e) => errors.push(e),
        }
    }

    fn find_credentials(
        &self,
        base_dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AwsCredentials, ConfigError> {
        let id = self
            .access_key_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        match (id, &self.secret_access_key) {
            (Some(id), Some(secret)) => {
                return Ok(AwsCredentials {
                    access_key_id: id.to_string(),
                    secret_access_key: secret.clone(),
                    session_token: self.session_token.clone(),
                    source: CredentialSource::Config,
                })
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "aws.secret_access_key",
                    "is missing (aws.access_key_id is set; give secret_access_key or secret_access_key_file)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "aws.access_key_id",
                    "is missing (aws.secret_access_key is set)",
                ))
            }
            (None, None) if self.session_token.is_some() => {
                return Err(ConfigError::new(
                    "aws.session_token_file",
                    "goes with aws.access_key_id and its secret, which are not set",
                ))
            }
            (None, None) => {}
        }
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                return Ok(AwsCredentials {
                    access_key_id: id.trim().to_string(),
                    secret_access_key: SecretString::from(secret.trim().to_string()),
                    session_token: var("AWS_SESSION_TOKEN")
                        .map(|t| SecretString::from(t.trim().to_string())),
                    source: CredentialSource::Environment,
                })
            }
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "AWS_SECRET_ACCESS_KEY",
                    "is missing from the environment (AWS_ACCESS_KEY_ID is set)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "AWS_ACCESS_KEY_ID",
                    "is missing from the environment (AWS_SECRET_ACCESS_KEY is set)",
                ))
            }
            (None, None) => {}
        }
        shared_file_credentials(base_dir, &var)
    }

    /// The longest each duration may be: a request an hour, the retry policy a day (the same
    /// ceilings as `[microsoft]`'s).
    pub(super) fn duration_ceilings(
        &self,
    ) -> Vec<(String, std::time::Duration, std::time::Duration)> {
        const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
        const DAY: std::time::Duration = std::time::Duration::from_secs(86_400);
        let retry = &self.retry;
        [
            ("timeout", self.timeout.0, HOUR),
            ("connect_timeout", self.connect_timeout.0, HOUR),
            ("retry.min_delay", retry.min_delay.0, DAY),
            ("retry.max_delay", retry.max_delay.0, DAY),
            ("retry.max_total", retry.max_total.0, DAY),
            ("retry.max_retry_after", retry.max_retry_after.0, DAY),
        ]
        .into_iter()
        .map(|(key, value, max)| (format!("aws.{key}"), value, max))
        .collect()
    }

    /// Every problem, each naming its `aws.*` key; with `[actions]`, its decline reasons must
    /// also be valid `RejectionReason`s.
    pub(super) fn validate(&self, actions: Option<&ActionsConfig>, errors: &mut Vec<ConfigError>) {
        if !CATALOGS.contains(&self.catalog.as_str()) {
            errors.push(ConfigError::new(
                "aws.catalog",
                format!("{:?} is not \"AWS\" or \"Sandbox\"", self.catalog),
            ));
        }
        match reqwest::Url::parse(&self.endpoint) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() => {}
            Ok(u) if u.scheme() == "http" && super::webhook::is_loopback(&u) => {}
            _ => errors.push(ConfigError::new(
                "aws.endpoint",
                format!(
                    "{:?} is not an absolute https URL (http only on a loopback address)",
                    self.endpoint
                ),
            )),
        }
        if let Some(url) = self.invitation_url.as_deref().filter(|u| !u.is_empty()) {
            let parsed = reqwest::Url::parse(&url.replace("{id}", "engi-0000000000000"));
            if !url.contains("{id}") {
                errors.push(ConfigError::new(
                    "aws.invitation_url",
                    "must contain {id} (the invitation id goes there)",
                ));
            } else if !parsed.is_ok_and(|u| matches!(u.scheme(), "https" | "http")) {
                errors.push(ConfigError::new(
                    "aws.invitation_url",
                    format!("{url:?} is not an absolute http(s) URL"),
                ));
            }
        }
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            errors.push(ConfigError::new(
                "aws.requests_per_second",
                format!(
                    "must be a positive number, got {}",
                    self.requests_per_second
                ),
            ));
        }
        for (key, value) in [
            ("aws.timeout", self.timeout.0),
            ("aws.connect_timeout", self.connect_timeout.0),
        ] {
            if value.is_zero() {
                errors.push(ConfigError::new(key, "must be longer than 0"));
            }
        }
        for (i, reason) in actions
            .map_or(&[][..], |a| &a.decline_reasons[..])
            .iter()
            .enumerate()
        {
            if let Err(e) = check_rejection_reason(reason) {
                errors.push(ConfigError::new(
                    format!("actions.decline_reasons[{i}]"),
                    format!("{e} (with [aws], every reason must be a valid RejectionReason)"),
                ));
            }
        }
    }
}

/// With `[aws]`, every rule `reason` that may be sent as a `RejectionReason` (a rule not
/// limited to `source = "microsoft"`) must be one: 1–80 characters of the model's pattern.
/// A key that already has an error (the general reason checks) is not named twice.
pub(super) fn validate_rule_reasons(rules: &[super::RuleConfig], errors: &mut Vec<ConfigError>) {
    for (i, rule) in rules.iter().enumerate() {
        let key = format!("rules[{i}].reason");
        let (Some(reason), false) = (&rule.reason, rule.source.as_deref() == Some("microsoft"))
        else {
            continue;
        };
        if errors.iter().any(|e| e.key == key) {
            continue;
        }
        if let Err(e) = check_rejection_reason(reason) {
            errors.push(ConfigError::new(
                key,
                format!("{e} (with [aws], a rule's reason is sent as the RejectionReason; limit the rule to source = \"microsoft\" to keep a longer one)"),
            ));
        }
    }
}

/// The shared credentials file: `AWS_SHARED_CREDENTIALS_FILE`, else `$HOME/.aws/credentials`;
/// profile `AWS_PROFILE`, else `default`. Read through the same secret-file reader as every
/// other secret.
fn shared_file_credentials(
    base_dir: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<AwsCredentials, ConfigError> {
    let named = var("AWS_SHARED_CREDENTIALS_FILE");
    let path = match (&named, var("HOME")) {
        (Some(p), _) => PathBuf::from(p),
        (None, Some(home)) => PathBuf::from(home).join(".aws").join("credentials"),
        (None, None) => PathBuf::new(),
    };
    let profile = var("AWS_PROFILE").unwrap_or_else(|| "default".into());
    let shown = match path.as_os_str().is_empty() {
        true => "(HOME is not set)".to_string(),
        false => path.display().to_string(),
    };
    let none_found = || {
        ConfigError::new(
            "aws.access_key_id",
            format!(
                "is missing, and there are no credentials in the environment (AWS_ACCESS_KEY_ID) or in the shared credentials file {shown} (no instance metadata is read)"
            ),
        )
    };
    if named.is_none() && !path.is_file() {
        return Err(none_found());
    }
    // The shared file is the AWS CLI's: a relative path is relative to the working directory.
    let path = std::path::absolute(&path).unwrap_or(path);
    let mut text = None;
    resolve_secret("AWS_SHARED_CREDENTIALS", &mut text, Some(&path), base_dir)
        .map_err(|e| ConfigError::new("AWS_SHARED_CREDENTIALS_FILE", e.message))?;
    let text = text.ok_or_else(none_found)?;
    let values = profile_values(text.expose_secret(), &profile).ok_or_else(|| {
        ConfigError::new(
            "AWS_PROFILE",
            format!("profile {profile:?} is not in {}", path.display()),
        )
    })?;
    let get = |name: &str| {
        values
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    let missing = |name: &str| {
        ConfigError::new(
            "AWS_SHARED_CREDENTIALS_FILE",
            format!("profile {profile:?} of {} has no {name}", path.display()),
        )
    };
    Ok(AwsCredentials {
        access_key_id: get("aws_access_key_id").ok_or_else(|| missing("aws_access_key_id"))?,
        secret_access_key: SecretString::from(
            get("aws_secret_access_key").ok_or_else(|| missing("aws_secret_access_key"))?,
        ),
        session_token: get("aws_session_token").map(SecretString::from),
        source: CredentialSource::SharedFile { path, profile },
    })
}

/// The `key = value` lines of one profile of an INI credentials file (`[name]`, or the config
/// file's `[profile name]`); `#` and `;` start comments. `None` when the profile is absent.
fn profile_values(text: &str, profile: &str) -> Option<Vec<(String, String)>> {
    let mut found = false;
    let mut inside = false;
    let mut values = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            let name = section.strip_prefix("profile ").unwrap_or(section).trim();
            inside = name == profile;
            found |= inside;
            continue;
        }
        if let (true, Some((k, v))) = (inside, line.split_once('=')) {
            values.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    found.then_some(values)
}

/// The longest `RejectionReason` the model takes.
pub const MAX_REJECTION_REASON_CHARS: usize = 80;

/// Why a text cannot be sent as a `RejectionReason` (pattern
/// `[\u0020-\u007E\u00A0-\uD7FF\uE000-\uFFFD]{1,80}`, D.4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRejectionReason {
    #[error("must not be empty")]
    Empty,
    #[error("is {0} characters long; AWS takes at most 80")]
    TooLong(usize),
    #[error("character {position} ({found:?}) is not one AWS takes: printable, no control characters, nothing outside the Basic Multilingual Plane")]
    Character { position: usize, found: char },
}

/// Checks a text against the model's `RejectionReason` pattern: 1 to 80 characters, each
/// in U+0020–U+007E, U+00A0–U+D7FF or U+E000–U+FFFD.
pub fn check_rejection_reason(reason: &str) -> Result<(), BadRejectionReason> {
    let count = reason.chars().count();
    if count == 0 {
        return Err(BadRejectionReason::Empty);
    }
    if count > MAX_REJECTION_REASON_CHARS {
        return Err(BadRejectionReason::TooLong(count));
    }
    let allowed = |c: char| matches!(c, '\u{20}'..='\u{7E}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}');
    match reason.chars().enumerate().find(|(_, c)| !allowed(*c)) {
        Some((i, found)) => Err(BadRejectionReason::Character {
            position: i + 1,
            found,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn section(toml: &str) -> AwsConfig {
        toml::from_str(toml).unwrap()
    }

    fn resolve(
        config: &mut AwsConfig,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<AwsCredentials, Vec<String>> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut errors = Vec::new();
        config.resolve_secrets(dir, &|name| env.get(name).cloned(), &mut errors);
        match errors.is_empty() {
            true => Ok(config.credentials.clone().unwrap()),
            false => Err(errors.iter().map(ToString::to_string).collect()),
        }
    }

    const ENV_KEYS: &[(&str, &str)] = &[
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "env-secret"),
        ("AWS_SESSION_TOKEN", "env-token"),
    ];

    #[test]
    fn credentials_come_in_the_order_of_spec_8() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::write(
            &shared,
            "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file-secret\n\n[profile team]\n# a comment\naws_access_key_id=AKIDTEAM\naws_secret_access_key=team-secret\naws_session_token=team-token\n",
        )
        .unwrap();
        let shared_env = ("AWS_SHARED_CREDENTIALS_FILE", shared.to_str().unwrap());

        // 1. The keys in [aws] win over everything.
        std::fs::create_dir_all(dir.path().join("credentials")).unwrap();
        std::fs::write(dir.path().join("credentials/aws-secret"), "cfg-secret\n").unwrap();
        std::fs::write(dir.path().join("credentials/aws-token"), "cfg-token\n").unwrap();
        let mut config = section(
            "access_key_id = \"AKIDCFG\"\nsecret_access_key_file = \"aws-secret\"\nsession_token_file = \"aws-token\"\n",
        );
        let mut env = ENV_KEYS.to_vec();
        env.push(shared_env);
        let found = resolve(&mut config, dir.path(), &env).unwrap();
        assert_eq!(found.access_key_id, "AKIDCFG");
        assert_eq!(found.secret_access_key.expose_secret(), "cfg-secret");
        assert_eq!(found.session_token.unwrap().expose_secret(), "cfg-token");
        assert_eq!(found.source, CredentialSource::Config);

        // 2. Then the environment.
        let found = resolve(&mut section(""), dir.path(), &env).unwrap();
        assert_eq!(found.access_key_id, "AKIDENV");
        assert_eq!(found.session_token.unwrap().expose_secret(), "env-token");
        assert_eq!(found.source, CredentialSource::Environment);

        // 3. Then the shared file, profile `default` or AWS_PROFILE.
        let found = resolve(&mut section(""), dir.path(), &[shared_env]).unwrap();
        assert_eq!(found.access_key_id, "AKIDFILE");
        assert_eq!(found.secret_access_key.expose_secret(), "file-secret");
        assert!(found.session_token.is_none());
        let found = resolve(
            &mut section(""),
            dir.path(),
            &[shared_env, ("AWS_PROFILE", "team")],
        )
        .unwrap();
        assert_eq!(found.access_key_id, "AKIDTEAM");
        assert_eq!(found.session_token.unwrap().expose_secret(), "team-token");
        assert_eq!(
            found.source.to_string(),
            format!(
                "the shared credentials file {} (profile team)",
                shared.display()
            )
        );

        // HOME's ~/.aws/credentials when AWS_SHARED_CREDENTIALS_FILE is not set.
        std::fs::create_dir_all(dir.path().join(".aws")).unwrap();
        std::fs::copy(&shared, dir.path().join(".aws/credentials")).unwrap();
        let home = dir.path().to_str().unwrap();
        let found = resolve(&mut section(""), dir.path(), &[("HOME", home)]).unwrap();
        assert_eq!(found.access_key_id, "AKIDFILE");
    }

    #[test]
    fn each_credential_mistake_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::write(&shared, "[default]\naws_access_key_id = AKIDFILE\n").unwrap();
        let shared_env = ("AWS_SHARED_CREDENTIALS_FILE", shared.to_str().unwrap());
        type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            ("access_key_id = \"AKID\"", vec![], "aws.secret_access_key is missing"),
            ("secret_access_key = \"s\"", vec![], "aws.access_key_id is missing"),
            (
                "access_key_id = \"AKID\"\nsecret_access_key = \"s\"\nsecret_access_key_file = \"f\"",
                vec![],
                "aws.secret_access_key: both",
            ),
            (
                "access_key_id = \"AKID\"\nsecret_access_key_file = \"nope\"",
                vec![],
                "aws.secret_access_key_file: cannot read",
            ),
            ("session_token_file = \"/dev/null\"", vec![], "aws.session_token_file"),
            ("", vec![("AWS_ACCESS_KEY_ID", "AKID")], "AWS_SECRET_ACCESS_KEY is missing"),
            ("", vec![("AWS_SECRET_ACCESS_KEY", "s")], "AWS_ACCESS_KEY_ID is missing"),
            ("", vec![], "aws.access_key_id is missing, and there are no credentials"),
            (
                "",
                vec![shared_env],
                "AWS_SHARED_CREDENTIALS_FILE: profile \"default\" of",
            ),
            (
                "",
                vec![shared_env, ("AWS_PROFILE", "sales")],
                "AWS_PROFILE: profile \"sales\" is not in",
            ),
            (
                "",
                vec![("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")],
                "AWS_SHARED_CREDENTIALS_FILE: cannot read /nonexistent/credentials",
            ),
        ];
        for (toml, env, expected) in cases {
            let errors = resolve(&mut section(toml), dir.path(), &env).unwrap_err();
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "{toml:?} {env:?}: {errors:?}"
            );
        }
    }

    #[test]
    fn the_section_is_validated_key_by_key() {
        let check = |toml: &str| {
            let mut errors = Vec::new();
            section(toml).validate(None, &mut errors);
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        };
        assert!(check("").is_empty());
        assert!(check("catalog = \"Sandbox\"\nendpoint = \"http://127.0.0.1:4566\"\ninvitation_url = \"https://partnercentral.awspartner.com/invitations/{id}\"").is_empty());
        for (toml, key) in [
            ("catalog = \"aws\"", "aws.catalog"),
            (
                "endpoint = \"http://partnercentral.example\"",
                "aws.endpoint",
            ),
            ("endpoint = \"not a url\"", "aws.endpoint"),
            (
                "invitation_url = \"https://x.example/inv\"",
                "aws.invitation_url",
            ),
            ("invitation_url = \"{id}\"", "aws.invitation_url"),
            ("requests_per_second = 0", "aws.requests_per_second"),
            ("requests_per_second = -3.5", "aws.requests_per_second"),
            ("timeout = \"0s\"", "aws.timeout"),
        ] {
            let errors = check(toml);
            assert!(
                errors.len() == 1 && errors[0].starts_with(key),
                "{toml}: {errors:?}"
            );
        }
        let mut errors = Vec::new();
        let actions: ActionsConfig = toml::from_str(&format!(
            "listen = \"127.0.0.1:8788\"\npublic_url = \"https://sync.example/act\"\ndecline_reasons = [\"Out of region\", \"{}\"]",
            "x".repeat(81)
        ))
        .unwrap();
        section("").validate(Some(&actions), &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let message = errors[0].to_string();
        assert!(
            message.starts_with("actions.decline_reasons[1] is 81 characters"),
            "{message}"
        );
    }

    #[test]
    fn rule_reasons_that_may_reach_aws_must_be_rejection_reasons() {
        use crate::config::{RuleAction, RuleConfig};
        let rule = |reason: &str, source: Option<&str>| RuleConfig {
            source: source.map(str::to_string),
            reason: Some(reason.to_string()),
            ..RuleConfig::any("r", RuleAction::Decline)
        };
        let long = "x".repeat(81);
        let rules = [
            rule("Outside our region", None),
            rule(&long, None),
            rule(&long, Some("aws")),
            rule(&long, Some("microsoft")),
            rule("tab\there", None),
        ];
        let mut errors = Vec::new();
        validate_rule_reasons(&rules, &mut errors);
        let said: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].starts_with("rules[1].reason is 81 characters long"),
            "{said:?}"
        );
        assert!(
            said[1].starts_with("rules[2].reason is 81 characters long"),
            "{said:?}"
        );
        assert!(
            said[2].starts_with("rules[4].reason: character 4"),
            "{said:?}"
        );
        // A key the general checks already named is not named twice.
        let mut errors = vec![ConfigError::new("rules[1].reason", "is longer than 200")];
        validate_rule_reasons(&rules[..2], &mut errors);
        assert_eq!(errors.len(), 1, "{errors:?}");
    }

    #[test]
    fn rejection_reasons_follow_the_model_pattern() {
        for good in [
            "Customer problem unclear",
            "Duplicate of partner referral",
            "Hors de notre région — désolé",
            &"x".repeat(80),
            "\u{A0}\u{D7FF}\u{E000}\u{FFFD}",
        ] {
            assert_eq!(check_rejection_reason(good), Ok(()), "{good:?}");
        }
        assert_eq!(check_rejection_reason(""), Err(BadRejectionReason::Empty));
        assert_eq!(
            check_rejection_reason(&"é".repeat(81)),
            Err(BadRejectionReason::TooLong(81))
        );
        for (bad, position) in [
            ("a\tb", 2),
            ("line\n", 5),
            ("smile \u{1F600}", 7),
            ("\u{7F}", 1),
            ("\u{FFFE}", 1),
        ] {
            assert!(
                matches!(check_rejection_reason(bad), Err(BadRejectionReason::Character { position: p, .. }) if p == position),
                "{bad:?}"
            );
        }
        // Generated text: what passes is exactly what the pattern allows, and nothing panics.
        let mut rng = fastrand::Rng::with_seed(80);
        for _ in 0..5_000 {
            let text = crate::config::hostile_text(&mut rng, 30);
            let by_pattern = (1..=80).contains(&text.chars().count())
                && text.chars().all(|c| {
                    let n = u32::from(c);
                    (0x20..=0x7E).contains(&n)
                        || (0xA0..=0xD7FF).contains(&n)
                        || (0xE000..=0xFFFD).contains(&n)
                });
            assert_eq!(
                check_rejection_reason(&text).is_ok(),
                by_pattern,
                "{text:?}"
            );
        }
    }

    /// The commented `[aws]` section of config.example.toml, uncommented, is valid and names
    /// every key of spec §4.
    #[test]
    fn the_example_section_is_valid_and_complete() {
        let file = include_str!("../../config.example.toml");
        let text: String = file
            .lines()
            .skip_while(|l| *l != "# [aws]")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| l.starts_with("# ") && !l.starts_with("# #"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let mut errors = Vec::new();
        section(&text).validate(None, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        for key in [
            "catalog",
            "endpoint",
            "access_key_id",
            "secret_access_key_file",
            "session_token_file",
            "invitation_url",
            "requests_per_second",
        ] {
            assert!(
                table.contains_key(key),
                "config.example.toml lacks aws.{key}"
            );
        }
        assert!(file.contains("# # Or secret_access_key = "));
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let mut config = section("access_key_id = \"AKID\"\nsecret_access_key = \"very-secret\"");
        let dir = tempfile::tempdir().unwrap();
        resolve(&mut config, dir.path(), &[]).unwrap();
        let printed = toml::to_string(&config).unwrap();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(printed.contains("[redacted]"));
        assert!(!format!("{config:?}").contains("very-secret"));
    }
}
