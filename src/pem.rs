//! Certificate files, a leaf: DER or PEM certificates and a PEM file's trust roots. Shared by
//! the configuration's check of `webhook.ca_file` and the webhook signature verifier.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

/// Why bytes are not certificates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The PEM parser's words.
    #[error("bad PEM: {0}")]
    BadPem(String),
    #[error("no CERTIFICATE in the PEM file")]
    NoCertificate,
    #[error("neither a DER nor a PEM certificate")]
    NeitherDerNorPem,
}

/// Why a file's trust roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error(transparent)]
    Read(#[from] crate::files::FileError),
    #[error("{}: {source}", .path.display())]
    Certificates {
        path: PathBuf,
        source: CertificateError,
    },
    /// webpki's words.
    #[error("{}: not a CA certificate: {message}", .path.display())]
    NotCa { path: PathBuf, message: String },
}

/// For the configuration's check, whose errors are text for a person.
impl From<RootsError> for String {
    fn from(e: RootsError) -> String {
        e.to_string()
    }
}

/// A `.cer` file is DER; a PEM file may carry the leaf first, then intermediates.
pub(crate) fn parse_certificates(
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CertificateError> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| CertificateError::BadPem(format!("{e:?}")))?;
        if certs.is_empty() {
            return Err(CertificateError::NoCertificate);
        }
        Ok(certs)
    } else if bytes.first() == Some(&0x30) {
        Ok(vec![CertificateDer::from(bytes.to_vec())])
    } else {
        Err(CertificateError::NeitherDerNorPem)
    }
}

/// The trust roots of a PEM file (for `webhook.ca_file`).
pub(crate) fn read_pem_roots(path: &Path) -> Result<Vec<TrustAnchor<'static>>, RootsError> {
    let bytes = crate::files::read(path, crate::files::Kind::Certificates)?;
    let certs = parse_certificates(&bytes).map_err(|source| RootsError::Certificates {
        path: path.into(),
        source,
    })?;
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| RootsError::NotCa {
                    path: path.into(),
                    message: format!("{e:?}"),
                })
        })
        .collect()
}
