//! JSON for SQL over HTTP, as the Neon serverless driver and Neon's own endpoint have it:
//! parameters from JSON to PostgreSQL's text, and values from PostgreSQL's text to JSON.
//!
//! - Parameters: `null` is NULL; a string is its text; booleans, numbers and objects are their
//!   JSON text; an array is a PostgreSQL array literal (its strings quoted and escaped, its
//!   objects as quoted JSON).
//! - Values, unless raw text is asked for: `bool` → true/false; `int2`, `int4` → numbers;
//!   `float4`, `float8` → numbers (NaN and ±Infinity stay strings: JSON has no such numbers);
//!   `json`, `jsonb` → embedded; arrays of these → nested arrays (their bounds decoration
//!   dropped); everything else (`int8`, `numeric`, dates and times, ...) → its text, which is
//!   exact. A value that does not read as its type says is given as its text.

use serde_json::Value;

/// A parameter's text for PostgreSQL (`None`: NULL).
pub fn param(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => Some(value.to_string()),
        Value::Array(_) => Some(array_literal(value)),
    }
}

/// A JSON array as a PostgreSQL array literal.
fn array_literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".into(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => value.to_string(),
        Value::Object(_) => Value::String(value.to_string()).to_string(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(array_literal).collect();
            format!("{{{}}}", items.join(","))
        }
    }
}

/// Writes `s` as a JSON string.
pub fn string(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("a string serializes");
}

/// The element type of the built-in array type `oid`.
fn element_of(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1005 => INT2,
        1007 => INT4,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        199 => JSON,
        3807 => JSONB,
        // Text-like and other types whose values stay strings: the element's own type does
        // not matter beyond that.
        1009 | 1015 | 1014 | 1231 | 1182 | 1183 | 1115 | 1185 | 2951 | 1001 | 1028 | 1041 | 651
        | 1040 | 1003 | 1187 | 3643 | 1263 => TEXT,
        _ => return None,
    })
}

const BOOL: u32 = 16;
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT: u32 = 25;
const JSON: u32 = 114;
const FLOAT4: u32 = 700;
const FLOAT8: u32 = 701;
const JSONB: u32 = 3802;

/// Writes the value `text` of type `oid` as JSON.
pub fn value(out: &mut Vec<u8>, text: &str, oid: u32) {
    if let Some(element) = element_of(oid) {
        let at = out.len();
        if array(out, text, element).is_none() {
            out.truncate(at);
            string(out, text);
        }
        return;
    }
    scalar(out, text, oid)
}

fn scalar(out: &mut Vec<u8>, text: &str, oid: u32) {
    match oid {
        BOOL => out.extend_from_slice(if text == "t" { b"true" } else { b"false" }),
        INT2 | INT4 if text.parse::<i32>().is_ok() => out.extend_from_slice(text.as_bytes()),
        FLOAT4 | FLOAT8 => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => {
                serde_json::to_writer(&mut *out, &f).expect("a finite number serializes")
            }
            _ => string(out, text),
        },
        JSON | JSONB if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            out.extend_from_slice(text.as_bytes())
        }
        _ => string(out, text),
    }
}

/// Writes the array literal `text` (elements of type `element`) as nested JSON arrays;
/// `None` when it does not read as one.
fn array(out: &mut Vec<u8>, text: &str, element: u32) -> Option<()> {
    // Bounds decoration (`[1:2]={...}`) says where the indexes start: JSON has no place for it.
    let text = match text.strip_prefix('[') {
        Some(_) => text.split_once('=')?.1,
        None => text,
    };
    let rest = list(out, text.trim_start(), element)?;
    rest.trim().is_empty().then_some(())
}

/// One `{...}`; the text after it.
fn list<'a>(out: &mut Vec<u8>, text: &'a str, element: u32) -> Option<&'a str> {
    let mut rest = text.strip_prefix('{')?.trim_start();
    out.push(b'[');
    if let Some(after) = rest.strip_prefix('}') {
        out.push(b']');
        return Some(after.trim_start());
    }
    let mut first = true;
    let mut quoted = String::new();
    loop {
        if !first {
            out.push(b',');
        }
        first = false;
        rest = rest.trim_start();
        if rest.starts_with('{') {
            rest = list(out, rest, element)?;
        } else if let Some(q) = rest.strip_prefix('"') {
            quoted.clear();
            let mut chars = q.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => quoted.push(chars.next()?.1),
                    (_, c) => quoted.push(c),
                }
            };
            scalar(out, &quoted, element);
            rest = q[end + 1..].trim_start();
        } else {
            let end = rest.find([',', '}'])?;
            let item = rest[..end].trim_end();
            if item == "NULL" {
                out.extend_from_slice(b"null");
            } else {
                scalar(out, item, element);
            }
            rest = &rest[end..];
        }
        match rest.as_bytes().first()? {
            b',' => rest = &rest[1..],
            b'}' => {
                out.push(b']');
                return Some(rest[1..].trim_start());
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn typed(text: &str, oid: u32) -> Value {
        let mut out = Vec::new();
        value(&mut out, text, oid);
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{e}: {:?}", out))
    }

    #[test]
    fn parameters_become_postgresql_text() {
        let p = |v: Value| param(&v);
        assert_eq!(p(json!(null)), None);
        assert_eq!(p(json!(true)), Some("true".into()));
        assert_eq!(p(json!(42)), Some("42".into()));
        assert_eq!(p(json!("a\"b")), Some("a\"b".into()));
        assert_eq!(p(json!({"a": 1})), Some(r#"{"a":1}"#.into()));
        assert_eq!(
            p(json!([true, null, "NULL", 42, "x\"\\", [1, 2], {"k": 1}])),
            Some(r#"{true,NULL,"NULL",42,"x\"\\",{1,2},"{\"k\":1}"}"#.into())
        );
    }

    #[test]
    fn values_become_json_of_their_type() {
        assert_eq!(typed("t", BOOL), json!(true));
        assert_eq!(typed("f", BOOL), json!(false));
        assert_eq!(typed("-12", INT4), json!(-12));
        assert_eq!(typed("9007199254740993", INT8), json!("9007199254740993"));
        assert_eq!(typed("1.5", FLOAT8), json!(1.5));
        assert_eq!(typed("NaN", FLOAT4), json!("NaN"));
        assert_eq!(typed("-Infinity", FLOAT8), json!("-Infinity"));
        assert_eq!(typed(r#"{"a": [1, null]}"#, JSONB), json!({"a": [1, null]}));
        assert_eq!(typed("12.50", 1700), json!("12.50"));
        assert_eq!(typed("{1,2,NULL}", 1007), json!([1, 2, null]));
        assert_eq!(typed("{{1,2},{3,4}}", 1005), json!([[1, 2], [3, 4]]));
        assert_eq!(typed("[0:1]={7,8}", 1007), json!([7, 8]));
        assert_eq!(typed("{}", 1009), json!([]));
        assert_eq!(
            typed(r#"{plain,"with \"quote\"","a,b",NULL,"NULL"}"#, 1009),
            json!(["plain", "with \"quote\"", "a,b", null, "NULL"])
        );
        assert_eq!(
            typed(r#"{"{\"a\": 1}",null}"#, 3807),
            json!([{"a": 1}, null])
        );
        assert_eq!(typed("{t,f}", 1000), json!([true, false]));
        // What does not read as its type is its text.
        assert_eq!(typed("{1,2", 1007), json!("{1,2"));
        assert_eq!(typed("12x", INT4), json!("12x"));
        assert_eq!(typed("{not json", JSON), json!("{not json"));
    }
}
