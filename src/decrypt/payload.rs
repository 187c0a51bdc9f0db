//! The decrypted plaintext: a JSON object `{namespace: {key: "value"}}` (nested), or
//! `{key: "value"}` (flat: what clef's dynamic-secrets broker encrypts, and what artifacts packed
//! before namespaces were nested hold, `{"<namespace>__<key>": "value"}`), whose order is kept
//! everywhere it is shown. The first top-level value decides the shape; a plaintext that mixes
//! the two is refused rather than guessed at. Parsed with a small visitor instead of `serde_json::Value` so that
//! order survives, values go straight into zeroing buffers, and no error message can quote a
//! value (serde's default type errors echo the offending input).

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zeroize::Zeroizing;

use crate::text::quoted;

/// The secrets, in plaintext order. At most one of the two lists holds anything (an empty
/// plaintext `{}` is both shapes at once, and renders the same either way).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plaintext {
    /// A nested plaintext's namespaces.
    pub namespaces: Vec<Namespace>,
    /// A flat plaintext's `(key, value)` pairs.
    pub flat: Vec<(String, Zeroizing<String>)>,
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
        match members.first() {
            Some((_, JsonNode::String(_))) => Ok(Plaintext { namespaces: Vec::new(), flat: Self::flat_from(members)? }),
            _ => Ok(Plaintext { namespaces: Self::nested_from(members)?, flat: Vec::new() }),
        }
    }

    /// `{key: "value"}`: every top-level value a string.
    fn flat_from(members: Vec<(String, JsonNode)>) -> Result<Vec<(String, Zeroizing<String>)>, String> {
        let mut entries: Vec<(String, Zeroizing<String>)> = Vec::with_capacity(members.len());
        let mut keys: HashSet<String> = HashSet::with_capacity(members.len());
        for (key, node) in members {
            if !keys.insert(key.clone()) {
                return Err(format!("key '{}' appears twice", quoted(&key)));
            }
            match node {
                JsonNode::String(value) => entries.push((key, value)),
                JsonNode::Object(_) => return Err(mixed(&key, "an object", "a string")),
                other => {
                    return Err(format!("value of '{}' must be a string, found {}", quoted(&key), other.kind()));
                }
            }
        }
        Ok(entries)
    }

    /// `{namespace: {key: "value"}}`: every top-level value an object of strings.
    fn nested_from(members: Vec<(String, JsonNode)>) -> Result<Vec<Namespace>, String> {
        let mut namespaces: Vec<Namespace> = Vec::with_capacity(members.len());
        // Duplicate checks by hash set: a linear scan per name would make an artifact of many
        // keys cost time quadratic in their number (hours at the 32 MiB limit).
        let mut namespace_names: HashSet<String> = HashSet::with_capacity(members.len());
        for (name, node) in members {
            if !namespace_names.insert(name.clone()) {
                return Err(format!("namespace '{}' appears twice", quoted(&name)));
            }
            let members = match node {
                JsonNode::Object(members) => members,
                JsonNode::String(_) => return Err(mixed(&name, "a string", "an object")),
                other => {
                    return Err(format!(
                        "namespace '{}' must be an object of string values, found {}",
                        quoted(&name),
                        other.kind()
                    ))
                }
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
        Ok(namespaces)
    }

    pub fn key_count(&self) -> usize {
        self.flat.len() + self.namespaces.iter().map(|namespace| namespace.entries.len()).sum::<usize>()
    }

    /// Every secret by the name `/v1/keys` lists and `exec` exports: `<namespace>__<key>` in a
    /// nested plaintext, the key itself in a flat one.
    pub fn named_values(&self) -> impl Iterator<Item = (Cow<'_, str>, &str)> {
        let nested = self.namespaces.iter().flat_map(|namespace| {
            namespace
                .entries
                .iter()
                .map(|(key, value)| (Cow::Owned(format!("{}__{key}", namespace.name)), value.as_str()))
        });
        nested.chain(self.flat.iter().map(|(key, value)| (Cow::Borrowed(key.as_str()), value.as_str())))
    }

    /// Every `(key, value)`, without namespace names, in plaintext order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        let nested = self.namespaces.iter().flat_map(|namespace| namespace.entries.iter());
        nested.chain(self.flat.iter()).map(|(key, value)| (key.as_str(), value.as_str()))
    }
}

/// The error for a plaintext that mixes the two shapes, naming the first key of the other one.
fn mixed(key: &str, found: &str, first: &str) -> String {
    format!(
        "top-level '{}' is {found} but the first top-level value is {first}: a plaintext holds only string \
         values (flat) or only objects of string values (namespaces), not both",
        quoted(key)
    )
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
    fn a_plaintext_of_string_values_is_flat_in_its_own_order() {
        let plaintext = Plaintext::parse(br#"{"Z_KEY":"z","db__PASS":"p","A_KEY":""}"#).unwrap();
        assert!(plaintext.namespaces.is_empty());
        let flat: Vec<_> = plaintext.flat.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect();
        assert_eq!(flat, [("Z_KEY", "z"), ("db__PASS", "p"), ("A_KEY", "")]);
        assert_eq!(plaintext.key_count(), 3);
        let named: Vec<_> = plaintext.named_values().map(|(name, _)| name.into_owned()).collect();
        assert_eq!(named, ["Z_KEY", "db__PASS", "A_KEY"]);
    }

    #[test]
    fn nested_secrets_are_named_namespace_double_underscore_key() {
        let plaintext = Plaintext::parse(br#"{"db":{"PASS":"p"},"app":{"KEY":"k"}}"#).unwrap();
        assert!(plaintext.flat.is_empty());
        let named: Vec<_> = plaintext.named_values().map(|(name, value)| (name.into_owned(), value)).collect();
        assert_eq!(named, [("db__PASS".to_string(), "p"), ("app__KEY".to_string(), "k")]);
        let entries: Vec<_> = plaintext.entries().collect();
        assert_eq!(entries, [("PASS", "p"), ("KEY", "k")]);
    }

    #[test]
    fn decodes_escapes_in_values() {
        let plaintext = Plaintext::parse(br#"{"n":{"k":"a\"b\n\u00e9"}}"#).unwrap();
        assert_eq!(plaintext.namespaces[0].entries[0].1.as_str(), "a\"b\né");
    }

    #[test]
    fn rejects_every_other_shape_without_quoting_values() {
        let cases: [(&[u8], &str); 12] = [
            (b"[1,2]", "the plaintext must be a JSON object of namespaces, found an array"),
            (br#""s3cret""#, "the plaintext must be a JSON object of namespaces, found a string"),
            (br#"{"db":5432}"#, "namespace 'db' must be an object of string values, found a number"),
            (br#"{"A":"s3cret","B":5432}"#, "value of 'B' must be a string, found a number"),
            (br#"{"A":"s3cret","A":"again"}"#, "key 'A' appears twice"),
            (
                br#"{"A":"s3cret","db":{"K":"v"},"C":{}}"#,
                "top-level 'db' is an object but the first top-level value is a string: a plaintext holds only \
                 string values (flat) or only objects of string values (namespaces), not both",
            ),
            (
                br#"{"db":{"K":"v"},"A":"s3cret","B":"x"}"#,
                "top-level 'A' is a string but the first top-level value is an object: a plaintext holds only \
                 string values (flat) or only objects of string values (namespaces), not both",
            ),
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
