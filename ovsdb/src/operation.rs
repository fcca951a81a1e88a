//! Typed `transact` operations (RFC 7047 §5.2) and their results.

use serde::{Serialize, Serializer, ser::SerializeMap as _};
use serde_json::{Map, Value, json};

/// A row's columns as JSON values (OVSDB notation, see [`crate::datum`]).
pub type Row = Map<String, Value>;

/// A comparison in a `where` clause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `includes`
    Includes,
    /// `excludes`
    Excludes,
}

impl Function {
    fn as_str(self) -> &'static str {
        match self {
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// One condition of a `where` clause.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    /// The column.
    pub column: String,
    /// The comparison.
    pub function: Function,
    /// The value compared with.
    pub value: Value,
}

impl Condition {
    /// `column == value`.
    pub fn eq(column: &str, value: Value) -> Condition {
        Condition {
            column: column.to_owned(),
            function: Function::Eq,
            value,
        }
    }

    /// `column includes value`.
    pub fn includes(column: &str, value: Value) -> Condition {
        Condition {
            column: column.to_owned(),
            function: Function::Includes,
            value,
        }
    }

    /// The row with this UUID.
    pub fn uuid(id: &str) -> Condition {
        Condition::eq("_uuid", crate::datum::uuid(id))
    }

    /// The row inserted earlier in this transaction under `name`.
    pub fn named(name: &str) -> Condition {
        Condition::eq("_uuid", crate::datum::named_uuid(name))
    }

    /// The condition in the protocol's notation.
    pub fn to_json(&self) -> Value {
        json!([self.column, self.function.as_str(), self.value])
    }
}

/// A change to one column in a `mutate` operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Mutation {
    /// The column.
    pub column: String,
    /// `insert`, `delete`, `+=`...
    pub mutator: &'static str,
    /// The operand.
    pub value: Value,
}

impl Mutation {
    /// Adds elements to a set or pairs to a map.
    pub fn insert(column: &str, value: Value) -> Mutation {
        Mutation {
            column: column.to_owned(),
            mutator: "insert",
            value,
        }
    }

    /// Removes elements from a set, or keys (a set) or pairs (a map) from a map.
    pub fn delete(column: &str, value: Value) -> Mutation {
        Mutation {
            column: column.to_owned(),
            mutator: "delete",
            value,
        }
    }
}

/// One operation of a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    /// Inserts a row; `uuid_name` lets later operations refer to it.
    Insert {
        /// The table.
        table: String,
        /// The columns set.
        row: Row,
        /// A name for the new row within the transaction.
        uuid_name: Option<String>,
    },
    /// Sets columns of the matching rows.
    Update {
        /// The table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// The columns set.
        row: Row,
    },
    /// Changes columns of the matching rows in place.
    Mutate {
        /// The table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// The changes.
        mutations: Vec<Mutation>,
    },
    /// Deletes the matching rows.
    Delete {
        /// The table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
    },
    /// Waits until (or aborts unless) the matching rows' columns equal `rows`.
    Wait {
        /// The table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// The columns compared.
        columns: Vec<String>,
        /// `true`: until equal; `false`: until not equal.
        until_equal: bool,
        /// The expected rows.
        rows: Vec<Row>,
        /// Milliseconds to wait (0: check once).
        timeout_ms: u64,
    },
    /// Reads the matching rows.
    Select {
        /// The table.
        table: String,
        /// Which rows.
        conditions: Vec<Condition>,
        /// The columns returned (all when `None`).
        columns: Option<Vec<String>>,
    },
    /// Logs a comment with the transaction.
    Comment(String),
}

/// A condition or a mutation: `[column, function, value]`.
struct Triple<'a>(&'a str, &'a str, &'a Value);

impl Serialize for Triple<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0, self.1, self.2).serialize(s)
    }
}

/// A `where` clause.
struct Where<'a>(&'a [Condition]);

impl Serialize for Where<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|c| Triple(&c.column, c.function.as_str(), &c.value)),
        )
    }
}

/// Written straight from the borrowed rows: a transaction of tens of thousands of rows is
/// never copied into an intermediate JSON tree.
impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut op = s.serialize_map(None)?;
        match self {
            Operation::Insert {
                table,
                row,
                uuid_name,
            } => {
                op.serialize_entry("op", "insert")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("row", row)?;
                if let Some(name) = uuid_name {
                    op.serialize_entry("uuid-name", name)?;
                }
            }
            Operation::Update {
                table,
                conditions,
                row,
            } => {
                op.serialize_entry("op", "update")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("where", &Where(conditions))?;
                op.serialize_entry("row", row)?;
            }
            Operation::Mutate {
                table,
                conditions,
                mutations,
            } => {
                op.serialize_entry("op", "mutate")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("where", &Where(conditions))?;
                let mutations: Vec<Triple<'_>> = mutations
                    .iter()
                    .map(|m| Triple(&m.column, m.mutator, &m.value))
                    .collect();
                op.serialize_entry("mutations", &mutations)?;
            }
            Operation::Delete { table, conditions } => {
                op.serialize_entry("op", "delete")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("where", &Where(conditions))?;
            }
            Operation::Wait {
                table,
                conditions,
                columns,
                until_equal,
                rows,
                timeout_ms,
            } => {
                op.serialize_entry("op", "wait")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("where", &Where(conditions))?;
                op.serialize_entry("columns", columns)?;
                op.serialize_entry("until", if *until_equal { "==" } else { "!=" })?;
                op.serialize_entry("rows", rows)?;
                op.serialize_entry("timeout", timeout_ms)?;
            }
            Operation::Select {
                table,
                conditions,
                columns,
            } => {
                op.serialize_entry("op", "select")?;
                op.serialize_entry("table", table)?;
                op.serialize_entry("where", &Where(conditions))?;
                if let Some(columns) = columns {
                    op.serialize_entry("columns", columns)?;
                }
            }
            Operation::Comment(text) => {
                op.serialize_entry("op", "comment")?;
                op.serialize_entry("comment", text)?;
            }
        }
        op.end()
    }
}

impl Operation {
    /// The operation in the protocol's notation.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The table it works on (`None` for a comment).
    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Insert { table, .. }
            | Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Delete { table, .. }
            | Operation::Wait { table, .. }
            | Operation::Select { table, .. } => Some(table),
            Operation::Comment(_) => None,
        }
    }
}

/// What one operation returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OperationResult {
    /// An insert's new row.
    pub uuid: Option<String>,
    /// A select's rows.
    pub rows: Vec<Row>,
    /// How many rows an update, mutate or delete touched.
    pub count: Option<u64>,
}

impl OperationResult {
    pub(crate) fn from_json(v: &Value) -> OperationResult {
        OperationResult {
            uuid: v
                .get("uuid")
                .and_then(crate::datum::as_uuid)
                .map(str::to_owned),
            rows: v
                .get("rows")
                .and_then(Value::as_array)
                .map(|rows| rows.iter().filter_map(|r| r.as_object().cloned()).collect())
                .unwrap_or_default(),
            count: v.get("count").and_then(Value::as_u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datum;

    #[test]
    fn operations_are_written_in_rfc_7047_notation() {
        let mut row = Row::new();
        row.insert("name".into(), json!("ls1"));
        let insert = Operation::Insert {
            table: "Logical_Switch".into(),
            row,
            uuid_name: Some("new_ls".into()),
        };
        assert_eq!(
            insert.to_json(),
            json!({"op":"insert","table":"Logical_Switch","row":{"name":"ls1"},"uuid-name":"new_ls"})
        );
        let mutate = Operation::Mutate {
            table: "Logical_Switch".into(),
            conditions: vec![Condition::uuid("u1")],
            mutations: vec![Mutation::insert(
                "ports",
                datum::set([datum::named_uuid("p")]),
            )],
        };
        assert_eq!(
            mutate.to_json(),
            json!({"op":"mutate","table":"Logical_Switch","where":[["_uuid","==",["uuid","u1"]]],
                   "mutations":[["ports","insert",["set",[["named-uuid","p"]]]]]})
        );
    }
}
