//! The bounds no single value may cross, so one bad line costs neither data nor minutes: the
//! shortest `[state] retention` and `audit_retention` (below them a prune empties what people
//! rely on), the longest lists (a 1.5 M-entry `thresholds` took 697 MiB), and paths without a
//! NUL byte (the OS refuses them only later, at exit 1, which systemd restarts). The size of
//! the file itself is capped where it is read ([`crate::files::Kind::Config`]).

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError};

const DAY: Duration = Duration::from_secs(86_400);
/// `[state] retention`: finished history is kept at least a day (a cycle's own rows).
pub(crate) const MIN_RETENTION: Duration = DAY;
/// `[state] audit_retention`: who changed a deal, kept at least 30 days.
pub(crate) const MIN_AUDIT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// The most entries a list may hold; far above any real use.
const MAX_THRESHOLDS: usize = 16;
const MAX_SINKS: usize = 32;
const MAX_LIST: usize = 64;
/// ISO 3166 has 249 country codes.
const MAX_COUNTRIES: usize = 300;

impl Config {
    /// Every bound crossed, each naming its key.
    pub(super) fn check_bounds(&self, errors: &mut Vec<ConfigError>) {
        for (key, value, min, floor) in [
            ("state.retention", self.state.retention, MIN_RETENTION, "1d"),
            (
                "state.audit_retention",
                self.state.audit_retention,
                MIN_AUDIT_RETENTION,
                "30d",
            ),
        ] {
            if value.0 < min {
                errors.push(ConfigError::new(
                    key,
                    format!("{value} is too short (at least {floor}: a prune would delete what people still need)"),
                ));
            }
        }
        for (key, len, max) in self.list_lengths() {
            if len > max {
                errors.push(ConfigError::new(
                    key,
                    format!("has {len} entries; at most {max}"),
                ));
            }
        }
        for (key, path) in self.paths() {
            if path.as_os_str().as_encoded_bytes().contains(&0) {
                errors.push(ConfigError::new(
                    key,
                    "contains a NUL byte: no file can have that name",
                ));
            }
        }
    }

    fn list_lengths(&self) -> Vec<(String, usize, usize)> {
        let a = &self.alerts;
        let mut out = vec![
            (
                "alerts.thresholds".to_string(),
                a.thresholds.len(),
                MAX_THRESHOLDS,
            ),
            ("alerts.webhook".into(), a.webhook.len(), MAX_SINKS),
            ("alerts.command".into(), a.command.len(), MAX_SINKS),
            (
                "sync.lost_stages".into(),
                self.sync.lost_stages.len(),
                MAX_LIST,
            ),
            (
                "sync.won_stages".into(),
                self.sync.won_stages.len(),
                MAX_LIST,
            ),
            (
                "forward.substatuses".into(),
                self.forward.substatuses.len(),
                MAX_LIST,
            ),
            (
                "forward.qualifications".into(),
                self.forward.qualifications.len(),
                MAX_LIST,
            ),
            (
                "forward.countries".into(),
                self.forward.countries.len(),
                MAX_COUNTRIES,
            ),
        ];
        for (i, w) in a.webhook.iter().enumerate() {
            out.push((
                format!("alerts.webhook[{i}].kinds"),
                w.kinds.len(),
                MAX_LIST,
            ));
            out.push((
                format!("alerts.webhook[{i}].thresholds"),
                w.thresholds.len(),
                MAX_THRESHOLDS,
            ));
            out.push((
                format!("alerts.webhook[{i}].headers"),
                w.headers.len(),
                MAX_LIST,
            ));
        }
        for (i, c) in a.command.iter().enumerate() {
            out.push((format!("alerts.command[{i}].argv"), c.argv.len(), MAX_LIST));
            out.push((
                format!("alerts.command[{i}].kinds"),
                c.kinds.len(),
                MAX_LIST,
            ));
            out.push((
                format!("alerts.command[{i}].thresholds"),
                c.thresholds.len(),
                MAX_THRESHOLDS,
            ));
        }
        if let Some(w) = &self.webhook {
            out.push((
                "webhook.certificate_url_prefixes".into(),
                w.certificate_url_prefixes.len(),
                MAX_LIST,
            ));
            out.push(("webhook.events".into(), w.events.len(), MAX_LIST));
        }
        if let Some(actions) = &self.actions {
            out.push((
                "actions.decline_reasons".into(),
                actions.decline_reasons.len(),
                MAX_LIST,
            ));
        }
        out
    }

    /// Every path the configuration names, with its key.
    fn paths(&self) -> Vec<(&'static str, &Path)> {
        let ms = &self.microsoft;
        let mut out = vec![("state.path", self.state.path.as_path())];
        for (key, path) in [
            ("microsoft.client_secret_file", &ms.client_secret_file),
            ("microsoft.refresh_token_file", &ms.refresh_token_file),
            ("google.credentials_file", &self.google.credentials_file),
        ] {
            if let Some(p) = path {
                out.push((key, p.as_path()));
            }
        }
        if let Some(p) = self.webhook.as_ref().and_then(|w| w.ca_file.as_deref()) {
            out.push(("webhook.ca_file", p));
        }
        if let Some(p) = self.actions.as_ref().and_then(|a| a.key_file.as_deref()) {
            out.push(("actions.key_file", p));
        }
        if let Some(aws) = &self.aws {
            for (key, path) in [
                ("aws.secret_access_key_file", &aws.secret_access_key_file),
                ("aws.session_token_file", &aws.session_token_file),
            ] {
                if let Some(p) = path {
                    out.push((key, p.as_path()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn keys(config: &Config) -> Vec<String> {
        let mut errors = Vec::new();
        config.check_bounds(&mut errors);
        errors.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn the_defaults_are_within_every_bound() {
        assert!(keys(&Config::default()).is_empty());
    }

    #[test]
    fn retention_floors_hold_to_the_second() {
        let mut c = Config::default();
        c.state.retention = HumanDuration(MIN_RETENTION);
        c.state.audit_retention = HumanDuration(MIN_AUDIT_RETENTION);
        assert!(keys(&c).is_empty());
        c.state.retention = HumanDuration(MIN_RETENTION - Duration::from_secs(1));
        c.state.audit_retention = HumanDuration(Duration::ZERO);
        assert_eq!(keys(&c), ["state.retention", "state.audit_retention"]);
    }

    #[test]
    fn long_lists_and_nul_paths_are_named() {
        let mut c = Config::default();
        c.alerts.thresholds = vec![HumanDuration(DAY); MAX_THRESHOLDS + 1];
        c.sync.lost_stages = vec!["X".into(); MAX_LIST + 1];
        c.state.path = "/var/lib/cosell\0sync/state.db".into();
        c.microsoft.client_secret_file = Some("secret\0".into());
        let mut aws: crate::config::aws::AwsConfig =
            toml::from_str("session_token_file = \"token\\u0000\"").unwrap();
        aws.secret_access_key_file = Some("key\0".into());
        c.aws = Some(aws);
        assert_eq!(
            keys(&c),
            [
                "alerts.thresholds",
                "sync.lost_stages",
                "state.path",
                "microsoft.client_secret_file",
                "aws.secret_access_key_file",
                "aws.session_token_file"
            ]
        );
    }
}
