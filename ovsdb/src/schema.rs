//! What a replica needs from a database schema: how each column's values change under
//! `update2`'s "modify" (a set's diff is a symmetric difference, a map's is per key, a
//! scalar's is its new value).

use std::collections::HashMap;

use serde_json::Value;

/// How a column holds values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// Exactly one atom.
    Scalar,
    /// Zero or more atoms (an optional value is a set of at most one).
    Set,
    /// Key-value pairs.
    Map,
}

/// A database's tables and their columns' kinds.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    /// The database's name.
    pub name: String,
    /// The schema's version.
    pub version: String,
    tables: HashMap<String, HashMap<String, ColumnKind>>,
}

impl Schema {
    /// Reads a `get_schema` reply.
    pub fn from_json(v: &Value) -> Schema {
        let mut tables = HashMap::new();
        if let Some(ts) = v.get("tables").and_then(Value::as_object) {
            for (table, t) in ts {
                let mut columns = HashMap::new();
                if let Some(cs) = t.get("columns").and_then(Value::as_object) {
                    for (column, c) in cs {
                        columns.insert(column.clone(), kind_of(c.get("type")));
                    }
                }
                tables.insert(table.clone(), columns);
            }
        }
        Schema {
            name: str_of(v, "name"),
            version: str_of(v, "version"),
            tables,
        }
    }

    /// The kind of a column (`Scalar` for columns the schema does not name, like `_uuid`).
    pub fn kind(&self, table: &str, column: &str) -> ColumnKind {
        self.tables
            .get(table)
            .and_then(|t| t.get(column))
            .copied()
            .unwrap_or(ColumnKind::Scalar)
    }

    /// Whether the schema has this table.
    pub fn has_table(&self, table: &str) -> bool {
        self.tables.contains_key(table)
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn kind_of(ty: Option<&Value>) -> ColumnKind {
    let Some(Value::Object(ty)) = ty else {
        return ColumnKind::Scalar;
    };
    if ty.contains_key("value") {
        return ColumnKind::Map;
    }
    let min = ty.get("min").and_then(Value::as_u64).unwrap_or(1);
    let max_one = ty.get("max").is_none_or(|m| m.as_u64() == Some(1));
    if min == 1 && max_one {
        ColumnKind::Scalar
    } else {
        ColumnKind::Set
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn column_kinds_follow_the_type_declarations() {
        let s = Schema::from_json(
            &json!({"name": "OVN_Northbound", "version": "7.0.0", "tables": {
            "Logical_Switch_Port": {"columns": {
                "name": {"type": "string"},
                "addresses": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
                "type": {"type": {"key": "string"}},
                "parent_name": {"type": {"key": "string", "min": 0, "max": 1}},
                "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
            }}}}),
        );
        assert_eq!(s.kind("Logical_Switch_Port", "name"), ColumnKind::Scalar);
        assert_eq!(s.kind("Logical_Switch_Port", "type"), ColumnKind::Scalar);
        assert_eq!(s.kind("Logical_Switch_Port", "addresses"), ColumnKind::Set);
        assert_eq!(
            s.kind("Logical_Switch_Port", "parent_name"),
            ColumnKind::Set
        );
        assert_eq!(
            s.kind("Logical_Switch_Port", "external_ids"),
            ColumnKind::Map
        );
        assert_eq!(s.name, "OVN_Northbound");
    }
}
