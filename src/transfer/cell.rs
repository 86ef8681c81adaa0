//! One stored value, carried exactly: [`Cell`].
//!
//! A row may hold anything after a hand edit (a time stored as text, a
//! payload that is not UTF-8), and the export must carry such a row over
//! unchanged, so every column travels as the value it is, not as the type
//! it should be. The usual values are plain JSON (a number, a string,
//! null); only the unusual ones take an object form, so an export of a
//! healthy queue reads like the data it holds.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// One column's value, as the store holds it.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Cell {
    #[default]
    Null,
    Integer(i64),
    /// A floating-point number (as JSON with a fraction or exponent, or
    /// `{"real":"inf"}` and `{"real":"-inf"}`).
    Real(f64),
    /// Text (as a JSON string).
    Text(String),
    /// Text whose bytes are not UTF-8 (as `{"text_hex":"…"}`).
    RawText(Vec<u8>),
    /// Bytes (as `{"blob_hex":"…"}`).
    Blob(Vec<u8>),
}

impl Cell {
    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Cell::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as text, if it is UTF-8 text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Cell::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Text from stored bytes: a [`Cell::Text`] when they are UTF-8.
    pub fn text(bytes: &[u8]) -> Cell {
        match std::str::from_utf8(bytes) {
            Ok(t) => Cell::Text(t.to_owned()),
            Err(_) => Cell::RawText(bytes.to_vec()),
        }
    }
}

impl From<Option<String>> for Cell {
    fn from(text: Option<String>) -> Cell {
        text.map_or(Cell::Null, Cell::Text)
    }
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tagged = |name: &str, value: String| {
            let mut map = Map::new();
            map.insert(name.to_owned(), Value::String(value));
            Value::Object(map)
        };
        match self {
            Cell::Null => s.serialize_none(),
            Cell::Integer(n) => s.serialize_i64(*n),
            Cell::Real(x) if x.is_finite() => s.serialize_f64(*x),
            Cell::Real(x) => {
                let name = if *x > 0.0 { "inf" } else { "-inf" };
                tagged("real", name.to_owned()).serialize(s)
            }
            Cell::Text(t) => s.serialize_str(t),
            Cell::RawText(b) => tagged("text_hex", hex(b)).serialize(s),
            Cell::Blob(b) => tagged("blob_hex", hex(b)).serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cell, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(Cell::Null),
            Value::String(t) => Ok(Cell::Text(t)),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    return Ok(Cell::Integer(i));
                }
                let text = n.to_string();
                if !text.contains(['.', 'e', 'E']) {
                    return Err(D::Error::custom(format!(
                        "{text} is out of range for a 64-bit integer"
                    )));
                }
                n.as_f64()
                    .map(Cell::Real)
                    .ok_or_else(|| D::Error::custom(format!("{text} is not a number")))
            }
            Value::Object(map) if map.len() == 1 => {
                let (name, value) = map.into_iter().next().unwrap_or_default();
                let Value::String(text) = value else {
                    return Err(D::Error::custom(format!("{name} must be a string")));
                };
                match (name.as_str(), text.as_str()) {
                    ("real", "inf") => Ok(Cell::Real(f64::INFINITY)),
                    ("real", "-inf") => Ok(Cell::Real(f64::NEG_INFINITY)),
                    ("text_hex", _) => unhex(&text).map(Cell::RawText).map_err(D::Error::custom),
                    ("blob_hex", _) => unhex(&text).map(Cell::Blob).map_err(D::Error::custom),
                    _ => Err(D::Error::custom(format!(
                        "{{{name:?}:{text:?}}} is not a stored value"
                    ))),
                }
            }
            other => Err(D::Error::custom(format!(
                "{other} is not a stored value (a number, a string, null, or one of \
                 {{\"text_hex\"}}, {{\"blob_hex\"}}, {{\"real\"}})"
            ))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("{:?} is not a hex digit", char::from(c))),
    };
    if !text.len().is_multiple_of(2) {
        return Err("hex text has an odd number of digits".into());
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_cell_comes_back_as_it_went() {
        let cells = [
            Cell::Null,
            Cell::Integer(i64::MIN),
            Cell::Integer(1_700_000_000_000),
            Cell::Real(1.0),
            Cell::Real(-0.25e-300),
            Cell::Real(f64::INFINITY),
            Cell::Real(f64::NEG_INFINITY),
            Cell::Text("tomorrow \u{1F600}\n\"".into()),
            Cell::Text(String::new()),
            Cell::RawText(vec![0xff, 0x00, b'{']),
            Cell::Blob(vec![1, 2, 0xab]),
        ];
        for cell in cells {
            let json = serde_json::to_string(&cell).unwrap();
            let back: Cell = serde_json::from_str(&json).unwrap();
            assert_eq!(back, cell, "{json}");
        }
    }

    #[test]
    fn plain_values_read_as_plain_json() {
        assert_eq!(serde_json::to_string(&Cell::Integer(5)).unwrap(), "5");
        assert_eq!(
            serde_json::to_string(&Cell::Text("a".into())).unwrap(),
            "\"a\""
        );
        assert_eq!(serde_json::to_string(&Cell::Real(2.0)).unwrap(), "2.0");
        assert_eq!(
            serde_json::to_string(&Cell::RawText(vec![0xff])).unwrap(),
            r#"{"text_hex":"ff"}"#
        );
    }

    #[test]
    fn what_is_not_a_stored_value_is_refused() {
        for bad in [
            "true",
            "[1]",
            r#"{"text_hex":"f"}"#,
            r#"{"blob_hex":"zz"}"#,
            r#"{"other":"x"}"#,
            "18446744073709551616",
        ] {
            assert!(serde_json::from_str::<Cell>(bad).is_err(), "{bad}");
        }
    }
}
