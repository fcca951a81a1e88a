//! A local copy of monitored tables, kept by applying `monitor_cond` snapshots and `update2`
//! notifications (RFC 7047 as extended by OVSDB's `monitor_cond`).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use crate::{
    datum,
    operation::Row,
    schema::{ColumnKind, Schema},
};

/// Rows of the monitored tables, by table and UUID.
#[derive(Clone, Debug, Default)]
pub struct Replica {
    schema: Schema,
    tables: HashMap<String, BTreeMap<String, Row>>,
}

impl Replica {
    /// An empty replica of a database with this schema.
    pub fn new(schema: Schema) -> Replica {
        Replica {
            schema,
            tables: HashMap::new(),
        }
    }

    /// Replaces everything with a `monitor_cond` reply (after a connect or reconnect).
    pub fn reset(&mut self, snapshot: Value) {
        self.tables.clear();
        self.apply(snapshot);
    }

    /// Applies `table-updates2` (`initial`, `insert`, `modify`, `delete` per row). Rows are
    /// moved in, not copied.
    pub fn apply(&mut self, updates: Value) {
        let Value::Object(updates) = updates else {
            return;
        };
        for (table, rows) in updates {
            let Value::Object(rows) = rows else {
                continue;
            };
            let cache = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows {
                let Value::Object(mut change) = change else {
                    continue;
                };
                if change.contains_key("delete") {
                    cache.remove(&uuid);
                } else if let Some(Value::Object(row)) =
                    change.remove("initial").or_else(|| change.remove("insert"))
                {
                    cache.insert(uuid, row);
                } else if let Some(Value::Object(diff)) = change.remove("modify") {
                    let row = cache.entry(uuid).or_default();
                    for (column, d) in diff {
                        let kind = self.schema.kind(&table, &column);
                        let next = match (kind, row.get(&column)) {
                            (ColumnKind::Scalar, _) | (_, None) => d,
                            (ColumnKind::Set, Some(old)) => set_diff(old, &d),
                            (ColumnKind::Map, Some(old)) => map_diff(old, &d),
                        };
                        row.insert(column, next);
                    }
                }
            }
        }
    }

    /// The rows of a table, by UUID.
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&String, &Row)> {
        self.tables.get(table).into_iter().flatten()
    }

    /// One row.
    pub fn row(&self, table: &str, uuid: &str) -> Option<&Row> {
        self.tables.get(table)?.get(uuid)
    }

    /// The number of rows in a table.
    pub fn len(&self, table: &str) -> usize {
        self.tables.get(table).map_or(0, BTreeMap::len)
    }

    /// Whether no table has a row.
    pub fn is_empty(&self) -> bool {
        self.tables.values().all(BTreeMap::is_empty)
    }

    /// The schema.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }
}

/// A set column after a diff: the symmetric difference.
fn set_diff(old: &Value, diff: &Value) -> Value {
    let mut items: Vec<Value> = datum::as_set(old).into_iter().cloned().collect();
    for d in datum::as_set(diff) {
        if let Some(at) = items.iter().position(|i| i == d) {
            items.remove(at);
        } else {
            items.push(d.clone());
        }
    }
    datum::set(items)
}

/// A map column after a diff: a key with the same value goes, any other key is set.
fn map_diff(old: &Value, diff: &Value) -> Value {
    let mut pairs: Vec<(Value, Value)> = datum::as_map(old)
        .into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in datum::as_map(diff) {
        match pairs.iter().position(|(pk, _)| pk == k) {
            Some(at) if &pairs[at].1 == v => {
                pairs.remove(at);
            }
            Some(at) => pairs[at].1 = v.clone(),
            None => pairs.push((k.clone(), v.clone())),
        }
    }
    serde_json::json!([
        "map",
        pairs
            .into_iter()
            .map(|(k, v)| serde_json::json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Schema {
        Schema::from_json(&json!({"name": "N", "tables": {"T": {"columns": {
            "name": {"type": "string"},
            "addresses": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
            "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
        }}}}))
    }

    #[test]
    fn update2_modifies_sets_by_symmetric_difference_and_maps_by_key() {
        let mut r = Replica::new(schema());
        r.reset(json!({"T": {"u1": {"initial": {
            "name": "a", "addresses": "x", "external_ids": ["map", [["k", "1"], ["gone", "2"]]]}}}}));
        r.apply(json!({"T": {"u1": {"modify": {
            "name": "b",
            "addresses": ["set", ["x", "y"]],
            "external_ids": ["map", [["k", "3"], ["gone", "2"], ["new", "4"]]]}}}}));
        let row = r.row("T", "u1").expect("row kept");
        assert_eq!(row["name"], json!("b"));
        assert_eq!(datum::as_string_set(&row["addresses"]), vec!["y"]);
        let ids = datum::as_string_map(&row["external_ids"]);
        assert_eq!(ids.get("k").map(String::as_str), Some("3"));
        assert_eq!(ids.get("new").map(String::as_str), Some("4"));
        assert!(!ids.contains_key("gone"));
        r.apply(json!({"T": {"u1": {"delete": null}, "u2": {"insert": {"name": "c"}}}}));
        assert_eq!(r.len("T"), 1);
        assert_eq!(
            r.row("T", "u2").map(|r| r["name"].clone()),
            Some(json!("c"))
        );
    }
}
