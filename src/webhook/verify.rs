//! Signature checks for Partner Center events (partner-apis.md A.5): the headers must be there
//! (`Authorization: Signature <base64>` or `x-ms-signature`, `X-MS-Signature-Algorithm:
//! rsa-sha256`, `X-MS-Certificate-Url`); the certificate (DER or PEM, optionally with
//! intermediates) must chain to a system root or `ca_file`, be valid now, be issued to
//! `certificate_subject`; and its key must verify the RSA PKCS#1 SHA-256 signature over the
//! raw body.
//!
//! Anyone on the internet can send a request, so the cheap checks come first and nothing is
//! fetched before they pass: header shapes, the algorithm, a signature of an RSA key's length,
//! and a certificate URL of one exact form (a trusted prefix followed by one plain file name:
//! no query, fragment, escape or dot segment). Fetches are then bounded: one flight per URL
//! however many requests name it, at most [`MAX_FETCHES_IN_FLIGHT`] at once, a failed URL is
//! not fetched again for [`NEGATIVE_TTL`], and every body is read under [`MAX_CERT_BYTES`].
//! Certificates that verified a signature are the last to leave the cache, so a flood of other
//! URLs cannot push the genuine certificate out (chain and validity are still checked on every
//! event).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use base64::Engine;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use rustls_pki_types::{CertificateDer, DnsName, ServerName, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter};

/// How long a fetched certificate is used before it is fetched again (the old one stays in
/// use when the new fetch fails: its validity is checked on every event anyway).
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// At most this many good certificate URLs are kept; when full, the one that verified a
/// signature least recently (or never) goes first.
const CACHE_MAX: usize = 32;
/// A certificate URL whose fetch or check failed is not fetched again for this long.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(30);
/// At most this many failed URLs are remembered; when full, new URLs are refused unfetched
/// until entries expire (so no URL is ever fetched twice within [`NEGATIVE_TTL`]).
const NEGATIVE_MAX: usize = 20_000;
/// Certificate fetches in flight at once, over all URLs; a request that would start one more
/// is refused without a fetch.
pub(crate) const MAX_FETCHES_IN_FLIGHT: usize = 8;
/// A certificate file larger than this is not a certificate.
pub(crate) const MAX_CERT_BYTES: usize = 64 * 1024;
/// RSA 2048 to 8192 bits: the signature is as long as the key's modulus.
const SIGNATURE_BYTES: std::ops::RangeInclusive<usize> = 256..=1024;
/// A longer `X-MS-Certificate-Url` is not a certificate URL.
const MAX_URL_CHARS: usize = 512;

/// Why an event was refused (HTTP 401). `reason()` is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    #[error("no signature (Authorization: Signature … or x-ms-signature)")]
    Unsigned,
    #[error("signature is not base64")]
    BadEncoding,
    #[error("signature is {0} bytes; an RSA signature is 256 to 1024")]
    SignatureLength(usize),
    #[error("X-MS-Signature-Algorithm is {0:?}, not rsa-sha256")]
    WrongAlgorithm(String),
    #[error("X-MS-Certificate-Url is missing")]
    NoCertificateUrl,
    #[error("X-MS-Certificate-Url {0:?} is not a file directly under a trusted prefix (webhook.certificate_url_prefixes)")]
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
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadEncoding => "bad_encoding",
            Rejection::SignatureLength(_) => "bad_signature_length",
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
pub(crate) struct SignedHeaders {
    pub(crate) signature: Vec<u8>,
    pub(crate) certificate_url: reqwest::Url,
}

/// Reads the signature headers and checks the certificate URL's form against the trusted
/// prefixes: everything that costs no network.
pub(crate) fn check_headers(
    headers: &HeaderMap,
    prefixes: &[String],
) -> Result<SignedHeaders, Rejection> {
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
    // Base64 of 1024 bytes is 1368 characters: anything much longer is not decoded at all.
    if encoded.len() > 2 * 1368 {
        return Err(Rejection::SignatureLength(encoded.len() * 3 / 4));
    }
    let cleaned: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let signature = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|_| Rejection::BadEncoding)?;
    if !SIGNATURE_BYTES.contains(&signature.len()) {
        return Err(Rejection::SignatureLength(signature.len()));
    }
    let raw = text("x-ms-certificate-url")
        .filter(|u| !u.is_empty())
        .ok_or(Rejection::NoCertificateUrl)?;
    let certificate_url = trusted_url(raw, prefixes)?;
    Ok(SignedHeaders {
        signature,
        certificate_url,
    })
}

/// The certificate URL, exactly as sent, when it is a trusted prefix followed by one plain
/// file name (`[A-Za-z0-9._-]`, not starting with a dot). The check is on the raw text, so no
/// normalisation (`..`, `%2e%2e`, `%2f`, `\`, `@`, a query or a fragment) can change what is
/// fetched; and the parsed URL must print back as the same text.
fn trusted_url(raw: &str, prefixes: &[String]) -> Result<reqwest::Url, Rejection> {
    let foreign = || Rejection::ForeignCertificateHost(raw.chars().take(200).collect());
    if raw.len() > MAX_URL_CHARS {
        return Err(foreign());
    }
    let file_name = prefixes
        .iter()
        .find_map(|p| raw.strip_prefix(p.as_str()))
        .ok_or_else(foreign)?;
    let plain = !file_name.is_empty()
        && !file_name.starts_with('.')
        && file_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !plain {
        return Err(foreign());
    }
    let url = reqwest::Url::parse(raw).map_err(|_| foreign())?;
    if url.as_str() != raw || !url.username().is_empty() || url.password().is_some() {
        return Err(foreign());
    }
    Ok(url)
}

/// Accepts any extended key usage: Microsoft does not document the signing certificate's
/// purpose [?]; the chain, validity, subject and signature are what make it trustworthy.
struct AnyUsage;

impl ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

type Chain = Arc<Vec<CertificateDer<'static>>>;
/// One fetch of one URL, awaited by every request that names the URL while it runs.
type Flight = Shared<BoxFuture<'static, Result<Chain, Rejection>>>;

/// A certificate that passed its checks when fetched.
#[derive(Debug, Clone)]
struct Good {
    chain: Chain,
    fetched: Instant,
    /// When it last verified an event's signature: only the genuine certificate ever does.
    verified: Option<Instant>,
}

/// What the verifier remembers about certificate URLs.
#[derive(Default)]
struct Certificates {
    good: HashMap<String, Good>,
    /// Failed URLs and when they failed.
    failed: HashMap<String, Instant>,
    flights: HashMap<String, Flight>,
}

impl Certificates {
    /// Keeps a good certificate; when full, drops the one that verified a signature least
    /// recently (never-verified ones first, oldest fetch first among those).
    fn keep(&mut self, url: &str, chain: Chain) {
        let verified = self.good.get(url).and_then(|g| g.verified);
        if !self.good.contains_key(url) && self.good.len() >= CACHE_MAX {
            let victim = self
                .good
                .iter()
                .min_by_key(|(_, g)| (g.verified, g.fetched))
                .map(|(k, _)| k.clone());
            if let Some(victim) = victim {
                self.good.remove(&victim);
            }
        }
        self.good.insert(
            url.to_string(),
            Good {
                chain,
                fetched: Instant::now(),
                verified,
            },
        );
    }

    /// Remembers a failed URL (a full list first drops its expired entries; the fetch was
    /// only started when there was room).
    fn remember_failure(&mut self, url: &str) {
        if self.failed.len() >= NEGATIVE_MAX {
            self.failed.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
        }
        if self.failed.len() < NEGATIVE_MAX {
            self.failed.insert(url.to_string(), Instant::now());
        }
    }

    /// Why a fetch of `url` may not start (`None`: it may): it failed within
    /// [`NEGATIVE_TTL`], or the failure list is full and could not remember it failing.
    fn failed_recently(&mut self, url: &str) -> Option<String> {
        if let Some(at) = self.failed.get(url) {
            if at.elapsed() < NEGATIVE_TTL {
                return Some(format!(
                    "its fetch failed {}s ago; not fetched again before {}s",
                    at.elapsed().as_secs(),
                    NEGATIVE_TTL.as_secs()
                ));
            }
            self.failed.remove(url);
        }
        if self.failed.len() >= NEGATIVE_MAX {
            self.failed.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            if self.failed.len() >= NEGATIVE_MAX {
                return Some("too many failing certificate URLs; not fetched".into());
            }
        }
        None
    }
}

/// The trust the fetched certificates are checked against.
#[derive(Debug)]
struct Trust {
    subject: String,
    roots: Vec<TrustAnchor<'static>>,
}

/// Verifies events; one per receiver, shared by its requests.
pub(crate) struct Verifier {
    prefixes: Vec<String>,
    trust: Arc<Trust>,
    http: reqwest::Client,
    certificates: Arc<Mutex<Certificates>>,
    fetch_slots: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("prefixes", &self.prefixes)
            .field("subject", &self.trust.subject)
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<Certificates>) -> std::sync::MutexGuard<'_, Certificates> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the verifier cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Roots(#[from] crate::pem::RootsError),
    #[error("no trust roots: the system has none and webhook.ca_file is not set")]
    NoRoots,
    /// reqwest's words.
    #[error("cannot build the certificate client: {0}")]
    Client(String),
}

impl Verifier {
    /// System roots plus the roots in `ca_file` (when set).
    pub(crate) fn new(
        prefixes: Vec<String>,
        subject: String,
        ca_file: Option<&Path>,
    ) -> Result<Verifier, TrustError> {
        let mut roots: Vec<TrustAnchor<'static>> = Vec::new();
        for cert in crate::http::system_roots() {
            if let Ok(anchor) = webpki::anchor_from_trusted_cert(cert) {
                roots.push(anchor.to_owned());
            }
        }
        if let Some(path) = ca_file.filter(|p| !p.as_os_str().is_empty()) {
            roots.extend(read_pem_roots(path)?);
        }
        if roots.is_empty() {
            return Err(TrustError::NoRoots);
        }
        let http = crate::http::client_builder()
            .timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cosell-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TrustError::Client(e.to_string()))?;
        Ok(Verifier {
            prefixes,
            trust: Arc::new(Trust { subject, roots }),
            http,
            certificates: Arc::default(),
            fetch_slots: Arc::new(tokio::sync::Semaphore::new(MAX_FETCHES_IN_FLIGHT)),
        })
    }

    /// The whole check for one event: headers, certificate (cached or fetched), chain, subject,
    /// signature over `body`.
    pub(crate) async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Rejection> {
        let signed = check_headers(headers, &self.prefixes)?;
        let url = signed.certificate_url.as_str();
        let chain = self.certificate(&signed.certificate_url).await?;
        let end_entity = self.trust.check(&chain)?;
        end_entity
            .verify_signature(
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                body,
                &signed.signature,
            )
            .map_err(|_| Rejection::BadSignature)?;
        if let Some(good) = lock(&self.certificates).good.get_mut(url) {
            good.verified = Some(Instant::now());
        }
        Ok(())
    }

    /// The certificate chain at `url`: cached, or fetched (sharing a fetch already under way).
    /// A stale cached chain is refreshed, and still used when the refresh fails.
    async fn certificate(&self, url: &reqwest::Url) -> Result<Chain, Rejection> {
        let key = url.as_str();
        let flight = {
            let mut certificates = lock(&self.certificates);
            let stale = match certificates.good.get(key) {
                Some(g) if g.fetched.elapsed() < CACHE_TTL => return Ok(g.chain.clone()),
                Some(g) => Some(g.chain.clone()),
                None => None,
            };
            match certificates.flights.get(key) {
                Some(flight) => (flight.clone(), stale),
                None => {
                    if let Some(why) = certificates.failed_recently(key) {
                        return stale.ok_or(Rejection::CertificateUnavailable(why));
                    }
                    let flight = self.start_flight(url.clone());
                    certificates.flights.insert(key.to_string(), flight.clone());
                    (flight, stale)
                }
            }
        };
        let (flight, stale) = flight;
        match (flight.await, stale) {
            (Ok(chain), _) => Ok(chain),
            (Err(_), Some(stale)) => Ok(stale),
            (Err(e), None) => Err(e),
        }
    }

    /// One fetch of `url` under the global cap, checked, and recorded (good or failed) by
    /// whichever request completes it; the flight is then forgotten.
    fn start_flight(&self, url: reqwest::Url) -> Flight {
        let http = self.http.clone();
        let trust = self.trust.clone();
        let certificates = self.certificates.clone();
        let slots = self.fetch_slots.clone();
        async move {
            let key = url.as_str().to_string();
            let Ok(_slot) = slots.try_acquire_owned() else {
                // Not the URL's fault: it is not remembered as failed.
                lock(&certificates).flights.remove(&key);
                return Err(Rejection::CertificateUnavailable(format!(
                    "{MAX_FETCHES_IN_FLIGHT} certificate fetches already in flight; not fetched"
                )));
            };
            let fetched = fetch(&http, &url).await.and_then(|chain| {
                trust.check(&chain)?;
                Ok(Arc::new(chain))
            });
            let mut c = lock(&certificates);
            c.flights.remove(&key);
            match &fetched {
                Ok(chain) => {
                    crate::metrics::global().webhook_certificate_fetch("ok");
                    c.failed.remove(&key);
                    c.keep(&key, chain.clone());
                }
                Err(_) => {
                    crate::metrics::global().webhook_certificate_fetch("failed");
                    c.remember_failure(&key);
                }
            }
            fetched
        }
        .boxed()
        .shared()
    }
}

impl Trust {
    /// Chain to a trusted root, valid now, issued to the configured subject.
    fn check<'a>(
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
}

/// GETs a certificate file, reading the body as it streams and stopping at [`MAX_CERT_BYTES`]
/// (a chunked answer with no Content-Length is never read whole).
async fn fetch(
    http: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<Vec<CertificateDer<'static>>, Rejection> {
    let unavailable = |m: String| Rejection::CertificateUnavailable(m);
    let response = http
        .get(url.clone())
        .send()
        .await
        .map_err(|e| unavailable(crate::http::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(unavailable(format!("HTTP {}", response.status().as_u16())));
    }
    let bytes = crate::http::read_at_most(response, MAX_CERT_BYTES)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    parse_certificates(&bytes).map_err(|e| unavailable(e.to_string()))
}

pub(crate) use crate::pem::{parse_certificates, read_pem_roots};

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

    /// A 256-byte signature (an RSA-2048 signature's length), base64.
    fn sig() -> String {
        base64::engine::general_purpose::STANDARD.encode([7u8; 256])
    }

    fn auth() -> String {
        format!("Signature {}", sig())
    }

    #[test]
    fn a_well_formed_signed_event_passes_the_header_checks() {
        let url = format!("{PREFIX}pcnotifications-dispatch.microsoft.com.cer");
        let auth = auth();
        let h = headers(&[
            ("authorization", &auth),
            ("x-ms-signature-algorithm", "rsa-sha256"),
            ("x-ms-certificate-url", &url),
        ]);
        let signed = check_headers(&h, &prefixes()).unwrap();
        assert_eq!(signed.signature, [7u8; 256]);
        assert_eq!(signed.certificate_url.as_str(), url);
    }

    #[test]
    fn a_signature_not_of_an_rsa_keys_length_is_refused_before_its_url_is_read() {
        let url = format!("{PREFIX}x.cer");
        for len in [1usize, 3, 255, 1025, 4000] {
            let auth = format!(
                "Signature {}",
                base64::engine::general_purpose::STANDARD.encode(vec![1u8; len])
            );
            let h = headers(&[
                ("authorization", &auth),
                ("x-ms-signature-algorithm", "rsa-sha256"),
                ("x-ms-certificate-url", &url),
            ]);
            assert_eq!(
                check_headers(&h, &prefixes()).unwrap_err().reason(),
                "bad_signature_length",
                "{len}"
            );
        }
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
            // The exact form: one plain file name right under the prefix.
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer?n=1",
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer?",
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer#f",
            "https://3psostorageacct.blob.core.windows.net/cert/%2e%2e/x.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/a%2Fb.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/x%2ecer",
            "https://3psostorageacct.blob.core.windows.net/cert/sub/x.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/./x.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/..",
            "https://3psostorageacct.blob.core.windows.net/cert/.hidden",
            "https://3psostorageacct.blob.core.windows.net/cert/",
            "https://3psostorageacct.blob.core.windows.net/cert/a\\b.cer",
            "https://3psostorageacct.blob.core.windows.net/cert/x.cer@evil.example",
            "https://3psostorageacct.blob.core.windows.net:443/cert/x.cer",
            "https://3PSOSTORAGEACCT.blob.core.windows.net/cert/x.cer",
        ] {
            let auth = auth();
            let h = headers(&[
                ("authorization", &auth),
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
        let auth = auth();
        let sig = sig();
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
                    ("authorization", &auth),
                    ("x-ms-signature-algorithm", "hmac-sha256"),
                    ("x-ms-certificate-url", &url),
                ],
                "wrong_algorithm",
            ),
            (
                vec![("authorization", &auth), ("x-ms-certificate-url", &url)],
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
                    ("authorization", &auth),
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
            ("x-ms-signature", &sig),
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
        assert!(v.trust.check(&leaf).is_ok());
        let (_d, other) = verifier("someone-else.example");
        assert!(matches!(
            other.trust.check(&leaf),
            Err(Rejection::WrongSubject(_))
        ));
        let untrusted = vec![CertificateDer::from(untrusted)];
        assert!(matches!(
            v.trust.check(&untrusted),
            Err(Rejection::UntrustedCertificate(_))
        ));
    }

    /// A certificate host on the loopback, under `/cert/`: `good*` serve the simulator's
    /// genuine certificate, `slow*` answer 404 after 300 ms, `endless*` stream bytes forever
    /// (chunked, no length), anything else is 404. Counts fetches per name and the most in
    /// flight at once.
    #[derive(Default)]
    struct Host {
        fetches: Mutex<HashMap<String, usize>>,
        in_flight: std::sync::atomic::AtomicUsize,
        most_in_flight: std::sync::atomic::AtomicUsize,
    }

    impl Host {
        fn fetches(&self, name: &str) -> usize {
            self.fetches.lock().unwrap().get(name).copied().unwrap_or(0)
        }
        fn total(&self) -> usize {
            self.fetches.lock().unwrap().values().sum()
        }
    }

    async fn serve_certificates(
        axum::extract::State(host): axum::extract::State<Arc<Host>>,
        axum::extract::Path(name): axum::extract::Path<String>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        use std::sync::atomic::Ordering::SeqCst;
        *host
            .fetches
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default() += 1;
        let now = host.in_flight.fetch_add(1, SeqCst) + 1;
        host.most_in_flight.fetch_max(now, SeqCst);
        let answer = if name.starts_with("good") {
            crate::sim::webhook::material().1.into_response()
        } else if name.starts_with("slow") {
            tokio::time::sleep(Duration::from_millis(300)).await;
            axum::http::StatusCode::NOT_FOUND.into_response()
        } else if name.starts_with("endless") {
            let chunk = axum::body::Bytes::from(vec![0x30u8; 16 * 1024]);
            let stream = futures_util::stream::repeat_with(move || {
                Ok::<_, std::convert::Infallible>(chunk.clone())
            });
            axum::body::Body::from_stream(stream).into_response()
        } else {
            axum::http::StatusCode::NOT_FOUND.into_response()
        };
        host.in_flight.fetch_sub(1, SeqCst);
        answer
    }

    /// A verifier trusting the simulator's CA, fetching from a fresh [`Host`].
    async fn with_host() -> (tempfile::TempDir, Arc<Verifier>, Arc<Host>, String) {
        let host = Arc::new(Host::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let prefix = format!("http://{}/cert/", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/cert/{name}", axum::routing::get(serve_certificates))
            .with_state(host.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let (ca, _, _) = crate::sim::webhook::material();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca).unwrap();
        let v = Verifier::new(
            vec![prefix.clone()],
            crate::sim::webhook::SUBJECT.into(),
            Some(&path),
        )
        .unwrap();
        (dir, Arc::new(v), host, prefix)
    }

    const BODY: &[u8] = br#"{"EventName":"referral-created"}"#;

    /// Headers signed by the simulator's genuine key (or a wrong signature), naming `url`.
    fn event_headers(url: &str, genuine: bool) -> HeaderMap {
        let signature = if genuine {
            crate::sim::webhook::sign(BODY)
        } else {
            sig()
        };
        let auth = format!("Signature {signature}");
        headers(&[
            ("authorization", &auth),
            ("x-ms-signature-algorithm", "rsa-sha256"),
            ("x-ms-certificate-url", url),
        ])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_failing_url_is_fetched_once_however_many_requests_name_it() {
        assert!(NEGATIVE_TTL >= Duration::from_secs(10));
        let (_d, v, host, prefix) = with_host().await;
        for _round in 0..2 {
            let mut requests = Vec::new();
            for n in 0..6 {
                for _copy in 0..10 {
                    let (v, url) = (v.clone(), format!("{prefix}missing{n}.cer"));
                    requests.push(tokio::spawn(async move {
                        v.verify(&event_headers(&url, false), BODY).await
                    }));
                }
            }
            for r in requests {
                let refused = r.await.unwrap().unwrap_err();
                assert_eq!(refused.reason(), "certificate_unavailable");
            }
        }
        for n in 0..6 {
            assert_eq!(host.fetches(&format!("missing{n}.cer")), 1, "missing{n}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_in_flight_never_pass_the_cap_and_the_refused_are_not_blamed() {
        let (_d, v, host, prefix) = with_host().await;
        let mut requests = Vec::new();
        for n in 0..40 {
            let (v, url) = (v.clone(), format!("{prefix}slow{n}.cer"));
            requests.push(tokio::spawn(async move {
                v.verify(&event_headers(&url, false), BODY).await
            }));
        }
        for r in requests {
            assert!(r.await.unwrap().is_err());
        }
        let most = host
            .most_in_flight
            .load(std::sync::atomic::Ordering::SeqCst);
        assert!(most <= MAX_FETCHES_IN_FLIGHT, "{most} in flight");
        assert!(host.total() <= 40);
        // A URL refused for want of a slot was not fetched, so it is not remembered as failed:
        // the genuine certificate, asked for after the flood, is fetched and verifies.
        let genuine = format!("{prefix}good.cer");
        v.verify(&event_headers(&genuine, true), BODY)
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_other_good_urls_cannot_push_the_genuine_certificate_out() {
        let (_d, v, host, prefix) = with_host().await;
        let genuine = format!("{prefix}good.cer");
        v.verify(&event_headers(&genuine, true), BODY)
            .await
            .unwrap();
        // Other URLs under the prefix that serve a valid certificate, with forged signatures.
        for n in 0..(3 * CACHE_MAX) {
            let url = format!("{prefix}good{n}.cer");
            let refused = v.verify(&event_headers(&url, false), BODY).await;
            assert_eq!(refused.unwrap_err().reason(), "bad_signature");
        }
        v.verify(&event_headers(&genuine, true), BODY)
            .await
            .unwrap();
        assert_eq!(host.fetches("good.cer"), 1);
        assert!(lock(&v.certificates).good.len() <= CACHE_MAX);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_endless_certificate_body_is_cut_at_the_cap() {
        let (_d, v, _host, prefix) = with_host().await;
        let started = Instant::now();
        let url = format!("{prefix}endless.cer");
        let refused = v.verify(&event_headers(&url, false), BODY).await;
        let why = refused.unwrap_err().to_string();
        assert!(why.contains("larger than 65536 bytes"), "{why}");
        // Cut as soon as the cap is passed, not when the 10 s client timeout ends the read.
        assert!(started.elapsed() < Duration::from_secs(5));
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
