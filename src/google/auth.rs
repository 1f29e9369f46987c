//! Google service-account tokens through `gcp_auth`: it signs the RS256 JWT-bearer grant with
//! the key file's private key, posts it to the key's own `token_uri`, and caches the token.

use std::path::Path;
use std::sync::Arc;

use gcp_auth::{CustomServiceAccount, TokenProvider};
use secrecy::SecretString;

use crate::http::ApiError;

/// Why a service-account key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error(transparent)]
    Read(#[from] crate::files::FileError),
    /// The file is not a service-account key `gcp_auth` accepts: its words.
    #[error("cannot use the service-account key {}: {message}", .path.display())]
    Unusable {
        path: std::path::PathBuf,
        message: String,
    },
}

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
    pub(crate) fn from_key_file(path: &Path) -> Result<GoogleAuth, KeyError> {
        let json = crate::files::read_text(path, crate::files::Kind::Key)?;
        let account = CustomServiceAccount::from_json(&json).map_err(|e| KeyError::Unusable {
            path: path.into(),
            message: e.to_string(),
        })?;
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
