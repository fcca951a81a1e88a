//! The resource types the API double serves, and the discovery documents that describe them.
//!
//! The table is the one place that says what a resource is: its group, version, plural, kind,
//! scope, whether it has a `status` subresource, which field selectors it accepts and what
//! the server does to its status on create. Discovery (legacy and aggregated v2) is derived
//! from it, so `kube::Discovery` and `kubectl` see exactly what the handlers serve.

use serde_json::{Value, json};

/// What the server does to `.status` when an object is created through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusOnCreate {
    /// The status is stored as sent (resources without a status subresource, and Nodes,
    /// whose status the kubelet sends on registration).
    Keep,
    /// The status is dropped: only the status subresource may set it (custom resources with
    /// a status subresource).
    Drop,
    /// The status is replaced by `{"phase": "Pending"}` (Pods; the kubelet reports the rest).
    PodPending,
    /// The status is replaced by `{"phase": "Active"}` (Namespaces).
    NamespaceActive,
}

/// One resource type the double serves.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group.
    pub group: &'static str,
    /// API version within the group.
    pub version: &'static str,
    /// Plural resource name, as in URL paths.
    pub plural: &'static str,
    /// Singular resource name.
    pub singular: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `.status` is written only through the `status` subresource.
    pub status_subresource: bool,
    /// Whether the type is built into Kubernetes (strategic merge patch works) rather than a
    /// custom resource (strategic merge patch is rejected with 415, as a real server does).
    pub builtin: bool,
    /// `kubectl` short names.
    pub short_names: &'static [&'static str],
    /// Field selector labels beyond `metadata.name` and `metadata.namespace`, each with the
    /// value an object without that field has.
    pub field_labels: &'static [(&'static str, &'static str)],
    /// What create does to `.status`.
    pub status_on_create: StatusOnCreate,
}

impl ResourceType {
    /// `apiVersion` of this type's objects: `v1` or `<group>/<version>`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of a list of these objects.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The resource name qualified by its group, as error messages print it (`pods`,
    /// `subnets.kubeovn.io`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The `/api/v1` or `/apis/<group>/<version>` prefix of this type's paths.
    pub fn path_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Whether `field` may be used in a field selector on this type.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (self.namespaced && field == "metadata.namespace")
            || self.field_labels.iter().any(|(label, _)| *label == field)
    }

    /// The value an object without `field` has for a field selector.
    pub fn field_default(&self, field: &str) -> &'static str {
        self.field_labels
            .iter()
            .find(|(label, _)| *label == field)
            .map_or("", |(_, default)| default)
    }

    fn verbs() -> Value {
        json!([
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch"
        ])
    }

    /// This type's entry in a legacy `APIResourceList`.
    fn api_resource(&self) -> Value {
        let mut resource = json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": Self::verbs(),
        });
        if !self.short_names.is_empty() {
            resource["shortNames"] = json!(self.short_names);
        }
        resource
    }

    /// The `status` subresource's entry in a legacy `APIResourceList`.
    fn api_status_resource(&self) -> Value {
        json!({
            "name": format!("{}/status", self.plural),
            "singularName": "",
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["get", "patch", "update"],
        })
    }

    /// This type's entry in an aggregated `APIVersionDiscovery`.
    fn aggregated_resource(&self) -> Value {
        let response_kind =
            json!({"group": self.group, "version": self.version, "kind": self.kind});
        let subresources: Vec<Value> = if self.status_subresource {
            vec![json!({
                "subresource": "status",
                "responseKind": response_kind,
                "verbs": ["get", "patch", "update"],
            })]
        } else {
            Vec::new()
        };
        json!({
            "resource": self.plural,
            "responseKind": response_kind,
            "scope": if self.namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": self.singular,
            "verbs": Self::verbs(),
            "shortNames": self.short_names,
            "subresources": subresources,
        })
    }
}

const CORE_EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject.kind", ""),
    ("involvedObject.namespace", ""),
    ("involvedObject.name", ""),
    ("involvedObject.uid", ""),
    ("involvedObject.apiVersion", ""),
    ("involvedObject.resourceVersion", ""),
    ("involvedObject.fieldPath", ""),
    ("reason", ""),
    ("reportingComponent", ""),
    ("source", ""),
    ("type", ""),
];

const EVENTS_V1_FIELDS: &[(&str, &str)] = &[
    ("regarding.kind", ""),
    ("regarding.namespace", ""),
    ("regarding.name", ""),
    ("regarding.uid", ""),
    ("regarding.apiVersion", ""),
    ("regarding.resourceVersion", ""),
    ("regarding.fieldPath", ""),
    ("reason", ""),
    ("reportingController", ""),
    ("type", ""),
];

/// Every resource type the double serves.
pub static RESOURCES: &[ResourceType] = &[
    ResourceType {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        status_subresource: true,
        builtin: true,
        short_names: &["ns"],
        field_labels: &[("status.phase", "")],
        status_on_create: StatusOnCreate::NamespaceActive,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        status_subresource: true,
        builtin: true,
        short_names: &["no"],
        field_labels: &[("spec.unschedulable", "false")],
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        status_subresource: true,
        builtin: true,
        short_names: &["po"],
        field_labels: &[
            ("spec.nodeName", ""),
            ("spec.restartPolicy", ""),
            ("spec.schedulerName", ""),
            ("spec.serviceAccountName", ""),
            ("spec.hostNetwork", "false"),
            ("status.phase", ""),
            ("status.podIP", ""),
            ("status.nominatedNodeName", ""),
        ],
        status_on_create: StatusOnCreate::PodPending,
    },
    ResourceType {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        builtin: true,
        short_names: &["ev"],
        field_labels: CORE_EVENT_FIELDS,
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        status_subresource: false,
        builtin: true,
        short_names: &["ev"],
        field_labels: EVENTS_V1_FIELDS,
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        status_subresource: true,
        builtin: true,
        short_names: &["sts"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        status_subresource: false,
        builtin: true,
        short_names: &[],
        field_labels: &[],
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "k8s.cni.cncf.io",
        version: "v1",
        plural: "network-attachment-definitions",
        singular: "network-attachment-definition",
        kind: "NetworkAttachmentDefinition",
        namespaced: true,
        status_subresource: false,
        builtin: false,
        short_names: &["net-attach-def"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "kubeovn.io",
        version: "v1",
        plural: "subnets",
        singular: "subnet",
        kind: "Subnet",
        namespaced: false,
        status_subresource: true,
        builtin: false,
        short_names: &["subnet"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Drop,
    },
    ResourceType {
        group: "kubeovn.io",
        version: "v1",
        plural: "vpcs",
        singular: "vpc",
        kind: "Vpc",
        namespaced: false,
        status_subresource: true,
        builtin: false,
        short_names: &["vpc"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Drop,
    },
    // Kube-OVN declares `subresources: {}` for IPs: no status subresource.
    ResourceType {
        group: "kubeovn.io",
        version: "v1",
        plural: "ips",
        singular: "ip",
        kind: "IP",
        namespaced: false,
        status_subresource: false,
        builtin: false,
        short_names: &["ip"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Keep,
    },
    ResourceType {
        group: "kubeovn.io",
        version: "v1",
        plural: "ippools",
        singular: "ippool",
        kind: "IPPool",
        namespaced: false,
        status_subresource: true,
        builtin: false,
        short_names: &["ippool"],
        field_labels: &[],
        status_on_create: StatusOnCreate::Drop,
    },
];

/// The resource type served at `group`/`version` under `plural`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The resource type of objects with this `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// The resource type's index in [`RESOURCES`], a compact storage key.
pub fn index_of(resource: &'static ResourceType) -> usize {
    RESOURCES
        .iter()
        .position(|r| std::ptr::eq(r, resource))
        .unwrap_or(usize::MAX)
}

/// Whether `group`/`version` is served.
pub fn serves_group_version(group: &str, version: &str) -> bool {
    RESOURCES
        .iter()
        .any(|r| r.group == group && r.version == version)
}

/// The named groups, in table order, without duplicates.
fn groups() -> Vec<&'static str> {
    let mut groups: Vec<&'static str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// The versions served for `group`, in table order, without duplicates.
fn versions(group: &str) -> Vec<&'static str> {
    let mut versions: Vec<&'static str> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == group) {
        if !versions.contains(&r.version) {
            versions.push(r.version);
        }
    }
    versions
}

/// `GET /api`: the core group's versions.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": versions(""),
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    })
}

fn group_document(group: &str) -> Value {
    let versions: Vec<Value> = versions(group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": preferred,
    })
}

/// `GET /apis/<group>`: one group, or `None` if it is not served.
pub fn api_group(group: &str) -> Option<Value> {
    if group.is_empty() || !groups().contains(&group) {
        return None;
    }
    let mut document = group_document(group);
    document["kind"] = json!("APIGroup");
    document["apiVersion"] = json!("v1");
    Some(document)
}

/// `GET /apis`: every named group.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = groups().into_iter().map(group_document).collect();
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups,
    })
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`: the resources of one group version, or
/// `None` if it is not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if !serves_group_version(group, version) {
        return None;
    }
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(r.api_resource());
        if r.status_subresource {
            resources.push(r.api_status_resource());
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

/// Aggregated discovery (`apidiscovery.k8s.io/v2`): `GET /api` when `core`, `GET /apis`
/// otherwise.
pub fn aggregated(core: bool) -> Value {
    let group_names: Vec<&'static str> = if core { vec![""] } else { groups() };
    let items: Vec<Value> = group_names
        .into_iter()
        .map(|group| {
            let versions: Vec<Value> = versions(group)
                .into_iter()
                .map(|version| {
                    let resources: Vec<Value> = RESOURCES
                        .iter()
                        .filter(|r| r.group == group && r.version == version)
                        .map(ResourceType::aggregated_resource)
                        .collect();
                    json!({"version": version, "resources": resources, "freshness": "Current"})
                })
                .collect();
            let metadata = if group.is_empty() {
                json!({})
            } else {
                json!({"name": group})
            };
            json!({"metadata": metadata, "versions": versions})
        })
        .collect();
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_type_is_found_by_its_plural_and_by_its_kind() {
        for r in RESOURCES {
            assert_eq!(by_plural(r.group, r.version, r.plural), Some(r));
            assert_eq!(by_kind(&r.api_version(), r.kind), Some(r));
        }
    }

    #[test]
    fn the_two_event_types_are_told_apart_by_their_api_version() {
        let core = by_kind("v1", "Event").expect("core event");
        let events = by_kind("events.k8s.io/v1", "Event").expect("events.k8s.io event");
        assert_eq!(core.group, "");
        assert_eq!(events.group, "events.k8s.io");
    }

    #[test]
    fn the_core_resource_list_names_the_status_subresources() {
        let list = api_resource_list("", "v1").expect("core v1");
        let names: Vec<&str> = list["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| r["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "namespaces",
                "namespaces/status",
                "nodes",
                "nodes/status",
                "pods",
                "pods/status",
                "events"
            ]
        );
    }

    #[test]
    fn the_group_list_names_every_named_group_once() {
        let list = api_group_list();
        let names: Vec<&str> = list["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| g["name"].as_str().expect("name"))
            .collect();
        assert_eq!(
            names,
            [
                "events.k8s.io",
                "apps",
                "coordination.k8s.io",
                "k8s.cni.cncf.io",
                "kubeovn.io"
            ]
        );
    }

    #[test]
    fn field_selectors_on_pods_accept_the_node_name_and_default_host_network_to_false() {
        let pods = by_plural("", "v1", "pods").expect("pods");
        assert!(pods.supports_field("spec.nodeName"));
        assert!(pods.supports_field("metadata.namespace"));
        assert!(!pods.supports_field("spec.containers"));
        assert_eq!(pods.field_default("spec.hostNetwork"), "false");
        let subnets = by_plural("kubeovn.io", "v1", "subnets").expect("subnets");
        assert!(!subnets.supports_field("metadata.namespace"));
    }
}
