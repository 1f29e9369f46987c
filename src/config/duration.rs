//! Human durations (`"90m"`, `"14d"`, `"1h30m"`), the ceiling every configured duration obeys.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// No duration in the configuration may exceed this (ten years): beyond it a number is a
/// typo, and time arithmetic with it could overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);
const MAX_DURATION_TEXT: &str = "3650d";

/// A duration written the way people write them: `"90m"`, `"72h"`, `"14d"`, `"1h30m"`, `"500ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub(crate) fn as_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

/// The help every duration error ends with. Spelled-out units are accepted too because
/// people write them ("30 seconds" used to fail with an empty unit).
const ACCEPTED: &str =
    "use 30s, 5m, 2h or 1d (also ms and w, 1.5h, combined like 1h30m, or words like \"30 seconds\")";

/// Milliseconds per unit, for the short forms and the common spelled-out ones (any case).
/// Whole milliseconds in integers: floats made "7ms" 6.999… ms, which printed as "6ms".
fn millis_per_unit(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        "w" | "week" | "weeks" => 604_800_000,
        _ => return None,
    })
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err(format!("empty duration: {ACCEPTED}"));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        loop {
            // Spaces may separate the parts ("1h 30m", "1 hour 30 minutes").
            rest = rest.trim_start();
            if rest.is_empty() {
                break;
            }
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration {s:?}: expected a number followed by a unit; {ACCEPTED}"
                ));
            }
            let number: u64 = rest[..digits].parse().map_err(|_| {
                format!("invalid duration {s:?}: too large (at most {MAX_DURATION_TEXT})")
            })?;
            rest = &rest[digits..];
            // A decimal part ("1.5h"): whole milliseconds in integers, at most 9 digits.
            let (fraction, places) = match rest.strip_prefix('.') {
                Some(after) => {
                    let n = after.chars().take_while(|c| c.is_ascii_digit()).count();
                    if n == 0 || n > 9 {
                        return Err(format!(
                            "invalid duration {s:?}: expected 1 to 9 digits after the point; {ACCEPTED}"
                        ));
                    }
                    rest = &after[n..];
                    (after[..n].parse::<u64>().unwrap_or(0), n as u32)
                }
                None => (0, 0),
            };
            rest = rest.trim_start();
            // ASCII letters only, so the byte length is the char count.
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let per_unit = match millis_per_unit(unit) {
                Some(per_unit) => per_unit,
                None if unit.is_empty() => {
                    return Err(format!(
                        "invalid duration {s:?}: {number} has no unit; {ACCEPTED}"
                    ))
                }
                None => {
                    return Err(format!(
                        "invalid duration {s:?}: unknown unit {unit:?}; {ACCEPTED}"
                    ))
                }
            };
            let scale = 10u64.pow(places);
            let fraction_ms = fraction * per_unit; // < 10^9 x 6.1 x 10^8: fits in u64
            if fraction_ms % scale != 0 {
                return Err(format!(
                    "invalid duration {s:?}: not a whole number of milliseconds; {ACCEPTED}"
                ));
            }
            // Checked: a number no clock can hold is an error naming the key, not a panic.
            total = number
                .checked_mul(per_unit)
                .and_then(|ms| ms.checked_add(fraction_ms / scale))
                .map(Duration::from_millis)
                .and_then(|part| total.checked_add(part))
                .filter(|t| *t <= MAX_DURATION)
                .ok_or_else(|| {
                    format!("invalid duration {s:?}: too large (at most {MAX_DURATION_TEXT})")
                })?;
        }
        Ok(HumanDuration(total))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        // Whole days only from a week up ("14d", "30d"); below that hours read better
        // ("72h", "24h"), matching how thresholds are written.
        let day = 86_400_000u128;
        if ms.is_multiple_of(day) && ms >= 7 * day {
            return write!(f, "{}d", ms / day);
        }
        for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1000)] {
            if ms.is_multiple_of(size) {
                return write!(f, "{}{unit}", ms / size);
            }
        }
        write!(f, "{ms}ms")
    }
}

/// A visitor rather than an untagged enum: serde's "data did not match any variant of
/// untagged enum" named neither the key's type nor the fix; this says what a duration is.
impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(
                    f,
                    "a duration in quotes like \"30s\", \"5m\", \"2h\" or \"1d\" (or a whole number of seconds)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HumanDuration, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<HumanDuration, E> {
                if Duration::from_secs(n) <= MAX_DURATION {
                    Ok(HumanDuration::secs(n))
                } else {
                    Err(E::custom(format!(
                        "{n} seconds is too large (at most {MAX_DURATION_TEXT})"
                    )))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<HumanDuration, E> {
                match u64::try_from(n) {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "{n} is negative: a duration is 0 or more; {ACCEPTED}"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spelled_units_and_spaces_are_accepted() {
        for (text, secs) in [
            ("30 seconds", 30),
            ("5 minutes", 300),
            ("2 hours", 7200),
            ("1 day", 86_400),
            ("2 weeks", 1_209_600),
            ("1 hour 30 minutes", 5400),
            ("1h 30m", 5400),
            ("30 Seconds", 30),
            ("10 secs", 10),
        ] {
            let d: HumanDuration = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(d.0, Duration::from_secs(secs), "{text}");
        }
        assert_eq!(
            "500 milliseconds".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(500)
        );
    }

    /// Issue 28: `"1.5h"` was refused as "1 has no unit".
    #[test]
    fn decimal_numbers_are_accepted_when_they_make_whole_milliseconds() {
        let millis = |text: &str| match text.parse::<HumanDuration>() {
            Ok(d) => d.0.as_millis(),
            Err(e) => panic!("{text}: {e}"),
        };
        assert_eq!(millis("1.5h"), 5_400_000);
        assert_eq!(millis("0.5d"), 43_200_000);
        assert_eq!(millis("2.25 hours"), 8_100_000);
        assert_eq!(millis("1.5s"), 1500);
        assert_eq!(millis("0.001s"), 1);
        assert_eq!(millis("1.5h30m"), 7_200_000);
        for bad in ["1.5ms", "1.h", ".5h", "1.0000000001h", "0.0001s"] {
            let e = bad.parse::<HumanDuration>().unwrap_err();
            assert!(e.contains("use 30s, 5m, 2h or 1d"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn errors_show_the_accepted_forms_without_nested_backticks() {
        for bad in ["30 fortnights", "30", "thirty seconds", "5y", "-3h", ""] {
            let e = bad.parse::<HumanDuration>().unwrap_err();
            assert!(e.contains("use 30s, 5m, 2h or 1d"), "{bad:?}: {e}");
            assert!(!e.contains('`'), "{e}");
            assert!(!e.contains("unit \"\""), "{e}");
        }
    }

    /// Generated hostile text (proptest is not a dependency; seeded `fastrand` is): the parser
    /// never panics, and whatever it accepts prints back to the same duration.
    #[test]
    fn generated_text_never_panics_and_what_parses_round_trips() {
        let mut rng = fastrand::Rng::with_seed(0xd0_2a71_0421);
        for _ in 0..20_000 {
            let text = crate::config::hostile_text(&mut rng, 8);
            if let Ok(d) = text.parse::<HumanDuration>() {
                assert!(d.0 <= MAX_DURATION, "{text:?}");
                let again: HumanDuration = d.to_string().parse().unwrap();
                assert_eq!(again, d, "{text:?}");
            }
        }
    }
}
