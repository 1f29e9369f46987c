//! Signed action links (a leaf: alerts sign them, the action page checks them): `public_url/TOKEN`, where the token names one referral and when it
//! stops working (the referral's deadline), under an HMAC-SHA256 of both. A token is useless
//! for any other referral, after its deadline, or with one character changed. The key is
//! `[actions] key_file`, or 32 random bytes generated once in the state directory (0600).
//! Tokens never go to the log (they are capabilities).

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::hmac;

pub(crate) use crate::config::actions::{read_key_file, KeyError};

/// A token longer than this is not one of ours (read nothing more of it).
const MAX_TOKEN_CHARS: usize = 600;
/// Referral ids are GUID-like; anything longer is not one.
const MAX_REFERRAL_ID: usize = 128;
/// What the MAC covers besides the claims: a token of another purpose never verifies here.
const DOMAIN: &str = "cosell-sync/answer-link/v1";
/// The inbox form's token (spec §7): its own domain and shape (two parts, never three), so
/// it is never an action-link token nor the other way round.
const INBOX_DOMAIN: &str = "cosell-sync/inbox-form/v1";
/// An inbox form token is valid this long after it was issued (spec §7: 12 hours).
pub(crate) const INBOX_TOKEN_HOURS: i64 = 12;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub referral_id: String,
    pub(crate) expires: DateTime<Utc>,
}

/// Why a token is refused (every case is a 403, and no Partner Center request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature is not valid")]
    Forged,
    #[error("the link expired at the referral's deadline")]
    Expired,
}

/// Signs and checks links with the key.
pub struct LinkSigner {
    key: hmac::Key,
    /// `public_url` without a trailing `/`.
    base: String,
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkSigner")
            .field("base", &self.base)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl LinkSigner {
    pub fn new(key: &[u8], public_url: &str) -> LinkSigner {
        LinkSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            base: public_url.trim_end_matches('/').to_string(),
        }
    }

    /// The signer of `[actions]`: its key file, or the state directory's generated key.
    pub(crate) fn load(
        config: &crate::config::ActionsConfig,
        state_dir: &Path,
    ) -> Result<LinkSigner, KeyError> {
        let key = match config.key_file() {
            Some(path) => read_key_file(path)?,
            None => generated_key(&state_dir.join("actions.key"))?,
        };
        Ok(LinkSigner::new(&key, &config.public_url))
    }

    /// A short public name of the key (an HMAC of a fixed text, never the key itself): kept in
    /// the database, so a changed key (a deleted `actions.key` regenerated, another
    /// `key_file`) is noticed and announced.
    pub(crate) fn fingerprint(&self) -> String {
        let tag = hmac::sign(&self.key, b"cosell-sync link key fingerprint");
        tag.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// For the read-only commands (`alerts list`, `status --referral`): the signer when its key
    /// exists already (never generated here: a command run by root must not make the key the
    /// service then cannot read); `None` without `[actions]` or a key.
    pub(crate) fn load_existing(config: &crate::config::Config) -> Option<LinkSigner> {
        let actions = config.actions.as_ref()?;
        let key = match actions.key_file() {
            Some(path) => read_key_file(path).ok()?,
            None => {
                let path = config.state_dir().join("actions.key");
                path.exists().then(|| read_key_file(&path).ok()).flatten()?
            }
        };
        Some(LinkSigner::new(&key, &actions.public_url))
    }

    /// The link for an alert about a referral still to answer, `None` once its deadline passed.
    pub(crate) fn url_until(
        &self,
        referral_id: &str,
        deadline: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        (deadline > now).then(|| self.url(referral_id, deadline))
    }

    fn mac(&self, referral_id: &str, expires: i64) -> hmac::Tag {
        hmac::sign(
            &self.key,
            format!("{DOMAIN}\n{referral_id}\n{expires}").as_bytes(),
        )
    }

    pub(crate) fn token(&self, referral_id: &str, expires: DateTime<Utc>) -> String {
        let exp = expires.timestamp();
        format!(
            "{}.{exp}.{}",
            URL_SAFE_NO_PAD.encode(referral_id),
            URL_SAFE_NO_PAD.encode(self.mac(referral_id, exp))
        )
    }

    /// The link for one referral, valid until `expires` (its deadline).
    pub fn url(&self, referral_id: &str, expires: DateTime<Utc>) -> String {
        format!("{}/{}", self.base, self.token(referral_id, expires))
    }

    /// Checks a token: its form, then its MAC (in constant time), then its expiry.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, LinkError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(LinkError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(id), Some(exp), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LinkError::Malformed);
        };
        let id = URL_SAFE_NO_PAD
            .decode(id)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|id| !id.is_empty() && id.len() <= MAX_REFERRAL_ID)
            .ok_or(LinkError::Malformed)?;
        // Only the canonical digits: `+5`, `05` or spaces would sign the same number twice.
        let exp_num: i64 = exp
            .parse()
            .ok()
            .filter(|n: &i64| n.to_string() == exp)
            .ok_or(LinkError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| LinkError::Malformed)?;
        hmac::verify(
            &self.key,
            format!("{DOMAIN}\n{id}\n{exp_num}").as_bytes(),
            &tag,
        )
        .map_err(|_| LinkError::Forged)?;
        let expires = DateTime::from_timestamp(exp_num, 0).ok_or(LinkError::Malformed)?;
        if now >= expires {
            return Err(LinkError::Expired);
        }
        Ok(Claims {
            referral_id: id,
            expires,
        })
    }
}

impl LinkSigner {
    fn inbox_mac(&self, person: &str, issued: i64) -> Vec<u8> {
        let message = format!("{INBOX_DOMAIN}\ninbox\n{person}\n{issued}");
        hmac::sign(&self.key, message.as_bytes()).as_ref().to_vec()
    }

    /// The inbox form's token for `person`, issued `now`: `ISSUED.MAC`.
    pub fn inbox_token(&self, person: &str, now: DateTime<Utc>) -> String {
        let issued = now.timestamp();
        let mac = URL_SAFE_NO_PAD.encode(self.inbox_mac(person, issued));
        format!("{issued}.{mac}")
    }

    /// Checks an inbox form token for `person` (in constant time), then its 12 hours.
    pub(crate) fn verify_inbox(
        &self,
        token: &str,
        person: &str,
        now: DateTime<Utc>,
    ) -> Result<(), LinkError> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(LinkError::Malformed);
        }
        let (Some((issued, tag)), false) = (token.split_once('.'), token.matches('.').count() > 1)
        else {
            return Err(LinkError::Malformed);
        };
        let issued_num: i64 = issued
            .parse()
            .ok()
            .filter(|n: &i64| n.to_string() == issued)
            .ok_or(LinkError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| LinkError::Malformed)?;
        let message = format!("{INBOX_DOMAIN}\ninbox\n{person}\n{issued_num}");
        hmac::verify(&self.key, message.as_bytes(), &tag).map_err(|_| LinkError::Forged)?;
        let issued = DateTime::from_timestamp(issued_num, 0).ok_or(LinkError::Malformed)?;
        // A token from the future (a clock step) is as good as a forged one.
        if issued > now + chrono::Duration::minutes(5)
            || now >= issued + chrono::Duration::hours(INBOX_TOKEN_HOURS)
        {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

/// The state directory's key: read it, or make it once (32 random bytes, hex, mode 0600).
fn generated_key(path: &Path) -> Result<Vec<u8>, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if path.exists() {
        return read_key_file(path);
    }
    let mut key = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| KeyError::NoRandomness)?;
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| KeyError::CreateDir {
            dir: dir.to_path_buf(),
            error,
        })?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|error| KeyError::Write {
                    path: path.to_path_buf(),
                    error,
                })?;
            tracing::info!(path = %path.display(), "generated the action links' key (mode 0600)");
            Ok(hex.into_bytes())
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key_file(path),
        Err(error) => Err(KeyError::Create {
            path: path.to_path_buf(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> LinkSigner {
        LinkSigner::new(&[7u8; 32], "https://sync.example.com/act/")
    }

    fn now() -> DateTime<Utc> {
        "2026-11-25T00:00:00Z".parse().unwrap()
    }

    /// An inbox token works for its person for 12 hours; never for another person, never as
    /// an action link, and an action link never as an inbox token.
    #[test]
    fn an_inbox_token_is_its_persons_for_twelve_hours_and_never_a_link() {
        let s = signer();
        let token = s.inbox_token("ana@example.com", now());
        assert_eq!(s.verify_inbox(&token, "ana@example.com", now()), Ok(()));
        let later = now() + chrono::Duration::hours(11);
        assert_eq!(s.verify_inbox(&token, "ana@example.com", later), Ok(()));
        let expired = now() + chrono::Duration::hours(12);
        assert_eq!(
            s.verify_inbox(&token, "ana@example.com", expired),
            Err(LinkError::Expired)
        );
        assert_eq!(
            s.verify_inbox(&token, "bob@example.com", now()),
            Err(LinkError::Forged)
        );
        assert!(s.verify(&token, now()).is_err(), "not an action link");
        let link = s.token("r-1", now() + chrono::Duration::hours(5));
        assert!(s.verify_inbox(&link, "ana@example.com", now()).is_err());
        let other = LinkSigner::new(&[8u8; 32], "https://sync.example.com/act");
        assert!(other
            .verify_inbox(&token, "ana@example.com", now())
            .is_err());
        let mut rng = fastrand::Rng::with_seed(30);
        for _ in 0..2_000 {
            let junk = crate::config::hostile_text(&mut rng, 20);
            assert!(s.verify_inbox(&junk, "ana@example.com", now()).is_err());
        }
    }

    #[test]
    fn a_link_names_its_referral_until_the_deadline() {
        let s = signer();
        let deadline = now() + chrono::Duration::hours(5);
        let url = s.url("r-1", deadline);
        assert!(url.starts_with("https://sync.example.com/act/"), "{url}");
        let token = url.rsplit('/').next().unwrap();
        assert_eq!(
            s.verify(token, now()),
            Ok(Claims {
                referral_id: "r-1".into(),
                expires: deadline.with_nanosecond(0).unwrap()
            })
        );
        assert_eq!(s.verify(token, deadline), Err(LinkError::Expired));
        let other_key = LinkSigner::new(&[8u8; 32], "https://x");
        assert_eq!(other_key.verify(token, now()), Err(LinkError::Forged));
    }

    use chrono::Timelike;

    /// Every single-character change, every truncation and a corpus of forgeries: none
    /// verifies (the property the action page's 403 rests on).
    #[test]
    fn no_altered_or_forged_token_verifies() {
        let s = signer();
        let good = s.token(
            "5e5b2a8e-0d7e-4b1f-9a38-1c2d3e4f5a6b",
            now() + chrono::Duration::days(3),
        );
        let mut rng = fastrand::Rng::with_seed(18);
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %"
                .chars()
                .collect();
        let chars: Vec<char> = good.chars().collect();
        for i in 0..chars.len() {
            for _ in 0..6 {
                let mut altered = chars.clone();
                let c = alphabet[rng.usize(..alphabet.len())];
                if c == altered[i] {
                    continue;
                }
                altered[i] = c;
                let t: String = altered.into_iter().collect();
                assert!(s.verify(&t, now()).is_err(), "{t}");
            }
            let truncated: String = chars[..i].iter().collect();
            assert!(s.verify(&truncated, now()).is_err(), "{truncated}");
        }
        // Another referral's id with this signature; a far expiry; padding; junk.
        let (id, rest) = good.split_once('.').unwrap();
        let (exp, tag) = rest.split_once('.').unwrap();
        let other = URL_SAFE_NO_PAD.encode("another-referral");
        let far = (now() + chrono::Duration::days(3650)).timestamp();
        for forged in [
            format!("{other}.{exp}.{tag}"),
            format!("{id}.{far}.{tag}"),
            format!("{id}.0{exp}.{tag}"),
            format!("{id}.+{exp}.{tag}"),
            format!("{id}.{exp}.{tag}="),
            format!("{id}.{exp}."),
            format!("{id}.{exp}.{tag}.x"),
            "..".into(),
            String::new(),
            "a".repeat(5000),
        ] {
            assert!(s.verify(&forged, now()).is_err(), "{forged}");
        }
        for _ in 0..2000 {
            let len = rng.usize(0..120);
            let junk: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            assert!(s.verify(&junk, now()).is_err(), "{junk}");
        }
    }

    #[test]
    fn the_generated_key_is_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("actions.key");
        let first = generated_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(generated_key(&path).unwrap(), first);
        std::fs::write(dir.path().join("short"), "too short").unwrap();
        assert!(read_key_file(&dir.path().join("short")).is_err());
    }
}
