//! OVSDB values in their JSON notation (RFC 7047 §5.1): atoms, `["uuid", …]`,
//! `["named-uuid", …]`, `["set", […]]` and `["map", [[k, v], …]]`, built and read.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// `["uuid", id]`: a reference to an existing row.
pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// `["named-uuid", name]`: a reference to a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// A set of atoms (a single atom stands for itself, as RFC 7047 allows either).
pub fn set<I: IntoIterator<Item = Value>>(atoms: I) -> Value {
    json!(["set", atoms.into_iter().collect::<Vec<_>>()])
}

/// A set of strings.
pub fn string_set<I, S>(items: I) -> Value
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    set(items.into_iter().map(|s| Value::String(s.into())))
}

/// A map of strings to strings.
pub fn string_map<'a, I>(pairs: I) -> Value
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    json!([
        "map",
        pairs
            .into_iter()
            .map(|(k, v)| json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

/// The id of a `["uuid", id]` atom.
pub fn as_uuid(v: &Value) -> Option<&str> {
    match v.as_array()?.as_slice() {
        [tag, Value::String(id)] if tag == "uuid" => Some(id),
        _ => None,
    }
}

/// The atoms of a set (a lone atom is a one-element set).
pub fn as_set(v: &Value) -> Vec<&Value> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(items)]) if tag == "set" => items.iter().collect(),
        _ => vec![v],
    }
}

/// The strings of a set of strings (other atoms are skipped).
pub fn as_string_set(v: &Value) -> Vec<String> {
    as_set(v)
        .into_iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect()
}

/// The ids of a set of references.
pub fn as_uuid_set(v: &Value) -> Vec<String> {
    as_set(v)
        .into_iter()
        .filter_map(|a| as_uuid(a).map(str::to_owned))
        .collect()
}

/// The pairs of a map, in the server's order.
pub fn as_map(v: &Value) -> Vec<(&Value, &Value)> {
    match v.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(pairs)]) if tag == "map" => pairs
            .iter()
            .filter_map(|p| match p.as_array().map(Vec::as_slice) {
                Some([k, v]) => Some((k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A map of strings to strings (other pairs are skipped).
pub fn as_string_map(v: &Value) -> BTreeMap<String, String> {
    as_map(v)
        .into_iter()
        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
        .collect()
}

/// The optional string of a column with at most one value (`["set", []]` when empty).
pub fn as_optional_string(v: &Value) -> Option<String> {
    as_string_set(v).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_maps_read_back_what_they_were_built_from() {
        let s = string_set(["a", "b"]);
        assert_eq!(as_string_set(&s), vec!["a", "b"]);
        assert_eq!(as_string_set(&json!("lone")), vec!["lone"]);
        let m: BTreeMap<String, String> = [("k".to_owned(), "v".to_owned())].into();
        assert_eq!(as_string_map(&string_map(&m)), m);
        assert_eq!(
            as_uuid_set(&json!(["set", [["uuid", "x"], ["uuid", "y"]]])),
            vec!["x", "y"]
        );
        assert_eq!(as_uuid(&uuid("z")), Some("z"));
        assert_eq!(as_optional_string(&json!(["set", []])), None);
    }
}
