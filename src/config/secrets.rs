//! Secrets: inline or from `_file` paths (relative ones in systemd's `$CREDENTIALS_DIRECTORY`),
//! and how secrets and secret-bearing URLs are printed (`[redacted]`).

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::Serializer;

use super::{Config, ConfigError, ConfigErrors, WebhookConfig};

/// Secrets are printed as `[redacted]`, whatever serializes the configuration.
pub(super) fn redact<S: Serializer>(
    secret: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_str("[redacted]"),
        None => s.serialize_none(),
    }
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

pub(super) fn redact_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redacted_url(url))
}

impl WebhookConfig {
    /// The key deliveries are stored and shown under: `webhook:NAME`, or the redacted URL
    /// with a stable hash of the whole URL (two webhooks on one host stay apart).
    pub(crate) fn sink_key(&self) -> String {
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
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Header values carry credentials (`Authorization = "Bearer ..."`): always redacted.
pub(super) fn redact_headers<S: Serializer>(
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

impl Config {
    pub(super) fn resolve_secrets(&mut self, base_dir: &Path) -> Result<(), ConfigErrors> {
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
        if let Some(aws) = &mut self.aws {
            aws.resolve_secrets(base_dir, &|name| std::env::var(name).ok(), &mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

impl Config {
    /// Every secret or key file this configuration reads, each with the key that names it
    /// (relative paths resolved as they are read), for the "readable by others" warning.
    pub(crate) fn secret_files(&self, base_dir: &Path) -> Vec<(&'static str, PathBuf)> {
        let ms = &self.microsoft;
        let mut files = Vec::new();
        for (key, file) in [
            ("microsoft.client_secret_file", &ms.client_secret_file),
            ("microsoft.refresh_token_file", &ms.refresh_token_file),
        ] {
            if let Some(path) = file {
                files.push((key, resolve_secret_path(path, base_dir)));
            }
        }
        files.push(("microsoft refresh token store", self.token_file()));
        if let Some(path) = &self.google.credentials_file {
            files.push((
                "google.credentials_file",
                resolve_secret_path(path, base_dir),
            ));
        }
        if let Some(actions) = &self.actions {
            match actions.key_file() {
                Some(path) => files.push(("actions.key_file", path.to_path_buf())),
                None => files.push(("actions.key", self.state_dir().join("actions.key"))),
            }
        }
        files
    }
}

/// The directory beside the configuration file that holds the secrets: the unit's
/// `LoadCredential=` lines copy from it, and a root shell reads from it directly.
pub(crate) const CREDENTIALS_DIR_NAME: &str = "credentials";

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

/// Under systemd a relative secret path is a credential, and the unit's blank default stands
/// in for a file missing from `credentials/`: say which file to create.
fn blank_credential_hint(file: &Path, base_dir: &Path) -> String {
    let under_systemd = std::env::var_os("CREDENTIALS_DIRECTORY").is_some_and(|d| !d.is_empty());
    if file.is_absolute() || !under_systemd {
        return String::new();
    }
    format!(
        " (the unit's blank default: is {} missing? Put the secret there and restart)",
        base_dir.join(CREDENTIALS_DIR_NAME).join(file).display()
    )
}

pub(super) fn resolve_secret(
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
    let text = crate::files::read_text(&path, crate::files::Kind::Secret)
        .map_err(|e| ConfigError::new(format!("{key}_file"), e.to_string()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(ConfigError::new(
            format!("{key}_file"),
            format!(
                "{} is empty{}",
                path.display(),
                blank_credential_hint(file, base_dir)
            ),
        ));
    }
    *inline = Some(SecretString::from(value.to_string()));
    Ok(())
}
