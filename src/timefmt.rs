//! One way to show time to people (`2026-12-01 14:05 UTC`, time left as `2 d 12 h`), used by
//! every command, the demo and the alert texts; JSON keeps RFC 3339; and the database's
//! timestamp text ([`db_timestamp`], [`parse_timestamp`]) (pure, a leaf module).

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

/// `2026-12-01 14:05 UTC`: minutes are the precision a person acts on.
pub(crate) fn human(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// `[alerts] timezone`: a fixed offset, or a zone by name whose offset follows daylight
/// saving time at each instant shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Zone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl From<FixedOffset> for Zone {
    fn from(offset: FixedOffset) -> Self {
        Zone::Fixed(offset)
    }
}

impl Zone {
    pub(crate) fn utc() -> Zone {
        Zone::Fixed(FixedOffset::east_opt(0).expect("UTC is an offset"))
    }
}

/// Parses `[alerts] timezone`: `UTC`, an offset (`+01:00`), or an IANA name
/// (`Europe/Berlin`, any case).
pub(crate) fn parse_zone(text: &str) -> Option<Zone> {
    if let Some(offset) = parse_offset(text) {
        return Some(Zone::Fixed(offset));
    }
    let text = text.trim();
    if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
        return Some(Zone::Named(tz));
    }
    chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(text))
        .map(|tz| Zone::Named(*tz))
}

/// Every zone name `[alerts] timezone` takes (for a did-you-mean on a typo).
pub(crate) fn zone_names() -> impl Iterator<Item = &'static str> {
    chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name())
}

/// The same in `[alerts] timezone`: `2026-12-01 15:05 +01:00` for an offset, UTC stays
/// `UTC`, and a named zone shows the abbreviation in force at that instant
/// (`2026-07-01 14:05 CEST`, `2026-12-01 15:05 CET`).
pub(crate) fn human_in(at: DateTime<Utc>, zone: impl Into<Zone>) -> String {
    match zone.into() {
        Zone::Fixed(offset) if offset.local_minus_utc() == 0 => human(at),
        Zone::Fixed(offset) => at
            .with_timezone(&offset)
            .format("%Y-%m-%d %H:%M %:z")
            .to_string(),
        Zone::Named(tz) => at
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string(),
    }
}

/// A stored timestamp (RFC 3339, any precision) for people; text that is not one is shown as is.
pub(crate) fn human_text(stored: &str) -> String {
    match DateTime::parse_from_rfc3339(stored) {
        Ok(t) => human(t.with_timezone(&Utc)),
        Err(_) => stored.to_string(),
    }
}

/// Time left in one unit family: `2 d 12 h`, `5 h 30 min`, `45 min`; `expired` at or below zero.
pub(crate) fn time_left(remaining: Duration) -> String {
    let minutes = remaining.num_minutes();
    if minutes <= 0 {
        return "expired".into();
    }
    let (days, hours, mins) = (minutes / 1440, minutes / 60 % 24, minutes % 60);
    match (days, hours) {
        (0, 0) => format!("{mins} min"),
        (0, h) if mins == 0 => format!("{h} h"),
        (0, h) => format!("{h} h {mins} min"),
        (d, 0) => format!("{d} d"),
        (d, h) => format!("{d} d {h} h"),
    }
}

/// Parses `[alerts] timezone`: `UTC`, `Z`, or an offset `+01:00` / `-05:30` / `+0100`.
pub(crate) fn parse_offset(text: &str) -> Option<FixedOffset> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("utc") || text == "Z" {
        return FixedOffset::east_opt(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) || rest.len() > 5 {
        return None;
    }
    let (h, m): (i32, i32) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// A canonical, sortable text form for timestamps in the database (always 9 fraction digits).
pub fn db_timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Parses the timestamp shapes seen from Partner Center: RFC 3339 with up to 9 fractional
/// digits, or the same without a zone (taken as UTC), or a bare date.
pub fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f") {
        return Some(t.and_utc());
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn one_format_for_people() {
        assert_eq!(human(at("2026-12-01T14:05:59Z")), "2026-12-01 14:05 UTC");
        assert_eq!(
            human_text("2026-12-01T14:05:07.123456789Z"),
            "2026-12-01 14:05 UTC"
        );
        assert_eq!(human_text("not a time"), "not a time");
        let plus_one = parse_offset("+01:00").unwrap();
        assert_eq!(
            human_in(at("2026-12-01T23:30:00Z"), plus_one),
            "2026-12-02 00:30 +01:00"
        );
        assert_eq!(
            human_in(at("2026-12-01T23:30:00Z"), parse_offset("UTC").unwrap()),
            "2026-12-01 23:30 UTC"
        );
    }

    #[test]
    fn time_left_uses_one_unit_family() {
        let left = |m: i64| time_left(Duration::minutes(m));
        assert_eq!(left(60 * 60), "2 d 12 h");
        assert_eq!(left(2 * 1440), "2 d");
        assert_eq!(left(5 * 60 + 30), "5 h 30 min");
        assert_eq!(left(4 * 60), "4 h");
        assert_eq!(left(45), "45 min");
        assert_eq!(left(0), "expired");
        assert_eq!(left(-90), "expired");
    }

    #[test]
    fn named_zones_follow_daylight_saving_time() {
        let berlin = parse_zone("Europe/Berlin").unwrap();
        assert_eq!(parse_zone("europe/berlin"), Some(berlin));
        // Berlin moves to CEST at 01:00 UTC on 2026-03-29: one minute apart, two offsets.
        assert_eq!(
            human_in(at("2026-03-29T00:59:00Z"), berlin),
            "2026-03-29 01:59 CET"
        );
        assert_eq!(
            human_in(at("2026-03-29T01:00:00Z"), berlin),
            "2026-03-29 03:00 CEST"
        );
        assert_eq!(
            human_in(at("2026-10-25T00:30:00Z"), berlin),
            "2026-10-25 02:30 CEST"
        );
        assert_eq!(
            human_in(at("2026-10-25T01:30:00Z"), berlin),
            "2026-10-25 02:30 CET"
        );
        assert_eq!(parse_zone("UTC"), Some(Zone::utc()));
        assert!(parse_zone("Europe/Berln").is_none());
        assert!(parse_zone("").is_none());
    }

    /// Generated hostile names (proptest is not a dependency; seeded `fastrand` is): never a
    /// panic, and every accepted zone formats an instant.
    #[test]
    fn generated_zone_text_never_panics() {
        let mut rng = fastrand::Rng::with_seed(0x7a0e_0421);
        let now = at("2026-03-29T01:00:00Z");
        for _ in 0..5_000 {
            let text = crate::config::hostile_text(&mut rng, 6);
            if let Some(zone) = parse_zone(&text) {
                assert!(!human_in(now, zone).is_empty(), "{text:?}");
            }
        }
    }

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offset("-05:30").unwrap().local_minus_utc(), -19800);
        assert_eq!(parse_offset("+0100").unwrap().local_minus_utc(), 3600);
        for bad in [
            "",
            "Europe/Berlin",
            "+1",
            "+25:00",
            "+01:60",
            "01:00",
            "+01:00:00",
        ] {
            assert!(parse_offset(bad).is_none(), "{bad:?}");
        }
    }
}
