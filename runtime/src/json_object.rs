//! Reading a JSON object (a `config.json`) with its keys in file order and duplicate keys
//! rejected: `serde_json::Value` keeps the last of two equal keys, so a file that sets a value
//! twice would silently use the second one.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;

/// The members of a JSON object, in file order, every key once.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonObject(pub Vec<(String, serde_json::Value)>);

/// Parses `text` as one JSON object whose top-level keys are distinct. The error says why:
/// invalid JSON (with line and column), not an object, or the first key given twice.
pub fn parse_json_object(text: &str) -> Result<JsonObject, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let object = de
        .deserialize_map(ObjectVisitor)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    Ok(object)
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = JsonObject;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonObject, A::Error> {
        let mut members: Vec<(String, serde_json::Value)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("key `{key}` is given twice")));
            }
            let value = map.next_value()?;
            members.push((key, value));
        }
        Ok(JsonObject(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_in_file_order() {
        let o = parse_json_object(r#"{"b": 1, "a": true}"#).unwrap();
        let keys: Vec<&str> = o.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
    }

    #[test]
    fn a_duplicate_key_is_an_error_naming_it() {
        let e =
            parse_json_object(r#"{"hidden_size": 64, "x": 1, "hidden_size": 128}"#).unwrap_err();
        assert!(e.contains("`hidden_size` is given twice"), "{e}");
    }

    #[test]
    fn non_objects_and_trailing_text_are_errors() {
        assert!(parse_json_object("[1, 2]").is_err());
        assert!(parse_json_object(r#"{"a": 1} x"#).is_err());
        assert!(parse_json_object(r#"{"a": "#).is_err());
    }

    #[test]
    fn nested_objects_may_repeat_outer_keys() {
        assert!(parse_json_object(r#"{"a": {"a": 1}, "b": 2}"#).is_ok());
    }
}
