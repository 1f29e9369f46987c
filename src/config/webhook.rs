//! The `[webhook]` section (spec §4): where the receiver listens, the URL registered with
//! Partner Center, which certificate URLs are trusted, and an extra trust root. Absent = off.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, HumanDuration};

/// The events the daemon subscribes to: the four referral events Microsoft's own co-sell
/// connectors register, plus `test-created`, which `webhook test` needs.
pub(crate) const DEFAULT_EVENTS: &[&str] = &[
    "referral-created",
    "referral-updated",
    "related-referral-created",
    "related-referral-updated",
    "test-created",
];

/// Partner Center events: the receiver and the registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerWebhookConfig {
    /// The plain-HTTP receiver's address; TLS is the reverse proxy's job.
    pub(crate) listen: String,
    /// What Partner Center calls (registered by `webhook register`); the receiver answers POST
    /// on this URL's path.
    pub(crate) public_url: String,
    /// `X-MS-Certificate-Url` must start with one of these, or the event is rejected before
    /// anything is fetched.
    #[serde(default = "default_prefixes")]
    pub(crate) certificate_url_prefixes: Vec<String>,
    /// An extra trust root (PEM) besides the system's, for the simulator and tests. Empty = none.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// The signing certificate must be issued to this name (DNS name or common name). [I]: the
    /// documented sample certificate is `pcnotifications-dispatch.microsoft.com.cer`.
    #[serde(default = "default_subject")]
    pub(crate) certificate_subject: String,
    /// The events registered.
    #[serde(default = "default_events")]
    pub(crate) events: Vec<String>,
    /// The classic Partner Center API that hosts `/webhooks/v1/registration` (not the
    /// Referrals API host).
    #[serde(default = "default_api_base")]
    pub(crate) api_base: String,
    /// How often accepted events that were not forwarded yet are retried.
    #[serde(default = "default_sweep")]
    pub(crate) sweep_interval: HumanDuration,
    /// Forward attempts per event before it is left to polling.
    #[serde(default = "default_attempts")]
    pub(crate) max_attempts: u32,
}

fn default_prefixes() -> Vec<String> {
    vec!["https://3psostorageacct.blob.core.windows.net/cert/".into()]
}

fn default_subject() -> String {
    "pcnotifications-dispatch.microsoft.com".into()
}

fn default_events() -> Vec<String> {
    DEFAULT_EVENTS.iter().map(|e| e.to_string()).collect()
}

fn default_api_base() -> String {
    "https://api.partnercenter.microsoft.com".into()
}

fn default_sweep() -> HumanDuration {
    HumanDuration::secs(30)
}

fn default_attempts() -> u32 {
    5
}

/// A section with every default and the given `public_url` (listening on 127.0.0.1:8787).
pub(crate) fn example(public_url: &str) -> PartnerWebhookConfig {
    PartnerWebhookConfig {
        listen: "127.0.0.1:8787".into(),
        public_url: public_url.into(),
        certificate_url_prefixes: default_prefixes(),
        ca_file: None,
        certificate_subject: default_subject(),
        events: default_events(),
        api_base: default_api_base(),
        sweep_interval: default_sweep(),
        max_attempts: default_attempts(),
    }
}

impl PartnerWebhookConfig {
    /// The receiver's path: `public_url`'s path.
    pub(crate) fn path(&self) -> String {
        reqwest::Url::parse(&self.public_url)
            .map(|u| u.path().to_string())
            .unwrap_or_else(|_| "/".into())
    }

    /// Every problem, each naming its `webhook.*` key.
    pub(crate) fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                "webhook.listen",
                format!(
                    "{:?} is not host:port (e.g. \"127.0.0.1:8787\")",
                    self.listen
                ),
            ));
        }
        match reqwest::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
                if u.scheme() == "http" && !is_loopback(&u) {
                    errors.push(ConfigError::new(
                        "webhook.public_url",
                        "must be https (Partner Center calls it over the internet; TLS is the reverse proxy's job)",
                    ));
                }
            }
            _ => errors.push(ConfigError::new(
                "webhook.public_url",
                format!("{:?} is not an absolute https URL", self.public_url),
            )),
        }
        if self.certificate_url_prefixes.is_empty() {
            errors.push(ConfigError::new(
                "webhook.certificate_url_prefixes",
                "must name at least one trusted certificate location",
            ));
        }
        for (i, prefix) in self.certificate_url_prefixes.iter().enumerate() {
            if let Err(e) = check_prefix(prefix) {
                errors.push(ConfigError::new(
                    format!("webhook.certificate_url_prefixes[{i}]"),
                    e,
                ));
            }
        }
        if let Some(path) = self.ca_file.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            if let Err(e) = crate::pem::read_pem_roots(path) {
                errors.push(ConfigError::new("webhook.ca_file", e));
            }
        }
        if self.certificate_subject.trim().is_empty() {
            errors.push(ConfigError::new(
                "webhook.certificate_subject",
                "must not be empty",
            ));
        }
        if self.events.is_empty() || self.events.iter().any(|e| e.trim().is_empty()) {
            errors.push(ConfigError::new(
                "webhook.events",
                "must list event names (e.g. \"referral-created\")",
            ));
        }
        if reqwest::Url::parse(&self.api_base).is_err() {
            errors.push(ConfigError::new(
                "webhook.api_base",
                format!("{:?} is not a URL", self.api_base),
            ));
        }
        if self.sweep_interval.0.is_zero() {
            errors.push(ConfigError::new(
                "webhook.sweep_interval",
                "must be more than 0s",
            ));
        }
        if self.max_attempts == 0 {
            errors.push(ConfigError::new(
                "webhook.max_attempts",
                "must be at least 1",
            ));
        }
    }
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A prefix must pin scheme, host and a path ending in `/`, so no other host or sibling path
/// (`…windows.net.evil.example`, `…/cert-evil/`) can match it.
fn check_prefix(prefix: &str) -> Result<(), String> {
    let url =
        reqwest::Url::parse(prefix).map_err(|e| format!("{prefix:?} is not a URL prefix: {e}"))?;
    if url.host_str().is_none() || !prefix.ends_with('/') || url.query().is_some() {
        return Err(format!(
            "{prefix:?} must be scheme://host/path/ ending in \"/\""
        ));
    }
    if url.scheme() != "https" && !is_loopback(&url) {
        return Err(format!("{prefix:?} must be https"));
    }
    if url.as_str() != prefix {
        return Err(format!(
            "{prefix:?} is not in normal form (write it as {:?})",
            url.as_str()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PartnerWebhookConfig {
        toml::from_str(
            r#"
listen = "127.0.0.1:8787"
public_url = "https://sync.example.com/partner-center/events"
"#,
        )
        .unwrap()
    }

    fn keys(c: &PartnerWebhookConfig) -> Vec<String> {
        let mut errors = Vec::new();
        c.validate(&mut errors);
        errors.into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn the_defaults_validate_and_the_path_comes_from_public_url() {
        let c = config();
        assert!(keys(&c).is_empty());
        assert_eq!(c.path(), "/partner-center/events");
        assert_eq!(c.events.len(), 5);
    }

    /// The commented `[webhook]` section of config.example.toml, uncommented, is valid and
    /// names every key of the struct (so the example documents them all).
    #[test]
    fn the_example_section_is_valid_and_complete() {
        let file = include_str!("../../config.example.toml");
        let section: String = file
            .lines()
            .skip_while(|l| *l != "# [webhook]")
            .skip(1)
            .filter(|l| l.starts_with("# ") && !l.starts_with("# #"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let table: toml::Table = toml::from_str(&section).unwrap();
        let c: PartnerWebhookConfig = toml::Value::Table(table.clone()).try_into().unwrap();
        assert!(keys(&c).is_empty(), "{:?}", keys(&c));
        let all = toml::Value::try_from(example("https://x.example/e")).unwrap();
        for key in all.as_table().unwrap().keys().filter(|k| *k != "ca_file") {
            assert!(
                table.contains_key(key),
                "config.example.toml lacks webhook.{key}"
            );
        }
    }

    #[test]
    fn each_bad_key_is_named() {
        let mut c = config();
        c.listen = "8787".into();
        c.public_url = "http://sync.example.com/x".into();
        c.certificate_url_prefixes = vec![
            "https://3psostorageacct.blob.core.windows.net".into(),
            "http://certs.example.com/cert/".into(),
            "https://HOST.example/cert/".into(),
        ];
        c.max_attempts = 0;
        assert_eq!(
            keys(&c),
            [
                "webhook.listen",
                "webhook.public_url",
                "webhook.certificate_url_prefixes[0]",
                "webhook.certificate_url_prefixes[1]",
                "webhook.certificate_url_prefixes[2]",
                "webhook.max_attempts"
            ]
        );
    }
}
