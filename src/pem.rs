//! Certificate files, a leaf: DER or PEM certificates and a PEM file's trust roots. Shared by
//! the configuration's check of `webhook.ca_file` and the webhook signature verifier.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};

/// A `.cer` file is DER; a PEM file may carry the leaf first, then intermediates.
pub(crate) fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("bad PEM: {e:?}"))?;
        if certs.is_empty() {
            return Err("no CERTIFICATE in the PEM file".into());
        }
        Ok(certs)
    } else if bytes.first() == Some(&0x30) {
        Ok(vec![CertificateDer::from(bytes.to_vec())])
    } else {
        Err("neither a DER nor a PEM certificate".into())
    }
}

/// The trust roots of a PEM file (for `webhook.ca_file`).
pub(crate) fn read_pem_roots(path: &Path) -> Result<Vec<TrustAnchor<'static>>, String> {
    let bytes =
        crate::files::read(path, crate::files::Kind::Certificates).map_err(|e| e.to_string())?;
    let certs = parse_certificates(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    certs
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| format!("{}: not a CA certificate: {e:?}", path.display()))
        })
        .collect()
}
