//! The decrypted plaintext: a JSON object `{namespace: {key: "value"}}` whose order is kept
//! everywhere it is shown. Parsed with a small visitor instead of `serde_json::Value` so that
//! order survives, values go straight into zeroing buffers, and no error message can quote a
//! value (serde's default type errors echo the offending input).

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use crate::text::quoted;

/// The secrets, in plaintext order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plaintext {
    pub namespaces: Vec<Namespace>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// `(key, value)` pairs in plaintext order.
    pub entries: Vec<(String, Zeroizing<String>)>,
}

impl Plaintext {
    /// Parses the decrypted bytes; the error names the namespace or key at fault, never a value.
    pub fn parse(bytes: &[u8]) -> Result<Plaintext, String> {
        std::str::from_utf8(bytes).map_err(|_| "the plaintext is not UTF-8".to_string())?;
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let node = JsonNode::deserialize(&mut deserializer).map_err(|error| {
            format!("the plaintext is not valid JSON (line {}, column {})", error.line(), error.column())
        })?;
        deserializer.end().map_err(|_| "the plaintext has trailing data after the JSON object".to_string())?;
        Self::from_node(node)
    }

    fn from_node(node: JsonNode) -> Result<Plaintext, String> {
        let JsonNode::Object(members) = node else {
            return Err(format!("the plaintext must be a JSON object of namespaces, found {}", node.kind()));
        };
        let mut namespaces: Vec<Namespace> = Vec::with_capacity(members.len());
        // Duplicate checks by hash set: a linear scan per name would make an artifact of many
        // keys cost time quadratic in their number (hours at the 32 MiB limit).
        let mut namespace_names: HashSet<String> = HashSet::with_capacity(members.len());
        for (name, node) in members {
            if !namespace_names.insert(name.clone()) {
                return Err(format!("namespace '{}' appears twice", quoted(&name)));
            }
            let JsonNode::Object(members) = node else {
                return Err(format!(
                    "namespace '{}' must be an object of string values, found {}",
                    quoted(&name),
                    node.kind()
                ));
            };
            let mut entries: Vec<(String, Zeroizing<String>)> = Vec::with_capacity(members.len());
            let mut keys: HashSet<String> = HashSet::with_capacity(members.len());
            for (key, value) in members {
                if !keys.insert(key.clone()) {
                    return Err(format!("key '{}' appears twice", quoted(&format!("{name}.{key}"))));
                }
                match value {
                    JsonNode::String(value) => entries.push((key, value)),
                    other => {
                        let at = format!("{name}.{key}");
                        return Err(format!("value of '{}' must be a string, found {}", quoted(&at), other.kind()));
                    }
                }
            }
            namespaces.push(Namespace { name, entries });
        }
        Ok(Plaintext { namespaces })
    }

    pub fn key_count(&self) -> usize {
        self.namespaces.iter().map(|namespace| namespace.entries.len()).sum()
    }
}

/// A JSON value reduced to what the plaintext may hold; other kinds keep only their name.
enum JsonNode {
    String(Zeroizing<String>),
    Object(Vec<(String, JsonNode)>),
    Other(&'static str),
}

impl JsonNode {
    fn kind(&self) -> &'static str {
        match self {
            JsonNode::String(_) => "a string",
            JsonNode::Object(_) => "an object",
            JsonNode::Other(kind) => kind,
        }
    }

    fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<JsonNode, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> DeserializeSeed<'de> for NodeVisitor {
    type Value = JsonNode;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<JsonNode, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = JsonNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<JsonNode, E> {
        Ok(JsonNode::String(Zeroizing::new(value.to_owned())))
    }

    fn visit_string<E: de::Error>(self, value: String) -> Result<JsonNode, E> {
        Ok(JsonNode::String(Zeroizing::new(value)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("a number"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonNode, E> {
        Ok(JsonNode::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonNode, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(JsonNode::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key::<String>()? {
            members.push((key, map.next_value_seed(NodeVisitor)?));
        }
        Ok(JsonNode::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_namespace_and_key_order() {
        let plaintext = Plaintext::parse(br#"{"zeta":{"b":"1","a":"2"},"alpha":{"y":"3"}}"#).unwrap();
        let names: Vec<_> = plaintext.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha"]);
        let keys: Vec<_> = plaintext.namespaces[0].entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a"]);
        assert_eq!(plaintext.key_count(), 3);
    }

    #[test]
    fn parses_two_hundred_thousand_keys_and_still_finds_a_duplicate() {
        // With a linear duplicate scan per key this took minutes (the time is make bench's
        // business; this test only has to finish).
        let mut text = String::from("{\"ns\":{");
        for key in 0..200_000 {
            text.push_str(&format!("\"K{key}\":\"v\","));
        }
        text.pop();
        assert_eq!(Plaintext::parse(format!("{text}}}}}").as_bytes()).unwrap().key_count(), 200_000);
        let duplicated = format!("{text},\"K7\":\"again\"}}}}");
        assert_eq!(Plaintext::parse(duplicated.as_bytes()).err().as_deref(), Some("key 'ns.K7' appears twice"));
    }

    #[test]
    fn decodes_escapes_in_values() {
        let plaintext = Plaintext::parse(br#"{"n":{"k":"a\"b\n\u00e9"}}"#).unwrap();
        assert_eq!(plaintext.namespaces[0].entries[0].1.as_str(), "a\"b\né");
    }

    #[test]
    fn rejects_every_other_shape_without_quoting_values() {
        let cases: [(&[u8], &str); 8] = [
            (b"[1,2]", "the plaintext must be a JSON object of namespaces, found an array"),
            (br#""s3cret""#, "the plaintext must be a JSON object of namespaces, found a string"),
            (br#"{"db":"s3cret"}"#, "namespace 'db' must be an object of string values, found a string"),
            (br#"{"db":{"PORT":5432}}"#, "value of 'db.PORT' must be a string, found a number"),
            (br#"{"db":{"x":{"y":"z"}}}"#, "value of 'db.x' must be a string, found an object"),
            (br#"{"db":{"a":"1","a":"2"}}"#, "key 'db.a' appears twice"),
            (b"hello", "the plaintext is not valid JSON (line 1, column 1)"),
            (b"\xff\xfe\x00", "the plaintext is not UTF-8"),
        ];
        for (input, expected) in cases {
            assert_eq!(Plaintext::parse(input).unwrap_err(), expected);
        }
        assert!(Plaintext::parse(br#"{"a":{}} x"#).unwrap_err().contains("trailing"));
    }
}
