//! Matrix canonical JSON: the byte form that is hashed and signed.
//!
//! Rules (Matrix appendix "Canonical JSON"): object keys sorted by Unicode code point, no
//! insignificant whitespace, UTF-8 output with only the mandatory escapes, and numbers limited
//! to integers in `[-(2^53)+1, 2^53-1]` (floats have no canonical form and are refused).
//!
//! The encoder sorts keys itself instead of relying on `serde_json::Map` being a `BTreeMap`:
//! any crate in the build enabling serde_json's `preserve_order` would silently change that.

use serde_json::Value;

/// The largest integer magnitude canonical JSON allows (2^53 - 1).
pub const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalJsonError {
    #[error("floating-point numbers have no canonical JSON form")]
    Float,
    #[error("integer {0} is outside the canonical JSON range ±(2^53-1)")]
    IntegerOutOfRange(String),
}

/// Encodes `value` as canonical JSON.
pub fn to_canonical_string(value: &Value) -> Result<String, CanonicalJsonError> {
    let mut out = String::with_capacity(128);
    write_canonical(value, &mut out)?;
    Ok(out)
}

/// Appends the canonical JSON encoding of `value` to `out`.
pub fn write_canonical(value: &Value, out: &mut String) -> Result<(), CanonicalJsonError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            let in_range = n
                .as_i64()
                .map(|i| (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i))
                .or_else(|| n.as_u64().map(|u| u <= MAX_SAFE_INTEGER as u64));
            match in_range {
                Some(true) => out.push_str(&n.to_string()),
                Some(false) => return Err(CanonicalJsonError::IntegerOutOfRange(n.to_string())),
                None => return Err(CanonicalJsonError::Float),
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // `str` ordering is byte ordering, which for UTF-8 equals code point ordering.
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, out);
                out.push(':');
                write_canonical(item, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Appends `s` as a JSON string literal. serde_json's escaping is exactly the canonical one:
/// `"` and `\`, the short escapes `\b \f \n \r \t`, other control characters as lowercase
/// `\u00xx`, and everything else (non-ASCII included) as raw UTF-8.
pub fn write_string(s: &str, out: &mut String) {
    // Serialising a `str` cannot fail; the fallback keeps this path free of panics.
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        Err(_) => out.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        to_canonical_string(&v).expect("canonical")
    }

    // The examples of the Matrix specification's "Canonical JSON" section.
    #[test]
    fn matrix_spec_examples() {
        assert_eq!(canon(json!({})), "{}");
        assert_eq!(
            canon(json!({"one": 1, "two": "Two"})),
            r#"{"one":1,"two":"Two"}"#
        );
        assert_eq!(canon(json!({"b": "2", "a": "1"})), r#"{"a":"1","b":"2"}"#);
        assert_eq!(
            canon(
                json!({"auth": {"success": true, "mxid": "@john.doe:example.com",
                "profile": {"display_name": "John Doe",
                    "three_pids": [{"medium": "email", "address": "john.doe@example.org"},
                                   {"medium": "msisdn", "address": "123456789"}]}}})
            ),
            r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#
        );
        assert_eq!(canon(json!({"a": "日本語"})), r#"{"a":"日本語"}"#);
        assert_eq!(canon(json!({"本": 2, "日": 1})), r#"{"日":1,"本":2}"#);
        assert_eq!(canon(json!({"a": "\u{65e5}"})), r#"{"a":"日"}"#);
        assert_eq!(canon(json!({"a": null})), r#"{"a":null}"#);
    }

    #[test]
    fn control_characters_use_lowercase_escapes() {
        assert_eq!(canon(json!("\u{1f}\n\t\"\\")), r#""\u001f\n\t\"\\""#);
    }

    #[test]
    fn integers_are_bounded_and_floats_refused() {
        assert_eq!(canon(json!(MAX_SAFE_INTEGER)), "9007199254740991");
        assert_eq!(canon(json!(-MAX_SAFE_INTEGER)), "-9007199254740991");
        assert!(matches!(
            to_canonical_string(&json!(MAX_SAFE_INTEGER + 1)),
            Err(CanonicalJsonError::IntegerOutOfRange(_))
        ));
        assert!(matches!(
            to_canonical_string(&json!(u64::MAX)),
            Err(CanonicalJsonError::IntegerOutOfRange(_))
        ));
        assert_eq!(
            to_canonical_string(&json!({"x": [1.5]})),
            Err(CanonicalJsonError::Float)
        );
    }
}
