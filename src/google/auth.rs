//! Google service-account tokens through `gcp_auth`: it signs the RS256 JWT-bearer grant with
//! the key file's private key, posts it to the key's own `token_uri`, and caches the token.

use std::path::Path;
use std::sync::Arc;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use secrecy::SecretString;

use crate::http::ApiError;

pub struct GoogleAuth {
    provider: Arc<dyn TokenProvider>,
}

impl std::fmt::Debug for GoogleAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GoogleAuth")
    }
}

impl GoogleAuth {
    /// Reads a service-account key file (JSON with `client_email`, `private_key`, `token_uri`).
    pub(crate) fn from_key_file(path: &Path) -> Result<GoogleAuth, String> {
        let json =
            crate::files::read_text(path, crate::files::Kind::Key).map_err(|e| e.to_string())?;
        let account = CustomServiceAccount::from_json(&json)
            .map_err(|e| format!("cannot use the service-account key {}: {e}", path.display()))?;
        Ok(GoogleAuth {
            provider: Arc::new(account),
        })
    }

    pub(crate) async fn token(&self) -> Result<SecretString, ApiError> {
        let token = self
            .provider
            .token(&[super::SCOPE])
            .await
            .map_err(|e| ApiError::Auth {
                api: "google-auth",
                message: format!(
                    "service-account token refused: {}",
                    crate::http::error_chain(&e)
                ),
                code: None,
                // gcp_auth already retried; the next cycle tries again.
                transient: true,
            })?;
        Ok(SecretString::from(token.as_str().to_string()))
    }
}
