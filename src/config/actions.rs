//! The `[actions]` section (spec §4): where the action page listens, the public URL its links
//! start with, the SSO header that names the person, the decline reasons offered, and the
//! HMAC key of the links. Absent = no links and no page. The links and the page themselves
//! are [`crate::actions`]'s.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsConfig {
    /// Plain HTTP, behind the TLS reverse proxy; may equal `[webhook] listen` (one server).
    pub listen: String,
    /// Links are `public_url/TOKEN`; the page answers on this URL's path (the proxy forwards
    /// it unchanged). `http://` only for a loopback set-up.
    pub public_url: String,
    /// E.g. `X-Forwarded-Email` behind an SSO proxy: then required on every request (403
    /// without) and recorded as the actor. Empty = none (the actor is `link`).
    #[serde(default)]
    pub actor_header: String,
    /// The reasons the page offers for a decline (each becomes `statusReason`).
    #[serde(default = "default_reasons")]
    pub(crate) decline_reasons: Vec<String>,
    /// The links' HMAC key (at least 32 bytes). Empty = `actions.key` generated in the
    /// state directory (mode 0600).
    #[serde(default)]
    pub(crate) key_file: Option<PathBuf>,
    /// The inbox (spec §7) behind a proxy on another host: every inbox request must carry
    /// `X-Proxy-Secret` with this file's content. Required for the inbox on a listen address
    /// that is not loopback (the actor header alone would name anyone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) proxy_secret_file: Option<PathBuf>,
}

/// Reasons a partner declines a co-sell referral. [?] Partner Center's own list is not
/// published (`partner-apis.md`: statusReason is a free string).
pub(crate) fn default_reasons() -> Vec<String> {
    [
        "Not a fit for our solution area",
        "No capacity to take this on now",
        "Customer is outside our region",
        "Deal size too small",
        "Duplicate of an existing opportunity",
        "Customer already working with another partner",
    ]
    .iter()
    .map(|r| r.to_string())
    .collect()
}

/// A reason is at most this long (Partner Center's limit is unpublished; the page shows it).
pub(crate) const MAX_REASON_CHARS: usize = 200;

impl ActionsConfig {
    /// The page on a loopback port with the default reasons, no SSO header and a generated
    /// key (the demo's).
    pub(crate) fn loopback(port: u16) -> ActionsConfig {
        ActionsConfig {
            listen: format!("127.0.0.1:{port}"),
            public_url: format!("http://127.0.0.1:{port}/act"),
            actor_header: String::new(),
            decline_reasons: default_reasons(),
            key_file: None,
            proxy_secret_file: None,
        }
    }

    /// The page's path: `public_url`'s, without a trailing `/` (empty for the root).
    pub(crate) fn path(&self) -> String {
        reqwest::Url::parse(&self.public_url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default()
    }

    /// The key file, when one is named.
    pub(crate) fn key_file(&self) -> Option<&std::path::Path> {
        self.key_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The proxy secret's file, when one is named.
    pub(crate) fn proxy_secret_file(&self) -> Option<&std::path::Path> {
        self.proxy_secret_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// Whether `listen` is a loopback address (only the local proxy can reach it).
    pub(crate) fn listens_on_loopback(&self) -> bool {
        self.listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    }

    /// The actor header, when one is set.
    pub(crate) fn actor_header(&self) -> Option<&str> {
        Some(self.actor_header.trim()).filter(|h| !h.is_empty())
    }

    /// Every problem, each naming its `actions.*` key.
    pub(crate) fn validate(&self, errors: &mut Vec<ConfigError>) {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            errors.push(ConfigError::new(
                "actions.listen",
                format!(
                    "{:?} is not host:port (e.g. \"127.0.0.1:8788\")",
                    self.listen
                ),
            ));
        }
        match reqwest::Url::parse(&self.public_url) {
            Ok(u) if matches!(u.scheme(), "https" | "http") && u.host_str().is_some() => {
                if u.scheme() == "http" && !super::webhook::is_loopback(&u) {
                    errors.push(ConfigError::new(
                        "actions.public_url",
                        "must be https (people open it from chat; TLS is the reverse proxy's job); http only for a loopback address",
                    ));
                }
                if u.query().is_some() || u.fragment().is_some() {
                    errors.push(ConfigError::new(
                        "actions.public_url",
                        "must not carry a query or a fragment (links add a path segment)",
                    ));
                }
            }
            _ => errors.push(ConfigError::new(
                "actions.public_url",
                format!("{:?} is not an absolute https URL", self.public_url),
            )),
        }
        if let Some(h) = self.actor_header() {
            if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                errors.push(ConfigError::new(
                    "actions.actor_header",
                    format!("{h:?} is not an HTTP header name"),
                ));
            }
        }
        self.validate_reasons(errors);
        self.validate_inbox(errors);
        if let Some(path) = self.key_file() {
            if let Err(e) = read_key_file(path) {
                errors.push(ConfigError::new("actions.key_file", e.to_string()));
            }
        }
    }

    /// `[actions] listen` may share `[webhook] listen` (one server, both routes) but not
    /// its path, and never the metrics port.
    pub(crate) fn validate_listen(
        &self,
        webhook: Option<&super::PartnerWebhookConfig>,
        metrics_listen: Option<&str>,
        errors: &mut Vec<ConfigError>,
    ) {
        if metrics_listen
            .is_some_and(|m| super::validate::listen_addresses_overlap(m, &self.listen))
        {
            errors.push(ConfigError::new(
                "actions.listen",
                "must differ from metrics.listen (the metrics server serves only /metrics and /healthz)",
            ));
        }
        if let Some(w) = webhook.filter(|w| {
            w.listen != self.listen
                && super::validate::listen_addresses_overlap(&w.listen, &self.listen)
        }) {
            errors.push(ConfigError::new(
                "actions.listen",
                format!(
                    "{:?} overlaps webhook.listen {:?}: to share the receiver's server, write the same address; otherwise use another port",
                    self.listen, w.listen
                ),
            ));
        }
        if let Some(w) = webhook.filter(|w| w.listen == self.listen) {
            let page = self.path();
            let hook = w.path();
            if hook.trim_end_matches('/') == page || hook.starts_with(&format!("{page}/")) {
                errors.push(ConfigError::new(
                    "actions.public_url",
                    format!("its path {page:?} overlaps webhook.public_url's {hook:?} on the shared listener"),
                ));
            }
        }
    }

    /// With `actor_header` the inbox is on, and the header alone names the person: so it is
    /// served only on a loopback `listen` or behind `proxy_secret_file` (spec §7).
    fn validate_inbox(&self, errors: &mut Vec<ConfigError>) {
        if let Some(path) = self.proxy_secret_file() {
            if let Err(e) = read_proxy_secret(path) {
                errors.push(ConfigError::new("actions.proxy_secret_file", e.to_string()));
            }
        } else if self.actor_header().is_some()
            && self.listen.parse::<std::net::SocketAddr>().is_ok()
            && !self.listens_on_loopback()
        {
            errors.push(ConfigError::new(
                "actions.listen",
                format!(
                    "{:?} is not a loopback address, and with actor_header the inbox would trust that header from anyone who reaches the port: listen on 127.0.0.1 behind the proxy, or set actions.proxy_secret_file",
                    self.listen
                ),
            ));
        }
    }

    fn validate_reasons(&self, errors: &mut Vec<ConfigError>) {
        if self.decline_reasons.is_empty() {
            errors.push(ConfigError::new(
                "actions.decline_reasons",
                "must list at least one reason (or be left out for the default list)",
            ));
        }
        for (i, r) in self.decline_reasons.iter().enumerate() {
            let bad = if r.trim().is_empty() {
                Some("must not be empty".to_string())
            } else if r.chars().count() > MAX_REASON_CHARS {
                Some(format!("is longer than {MAX_REASON_CHARS} characters"))
            } else if r.chars().any(char::is_control) {
                Some("must not contain control characters".into())
            } else if self.decline_reasons[..i].contains(r) {
                Some("is listed twice".into())
            } else {
                None
            };
            if let Some(message) = bad {
                errors.push(ConfigError::new(
                    format!("actions.decline_reasons[{i}]"),
                    message,
                ));
            }
        }
    }
}

/// Why the proxy secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxySecretError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0} holds {1} bytes; the proxy secret needs at least {MIN_PROXY_SECRET_BYTES}")]
    Short(String, usize),
}

/// A proxy secret shorter than this is refused (it is compared, never derived from).
const MIN_PROXY_SECRET_BYTES: usize = 16;

/// The proxy secret: the file's bytes, trailing whitespace trimmed, at least 16.
pub(crate) fn read_proxy_secret(path: &std::path::Path) -> Result<Vec<u8>, ProxySecretError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ProxySecretError::Read(shown.clone(), e))?;
    let trimmed = bytes.trim_ascii_end().to_vec();
    if trimmed.len() < MIN_PROXY_SECRET_BYTES {
        return Err(ProxySecretError::Short(shown, trimmed.len()));
    }
    Ok(trimmed)
}

/// A key shorter than this is refused (HMAC-SHA256 keys should be at least the hash size).
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// Why the action links' key is not there: its file unreadable or short, or not made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("{0}")]
    File(crate::files::FileError),
    #[error("{} holds {len} bytes; an HMAC key needs at least {MIN_KEY_BYTES} (e.g. `head -c 32 /dev/urandom | base64 > FILE`)", path.display())]
    TooShort { path: PathBuf, len: usize },
    #[error("no randomness for the link key")]
    NoRandomness,
    #[error("{}: {error}", dir.display())]
    CreateDir { dir: PathBuf, error: std::io::Error },
    #[error("cannot write {}: {error}", path.display())]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot create {}: {error}", path.display())]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// An operator's key file: its bytes (trailing whitespace trimmed), at least 32.
pub(crate) fn read_key_file(path: &std::path::Path) -> Result<Vec<u8>, KeyError> {
    let bytes = crate::files::read(path, crate::files::Kind::Secret).map_err(KeyError::File)?;
    let trimmed = bytes.trim_ascii_end().to_vec();
    if trimmed.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort {
            path: path.to_path_buf(),
            len: trimmed.len(),
        });
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ActionsConfig {
        ActionsConfig {
            listen: "127.0.0.1:8788".into(),
            public_url: "https://sync.example.com/act".into(),
            actor_header: String::new(),
            decline_reasons: default_reasons(),
            key_file: None,
            proxy_secret_file: None,
        }
    }

    fn keys(c: &ActionsConfig) -> Vec<String> {
        let mut errors = Vec::new();
        c.validate(&mut errors);
        errors.into_iter().map(|e| e.key).collect()
    }

    /// The commented `[actions]` section of config.example.toml, uncommented, is valid and
    /// names every key.
    #[test]
    fn the_example_section_is_valid_and_complete() {
        let file = include_str!("../../config.example.toml");
        let section: String = file
            .lines()
            .skip_while(|l| *l != "# [actions]")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .filter(|l| l.starts_with("# ") && !l.starts_with("# #"))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let table: toml::Table = toml::from_str(&section).unwrap();
        let c: ActionsConfig = toml::Value::Table(table.clone()).try_into().unwrap();
        assert!(keys(&c).is_empty(), "{:?}", keys(&c));
        for key in ["listen", "public_url", "actor_header", "key_file"] {
            assert!(
                table.contains_key(key),
                "config.example.toml lacks actions.{key}"
            );
        }
        assert!(file.contains("# # decline_reasons = ["));
    }

    #[test]
    fn the_example_is_valid_and_each_mistake_names_its_key() {
        assert!(keys(&config()).is_empty());
        assert_eq!(config().path(), "/act");
        type Edit = fn(&mut ActionsConfig);
        let cases: Vec<(Edit, &str)> = vec![
            (|c| c.listen = "8788".into(), "actions.listen"),
            (
                |c| c.public_url = "http://sync.example.com/act".into(),
                "actions.public_url",
            ),
            (|c| c.public_url = "/act".into(), "actions.public_url"),
            (
                |c| c.public_url = "https://x.example/act?a=1".into(),
                "actions.public_url",
            ),
            (|c| c.actor_header = "X Bad".into(), "actions.actor_header"),
            (|c| c.decline_reasons = vec![], "actions.decline_reasons"),
            (
                |c| c.decline_reasons = vec!["a".into(), "a".into()],
                "actions.decline_reasons[1]",
            ),
            (
                |c| c.decline_reasons = vec![" ".into()],
                "actions.decline_reasons[0]",
            ),
            (
                |c| c.key_file = Some("/nonexistent/key".into()),
                "actions.key_file",
            ),
            (
                |c| {
                    c.actor_header = "X-Forwarded-Email".into();
                    c.listen = "0.0.0.0:8788".into();
                },
                "actions.listen",
            ),
            (
                |c| c.proxy_secret_file = Some("/nonexistent/secret".into()),
                "actions.proxy_secret_file",
            ),
        ];
        for (edit, key) in cases {
            let mut c = config();
            edit(&mut c);
            assert_eq!(keys(&c), vec![key.to_string()]);
        }
        // One listener for both: fine on different paths; never the metrics port.
        let hook = super::super::webhook::example("https://sync.example.com/partner-center/events");
        let shared = ActionsConfig {
            listen: hook.listen.clone(),
            ..config()
        };
        let mut errors = Vec::new();
        shared.validate_listen(Some(&hook), None, &mut errors);
        assert!(errors.is_empty());
        let clash = ActionsConfig {
            public_url: "https://sync.example.com/partner-center".into(),
            ..shared.clone()
        };
        clash.validate_listen(Some(&hook), Some("127.0.0.1:1"), &mut errors);
        assert_eq!(errors.len(), 1);
        shared.validate_listen(None, Some(shared.listen.as_str()), &mut errors);
        assert_eq!(errors[1].key, "actions.listen");
        let mut loopback = config();
        loopback.public_url = "http://127.0.0.1:8788/".into();
        assert!(keys(&loopback).is_empty());
        assert_eq!(loopback.path(), "");
    }
}
