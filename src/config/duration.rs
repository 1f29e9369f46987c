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
    pub fn as_chrono(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.0).unwrap_or(chrono::Duration::MAX)
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty duration".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!(
                    "invalid duration {s:?}: expected a number followed by a unit (ms, s, m, h, d, w), e.g. \"72h\""
                ));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let seconds_per_unit: f64 = match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                "w" => 604_800.0,
                _ => {
                    return Err(format!(
                        "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)"
                    ))
                }
            };
            // Checked: a number no clock can hold is an error naming the key, not a panic.
            total = Duration::try_from_secs_f64(number as f64 * seconds_per_unit)
                .ok()
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

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Seconds(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Raw::Seconds(n) if Duration::from_secs(n) <= MAX_DURATION => Ok(HumanDuration::secs(n)),
            Raw::Seconds(n) => Err(serde::de::Error::custom(format!(
                "{n} seconds is too large (at most {MAX_DURATION_TEXT})"
            ))),
        }
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
