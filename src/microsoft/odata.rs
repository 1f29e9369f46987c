//! OData literals and query-string encoding for Partner Center `$filter` expressions.

use chrono::{DateTime, SecondsFormat, Utc};

/// A string literal with OData escaping: a single quote is doubled (`O'Neil` → `'O''Neil'`).
pub(crate) fn string_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `field eq 'value'`, escaped.
pub fn eq(field: &str, value: &str) -> String {
    format!("{field} eq {}", string_literal(value))
}

/// A DateTimeOffset literal (OData v4: unquoted, UTC, `Z`).
pub(crate) fn datetime_literal(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Percent-encodes a query value, keeping the characters OData examples show literally
/// (`$ ' ( ) , : /`) so requests read like the documentation; spaces become `%20`.
pub(crate) fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b'$' | b'\'' | b'(' | b')' | b',' | b':' | b'/' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(string_literal("O'Neil's"), "'O''Neil''s'");
        assert_eq!(
            eq("customerProfile/name", "a'b"),
            "customerProfile/name eq 'a''b'"
        );
    }

    #[test]
    fn query_values_encode_reserved_characters() {
        assert_eq!(
            encode_query_value("direction eq 'Incoming' and x eq 'a&b=c+d#'"),
            "direction%20eq%20'Incoming'%20and%20x%20eq%20'a%26b%3Dc%2Bd%23'"
        );
    }
}
