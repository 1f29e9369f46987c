//! The request checks every browser-facing page makes before it reads anything (the action
//! page; the inbox when it comes): a state-changing request must come from our own origin, and
//! the SSO proxy's actor header must name exactly one person. Pure functions of the headers, so
//! a new page calls the same two and gets the same answers.

use axum::http::{HeaderMap, StatusCode};

/// The longest actor the header may carry: an email address is at most 254 bytes (RFC 5321's
/// path limit), and the value lands in the audit log.
pub(crate) const MAX_ACTOR_BYTES: usize = 254;

/// Why a request is refused; [`Refusal::status`] is its HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `Sec-Fetch-Site` or `Origin` says another site sent this request (403).
    CrossSite(&'static str),
    /// The actor header is missing or blank: not signed in through the proxy (403).
    NoActor,
    /// The actor header is present but not exactly one clean value (400).
    BadActor(&'static str),
}

impl Refusal {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refusal::CrossSite(_) | Refusal::NoActor => StatusCode::FORBIDDEN,
            Refusal::BadActor(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::CrossSite(why) => write!(f, "cross-site request: {why}"),
            Refusal::NoActor => f.write_str("no actor header"),
            Refusal::BadActor(why) => write!(f, "actor header {why}"),
        }
    }
}

/// A state-changing request (a POST) must come from `public_url`'s own origin. A browser says
/// where a request comes from in `Sec-Fetch-Site` (only `same-origin`, or `none` for one the
/// person typed, pass) and in `Origin` (must be `public_url`'s scheme, host and port). A
/// request with neither (curl, a script) is judged by its link or token alone: these headers
/// protect the signed-in colleague's browser, not the link.
///
/// Our pages are sent with `Referrer-Policy: no-referrer`, under which a browser's form POST
/// carries `Origin: null` (the Fetch standard serializes the origin so): that `null` passes
/// only beside `Sec-Fetch-Site: same-origin`, which no page can forge.
pub(crate) fn same_origin(headers: &HeaderMap, public_url: &str) -> Result<(), Refusal> {
    let mut same_origin_said = false;
    for value in headers.get_all("sec-fetch-site") {
        match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
            Ok(v) if v == "same-origin" => same_origin_said = true,
            Ok(v) if v == "none" => {}
            _ => return Err(Refusal::CrossSite("Sec-Fetch-Site is not same-origin")),
        }
    }
    let ours = origin_of(public_url);
    for value in headers.get_all("origin") {
        if same_origin_said && value.as_bytes() == b"null" {
            continue;
        }
        let theirs = value.to_str().ok().and_then(origin_of);
        if theirs.is_none() || theirs != ours {
            return Err(Refusal::CrossSite("Origin is not public_url's"));
        }
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL (the default port left out, as browsers send it); `None`
/// for what is not an absolute http(s) URL, an opaque `null` origin included.
fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let origin = url.origin();
    origin.is_tuple().then(|| origin.ascii_serialization())
}

/// The one person the proxy's `header` names. Missing or blank → [`Refusal::NoActor`];
/// repeated, comma-joined (what a proxy that appends makes of a forged header plus its own),
/// not UTF-8, with a control or bidirectional-override character, or over
/// [`MAX_ACTOR_BYTES`] → [`Refusal::BadActor`]: which of two values is the person cannot be
/// known, so neither is recorded.
pub(crate) fn single_actor(headers: &HeaderMap, header: &str) -> Result<String, Refusal> {
    let mut values = headers.get_all(header).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::NoActor);
    };
    if values.next().is_some() {
        return Err(Refusal::BadActor("repeated"));
    }
    let text = std::str::from_utf8(value.as_bytes())
        .map_err(|_| Refusal::BadActor("not UTF-8"))?
        .trim();
    if text.is_empty() {
        return Err(Refusal::NoActor);
    }
    if text.len() > MAX_ACTOR_BYTES {
        return Err(Refusal::BadActor("too long"));
    }
    if text.contains(',') {
        return Err(Refusal::BadActor("holds more than one value"));
    }
    if text.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        return Err(Refusal::BadActor("holds a control character"));
    }
    Ok(text.to_string())
}

/// The invisible characters that reorder text on screen (an actor shown in `audit` must read
/// as it is).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const PUBLIC: &str = "https://sync.example.com/act";

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    #[test]
    fn only_our_origin_may_post_and_no_header_is_judged_by_the_link() {
        for ok in [
            vec![],
            vec![("sec-fetch-site", &b"same-origin"[..])],
            vec![("sec-fetch-site", b"none")],
            vec![("origin", b"https://sync.example.com")],
            vec![("origin", b"https://SYNC.example.com:443")],
            vec![
                ("sec-fetch-site", b"same-origin"),
                ("origin", b"https://sync.example.com"),
            ],
            // What Chromium sends for our own form under Referrer-Policy: no-referrer.
            vec![("sec-fetch-site", b"same-origin"), ("origin", b"null")],
        ] {
            assert_eq!(same_origin(&headers(&ok), PUBLIC), Ok(()), "{ok:?}");
        }
        for bad in [
            vec![("sec-fetch-site", &b"cross-site"[..])],
            vec![("sec-fetch-site", b"same-site")],
            vec![("sec-fetch-site", b"")],
            vec![
                ("sec-fetch-site", b"same-origin"),
                ("sec-fetch-site", b"cross-site"),
            ],
            vec![("origin", b"https://evil.example")],
            vec![("origin", b"null")],
            vec![("sec-fetch-site", b"none"), ("origin", b"null")],
            vec![("origin", b"http://sync.example.com")],
            vec![("origin", b"https://sync.example.com:8443")],
            vec![("origin", b"https://sync.example.com.evil.example")],
            vec![
                ("origin", b"https://sync.example.com"),
                ("origin", b"https://evil.example"),
            ],
            vec![
                ("sec-fetch-site", b"same-origin"),
                ("origin", b"https://evil.example"),
            ],
            vec![("origin", b"\xff")],
        ] {
            let got = same_origin(&headers(&bad), PUBLIC);
            assert!(
                matches!(got, Err(Refusal::CrossSite(_))),
                "{bad:?}: {got:?}"
            );
            assert_eq!(got.unwrap_err().status(), StatusCode::FORBIDDEN);
        }
        // A loopback set-up: the port is part of the origin.
        let local = "http://127.0.0.1:8788/act";
        assert!(same_origin(&headers(&[("origin", b"http://127.0.0.1:8788")]), local).is_ok());
        assert!(same_origin(&headers(&[("origin", b"http://127.0.0.1:9999")]), local).is_err());
    }

    #[test]
    fn the_actor_header_must_name_exactly_one_person() {
        let h = "x-forwarded-email";
        assert_eq!(
            single_actor(&headers(&[(h, b" ana@partner.example ")]), h),
            Ok("ana@partner.example".into())
        );
        assert_eq!(single_actor(&headers(&[]), h), Err(Refusal::NoActor));
        assert_eq!(
            single_actor(&headers(&[(h, b"  ")]), h),
            Err(Refusal::NoActor)
        );
        let long = format!("{}@x.example", "a".repeat(MAX_ACTOR_BYTES));
        let max = format!("{}@x", "a".repeat(MAX_ACTOR_BYTES - 2));
        assert!(single_actor(&headers(&[(h, max.as_bytes())]), h).is_ok());
        for bad in [
            vec![
                (h, &b"attacker@evil.example"[..]),
                (h, b"victim@partner.example"),
            ],
            vec![(h, b"attacker@evil.example, victim@partner.example")],
            vec![(h, b"a@x,")],
            vec![(h, b"ana@x\tadmin")],
            vec![(h, "ana\u{85}@x".as_bytes())],
            vec![(h, "ana\u{202E}@x".as_bytes())],
            vec![(h, b"\xff\xfe")],
            vec![(h, long.as_bytes())],
        ] {
            let got = single_actor(&headers(&bad), h);
            assert!(matches!(got, Err(Refusal::BadActor(_))), "{bad:?}: {got:?}");
            assert_eq!(got.unwrap_err().status(), StatusCode::BAD_REQUEST);
        }
    }

    /// Generated headers never panic; whatever is accepted is one clean, bounded value.
    #[test]
    fn generated_headers_never_panic_and_what_passes_is_clean() {
        let mut rng = fastrand::Rng::with_seed(30);
        let h = "x-forwarded-email";
        for _ in 0..5000 {
            let mut map = HeaderMap::new();
            for _ in 0..rng.usize(0..3) {
                let text = crate::config::hostile_text(&mut rng, 80) + ",\u{202E}@";
                let cut = rng.usize(..=text.len());
                let bytes = &text.as_bytes()[..cut];
                if let Ok(v) = HeaderValue::from_bytes(bytes) {
                    map.append(h, v.clone());
                    map.append("origin", v);
                }
            }
            if let Ok(actor) = single_actor(&map, h) {
                assert_eq!(map.get_all(h).iter().count(), 1);
                assert!(!actor.is_empty() && actor.len() <= MAX_ACTOR_BYTES);
                assert!(!actor.contains(',') && !actor.chars().any(char::is_control));
            }
            if same_origin(&map, PUBLIC).is_ok() {
                assert!(map.get_all("origin").iter().all(|v| v
                    .as_bytes()
                    .eq_ignore_ascii_case(b"https://sync.example.com")));
            }
        }
    }
}
