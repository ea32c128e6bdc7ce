//! A whole Kubernetes object inside a delivery, kept as its JSON text.
//!
//! The controller mirrors every delivery, so this is what its memory grows with: at a thousand clusters,
//! parsed `serde_json::Value`s cost about seven times their text (each small map a B-tree node of eleven
//! slots), and were most of the controller's memory. The text is parsed only where an object is read (once
//! per pass) or written (each apply), which costs far less than the request it goes with.
use std::borrow::Cow;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One Kubernetes object (a JSON object), held as compact JSON text. Serialized as the object itself, so
/// the wire and the CRD see an embedded resource, not a string. Compared as text: equal texts are equal
/// objects and the reverse, since every text is `serde_json`'s printing of a parsed value (keys sorted, no
/// whitespace, numbers as parsed).
#[derive(Clone, PartialEq, Eq)]
pub struct EmbeddedObject(String);

impl EmbeddedObject {
    /// Holds `object`, which must be a JSON object (anything else is refused, as the CRD refuses it).
    pub fn new(object: &Value) -> Result<Self, String> {
        match object {
            Value::Object(_) => Ok(Self(object.to_string())),
            other => Err(format!("a manifest must be a JSON object, not {}", kind_of(other))),
        }
    }

    /// The object, parsed.
    pub fn value(&self) -> Value {
        // Built only by `new` and `deserialize`, both from a parsed object, so the text always parses.
        serde_json::from_str(&self.0).expect("an EmbeddedObject holds the text of a JSON object")
    }

    /// The object's JSON text.
    pub fn text(&self) -> &str {
        &self.0
    }
}

/// The empty object.
impl Default for EmbeddedObject {
    fn default() -> Self {
        Self("{}".to_string())
    }
}

/// The text, not a tree.
impl std::fmt::Debug for EmbeddedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EmbeddedObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for EmbeddedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::new(&Value::deserialize(deserializer)?).map_err(de::Error::custom)
    }
}

impl JsonSchema for EmbeddedObject {
    fn schema_name() -> Cow<'static, str> {
        "EmbeddedObject".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn it_is_the_object_on_the_wire_and_compares_as_the_object() {
        let object = json!({"kind": "ConfigMap", "apiVersion": "v1", "data": {"n": 1.0, "k": "v"}});
        let held = EmbeddedObject::new(&object).unwrap();
        assert_eq!(serde_json::to_value(&held).unwrap(), object);
        assert_eq!(held.value(), object);
        // Read back from another printing of the same object (as the apiserver returns it): equal.
        let reread: EmbeddedObject = serde_json::from_str(&serde_json::to_string_pretty(&object).unwrap()).unwrap();
        assert_eq!(reread, held);
        let other = json!({"kind": "ConfigMap", "apiVersion": "v1", "data": {"n": 1, "k": "v"}});
        assert_ne!(EmbeddedObject::new(&other).unwrap(), held, "as for Values, 1 is not 1.0");
    }

    #[test]
    fn only_an_object_is_held() {
        assert_eq!(EmbeddedObject::new(&json!([1])).unwrap_err(), "a manifest must be a JSON object, not an array");
        let error = serde_json::from_str::<EmbeddedObject>("\"text\"").unwrap_err().to_string();
        assert!(error.contains("not a string"), "{error}");
        assert_eq!(EmbeddedObject::default().value(), json!({}));
    }
}
