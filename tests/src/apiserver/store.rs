//! The cluster state: every object as JSON, one global `resourceVersion`, and a bounded
//! history of changes that watches and paged lists read from.
//!
//! Objects are stored as `serde_json::Value`, never as Rust types, so a client's
//! serialisation bug cannot be hidden by a round trip through the same types. All methods
//! are synchronous; the HTTP layer calls them under one lock, so every write is atomic and
//! ordered, as etcd makes it for a real server.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    hash::{BuildHasher, Hasher},
};

use serde_json::{Map, Value, json};

use super::{
    patch::{self, PatchError, PatchType},
    resources::{self, RESOURCES, ResourceType, StatusOnCreate},
    selectors::{FieldSelector, LabelSelector},
    status::{self, ApiError, Target},
};

/// The namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

const CONFLICT: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// Where an object is stored: its type (index in [`RESOURCES`]), namespace (empty for
/// cluster-scoped types) and name. The ordering is the listing order, as etcd's key order is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Index of the resource type in [`RESOURCES`].
    pub resource: usize,
    /// Namespace, empty for cluster-scoped types.
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    fn new(resource: &'static ResourceType, namespace: &str, name: &str) -> Self {
        Self {
            resource: resources::index_of(resource),
            namespace: if resource.namespaced {
                namespace.to_owned()
            } else {
                String::new()
            },
            name: name.to_owned(),
        }
    }

    fn namespace_object(name: &str) -> Self {
        Self {
            resource: resources::index_of(namespaces()),
            namespace: String::new(),
            name: name.to_owned(),
        }
    }

    /// The resource type of the object.
    pub fn resource_type(&self) -> &'static ResourceType {
        &RESOURCES[self.resource]
    }
}

/// What a change did to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was removed.
    Deleted,
}

/// One write, as watches see it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The `resourceVersion` the write produced.
    pub resource_version: u64,
    /// The object written.
    pub key: ObjectKey,
    /// What the write did.
    pub kind: ChangeKind,
    /// The object before the write (`None` for `Added`).
    pub old: Option<Value>,
    /// The object after the write; for `Deleted`, its last state with the deletion's
    /// `resourceVersion`.
    pub object: Value,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The objects, in key order.
    pub items: Vec<Value>,
    /// The `resourceVersion` the list was read at.
    pub resource_version: u64,
    /// The token for the next page, if any.
    pub continue_token: Option<String>,
    /// How many matching objects the next pages hold (only without selectors, as a real
    /// server reports it).
    pub remaining: Option<usize>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// The namespace, or `None` for all namespaces (and for cluster-scoped types).
    pub namespace: Option<String>,
    /// The label selector.
    pub labels: LabelSelector,
    /// The field selector.
    pub fields: FieldSelector,
    /// The page size; 0 for no limit.
    pub limit: usize,
    /// A continue token from a previous page.
    pub continue_token: Option<String>,
    /// Read at exactly this `resourceVersion` (`resourceVersionMatch=Exact`).
    pub exact_version: Option<u64>,
}

impl ListQuery {
    /// Whether `object` (of the listed type) is selected.
    pub fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    fn selects_key(&self, key: &ObjectKey) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|namespace| key.namespace == namespace)
    }
}

/// `DeleteOptions.preconditions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's UID must be this.
    pub uid: Option<String>,
    /// The object's `resourceVersion` must be this.
    pub resource_version: Option<String>,
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq)]
pub enum Deletion {
    /// The object is gone; the value is the `Status` to return.
    Deleted(Value),
    /// The object waits for finalizers (or its namespace's content); the value is the object
    /// with its `deletionTimestamp`.
    Pending(Value),
}

/// The cluster state.
#[derive(Debug)]
pub struct Store {
    resource_version: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: VecDeque<Change>,
    history_limit: usize,
    /// Watches and continue tokens from before this `resourceVersion` get 410 Expired.
    compacted: u64,
    random_counter: u64,
}

fn namespaces() -> &'static ResourceType {
    resources::by_plural("", "v1", "namespaces").unwrap_or(&RESOURCES[0])
}

/// Now, as `metadata.creationTimestamp` writes it (RFC 3339, seconds, UTC).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn metadata(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    match object.get_mut("metadata") {
        Some(Value::Object(metadata)) => metadata,
        _ => unreachable!("metadata was just made an object"),
    }
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    metadata(object)
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn finalizers(object: &Value) -> Vec<String> {
    metadata(object)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|f| {
            f.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn is_terminating(object: &Value) -> bool {
    meta_str(object, "deletionTimestamp").is_some()
}

fn generation(object: &Value) -> u64 {
    metadata(object)
        .and_then(|m| m.get("generation"))
        .and_then(Value::as_u64)
        .unwrap_or(1)
}

/// The object without the fields that do not count as a spec change.
fn spec_view(object: &Value) -> Value {
    let mut view = object.clone();
    if let Some(map) = view.as_object_mut() {
        for field in ["metadata", "status", "kind", "apiVersion"] {
            map.remove(field);
        }
    }
    view
}

fn is_alphanumeric_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| is_alphanumeric_lower(c) || c == b'-')
        && is_alphanumeric_lower(b[0])
        && is_alphanumeric_lower(b[b.len() - 1])
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The name part of a qualified name, or a label value: alphanumerics, `-`, `_`, `.`,
/// starting and ending with an alphanumeric, at most 63 characters.
fn is_label_word(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_word(name),
        None => is_label_word(s),
    }
}

fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_label_word(s)
}

/// A name a custom resource may have: one path segment.
fn is_path_segment_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '%'])
}

fn invalid(resource: &ResourceType, name: &str, field: &str, detail: String) -> ApiError {
    ApiError::Invalid {
        kind: resource.kind,
        name: name.to_owned(),
        field: field.to_owned(),
        detail,
    }
}

/// Checks what a real server's validation would refuse in `metadata`.
fn validate_metadata(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
    let meta = metadata(object).cloned().unwrap_or_default();
    let name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    let name_ok = if std::ptr::eq(resource, namespaces()) {
        is_dns_label(name)
    } else if resource.builtin {
        is_dns_subdomain(name)
    } else {
        is_path_segment_name(name)
    };
    if !name_ok {
        let rule = if std::ptr::eq(resource, namespaces()) {
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character"
        } else if resource.builtin {
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
        } else {
            "may not be '.' or '..' and may not contain '/' or '%'"
        };
        return Err(invalid(
            resource,
            name,
            "metadata.name",
            format!("Invalid value: {name:?}: {rule}"),
        ));
    }
    for (field, check_values) in [("labels", true), ("annotations", false)] {
        let Some(map) = meta.get(field) else { continue };
        if map.is_null() {
            continue;
        }
        let Some(map) = map.as_object() else {
            return Err(ApiError::BadRequest {
                message: format!("metadata.{field} must be a map of strings, got {map}"),
            });
        };
        for (key, value) in map {
            let Some(value) = value.as_str() else {
                return Err(ApiError::BadRequest {
                    message: format!(
                        "metadata.{field}[{key:?}] must be a string, got {value} (json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} of type string)"
                    ),
                });
            };
            if !is_qualified_name(key) {
                return Err(invalid(
                    resource,
                    name,
                    &format!("metadata.{field}"),
                    format!(
                        "Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character, with an optional DNS subdomain prefix and '/'"
                    ),
                ));
            }
            if check_values && !is_label_value(value) {
                return Err(invalid(
                    resource,
                    name,
                    "metadata.labels",
                    format!(
                        "Invalid value: {value:?}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
                    ),
                ));
            }
        }
    }
    if let Some(finalizers) = meta.get("finalizers").filter(|f| !f.is_null()) {
        let all_strings = finalizers
            .as_array()
            .is_some_and(|f| f.iter().all(Value::is_string));
        if !all_strings {
            return Err(ApiError::BadRequest {
                message: format!("metadata.finalizers must be a list of strings, got {finalizers}"),
            });
        }
    }
    Ok(())
}

/// The body's `apiVersion` and `kind` must name `resource`.
fn check_type(resource: &ResourceType, object: &Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::BadRequest {
            message: format!("the request body must be a JSON object, got {object}"),
        });
    }
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if kind.is_empty() {
        return Err(ApiError::BadRequest {
            message: "Object 'Kind' is missing in the request body".to_owned(),
        });
    }
    if kind != resource.kind || api_version != resource.api_version() {
        return Err(ApiError::BadRequest {
            message: format!(
                "the API version in the data ({api_version}) does not match the expected API version ({}), or the kind ({kind}) is not {}",
                resource.api_version(),
                resource.kind
            ),
        });
    }
    Ok(())
}

/// The body's name and namespace, when set, must be those of the URL.
fn check_identity(
    resource: &ResourceType,
    object: &Value,
    namespace: &str,
    name: &str,
) -> Result<(), ApiError> {
    let body_name = meta_str(object, "name").unwrap_or_default();
    if body_name != name {
        return Err(ApiError::BadRequest {
            message: format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            ),
        });
    }
    if resource.namespaced
        && let Some(body_namespace) = meta_str(object, "namespace")
        && body_namespace != namespace
    {
        return Err(ApiError::BadRequest {
            message: "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
        });
    }
    Ok(())
}

fn patch_error(resource: &ResourceType, name: &str, error: &PatchError) -> ApiError {
    match error {
        PatchError::JsonPatch { .. } => invalid(
            resource,
            name,
            "patch",
            format!("Invalid value: the JSON patch does not apply: {error}"),
        ),
        PatchError::Decode { .. } | PatchError::NotAnObject { .. } => ApiError::BadRequest {
            message: error.to_string(),
        },
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An opaque continue token: the list's `resourceVersion` and the last key returned.
fn encode_continue(resource_version: u64, last: &ObjectKey) -> String {
    hex(format!("{resource_version}\0{}\0{}", last.namespace, last.name).as_bytes())
}

fn decode_continue(token: &str, resource: usize) -> Result<(u64, ObjectKey), ApiError> {
    let bad = || ApiError::BadRequest {
        message: format!("continue key is not valid: {token:?}"),
    };
    let text = unhex(token)
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    let mut parts = text.splitn(3, '\0');
    let resource_version = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    let namespace = parts.next().ok_or_else(bad)?.to_owned();
    let name = parts.next().ok_or_else(bad)?.to_owned();
    Ok((
        resource_version,
        ObjectKey {
            resource,
            namespace,
            name,
        },
    ))
}

impl Store {
    /// A cluster with the namespaces every cluster has ([`INITIAL_NAMESPACES`]), keeping at
    /// most `history_limit` changes for watches.
    pub fn new(history_limit: usize) -> Self {
        let mut store = Self {
            resource_version: 0,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            history_limit: history_limit.max(1),
            compacted: 0,
            random_counter: 0,
        };
        for name in INITIAL_NAMESPACES {
            let namespace =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            // The initial namespaces are valid and new; creating them cannot fail.
            let _ = store.create(namespaces(), "", namespace);
        }
        store
    }

    /// The latest `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    /// The oldest `resourceVersion` a watch can resume from.
    #[cfg(test)]
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    fn random(&mut self) -> u64 {
        self.random_counter += 1;
        let mut hasher = std::hash::RandomState::new().build_hasher();
        hasher.write_u64(self.random_counter);
        hasher.finish()
    }

    fn new_uid(&mut self) -> String {
        let a = self.random();
        let b = self.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }

    fn generated_name(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let prefix: String = prefix.chars().take(58).collect();
        let mut random = self.random();
        let mut name = prefix;
        for _ in 0..5 {
            let index = usize::try_from(random % ALPHABET.len() as u64).unwrap_or(0);
            name.push(char::from(ALPHABET[index]));
            random /= ALPHABET.len() as u64;
        }
        name
    }

    fn record(&mut self, key: ObjectKey, kind: ChangeKind, old: Option<Value>, object: Value) {
        self.history.push_back(Change {
            resource_version: self.resource_version,
            key,
            kind,
            old,
            object,
        });
        while self.history.len() > self.history_limit {
            if let Some(evicted) = self.history.pop_front() {
                self.compacted = evicted.resource_version;
            }
        }
    }

    /// Forgets the change history: watches and continue tokens from before now get
    /// 410 Expired, as after an etcd compaction.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.resource_version;
    }

    fn bump(&mut self, object: &mut Value) {
        self.resource_version += 1;
        metadata_mut(object).insert(
            "resourceVersion".to_owned(),
            json!(self.resource_version.to_string()),
        );
    }

    /// The object, or 404.
    pub fn get(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.objects
            .get(&ObjectKey::new(resource, namespace, name))
            .cloned()
            .ok_or_else(|| ApiError::NotFound {
                target: Target::new(resource, name),
            })
    }

    /// The objects of `resource` as they were at `resource_version`, rebuilt by undoing
    /// the newer changes; 410 if the history no longer reaches back that far.
    fn state_at(
        &self,
        resource: &'static ResourceType,
        resource_version: u64,
    ) -> Result<BTreeMap<ObjectKey, Value>, ApiError> {
        let index = resources::index_of(resource);
        let mut state: BTreeMap<ObjectKey, Value> = self
            .objects
            .iter()
            .filter(|(key, _)| key.resource == index)
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        if resource_version >= self.resource_version {
            return Ok(state);
        }
        if resource_version < self.compacted {
            return Err(ApiError::Expired {
                message: format!(
                    "The resourceVersion for the provided list is too old: {resource_version} ({}). You can start a new list without the continue parameter.",
                    self.compacted
                ),
            });
        }
        for change in self.history.iter().rev() {
            if change.resource_version <= resource_version {
                break;
            }
            if change.key.resource != index {
                continue;
            }
            match (&change.kind, &change.old) {
                (ChangeKind::Added, _) => {
                    state.remove(&change.key);
                }
                (ChangeKind::Modified | ChangeKind::Deleted, Some(old)) => {
                    state.insert(change.key.clone(), old.clone());
                }
                (ChangeKind::Modified | ChangeKind::Deleted, None) => {}
            }
        }
        Ok(state)
    }

    /// One page of the objects of `resource` that `query` selects.
    pub fn list(
        &self,
        resource: &'static ResourceType,
        query: &ListQuery,
    ) -> Result<ListPage, ApiError> {
        let index = resources::index_of(resource);
        let (resource_version, start_after) = match &query.continue_token {
            Some(token) => {
                let (version, key) = decode_continue(token, index)?;
                (version, Some(key))
            }
            None => (query.exact_version.unwrap_or(self.resource_version), None),
        };
        let state = self.state_at(resource, resource_version)?;
        let matching: Vec<(&ObjectKey, &Value)> = state
            .iter()
            .filter(|(key, object)| {
                query.selects_key(key)
                    && start_after.as_ref().is_none_or(|after| *key > after)
                    && query.selects(object)
            })
            .collect();
        let take = if query.limit > 0 {
            query.limit.min(matching.len())
        } else {
            matching.len()
        };
        let items = matching[..take]
            .iter()
            .map(|(_, object)| (*object).clone())
            .collect();
        let mut continue_token = None;
        let mut remaining = None;
        if take < matching.len() && take > 0 {
            continue_token = Some(encode_continue(resource_version, matching[take - 1].0));
            if query.labels.is_empty() && query.fields.is_empty() {
                remaining = Some(matching.len() - take);
            }
        }
        Ok(ListPage {
            items,
            resource_version,
            continue_token,
            remaining,
        })
    }

    /// The objects `query` selects (no paging) and the current `resourceVersion`: the
    /// initial state of a watch.
    pub fn snapshot(
        &self,
        resource: &'static ResourceType,
        query: &ListQuery,
    ) -> (Vec<Value>, u64) {
        let index = resources::index_of(resource);
        let items = self
            .objects
            .iter()
            .filter(|(key, object)| {
                key.resource == index && query.selects_key(key) && query.selects(object)
            })
            .map(|(_, object)| object.clone())
            .collect();
        (items, self.resource_version)
    }

    /// The changes after `resource_version`, or 410 Expired if some were forgotten.
    pub fn changes_after(&self, resource_version: u64) -> Result<Vec<Change>, ApiError> {
        if resource_version < self.compacted {
            return Err(ApiError::Expired {
                message: format!(
                    "too old resource version: {resource_version} ({})",
                    self.compacted
                ),
            });
        }
        let start = self
            .history
            .partition_point(|c| c.resource_version <= resource_version);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// Admission for a new object in `namespace`: it must exist and not be terminating.
    fn admit_namespace(
        &self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if !resource.namespaced {
            return Ok(());
        }
        match self.objects.get(&ObjectKey::namespace_object(namespace)) {
            None => Err(ApiError::NotFound {
                target: Target::namespace(namespace),
            }),
            Some(ns) if is_terminating(ns) => Err(ApiError::Forbidden {
                target: Target::new(resource, name),
                detail: format!(
                    "unable to create new content in namespace {namespace} because it is being terminated"
                ),
            }),
            Some(_) => Ok(()),
        }
    }

    /// Fills the name from `generateName` if needed; the object's name afterwards.
    fn assign_name(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        object: &mut Value,
    ) -> Result<String, ApiError> {
        if let Some(name) = meta_str(object, "name") {
            return Ok(name.to_owned());
        }
        let Some(prefix) = meta_str(object, "generateName").map(str::to_owned) else {
            return Err(invalid(
                resource,
                "",
                "metadata.name",
                "Required value: name or generateName is required".to_owned(),
            ));
        };
        let mut name = self.generated_name(&prefix);
        for _ in 0..8 {
            if !self
                .objects
                .contains_key(&ObjectKey::new(resource, namespace, &name))
            {
                break;
            }
            name = self.generated_name(&prefix);
        }
        metadata_mut(object).insert("name".to_owned(), json!(name));
        Ok(name)
    }

    /// Stores a new object and records it as `Added`; the object is complete and valid.
    fn insert(&mut self, key: ObjectKey, mut object: Value) -> Value {
        self.bump(&mut object);
        self.objects.insert(key.clone(), object.clone());
        self.record(key, ChangeKind::Added, None, object.clone());
        object
    }

    /// `POST`: creates `object` in `namespace` (ignored for cluster-scoped types).
    pub fn create(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        check_type(resource, &object)?;
        if resource.namespaced {
            if let Some(body_namespace) = meta_str(&object, "namespace")
                && body_namespace != namespace
            {
                return Err(ApiError::BadRequest {
                    message: "the namespace of the provided object does not match the namespace sent on the request".to_owned(),
                });
            }
            metadata_mut(&mut object).insert("namespace".to_owned(), json!(namespace));
        } else {
            metadata_mut(&mut object).remove("namespace");
        }
        if meta_str(&object, "resourceVersion").is_some() {
            return Err(ApiError::Internal {
                message: "resourceVersion should not be set on objects to be created".to_owned(),
            });
        }
        let name = self.assign_name(resource, namespace, &mut object)?;
        self.admit_namespace(resource, namespace, &name)?;
        validate_metadata(resource, &object)?;
        let key = ObjectKey::new(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                target: Target::new(resource, &name),
            });
        }
        let uid = self.new_uid();
        let meta = metadata_mut(&mut object);
        for field in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(field);
        }
        meta.insert("uid".to_owned(), json!(uid));
        meta.insert("creationTimestamp".to_owned(), json!(now()));
        meta.insert("generation".to_owned(), json!(1));
        let map = object.as_object_mut().ok_or_else(|| ApiError::BadRequest {
            message: "the request body must be a JSON object".to_owned(),
        })?;
        match resource.status_on_create {
            StatusOnCreate::Keep => {}
            StatusOnCreate::Drop => {
                map.remove("status");
            }
            StatusOnCreate::PodPending => {
                map.insert("status".to_owned(), json!({"phase": "Pending"}));
            }
            StatusOnCreate::NamespaceActive => {
                map.insert("status".to_owned(), json!({"phase": "Active"}));
                map.insert("spec".to_owned(), json!({"finalizers": ["kubernetes"]}));
            }
        }
        Ok(self.insert(key, object))
    }

    /// Stores an object as given, status included, bypassing what create does to status
    /// and creating its namespace if missing: the state a cluster would already be in.
    pub fn seed(&mut self, mut object: Value) -> Result<Value, ApiError> {
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let resource =
            resources::by_kind(api_version, kind).ok_or_else(|| ApiError::BadRequest {
                message: format!(
                    "the API double does not serve apiVersion {api_version:?} kind {kind:?}"
                ),
            })?;
        let namespace = if resource.namespaced {
            let namespace = meta_str(&object, "namespace")
                .unwrap_or("default")
                .to_owned();
            metadata_mut(&mut object).insert("namespace".to_owned(), json!(namespace));
            let namespace_key = ObjectKey::namespace_object(&namespace);
            if !self.objects.contains_key(&namespace_key) {
                let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}});
                self.create(namespaces(), "", ns)?;
            }
            namespace
        } else {
            metadata_mut(&mut object).remove("namespace");
            String::new()
        };
        let name = self.assign_name(resource, &namespace, &mut object)?;
        validate_metadata(resource, &object)?;
        let key = ObjectKey::new(resource, &namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::AlreadyExists {
                target: Target::new(resource, &name),
            });
        }
        let uid = self.new_uid();
        let meta = metadata_mut(&mut object);
        meta.entry("uid").or_insert_with(|| json!(uid));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!(now()));
        meta.entry("generation").or_insert_with(|| json!(1));
        Ok(self.insert(key, object))
    }

    /// The object a write of `incoming` to `old` stores: the main resource keeps the stored
    /// status when the type has a status subresource, the status subresource changes only
    /// the status, and server-owned metadata always comes from `old`.
    fn compose(
        resource: &'static ResourceType,
        old: &Value,
        incoming: Value,
        status_only: bool,
    ) -> Value {
        let mut new = if status_only {
            let mut new = old.clone();
            if let Some(map) = new.as_object_mut() {
                match incoming.get("status") {
                    Some(status) if !status.is_null() => {
                        map.insert("status".to_owned(), status.clone());
                    }
                    _ => {
                        map.remove("status");
                    }
                }
            }
            new
        } else {
            let mut new = incoming;
            if resource.status_subresource
                && let Some(map) = new.as_object_mut()
            {
                match old.get("status") {
                    Some(status) => {
                        map.insert("status".to_owned(), status.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                }
            }
            new
        };
        new["apiVersion"] = json!(resource.api_version());
        new["kind"] = json!(resource.kind);
        let old_meta = metadata(old).cloned().unwrap_or_default();
        let meta = metadata_mut(&mut new);
        meta.remove("managedFields");
        meta.remove("selfLink");
        for field in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ] {
            match old_meta.get(field) {
                Some(value) => {
                    meta.insert(field.to_owned(), value.clone());
                }
                None => {
                    meta.remove(field);
                }
            }
        }
        new
    }

    /// Stores `new` in place of the object at `key`: validation, the finalizer rule,
    /// generation, no-op writes (no new `resourceVersion`, no event, as a real server), and
    /// completion of a pending deletion once the last finalizer is gone.
    fn commit_update(
        &mut self,
        resource: &'static ResourceType,
        key: ObjectKey,
        old: Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        validate_metadata(resource, &new)?;
        if is_terminating(&old) {
            let old_finalizers = finalizers(&old);
            if finalizers(&new).iter().any(|f| !old_finalizers.contains(f)) {
                return Err(invalid(
                    resource,
                    &key.name,
                    "metadata.finalizers",
                    "Forbidden: no new finalizers can be added if the object is being deleted"
                        .to_owned(),
                ));
            }
        }
        if spec_view(&old) != spec_view(&new) {
            metadata_mut(&mut new).insert("generation".to_owned(), json!(generation(&old) + 1));
        }
        if new == old {
            return Ok(old);
        }
        if is_terminating(&new) && finalizers(&new).is_empty() && self.is_empty_namespace(&key) {
            self.objects.remove(&key);
            self.bump(&mut new);
            self.record(key.clone(), ChangeKind::Deleted, Some(old), new.clone());
            self.reap_namespace(&key.namespace);
            return Ok(new);
        }
        self.bump(&mut new);
        self.objects.insert(key.clone(), new.clone());
        self.record(key, ChangeKind::Modified, Some(old), new.clone());
        Ok(new)
    }

    /// `PUT`: replaces the object (or, with `status_only`, its status).
    pub fn update(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        status_only: bool,
        object: Value,
    ) -> Result<Value, ApiError> {
        check_type(resource, &object)?;
        check_identity(resource, &object, namespace, name)?;
        let key = ObjectKey::new(resource, namespace, name);
        let old = self.get(resource, namespace, name)?;
        if let Some(sent) = meta_str(&object, "resourceVersion")
            && Some(sent) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::Conflict {
                target: Target::new(resource, name),
                detail: CONFLICT.to_owned(),
            });
        }
        let new = Self::compose(resource, &old, object, status_only);
        self.commit_update(resource, key, old, new)
    }

    /// `PATCH`: applies `body` of `patch_type` to the object (or, with `status_only`, to its
    /// status); an apply patch creates a missing object. Returns the object and whether it
    /// was created.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per part of a PATCH request"
    )]
    pub fn patch(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        status_only: bool,
        patch_type: PatchType,
        body: &[u8],
        field_manager: Option<&str>,
    ) -> Result<(Value, bool), ApiError> {
        if patch_type == PatchType::StrategicMerge && !resource.builtin {
            return Err(ApiError::UnsupportedMediaType {
                content_type: "application/strategic-merge-patch+json".to_owned(),
                accepted: "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".to_owned(),
            });
        }
        if patch_type == PatchType::Apply && field_manager.is_none_or(str::is_empty) {
            return Err(ApiError::Invalid {
                kind: "PatchOptions",
                name: String::new(),
                field: "fieldManager".to_owned(),
                detail: "Required value: is required for apply patch".to_owned(),
            });
        }
        let key = ObjectKey::new(resource, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            if patch_type == PatchType::Apply && !status_only {
                let object = patch::merge_body(patch_type, body)
                    .map_err(|e| patch_error(resource, name, &e))?;
                check_identity(resource, &object, namespace, name)?;
                return Ok((self.create(resource, namespace, object)?, true));
            }
            return Err(ApiError::NotFound {
                target: Target::new(resource, name),
            });
        };
        let patched =
            patch::apply(patch_type, &old, body).map_err(|e| patch_error(resource, name, &e))?;
        check_type(resource, &patched)?;
        check_identity(resource, &patched, namespace, name)?;
        if let Some(sent) = meta_str(&patched, "resourceVersion")
            && Some(sent) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::Conflict {
                target: Target::new(resource, name),
                detail: CONFLICT.to_owned(),
            });
        }
        let new = Self::compose(resource, &old, patched, status_only);
        Ok((self.commit_update(resource, key, old, new)?, false))
    }

    /// Whether `key` is not a namespace that still holds objects.
    fn is_empty_namespace(&self, key: &ObjectKey) -> bool {
        if key.resource != resources::index_of(namespaces()) {
            return true;
        }
        !self
            .objects
            .keys()
            .any(|k| k.resource_type().namespaced && k.namespace == key.name)
    }

    /// Removes the namespace `namespace` if it is terminating, has no finalizers left and
    /// holds no objects: the namespace controller's last step.
    fn reap_namespace(&mut self, namespace: &str) {
        if namespace.is_empty() {
            return;
        }
        let key = ObjectKey::namespace_object(namespace);
        let Some(ns) = self.objects.get(&key).cloned() else {
            return;
        };
        if is_terminating(&ns) && finalizers(&ns).is_empty() && self.is_empty_namespace(&key) {
            let mut last = ns.clone();
            self.objects.remove(&key);
            self.bump(&mut last);
            self.record(key, ChangeKind::Deleted, Some(ns), last);
        }
    }

    /// Marks the object at `key` as being deleted (`deletionTimestamp`), if it is not yet.
    fn mark_deleting(&mut self, key: &ObjectKey, old: &Value) -> Value {
        if is_terminating(old) {
            return old.clone();
        }
        let mut new = old.clone();
        let meta = metadata_mut(&mut new);
        meta.insert("deletionTimestamp".to_owned(), json!(now()));
        meta.insert("deletionGracePeriodSeconds".to_owned(), json!(0));
        meta.insert("generation".to_owned(), json!(generation(old) + 1));
        if key.resource == resources::index_of(namespaces()) {
            new["status"]["phase"] = json!("Terminating");
        }
        self.bump(&mut new);
        self.objects.insert(key.clone(), new.clone());
        self.record(
            key.clone(),
            ChangeKind::Modified,
            Some(old.clone()),
            new.clone(),
        );
        new
    }

    /// Deletes the object at `key` (which exists): removed now, or marked and kept while
    /// finalizers (or, for a namespace, its objects) remain.
    fn delete_key(&mut self, key: &ObjectKey) -> Option<Deletion> {
        let old = self.objects.get(key).cloned()?;
        let resource = key.resource_type();
        let is_namespace = key.resource == resources::index_of(namespaces());
        if !finalizers(&old).is_empty() || is_namespace {
            let marked = self.mark_deleting(key, &old);
            if is_namespace {
                let content: Vec<ObjectKey> = self
                    .objects
                    .keys()
                    .filter(|k| k.resource_type().namespaced && k.namespace == key.name)
                    .cloned()
                    .collect();
                for object in content {
                    self.delete_key(&object);
                }
                self.reap_namespace(&key.name);
                if !self.objects.contains_key(key) {
                    let uid = meta_str(&old, "uid").unwrap_or_default();
                    return Some(Deletion::Deleted(status::deleted(resource, &key.name, uid)));
                }
                return Some(Deletion::Pending(
                    self.objects.get(key).cloned().unwrap_or(marked),
                ));
            }
            return Some(Deletion::Pending(marked));
        }
        let mut last = old.clone();
        self.objects.remove(key);
        self.bump(&mut last);
        self.record(key.clone(), ChangeKind::Deleted, Some(old.clone()), last);
        self.reap_namespace(&key.namespace);
        let uid = meta_str(&old, "uid").unwrap_or_default();
        Some(Deletion::Deleted(status::deleted(resource, &key.name, uid)))
    }

    /// `DELETE` of one object, checking `preconditions`.
    pub fn delete(
        &mut self,
        resource: &'static ResourceType,
        namespace: &str,
        name: &str,
        preconditions: &Preconditions,
    ) -> Result<Deletion, ApiError> {
        let old = self.get(resource, namespace, name)?;
        let conflict = |what: &str, wanted: &str, actual: &str| ApiError::Conflict {
            target: Target::new(resource, name),
            detail: format!(
                "Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"
            ),
        };
        if let Some(uid) = &preconditions.uid {
            let actual = meta_str(&old, "uid").unwrap_or_default();
            if uid != actual {
                return Err(conflict("UID", uid, actual));
            }
        }
        if let Some(version) = &preconditions.resource_version {
            let actual = meta_str(&old, "resourceVersion").unwrap_or_default();
            if version != actual {
                return Err(conflict("ResourceVersion", version, actual));
            }
        }
        self.delete_key(&ObjectKey::new(resource, namespace, name))
            .ok_or_else(|| ApiError::NotFound {
                target: Target::new(resource, name),
            })
    }

    /// `DELETE` of a collection: deletes every object `query` selects and returns them as
    /// they were when the deletion was decided.
    pub fn delete_collection(
        &mut self,
        resource: &'static ResourceType,
        query: &ListQuery,
    ) -> Vec<Value> {
        let index = resources::index_of(resource);
        let selected: Vec<(ObjectKey, Value)> = self
            .objects
            .iter()
            .filter(|(key, object)| {
                key.resource == index && query.selects_key(key) && query.selects(object)
            })
            .map(|(key, object)| (key.clone(), object.clone()))
            .collect();
        let mut deleted = Vec::new();
        for (key, object) in selected {
            match self.delete_key(&key) {
                Some(Deletion::Pending(marked)) => deleted.push(marked),
                Some(Deletion::Deleted(_)) => deleted.push(object),
                None => {}
            }
        }
        deleted
    }

    /// Every stored object of `resource` in `namespace` (all namespaces if `None`).
    pub fn objects(&self, resource: &'static ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let query = ListQuery {
            namespace: namespace.map(str::to_owned),
            ..ListQuery::default()
        };
        self.snapshot(resource, &query).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::by_plural;

    fn pods() -> &'static ResourceType {
        by_plural("", "v1", "pods").expect("pods")
    }

    fn subnets() -> &'static ResourceType {
        by_plural("kubeovn.io", "v1", "subnets").expect("subnets")
    }

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": []}})
    }

    fn rv(object: &Value) -> u64 {
        meta_str(object, "resourceVersion")
            .expect("resourceVersion")
            .parse()
            .expect("numeric resourceVersion")
    }

    #[test]
    fn a_new_store_holds_the_four_standard_namespaces_at_versions_one_to_four() {
        let store = Store::new(100);
        assert_eq!(store.resource_version(), 4);
        let names: Vec<String> = store
            .objects(namespaces(), None)
            .iter()
            .map(|ns| meta_str(ns, "name").expect("name").to_owned())
            .collect();
        assert_eq!(
            names,
            ["default", "kube-node-lease", "kube-public", "kube-system"]
        );
    }

    #[test]
    fn create_assigns_server_fields_and_resets_pod_status_to_pending() {
        let mut store = Store::new(100);
        let mut body = pod("web");
        body["status"] = json!({"phase": "Running", "podIP": "10.0.0.9"});
        let created = store.create(pods(), "default", body).expect("created");
        assert_eq!(rv(&created), 5);
        assert_eq!(created["metadata"]["namespace"], "default");
        assert_eq!(created["metadata"]["generation"], 1);
        assert_eq!(created["status"], json!({"phase": "Pending"}));
        assert_eq!(meta_str(&created, "uid").expect("uid").len(), 36);
    }

    #[test]
    fn create_in_a_missing_namespace_is_404_for_the_namespace() {
        let mut store = Store::new(100);
        let error = store
            .create(pods(), "nowhere", pod("web"))
            .expect_err("no namespace");
        assert_eq!(error.to_string(), "namespaces \"nowhere\" not found");
    }

    #[test]
    fn a_write_that_changes_nothing_keeps_the_resource_version_and_records_nothing() {
        let mut store = Store::new(100);
        let created = store
            .create(pods(), "default", pod("web"))
            .expect("created");
        let again = store
            .update(pods(), "default", "web", false, created.clone())
            .expect("updated");
        assert_eq!(again, created);
        assert_eq!(store.changes_after(rv(&created)).expect("history").len(), 0);
    }

    #[test]
    fn a_status_write_changes_only_the_status_and_a_main_write_keeps_it() {
        let mut store = Store::new(100);
        let created = store
            .create(
                subnets(),
                "",
                json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "net1"},
                       "spec": {"cidrBlock": "10.1.0.0/24"}, "status": {"v4availableIPs": 9}}),
            )
            .expect("created");
        assert_eq!(created.get("status"), None);
        let mut body = created.clone();
        body["status"] = json!({"v4availableIPs": 253});
        body["spec"]["cidrBlock"] = json!("10.9.0.0/24");
        let status = store
            .update(subnets(), "", "net1", true, body.clone())
            .expect("status updated");
        assert_eq!(status["spec"]["cidrBlock"], "10.1.0.0/24");
        assert_eq!(status["status"]["v4availableIPs"], 253);
        assert_eq!(status["metadata"]["generation"], 1);
        body["metadata"]["resourceVersion"] = status["metadata"]["resourceVersion"].clone();
        body["status"] = json!({"v4availableIPs": 0});
        let main = store
            .update(subnets(), "", "net1", false, body)
            .expect("updated");
        assert_eq!(main["spec"]["cidrBlock"], "10.9.0.0/24");
        assert_eq!(main["status"]["v4availableIPs"], 253);
        assert_eq!(main["metadata"]["generation"], 2);
    }

    #[test]
    fn a_list_page_continues_at_the_same_resource_version_even_after_writes() {
        let mut store = Store::new(100);
        for name in ["a", "b", "c"] {
            store.create(pods(), "default", pod(name)).expect("created");
        }
        let query = ListQuery {
            limit: 2,
            ..ListQuery::default()
        };
        let first = store.list(pods(), &query).expect("first page");
        assert_eq!(first.items.len(), 2);
        assert_eq!(first.remaining, Some(1));
        store
            .delete(pods(), "default", "c", &Preconditions::default())
            .expect("deleted");
        store.create(pods(), "default", pod("d")).expect("created");
        let second = store
            .list(
                pods(),
                &ListQuery {
                    continue_token: first.continue_token.clone(),
                    ..query
                },
            )
            .expect("second page");
        let names: Vec<&str> = second
            .items
            .iter()
            .map(|p| meta_str(p, "name").expect("name"))
            .collect();
        assert_eq!(names, ["c"]);
        assert_eq!(second.resource_version, first.resource_version);
        assert_eq!(second.continue_token, None);
    }

    #[test]
    fn deleting_a_namespace_deletes_its_objects_and_then_itself() {
        let mut store = Store::new(100);
        store
            .create(
                namespaces(),
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns1"}}),
            )
            .expect("namespace");
        let mut held = pod("held");
        held["metadata"]["finalizers"] = json!(["example.com/hold"]);
        store.create(pods(), "ns1", held).expect("held pod");
        store.create(pods(), "ns1", pod("free")).expect("free pod");
        let deletion = store
            .delete(namespaces(), "", "ns1", &Preconditions::default())
            .expect("deleting");
        let Deletion::Pending(ns) = deletion else {
            panic!("the namespace waits for its held pod: {deletion:?}");
        };
        assert_eq!(ns["status"]["phase"], "Terminating");
        assert_eq!(
            store
                .create(pods(), "ns1", pod("late"))
                .expect_err("terminating")
                .code(),
            403
        );
        let held = store.get(pods(), "ns1", "held").expect("still there");
        let mut released = held.clone();
        released["metadata"]["finalizers"] = json!([]);
        store
            .update(pods(), "ns1", "held", false, released)
            .expect("finalizer removed");
        assert!(store.get(pods(), "ns1", "held").is_err());
        assert!(store.get(namespaces(), "", "ns1").is_err());
    }

    #[test]
    fn a_name_that_is_not_a_dns_subdomain_is_invalid() {
        let mut store = Store::new(100);
        let error = store
            .create(pods(), "default", pod("Web_1"))
            .expect_err("invalid name");
        assert_eq!(error.code(), 422);
        assert!(
            error
                .to_string()
                .starts_with("Pod \"Web_1\" is invalid: metadata.name: Invalid value"),
            "{error}"
        );
    }

    #[test]
    fn the_history_bound_makes_old_watches_expire() {
        let mut store = Store::new(2);
        for name in ["a", "b", "c"] {
            store.create(pods(), "default", pod(name)).expect("created");
        }
        assert_eq!(store.compacted(), 5);
        assert!(store.changes_after(4).is_err());
        assert_eq!(store.changes_after(5).expect("kept").len(), 2);
    }

    #[test]
    fn generated_names_keep_the_prefix_and_add_five_characters() {
        let mut store = Store::new(100);
        let mut body = pod("");
        body["metadata"] = json!({"generateName": "web-"});
        let created = store.create(pods(), "default", body).expect("created");
        let name = meta_str(&created, "name").expect("name");
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    }
}
