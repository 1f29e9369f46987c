//! Entra ID tokens for Partner Center: the refresh-token grant on
//! `{authority}/{tenant}/oauth2/v2.0/token`. Every grant returns a new refresh token; it is
//! written atomically (mode 0600) to its own file beside the database and used next time, so
//! the configured token is only the first. Access tokens are cached until shortly before expiry.
//!
//! A rotated token that cannot be written (a full disk, a broken state directory) is not
//! dropped: the old one may already be void, so the new one is kept in memory, used for the
//! next grants, and written again on every use until the write succeeds
//! ([`TokenSource::unsaved`] says so, for an alert).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::Config;
use crate::http::{error_chain, ApiError};

const API: &str = "microsoft-auth";

#[derive(Debug)]
struct CachedToken {
    access_token: SecretString,
    refresh_at: Instant,
}

/// Hands out access tokens for the Referrals API and keeps the refresh token rotating.
#[derive(Debug)]
pub struct TokenSource {
    http: reqwest::Client,
    token_url: reqwest::Url,
    client_id: String,
    client_secret: Option<SecretString>,
    scope: String,
    token_file: PathBuf,
    initial_refresh_token: Option<SecretString>,
    cached: Mutex<Option<CachedToken>>,
    /// A rotated refresh token not yet in the token file, and the first failed write.
    unsaved: std::sync::Mutex<Option<Unsaved>>,
    /// `[microsoft]` is not configured (an AWS-only set-up): every grant is refused here,
    /// before any request, whatever token file a former set-up left in the state directory.
    off: bool,
}

#[derive(Debug, Clone)]
struct Unsaved {
    token: SecretString,
    since: chrono::DateTime<chrono::Utc>,
    error: String,
}

/// A rotated refresh token the token file does not hold yet (for an alert).
#[derive(Debug, Clone, PartialEq)]
pub struct UnsavedToken {
    pub token_file: PathBuf,
    pub(crate) since: chrono::DateTime<chrono::Utc>,
    pub error: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    /// Entra's v2 endpoint sends a number, its v1 endpoint a string.
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

impl TokenSource {
    /// From `[microsoft]` (authority, tenant, client id, secrets) and the token file beside the
    /// database: the one place the Referrals API's tokens are set up from the settings.
    pub(crate) fn from_config(http: reqwest::Client, config: &Config) -> Result<Self, BadEndpoint> {
        let ms = &config.microsoft;
        let mut source = Self::new(
            http,
            &ms.authority,
            ms.tenant.as_deref().unwrap_or_default(),
            ms.client_id.clone().unwrap_or_default(),
            ms.client_secret.clone(),
            ms.refresh_token.clone(),
            config.token_file(),
        )?;
        source.off = !config.microsoft_enabled();
        Ok(source)
    }

    pub fn new(
        http: reqwest::Client,
        authority: &str,
        tenant: &str,
        client_id: String,
        client_secret: Option<SecretString>,
        initial_refresh_token: Option<SecretString>,
        token_file: PathBuf,
    ) -> Result<Self, BadEndpoint> {
        let token_url = token_endpoint(authority, tenant, "token")?;
        Ok(TokenSource {
            http,
            token_url,
            client_id,
            client_secret,
            scope: super::SCOPE.to_string(),
            token_file,
            initial_refresh_token,
            cached: Mutex::new(None),
            unsaved: std::sync::Mutex::new(None),
            off: false,
        })
    }

    /// The rotated token this source holds only in memory, if any.
    pub fn unsaved(&self) -> Option<UnsavedToken> {
        self.unsaved_slot().as_ref().map(|u| UnsavedToken {
            token_file: self.token_file.clone(),
            since: u.since,
            error: u.error.clone(),
        })
    }

    fn unsaved_slot(&self) -> std::sync::MutexGuard<'_, Option<Unsaved>> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `token` to the token file; on failure keeps it in memory (the newest token is
    /// never dropped), and clears that once a write succeeds.
    fn persist(&self, token: SecretString) {
        match write_secret_file(&self.token_file, token.expose_secret()) {
            Ok(()) => {
                if self.unsaved_slot().take().is_some() {
                    tracing::info!(file = %self.token_file.display(), "rotated refresh token written to its file at last");
                }
            }
            Err(e) => {
                let error = format!("cannot write {}: {e}", self.token_file.display());
                let mut slot = self.unsaved_slot();
                if slot.is_none() {
                    tracing::error!(%error, "the rotated Microsoft refresh token cannot be stored; it is kept in memory and written again on every use (a restart before that loses the sign-in)");
                }
                let since = slot.as_ref().map_or_else(chrono::Utc::now, |u| u.since);
                *slot = Some(Unsaved {
                    token,
                    since,
                    error,
                });
            }
        }
    }

    /// The same grant for another resource (the same refresh token serves several Partner
    /// Center resources, e.g. the classic API that hosts webhook registrations).
    pub(crate) fn with_scope(mut self, scope: &str) -> Self {
        self.scope = scope.to_string();
        self
    }

    /// A valid access token, from cache or from a fresh grant.
    pub async fn access_token(&self) -> Result<SecretString, ApiError> {
        // A token only in memory is written again at every use until it is on disk.
        let pending = self.unsaved_slot().as_ref().map(|u| u.token.clone());
        if let Some(token) = pending {
            self.persist(token);
        }
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref() {
            if Instant::now() < token.refresh_at {
                return Ok(token.access_token.clone());
            }
        }
        let fresh = self.redeem_refresh_token().await?;
        let token = fresh.access_token.clone();
        *cached = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached access token (after a 401), so the next call makes a new grant.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    /// The refresh token to redeem: the rotated one on disk, else the configured first one.
    fn current_refresh_token(&self) -> Result<SecretString, ApiError> {
        if self.off {
            return Err(ApiError::Auth {
                api: API,
                message: "Microsoft is off: [microsoft] is not configured (an AWS-only set-up asks Partner Center for nothing)".into(),
                code: None,
                transient: false,
            });
        }
        // Newer than the file, which could not take it.
        if let Some(unsaved) = self.unsaved_slot().as_ref() {
            return Ok(unsaved.token.clone());
        }
        match crate::files::read_text(&self.token_file, crate::files::Kind::Secret) {
            Ok(text) if !text.trim().is_empty() => {
                return Ok(SecretString::from(text.trim().to_string()))
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(ApiError::Auth {
                    api: API,
                    message: format!("token file: {e}"),
                    code: None,
                    transient: false,
                })
            }
        }
        self.initial_refresh_token.clone().ok_or_else(|| ApiError::Auth {
            api: API,
            message: format!(
                "no refresh token: {} is absent and microsoft.refresh_token is not set; run `cosell-sync auth microsoft`",
                self.token_file.display()
            ),
            code: None,
            transient: false,
        })
    }

    /// The refresh-token grant: send, read Entra's answer (or its error shape), persist the
    /// rotated token before using the access token. Kept in one piece on purpose: the order of
    /// "answer read → token file written → token used" is the crash-safety argument.
    async fn redeem_refresh_token(&self) -> Result<CachedToken, ApiError> {
        let refresh_token = self.current_refresh_token()?;
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", self.client_id.as_str()),
            ("refresh_token", refresh_token.expose_secret()),
            ("scope", self.scope.as_str()),
        ];
        if let Some(secret) = &self.client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        let started = Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .header("client-request-id", crate::http::new_request_id())
            .form(&form)
            .send()
            .await
            .map_err(|e| ApiError::Auth {
                api: API,
                message: format!("token endpoint unreachable: {}", error_chain(&e)),
                code: None,
                transient: true,
            })?;
        let status = response.status();
        let body = crate::http::read_capped(API, "POST", "token", response)
            .await
            .map_err(|e| ApiError::Auth {
                api: API,
                message: format!("token answer cut short or too large: {e}"),
                code: None,
                transient: true,
            })?;
        if !status.is_success() {
            let err: OAuthError = serde_json::from_str(&body).unwrap_or_default();
            let permanent = status.is_client_error() && status.as_u16() != 429;
            let hint = match err.error.as_str() {
                "invalid_grant" => {
                    " — the refresh token is expired or revoked; run `cosell-sync auth microsoft`"
                }
                // A new sign-in would fail the same way: the app's own credential is wrong.
                "invalid_client" => {
                    " — check microsoft.client_secret (client secrets expire: make a new one for the app registration in Entra ID)"
                }
                _ => "",
            };
            // The description can quote the request but never the token, so it is safe to log.
            let description = err
                .error_description
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            return Err(ApiError::Auth {
                api: API,
                message: format!(
                    "token endpoint answered HTTP {}: {} {description}{hint}",
                    status.as_u16(),
                    if err.error.is_empty() {
                        "(no error code)"
                    } else {
                        &err.error
                    }
                ),
                code: (!err.error.is_empty()).then_some(err.error),
                transient: !permanent,
            });
        }
        let parsed: TokenResponse = serde_json::from_str(&body).map_err(|e| ApiError::Auth {
            api: API,
            message: format!("token answer is not a token response: {e}"),
            code: None,
            transient: true,
        })?;
        if let Some(rotated) = parsed.refresh_token.filter(|t| !t.is_empty()) {
            self.persist(SecretString::from(rotated));
        }
        let lifetime = token_lifetime(parsed.expires_in);
        // Renew a little early: 5 minutes, or a tenth of a short lifetime.
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            expires_in = lifetime.as_secs(),
            "microsoft access token granted"
        );
        Ok(CachedToken {
            access_token: SecretString::from(parsed.access_token),
            refresh_at: started + (lifetime - margin),
        })
    }
}

/// The longest access-token lifetime believed (Entra's are 60–90 minutes): an absurd
/// `expires_in` can neither overflow the clock nor keep a revoked token cached for years.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// `expires_in` as a lifetime: one hour when absent, clamped to [`MAX_TOKEN_LIFETIME`].
pub fn token_lifetime(expires_in: Option<u64>) -> Duration {
    Duration::from_secs(expires_in.unwrap_or(3600)).min(MAX_TOKEN_LIFETIME)
}

/// A token endpoint URL that does not parse (`authority` or `tenant` is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad token endpoint {text:?}: {error}")]
pub struct BadEndpoint {
    text: String,
    /// The URL parser's words.
    error: String,
}

/// `{authority}/{tenant}/oauth2/v2.0/{endpoint}`.
pub(crate) fn token_endpoint(
    authority: &str,
    tenant: &str,
    endpoint: &str,
) -> Result<reqwest::Url, BadEndpoint> {
    let text = format!(
        "{}/{}/oauth2/v2.0/{endpoint}",
        authority.trim_end_matches('/'),
        tenant.trim_matches('/')
    );
    reqwest::Url::parse(&text).map_err(|e| BadEndpoint {
        text,
        error: e.to_string(),
    })
}

/// Writes a secret so that no reader ever sees a partial file or a wider mode than 0600:
/// a temporary file in the same directory, fsync, rename over, fsync the directory.
pub(crate) fn write_secret_file(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("secret");
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        give_to_directory_owner(&file, dir)?;
        file.write_all(contents.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A secret written by root into a directory another user owns (the service's state
/// directory, from `auth check` or `auth microsoft` in a root shell) is given to that owner:
/// a root-owned 0600 file there would lock the service out of its own token. In a
/// root-owned directory (a container, a root cron job) the file stays root's.
fn give_to_directory_owner(file: &std::fs::File, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir)?;
    let mine = file.metadata()?;
    if mine.uid() == owner.uid() {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(owner.uid()), Some(owner.gid())).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot give the new file to the owner of {} (uid {}), who must be able to read it: {e}",
                dir.display(),
                owner.uid()
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_secret_file(&path, "first").unwrap();
        write_secret_file(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "second\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn token_endpoint_joins_authority_and_tenant() {
        assert_eq!(
            token_endpoint(
                "https://login.microsoftonline.com/",
                "contoso.onmicrosoft.com",
                "token"
            )
            .unwrap()
            .as_str(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
    }
}

/// What `/devicecode` answers.
#[derive(Debug, Deserialize)]
struct DeviceCode {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default, deserialize_with = "number_or_string")]
    expires_in: Option<u64>,
    #[serde(default, deserialize_with = "number_or_string")]
    interval: Option<u64>,
    #[serde(default)]
    message: Option<String>,
}

/// First-run authentication (OAuth device-code flow, RFC 8628, on
/// `{authority}/{tenant}/oauth2/v2.0/devicecode`): shows the user a code to enter, polls the
/// token endpoint as told (`authorization_pending` waits, `slow_down` adds 5 s to the
/// interval, `expired_token` and refusals end it), and stores the refresh token in the token
/// file. `show` receives the instructions for the person.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn device_code_flow(
    http: &reqwest::Client,
    authority: &str,
    tenant: &str,
    client_id: &str,
    client_secret: Option<&SecretString>,
    token_file: &Path,
    show: impl Fn(&str),
) -> Result<(), String> {
    let device_url = token_endpoint(authority, tenant, "devicecode").map_err(|e| e.to_string())?;
    let token_url = token_endpoint(authority, tenant, "token").map_err(|e| e.to_string())?;
    let answer = http
        .post(device_url.clone())
        .form(&[("client_id", client_id), ("scope", super::SCOPE)])
        .send()
        .await
        .map_err(|e| format!("{device_url}: {}", error_chain(&e)))?;
    let status = answer.status();
    let body = crate::http::read_capped(API, "POST", "devicecode", answer)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        let err: OAuthError = serde_json::from_str(&body).unwrap_or_default();
        return Err(format!(
            "device code refused (HTTP {}): {} {}",
            status.as_u16(),
            err.error,
            err.error_description
        ));
    }
    let code: DeviceCode =
        serde_json::from_str(&body).map_err(|e| format!("unreadable device code answer: {e}"))?;
    show(&code.message.clone().unwrap_or_else(|| {
        format!(
            "To sign in, open {} and enter the code {}",
            code.verification_uri, code.user_code
        )
    }));
    let mut interval = Duration::from_secs(code.interval.unwrap_or(5).clamp(1, 60));
    let deadline = Instant::now()
        + Duration::from_secs(code.expires_in.unwrap_or(900)).min(Duration::from_secs(3600));
    loop {
        if Instant::now() >= deadline {
            return Err("the code expired before sign-in finished; run the command again".into());
        }
        tokio::time::sleep(interval).await;
        let mut form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", client_id),
            ("device_code", code.device_code.as_str()),
        ];
        if let Some(secret) = client_secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        let answer = http
            .post(token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("{token_url}: {}", error_chain(&e)))?;
        let status = answer.status();
        let body = crate::http::read_capped(API, "POST", "token", answer)
            .await
            .map_err(|e| e.to_string())?;
        if status.is_success() {
            let token: TokenResponse =
                serde_json::from_str(&body).map_err(|e| format!("unreadable token answer: {e}"))?;
            let refresh = token
                .refresh_token
                .filter(|t| !t.is_empty())
                .ok_or("the token answer has no refresh_token (is offline_access granted?)")?;
            write_secret_file(token_file, &refresh)
                .map_err(|e| format!("cannot write {}: {e}", token_file.display()))?;
            return Ok(());
        }
        let err: OAuthError = serde_json::from_str(&body).unwrap_or_default();
        match err.error.as_str() {
            "authorization_pending" => {}
            "slow_down" => interval += Duration::from_secs(5),
            "expired_token" => {
                return Err(
                    "the code expired before sign-in finished; run the command again".into(),
                )
            }
            other => {
                return Err(format!(
                    "sign-in refused: {other} {}",
                    err.error_description.lines().next().unwrap_or("")
                ))
            }
        }
    }
}
