//! Configuration, a leaf module (it imports no feature module): the [`types`] of every section,
//! [`load`]ing (compiled-in defaults, then the TOML file, then `COSELL_SECTION__KEY` env
//! variables, figment), [`secrets`] inline or from `_file` paths (relative ones in systemd's
//! `$CREDENTIALS_DIRECTORY`), [`validate`] whose every message names the offending key, the
//! [`webhook`], [`actions`] and [`aws`] sections, alert sinks' [`routes`] (their keys checked),
//! the [`bounds`] no value may cross, and the redacted view `check-config` prints.

pub(crate) mod actions;
pub(crate) mod aws;
mod bounds;
mod duration;
mod errors;
mod load;
mod routes;
mod secrets;
pub(crate) mod suggest;
pub(crate) mod triage;
mod types;
mod validate;
pub(crate) mod webhook;

use std::path::PathBuf;

pub(crate) use actions::ActionsConfig;
pub use aws::{
    check_rejection_reason, AwsConfig, AwsCredentials, BadRejectionReason, CredentialSource,
};
pub(crate) use duration::HumanDuration;
pub use errors::{ConfigError, ConfigErrors};
pub use load::{config_path, Loaded};
pub use routes::{Severity, ALERT_KINDS};
pub use secrets::fnv1a;
pub use secrets::{redacted_url, resolve_secret_path};
pub use triage::{RuleAction, RuleConfig, TriageConfig, TriageMode};
pub use types::*;
pub use validate::{listen_addresses_overlap, parse_cron};
pub use webhook::PartnerWebhookConfig;

/// Where the configuration file is looked for when neither `--config` nor `COSELL_CONFIG` say.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/cosell-sync/config.toml";
/// Prefix of environment overrides: `COSELL_MICROSOFT__TENANT` sets `microsoft.tenant`.
pub const ENV_PREFIX: &str = "COSELL_";
/// What `check-config` says when `[microsoft]` is left out.
pub const MICROSOFT_OFF_NOTE: &str = "# [microsoft] is not configured: Microsoft is off (no Partner Center pull, token, webhook or answers); only the [aws] inbox is watched\n";
/// Name of the rotated Microsoft refresh-token file, kept beside the database (never in it).
pub const TOKEN_FILE_NAME: &str = "microsoft-refresh-token";

impl Config {
    /// The Microsoft side runs when `[microsoft]` is in the file or the environment (spec
    /// §8): an AWS-only partner leaves it out, and then no Microsoft token is asked for and
    /// nothing is pulled from or sent to Partner Center.
    pub fn microsoft_enabled(&self) -> bool {
        !self.named.no_microsoft
    }

    /// The secrets written inline in the configuration file (for the "readable by others"
    /// warning: such a file must be readable by its owner only, or the secret moved to a
    /// `_file`).
    pub(crate) fn inline_secrets(&self) -> &[&'static str] {
        &self.named.inline_secrets
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

    /// The directory of the database (the token file and the action links' key live there).
    pub fn state_dir(&self) -> PathBuf {
        match self.state.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// The effective configuration as TOML, secrets shown as `[redacted]`. With Microsoft
    /// off its section is left out (its defaults are not in force) and a comment says so.
    pub fn redacted_toml(&self) -> String {
        let printed = match self.microsoft_enabled() {
            true => toml::to_string_pretty(self),
            false => toml::Table::try_from(self).and_then(|mut table| {
                table.remove("microsoft");
                toml::to_string_pretty(&table).map(|text| format!("{MICROSOFT_OFF_NOTE}{text}"))
            }),
        };
        printed.unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Hostile text for the generated tests of the config's parsers: digits, unit letters and
/// words, signs, dots, spaces, slashes and some multi-byte characters, in any order.
#[cfg(test)]
pub(crate) fn hostile_text(rng: &mut fastrand::Rng, max_len: usize) -> String {
    const PIECES: &[&str] = &[
        "0",
        "1",
        "9",
        "30",
        "18446744073709551615",
        "99999999999999999999",
        "s",
        "m",
        "h",
        "d",
        "w",
        "ms",
        "y",
        "seconds",
        "minute",
        "hours",
        "day",
        "weeks",
        " ",
        "  ",
        "\t",
        "-",
        "+",
        ".",
        ":",
        "/",
        "_",
        "Europe",
        "Berlin",
        "UTC",
        "é",
        "日",
        "\u{1F600}",
        "\u{0}",
        "Z",
    ];
    let n = rng.usize(0..=max_len);
    (0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        for bad in ["", "h", "12", "3 fortnights", "5y", "-3h"] {
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

/// Defaults in one place (issue 26): every key of `config.example.toml` that has a
/// compiled-in default shows that default, and every defaulted key is in the example.
/// Required keys (tenant, client_id, partner_id, ...) have no default: the example's value is
/// a placeholder and is not compared.
#[cfg(test)]
mod example_defaults {
    use super::*;

    /// Leaves of a TOML table as `section.key` → value (arrays are leaves).
    fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => leaves(&path, t, out),
                other => out.push((path, other.clone())),
            }
        }
    }

    /// Two spellings of one value: equal, or the same duration ("60m" and "1h").
    fn same(a: &toml::Value, b: &toml::Value) -> bool {
        let duration = |v: &toml::Value| v.as_str().and_then(|s| s.parse::<HumanDuration>().ok());
        a == b
            || matches!((duration(a), duration(b)), (Some(x), Some(y)) if x.0 == y.0)
            || matches!((a.as_float(), b.as_integer()), (Some(x), Some(y)) if x == y as f64)
            || matches!((a.as_integer(), b.as_float()), (Some(x), Some(y)) if x as f64 == y)
    }

    #[test]
    fn every_default_is_the_example_s_value_and_every_defaulted_key_is_in_it() {
        let example: toml::Table = toml::from_str(include_str!("../../config.example.toml"))
            .expect("config.example.toml is TOML");
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize");
        let (mut shown, mut compiled) = (Vec::new(), Vec::new());
        leaves("", &example, &mut shown);
        leaves("", &defaults, &mut compiled);
        let mut wrong = Vec::new();
        for (key, default) in &compiled {
            match shown.iter().find(|(k, _)| k == key) {
                Some((_, value)) if same(value, default) => {}
                Some((_, value)) => {
                    wrong.push(format!("{key}: compiled-in {default}, example {value}"))
                }
                // No sink by default: an empty list needs no line (the example shows
                // commented sinks instead).
                None if default.as_array().is_some_and(Vec::is_empty) => {}
                None => wrong.push(format!("{key}: compiled-in {default}, not in the example")),
            }
        }
        assert!(
            wrong.is_empty(),
            "defaults and config.example.toml disagree:\n{}",
            wrong.join("\n")
        );
    }
}
