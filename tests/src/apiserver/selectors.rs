//! Label and field selectors, parsed and matched as `k8s.io/apimachinery` does.
//!
//! Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, `k>1`,
//! `k<1`, joined by commas (all must hold). `!=` and `notin` also match objects without the
//! label. Field selectors: `f=v`, `f==v`, `f!=v` on the fields a resource type supports
//! (`metadata.name` always, `metadata.namespace` on namespaced types, `spec.nodeName` and
//! `status.phase` on Pods, ...); anything else is a 400, as in a real cluster.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{resources::ResourceType, status::ApiError};

/// A selector that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector does not parse.
    #[error("unable to parse requirement: label selector {selector:?}: {detail}")]
    Label {
        /// The selector sent.
        selector: String,
        /// What is wrong.
        detail: String,
    },
    /// The field selector does not parse.
    #[error("invalid selector: '{selector}'; can't understand '{term}'")]
    Field {
        /// The selector sent.
        selector: String,
        /// The term that does not parse.
        term: String,
    },
    /// The field selector names a field the resource type does not index.
    #[error("field label not supported: {field}")]
    UnsupportedField {
        /// The field named.
        field: String,
    },
}

impl From<SelectorError> for ApiError {
    fn from(error: SelectorError) -> Self {
        ApiError::BadRequest {
            message: error.to_string(),
        }
    }
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Exists(String),
    DoesNotExist(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        match self {
            Self::Exists(key) => get(key).is_some(),
            Self::DoesNotExist(key) => get(key).is_none(),
            Self::Equals(key, value) => get(key) == Some(value.as_str()),
            Self::NotEquals(key, value) => get(key) != Some(value.as_str()),
            Self::In(key, values) => get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => get(key).is_none_or(|v| !values.contains(v)),
            Self::GreaterThan(key, bound) => get(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *bound),
            Self::LessThan(key, bound) => get(key)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *bound),
        }
    }
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<LabelRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn lex(selector: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = selector.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            '>' => {
                chars.next();
                tokens.push(Token::Gt);
            }
            '<' => {
                chars.next();
                tokens.push(Token::Lt);
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Not);
                }
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    position: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.position)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.position).cloned();
        self.position += 1;
        token
    }

    fn word(&mut self, what: &str) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(word)) => Ok(word),
            other => Err(format!("expected {what}, found {other:?}")),
        }
    }

    /// A value after `=`, `==` or `!=`: a word, or empty before a comma or the end.
    fn value(&mut self) -> Result<String, String> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(String::new()),
            _ => self.word("a value"),
        }
    }

    fn integer(&mut self) -> Result<i64, String> {
        let word = self.word("an integer")?;
        word.parse()
            .map_err(|_| format!("{word:?} is not an integer"))
    }

    fn set(&mut self) -> Result<BTreeSet<String>, String> {
        if self.next() != Some(Token::Open) {
            return Err("expected '(' after in/notin".to_owned());
        }
        let mut values = BTreeSet::new();
        loop {
            match self.next() {
                Some(Token::Word(word)) => {
                    values.insert(word);
                    match self.next() {
                        Some(Token::Comma) => {}
                        Some(Token::Close) => return Ok(values),
                        other => return Err(format!("expected ',' or ')', found {other:?}")),
                    }
                }
                Some(Token::Comma) => {
                    values.insert(String::new());
                }
                Some(Token::Close) => return Ok(values),
                other => return Err(format!("expected a value, found {other:?}")),
            }
        }
    }

    fn requirement(&mut self) -> Result<LabelRequirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            return Ok(LabelRequirement::DoesNotExist(self.word("a label key")?));
        }
        let key = self.word("a label key")?;
        match self.peek() {
            None | Some(Token::Comma) => Ok(LabelRequirement::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.next();
                Ok(LabelRequirement::Equals(key, self.value()?))
            }
            Some(Token::NotEq) => {
                self.next();
                Ok(LabelRequirement::NotEquals(key, self.value()?))
            }
            Some(Token::Gt) => {
                self.next();
                Ok(LabelRequirement::GreaterThan(key, self.integer()?))
            }
            Some(Token::Lt) => {
                self.next();
                Ok(LabelRequirement::LessThan(key, self.integer()?))
            }
            Some(Token::Word(op)) if op == "in" => {
                self.next();
                Ok(LabelRequirement::In(key, self.set()?))
            }
            Some(Token::Word(op)) if op == "notin" => {
                self.next();
                Ok(LabelRequirement::NotIn(key, self.set()?))
            }
            Some(other) => Err(format!("unexpected {other:?} after key {key:?}")),
        }
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let error = |detail: String| SelectorError::Label {
            selector: selector.to_owned(),
            detail,
        };
        let tokens = lex(selector).map_err(error)?;
        let mut parser = Parser {
            tokens,
            position: 0,
        };
        let mut requirements = Vec::new();
        while parser.peek().is_some() {
            requirements.push(parser.requirement().map_err(error)?);
            match parser.next() {
                None | Some(Token::Comma) => {}
                Some(other) => return Err(error(format!("expected ',', found {other:?}"))),
            }
        }
        Ok(Self { requirements })
    }

    /// Whether every requirement holds for `object`'s `metadata.labels`.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// One field requirement: the field's value equals (or differs from) `value`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    field: String,
    value: String,
    equal: bool,
    default: &'static str,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

/// Splits `s` at unescaped `separator`s, keeping escapes.
fn split_unescaped(s: &str, separator: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == separator {
            parts.push(std::mem::take(&mut current));
        } else {
            escaped = c == '\\';
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped || c != '\\' {
            out.push(c);
            escaped = false;
        } else {
            escaped = true;
        }
    }
    out
}

/// The position and length of the first unescaped operator (`!=`, `==` or `=`) in `term`.
fn find_operator(term: &str) -> Option<(usize, usize, bool)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'!' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, false)),
            b'=' if bytes.get(i + 1) == Some(&b'=') => return Some((i, 2, true)),
            b'=' => return Some((i, 1, true)),
            _ => i += 1,
        }
    }
    None
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value for objects of `resource`.
    pub fn parse(selector: &str, resource: &ResourceType) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(selector, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let Some((at, len, equal)) = find_operator(term) else {
                return Err(SelectorError::Field {
                    selector: selector.to_owned(),
                    term: term.to_owned(),
                });
            };
            let field = term[..at].trim().to_owned();
            let value = unescape(term[at + len..].trim());
            if !resource.supports_field(&field) {
                return Err(SelectorError::UnsupportedField { field });
            }
            let default = resource.field_default(&field);
            requirements.push(FieldRequirement {
                field,
                value,
                equal,
                default,
            });
        }
        Ok(Self { requirements })
    }

    /// A selector on `metadata.name` alone.
    pub fn name(name: &str) -> Self {
        Self {
            requirements: vec![FieldRequirement {
                field: "metadata.name".to_owned(),
                value: name.to_owned(),
                equal: true,
                default: "",
            }],
        }
    }

    /// Adds the requirements of `other`.
    pub fn and(mut self, other: Self) -> Self {
        self.requirements.extend(other.requirements);
        self
    }

    /// Whether every requirement holds for `object`.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let pointer = format!("/{}", r.field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                None | Some(Value::Null) => r.default.to_owned(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == r.value) == r.equal
        })
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::by_plural;

    fn labelled(labels: &Value) -> Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    fn selects(selector: &str, labels: &Value) -> bool {
        LabelSelector::parse(selector)
            .expect("selector parses")
            .matches(&labelled(labels))
    }

    #[test]
    fn equality_requires_the_label_and_inequality_also_matches_its_absence() {
        assert!(selects("app=web", &json!({"app": "web"})));
        assert!(selects("app==web", &json!({"app": "web"})));
        assert!(!selects("app=web", &json!({"app": "db"})));
        assert!(!selects("app=web", &json!({})));
        assert!(selects("app!=web", &json!({"app": "db"})));
        assert!(selects("app!=web", &json!({})));
        assert!(!selects("app!=web", &json!({"app": "web"})));
    }

    #[test]
    fn set_requirements_follow_the_same_rule_for_absent_labels() {
        assert!(selects("tier in (a, b)", &json!({"tier": "b"})));
        assert!(!selects("tier in (a,b)", &json!({})));
        assert!(selects("tier notin (a,b)", &json!({"tier": "c"})));
        assert!(selects("tier notin (a,b)", &json!({})));
        assert!(!selects("tier notin (a,b)", &json!({"tier": "a"})));
    }

    #[test]
    fn existence_and_absence_and_conjunction() {
        assert!(selects("app", &json!({"app": ""})));
        assert!(!selects("app", &json!({})));
        assert!(selects("!app", &json!({})));
        assert!(!selects("!app", &json!({"app": "x"})));
        assert!(selects(
            "kubernetes.io/os=linux,!gpu,zone in (a)",
            &json!({"kubernetes.io/os": "linux", "zone": "a"})
        ));
        assert!(!selects(
            "kubernetes.io/os=linux,!gpu",
            &json!({"kubernetes.io/os": "linux", "gpu": "yes"})
        ));
        assert!(selects("", &json!({})));
    }

    #[test]
    fn numeric_comparisons_need_an_integer_label() {
        assert!(selects("rank>2", &json!({"rank": "3"})));
        assert!(!selects("rank>2", &json!({"rank": "two"})));
        assert!(selects("rank<2", &json!({"rank": "1"})));
    }

    #[test]
    fn a_malformed_label_selector_is_an_error() {
        assert!(LabelSelector::parse("app in a,b").is_err());
        assert!(LabelSelector::parse("app=web)").is_err());
        assert!(LabelSelector::parse("=web").is_err());
    }

    #[test]
    fn pod_field_selectors_read_the_node_name_phase_and_defaults() {
        let pods = by_plural("", "v1", "pods").expect("pods");
        let pod = json!({
            "metadata": {"name": "web", "namespace": "ns1"},
            "spec": {"nodeName": "node-a"},
            "status": {"phase": "Running"},
        });
        let selects = |s: &str| {
            FieldSelector::parse(s, pods)
                .expect("selector parses")
                .matches(&pod)
        };
        assert!(selects("spec.nodeName=node-a"));
        assert!(selects("spec.nodeName==node-a,status.phase=Running"));
        assert!(!selects("spec.nodeName=node-b"));
        assert!(selects("status.phase!=Pending"));
        assert!(selects("metadata.namespace=ns1,metadata.name=web"));
        assert!(selects("spec.hostNetwork=false"));
        assert!(selects("status.podIP="));
    }

    #[test]
    fn an_unsupported_field_is_named_in_the_error() {
        let pods = by_plural("", "v1", "pods").expect("pods");
        assert_eq!(
            FieldSelector::parse("spec.containers=x", pods),
            Err(SelectorError::UnsupportedField {
                field: "spec.containers".to_owned()
            })
        );
        let subnets = by_plural("kubeovn.io", "v1", "subnets").expect("subnets");
        assert_eq!(
            FieldSelector::parse("spec.provider=ovn", subnets),
            Err(SelectorError::UnsupportedField {
                field: "spec.provider".to_owned()
            })
        );
    }

    #[test]
    fn escaped_commas_stay_in_field_values() {
        let pods = by_plural("", "v1", "pods").expect("pods");
        let selector = FieldSelector::parse(r"metadata.name=a\,b", pods).expect("parses");
        assert!(selector.matches(&json!({"metadata": {"name": "a,b"}})));
    }
}
