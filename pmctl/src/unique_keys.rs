//! A JSON value read so that an object naming one key twice is an error, for the JSON and
//! Hjson parsers. YAML's parser refuses duplicate keys itself; serde_json and deser-hjson
//! keep the last value silently and offer no option to refuse, so this visitor is
//! hand-written: a config that says `prefix` twice must not pass with one of them ignored.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A [`Value`] whose objects had no duplicate keys.
pub struct UniqueKeys(pub Value);

impl<'de> Deserialize<'de> for UniqueKeys {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(UniqueKeysVisitor)
            .map(UniqueKeys)
    }
}

struct UniqueKeysVisitor;

impl<'de> Visitor<'de> for UniqueKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a JSON number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        UniqueKeys::deserialize(deserializer).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(UniqueKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let UniqueKeys(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} is given twice in one object"
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let ok: UniqueKeys =
            serde_json::from_str(r#"{"a": [1, 2.5, "x", null, true], "b": {"c": -1}}"#)
                .expect("no duplicates");
        assert_eq!(ok.0["b"]["c"], -1);
        assert_eq!(ok.0["a"][1], 2.5);
        for text in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"x": {"b": 1, "b": 1}}"#,
            r#"[{"k": 1, "k": 2}]"#,
        ] {
            let error = serde_json::from_str::<UniqueKeys>(text)
                .err()
                .expect("a duplicate key");
            assert!(error.to_string().contains("given twice"), "{error}");
        }
        let error = deser_hjson::from_str::<UniqueKeys>("{\n prefix: a-\n prefix: b-\n}")
            .err()
            .expect("a duplicate key in Hjson");
        let text = error.to_string();
        assert!(
            text.contains("prefix") && text.contains("given twice"),
            "{text}"
        );
    }
}
