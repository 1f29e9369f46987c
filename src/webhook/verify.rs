//! Signature checks for Partner Center events (partner-apis.md A.5): the headers must be there
//! (`Authorization: Signature <base64>` or `x-ms-signature`, `X-MS-Signature-Algorithm:
//! rsa-sha256`, `X-MS-Certificate-Url`); the certificate URL must start with a configured prefix
//! BEFORE anything is fetched; the certificate (DER or PEM, optionally with intermediates) must
//! chain to a system root or `ca_file`, be valid now, be issued to `certificate_subject`; and its
//! key must verify the RSA PKCS#1 SHA-256 signature over the raw body. Fetched certificates are
//! cached by URL (their chain and validity are still checked on every event).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use rustls_pki_types::{CertificateDer, DnsName, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};

/// How long a fetched certificate is reused before it is fetched again.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// At most this many certificate URLs are cached (a forger cannot grow the cache: only URLs
/// under a trusted prefix that served a valid certificate are kept).
const CACHE_MAX: usize = 32;
/// A certificate file larger than this is not a certificate.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// Why an event was refused (HTTP 401). `reason()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no signature (Authorization: Signature … or x-ms-signature)")]
    Unsigned,
    #[error("signature is not base64")]
    BadEncoding,
    #[error("X-MS-Signature-Algorithm is {0:?}, not rsa-sha256")]
    WrongAlgorithm(String),
    #[error("X-MS-Certificate-Url is missing")]
    NoCertificateUrl,
    #[error("X-MS-Certificate-Url {0:?} is not under a trusted prefix (webhook.certificate_url_prefixes)")]
    ForeignCertificateHost(String),
    #[error("signing certificate unavailable: {0}")]
    CertificateUnavailable(String),
    #[error("signing certificate not trusted: {0}")]
    UntrustedCertificate(String),
    #[error("signing certificate is not issued to {0}")]
    WrongSubject(String),
    #[error("signature does not match the body")]
    BadSignature,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadEncoding => "bad_encoding",
            Rejection::WrongAlgorithm(_) => "wrong_algorithm",
            Rejection::NoCertificateUrl => "no_certificate_url",
            Rejection::ForeignCertificateHost(_) => "foreign_certificate_host",
            Rejection::CertificateUnavailable(_) => "certificate_unavailable",
            Rejection::UntrustedCertificate(_) => "untrusted_certificate",
            Rejection::WrongSubject(_) => "wrong_subject",
            Rejection::BadSignature => "bad_signature",
        }
    }
}

/// The headers of a signed event, checked for presence and form (no network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub signature: Vec<u8>,
    pub certificate_url: reqwest::Url,
}

/// Reads the signature headers and checks the certificate URL against the trusted prefixes.
pub fn check_headers(headers: &HeaderMap, prefixes: &[String]) -> Result<SignedHeaders, Rejection> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let encoded = text("authorization")
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("signature").then_some(rest)
        })
        .or_else(|| text("x-ms-signature").map(|v| v.strip_prefix("Signature ").unwrap_or(v)))
        .filter(|v| !v.trim().is_empty())
        .ok_or(Rejection::Unsigned)?;
    match text("x-ms-signature-algorithm") {
        Some(a) if a.eq_ignore_ascii_case("rsa-sha256") => {}
        other => return Err(Rejection::WrongAlgorithm(other.unwrap_or("").to_string())),
    }
    let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|_| Rejection::BadEncoding)?;
    let raw = text("x-ms-certificate-url")
        .filter(|u| !u.is_empty())
        .ok_or(Rejection::NoCertificateUrl)?;
    let certificate_url = trusted_url(raw, prefixes)?;
    Ok(SignedHeaders {
        signature,
        certificate_url,
    })
}

/// The certificate URL, normalised (so `/cert/../x` cannot escape a prefix), with no
/// credentials, starting with a trusted prefix.
fn trusted_url(raw: &str, prefixes: &[String]) -> Result<reqwest::Url, Rejection> {
    let foreign = || Rejection::ForeignCertificateHost(raw.chars().take(200).collect());
    let url = reqwest::Url::parse(raw).map_err(|_| foreign())?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(foreign());
    }
    if prefixes
        .iter()
        .any(|p| url.as_str().starts_with(p.as_str()))
    {
        Ok(url)
    } else {
        Err(foreign())
    }
}

/// Accepts any extended key usage: Microsoft does not document the signing certificate's
/// purpose [?]; the chain, validity, subject and signature are what make it trustworthy.
struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Cached {
    chain: Vec<CertificateDer<'static>>,
    fetched: Instant,
}

/// Verifies events; one per receiver, shared by its requests.
#[derive(Debug)]
pub struct Verifier {
    prefixes: Vec<String>,
    subject: String,
    roots: Vec<TrustAnchor<'static>>,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Verifier {
    /// System roots plus the roots in `ca_file` (when set).
    pub fn new(
        prefixes: Vec<String>,
        subject: String,
        ca_file: Option<&Path>,
    ) -> Result<Verifier, String> {
        let mut roots: Vec<TrustAnchor<'static>> = Vec::new();
        let native = rustls_native_certs::load_native_certs();
        for cert in &native.certs {
            if let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) {
                roots.push(anchor.to_owned());
            }
        }
        if let Some(path) = ca_file.filter(|p| !p.as_os_str().is_empty()) {
            roots.extend(read_pem_roots(path)?);
        }
        if roots.is_empty() {
            return Err(
                "no trust roots: the system has none and webhook.ca_file is not set".into(),
            );
        }
        let http = crate::http::client_builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cosell-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the certificate client: {e}"))?;
        Ok(Verifier {
            prefixes,
            subject,
            roots,
            http,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The whole check for one event: headers, certificate (cached or fetched), chain, subject,
    /// signature over `body`.
    pub async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        let signed = check_headers(headers, &self.prefixes)?;
        let key = signed.certificate_url.as_str().to_string();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|c| c.fetched.elapsed() < CACHE_TTL)
            .cloned();
        let chain = match cached {
            Some(c) => c.chain,
            None => {
                let chain = self.fetch(&signed.certificate_url).await?;
                self.check_certificate(&chain)?;
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
                cache.insert(
                    key,
                    Cached {
                        chain: chain.clone(),
                        fetched: Instant::now(),
                    },
                );
                chain
            }
        };
        let end_entity = self.check_certificate(&chain)?;
        end_entity
            .verify_signature(
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                body,
                &signed.signature,
            )
            .map_err(|_| Rejection::BadSignature)
    }

    /// Chain to a trusted root, valid now, issued to the configured subject.
    fn check_certificate<'a>(
        &self,
        chain: &'a [CertificateDer<'static>],
    ) -> Result<EndEntityCert<'a>, Rejection> {
        let untrusted = |e: webpki::Error| Rejection::UntrustedCertificate(format!("{e:?}"));
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Rejection::CertificateUnavailable("empty certificate file".into()))?;
        let end_entity = EndEntityCert::try_from(leaf).map_err(untrusted)?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.roots,
                intermediates,
                UnixTime::now(),
                AnyUsage,
                None,
                None,
            )
            .map_err(untrusted)?;
        if !issued_to(&end_entity, leaf, &self.subject) {
            return Err(Rejection::WrongSubject(self.subject.clone()));
        }
        Ok(end_entity)
    }

    async fn fetch(&self, url: &reqwest::Url) -> Result<Vec<CertificateDer<'static>>, Rejection> {
        let unavailable = |m: String| Rejection::CertificateUnavailable(m);
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| unavailable(crate::http::error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(unavailable(format!("HTTP {}", response.status().as_u16())));
        }
        if response
            .content_length()
            .is_some_and(|n| n as usize > MAX_CERT_BYTES)
        {
            return Err(unavailable("certificate file too large".into()));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unavailable(crate::http::error_chain(&e)))?;
        if bytes.len() > MAX_CERT_BYTES {
            return Err(unavailable("certificate file too large".into()));
        }
        parse_certificates(&bytes).map_err(unavailable)
    }
}

pub use crate::pem::{parse_certificates, read_pem_roots};

/// A DNS name in the subject alternative names, or else the subject's common name.
fn issued_to(end_entity: &EndEntityCert<'_>, _der: &CertificateDer<'_>, subject: &str) -> bool {
    if let Ok(name) = DnsName::try_from(subject.to_string()) {
        if end_entity
            .verify_is_valid_for_subject_name(&ServerName::DnsName(name))
            .is_ok()
        {
            return true;
        }
    }
    common_names(end_entity.subject())
        .iter()
        .any(|cn| cn.eq_ignore_ascii_case(subject))
}

/// The common names (OID 2.5.4.3) in a DER-encoded X.501 Name, read with a bounds-checked scan
/// of its attribute values (UTF8String, PrintableString, IA5String).
fn common_names(name: &[u8]) -> Vec<String> {
    const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = name[i..].windows(CN_OID.len()).position(|w| w == CN_OID) {
        let start = i + pos + CN_OID.len();
        i = start;
        let (Some(&tag), Some(&len)) = (name.get(start), name.get(start + 1)) else {
            break;
        };
        // Short-form lengths only: a host name is far below 128 bytes.
        if len >= 0x80 || !matches!(tag, 0x0c | 0x13 | 0x16) {
            continue;
        }
        if let Some(value) = name.get(start + 2..start + 2 + len as usize) {
            if let Ok(text) = std::str::from_utf8(value) {
                out.push(text.to_string());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const PREFIX: &str = "https://3psostorageacct.blob.core.windows.net/cert/";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn prefixes() -> Vec<String> {
        vec![PREFIX.to_string()]
    }

    #[test]
    fn a_well_formed_signed_event_passes_the_header_checks() {
        let url = format!("{PREFIX}pcnotifications-dispatch.microsoft.com.cer");
        let h = headers(&[
            ("authorization", "Signature AAEC"),
            ("x-ms-signature-algorithm", "rsa-sha256"),
            ("x-ms-certificate-url", &url),
        ]);
        let signed = check_headers(&h, &prefixes()).unwrap();
        assert_eq!(signed.signature, [0, 1, 2]);
        assert_eq!(signed.certificate_url.as_str(), url);
    }

    #[test]
    fn certificate_urls_outside_the_prefixes_are_foreign() {
        for url in [
            "https://3psostorageacct.blob.core.windows.net.evil.example/cert/x.cer",
            "https://3psostorageacct.blob.core.windows.net@evil.example/cert/x.cer",
            "https://user@3psostorageacct.blob.core.windows.net/cert/x.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/../other/x.cer",
            "https://3psostorageacct.blob.core.windows.net/certx/x.cer",
            "http://3psostorageacct.blob.core.windows.net/cert/x.cer",
            "not a url",
        ] {
            let h = headers(&[
                ("authorization", "Signature AAEC"),
                ("x-ms-signature-algorithm", "rsa-sha256"),
                ("x-ms-certificate-url", url),
            ]);
            assert!(
                matches!(
                    check_headers(&h, &prefixes()),
                    Err(Rejection::ForeignCertificateHost(_))
                ),
                "{url}"
            );
        }
    }

    #[test]
    fn missing_or_wrong_headers_are_named() {
        let url = format!("{PREFIX}x.cer");
        let cases: Vec<(Vec<(&'static str, &str)>, &str)> = vec![
            (
                vec![
                    ("x-ms-signature-algorithm", "rsa-sha256"),
                    ("x-ms-certificate-url", &url),
                ],
                "unsigned",
            ),
            (
                vec![
                    ("authorization", "Bearer AAEC"),
                    ("x-ms-signature-algorithm", "rsa-sha256"),
                    ("x-ms-certificate-url", &url),
                ],
                "unsigned",
            ),
            (
                vec![
                    ("authorization", "Signature AAEC"),
                    ("x-ms-signature-algorithm", "hmac-sha256"),
                    ("x-ms-certificate-url", &url),
                ],
                "wrong_algorithm",
            ),
            (
                vec![
                    ("authorization", "Signature AAEC"),
                    ("x-ms-certificate-url", &url),
                ],
                "wrong_algorithm",
            ),
            (
                vec![
                    ("authorization", "Signature !!"),
                    ("x-ms-signature-algorithm", "rsa-sha256"),
                    ("x-ms-certificate-url", &url),
                ],
                "bad_encoding",
            ),
            (
                vec![
                    ("authorization", "Signature AAEC"),
                    ("x-ms-signature-algorithm", "rsa-sha256"),
                ],
                "no_certificate_url",
            ),
        ];
        for (pairs, reason) in cases {
            let err = check_headers(&headers(&pairs), &prefixes()).unwrap_err();
            assert_eq!(err.reason(), reason, "{pairs:?}");
        }
        // The header the registration flag SignatureTokenToMsSignatureHeader moves it to.
        let h = headers(&[
            ("x-ms-signature", "AAEC"),
            ("x-ms-signature-algorithm", "RSA-SHA256"),
            ("x-ms-certificate-url", &url),
        ]);
        assert!(check_headers(&h, &prefixes()).is_ok());
    }

    fn verifier(subject: &str) -> (tempfile::TempDir, Verifier) {
        let (ca, _, _) = crate::sim::webhook::material();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca).unwrap();
        let v = Verifier::new(prefixes(), subject.into(), Some(&path)).unwrap();
        (dir, v)
    }

    #[test]
    fn the_simulators_certificate_chains_to_its_ca_and_names_its_subject() {
        let (_, leaf, untrusted) = crate::sim::webhook::material();
        let leaf = vec![CertificateDer::from(leaf)];
        let (_d, v) = verifier(crate::sim::webhook::SUBJECT);
        assert!(v.check_certificate(&leaf).is_ok());
        let (_d, other) = verifier("someone-else.example");
        assert!(matches!(
            other.check_certificate(&leaf),
            Err(Rejection::WrongSubject(_))
        ));
        let untrusted = vec![CertificateDer::from(untrusted)];
        assert!(matches!(
            v.check_certificate(&untrusted),
            Err(Rejection::UntrustedCertificate(_))
        ));
    }

    #[test]
    fn common_names_are_read_from_a_der_name_and_junk_yields_none() {
        // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3, UTF8String "a.example" } } }
        let mut name = vec![
            0x30, 0x14, 0x31, 0x12, 0x30, 0x10, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x09,
        ];
        name.extend_from_slice(b"a.example");
        assert_eq!(common_names(&name), ["a.example"]);
        assert!(common_names(&[0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x7f]).is_empty());
        assert!(common_names(&[0x06, 0x03, 0x55, 0x04, 0x03]).is_empty());
    }
}
