//! The `kubeovn.io/v1` custom resources, as Kube-OVN defines them (cluster-scoped, the same
//! field names), so that a Subnet written for Kube-OVN applies unchanged. Every field is
//! optional and absent fields stay absent when an object is written back. `cargo xtask crds`
//! generates `deploy/crds/` from these types.
//!
//! The controller and the agent read Subnets through these types ([`SubnetSpec::from_value`]):
//! a field Kube-OVN adds later is kept in `other` and never stops them, and a field of the wrong
//! type is an error naming its path and value.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A status condition, as Kube-OVN writes them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Validated`, `Ready`, `Full`...
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// When its status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// `Subnet.spec`.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Subnet",
    plural = "subnets",
    status = "SubnetStatus",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Vpc","type":"string","jsonPath":".spec.vpc"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidrBlock"}"#,
    printcolumn = r#"{"name":"Private","type":"boolean","jsonPath":".spec.private"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Default","type":"boolean","jsonPath":".spec.default"}"#,
    printcolumn = r#"{"name":"GatewayType","type":"string","jsonPath":".spec.gatewayType"}"#,
    printcolumn = r#"{"name":"V4Used","type":"number","jsonPath":".status.v4usingIPs"}"#,
    printcolumn = r#"{"name":"V4Available","type":"number","jsonPath":".status.v4availableIPs"}"#,
    printcolumn = r#"{"name":"V6Used","type":"number","jsonPath":".status.v6usingIPs"}"#,
    printcolumn = r#"{"name":"V6Available","type":"number","jsonPath":".status.v6availableIPs"}"#,
    printcolumn = r#"{"name":"ExcludeIPs","type":"string","jsonPath":".spec.excludeIps"}"#
)]
#[serde(rename_all = "camelCase")]
// Kube-OVN's Subnet has more fields than we name (and gains some per release): an API server
// keeps them rather than pruning, so a Subnet written for Kube-OVN applies unchanged.
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct SubnetSpec {
    /// `v4`, `v6` or `v4,v6`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr_block: String,
    /// `gw` or `gw4,gw6`; defaults to the first usable address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    /// Addresses and `a..b` ranges never handed out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
    /// `ovn`, `<nad>.<ns>.ovn` or `<nad>.<ns>` (IPAM only).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub provider: String,
    /// `IPv4`, `IPv6`, `Dual` or `Mac` (rewritten from the CIDR).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(regex(pattern = r"^(IPv4|IPv6|Dual|Mac)?$"))]
    pub protocol: String,
    /// The VPC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vpc: String,
    /// The namespaces it serves (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// The interfaces' MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mtu_schema")]
    pub mtu: Option<u32>,
    /// The VLAN (underlay).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vlan: String,
    /// Whether OVN answers DHCP.
    #[serde(
        default,
        rename = "enableDHCP",
        skip_serializing_if = "Option::is_none"
    )]
    pub enable_dhcp: Option<bool>,
    /// Whether the agent skips the gateway check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_gateway_check: Option<bool>,
    /// Whether only `allowSubnets` may reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    /// The CIDRs allowed in when private.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_subnets: Vec<String>,
    /// Whether traffic leaving the cluster is masqueraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_outgoing: Option<bool>,
    /// `distributed` or `centralized`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway_type: String,
    /// Whether it is the cluster's default subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Fields of Kube-OVN's Subnet this type does not name, kept as written.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A Subnet's `spec` that does not read as Kube-OVN's schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.{path}: {message}")]
pub struct SpecError {
    /// The field's path (`mtu`, `excludeIps[1]`).
    pub path: String,
    /// What is wrong, with the value.
    pub message: String,
}

impl SubnetSpec {
    /// Reads a Subnet's `spec` as the API server holds it (absent or `null`: every field
    /// absent).
    pub fn from_value(spec: &serde_json::Value) -> Result<SubnetSpec, SpecError> {
        if spec.is_null() {
            return Ok(SubnetSpec::default());
        }
        serde_path_to_error::deserialize(spec).map_err(|e| SpecError {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }

    /// `cidrBlock`, or `cidr` as the non-primary mode document writes it.
    pub fn cidr(&self) -> &str {
        if self.cidr_block.is_empty() {
            self.other
                .get("cidr")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
        } else {
            &self.cidr_block
        }
    }

    /// Whether it has ACLs (`acls`, Kube-OVN's Subnet ACLs).
    pub fn has_acls(&self) -> bool {
        self.other
            .get("acls")
            .and_then(serde_json::Value::as_array)
            .is_some_and(|a| !a.is_empty())
    }
}

/// `Subnet.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubnetStatus {
    /// IPv4 addresses still available (Kube-OVN writes floats).
    #[serde(
        rename = "v4availableIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v4_available_ips: Option<f64>,
    /// IPv4 addresses in use.
    #[serde(
        rename = "v4usingIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v4_using_ips: Option<f64>,
    /// IPv6 addresses still available.
    #[serde(
        rename = "v6availableIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v6_available_ips: Option<f64>,
    /// IPv6 addresses in use.
    #[serde(
        rename = "v6usingIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v6_using_ips: Option<f64>,
    /// IPv4 ranges in use.
    #[serde(
        rename = "v4usingIPrange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v4_using_ip_range: Option<String>,
    /// IPv4 ranges available.
    #[serde(
        rename = "v4availableIPrange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v4_available_ip_range: Option<String>,
    /// IPv6 ranges in use.
    #[serde(
        rename = "v6usingIPrange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v6_using_ip_range: Option<String>,
    /// IPv6 ranges available.
    #[serde(
        rename = "v6availableIPrange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub v6_available_ip_range: Option<String>,
    /// `Validated`, `Ready`, `Full`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `IP.spec`: one attachment's addresses (named `<pod>.<namespace>[.<provider>]`).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IP",
    plural = "ips",
    printcolumn = r#"{"name":"V4IP","type":"string","jsonPath":".spec.v4IpAddress"}"#,
    printcolumn = r#"{"name":"V6IP","type":"string","jsonPath":".spec.v6IpAddress"}"#,
    printcolumn = r#"{"name":"Mac","type":"string","jsonPath":".spec.macAddress"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IpSpec {
    /// The pod's name.
    #[serde(default)]
    pub pod_name: String,
    /// The pod's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The Subnet.
    #[serde(default)]
    pub subnet: String,
    /// Subnets of further attachments (Kube-OVN's primary-network IPs).
    #[serde(default)]
    pub attach_subnets: Vec<String>,
    /// The pod's node.
    #[serde(default)]
    pub node_name: String,
    /// The addresses, comma-separated.
    #[serde(default)]
    pub ip_address: String,
    /// The IPv4 address.
    #[serde(default, rename = "v4IpAddress")]
    pub v4_ip_address: String,
    /// The IPv6 address.
    #[serde(default, rename = "v6IpAddress")]
    pub v6_ip_address: String,
    /// Addresses of further attachments.
    #[serde(default)]
    pub attach_ips: Vec<String>,
    /// The MAC (empty on IPAM-only Subnets).
    #[serde(default)]
    pub mac_address: String,
    /// MACs of further attachments.
    #[serde(default)]
    pub attach_macs: Vec<String>,
    /// The pod's sandbox.
    #[serde(default, rename = "containerID")]
    pub container_id: String,
    /// `StatefulSet`, `VirtualMachine` or empty.
    #[serde(default)]
    pub pod_type: String,
}

/// A static route of a VPC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StaticRoute {
    /// `policySrc` or `policyDst`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
    /// The destination (or source) CIDR.
    pub cidr: String,
    /// The next hop.
    #[serde(rename = "nextHopIP")]
    pub next_hop_ip: String,
    /// The route table.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub route_table: String,
}

/// A policy route of a VPC.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRoute {
    /// Its priority.
    pub priority: i32,
    /// An OVN match expression.
    #[serde(rename = "match")]
    pub match_: String,
    /// `allow`, `drop` or `reroute`.
    pub action: String,
    /// The next hop of `reroute`.
    #[serde(
        default,
        rename = "nextHopIP",
        skip_serializing_if = "String::is_empty"
    )]
    pub next_hop_ip: String,
}

/// A VPC peering.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcPeering {
    /// The peer VPC.
    pub remote_vpc: String,
    /// This side's address on the peering link.
    #[serde(rename = "localConnectIP")]
    pub local_connect_ip: String,
}

/// `Vpc.spec`: a logical router and the Subnets behind it.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "Vpc",
    plural = "vpcs",
    status = "VpcStatus",
    printcolumn = r#"{"name":"EnableExternal","type":"boolean","jsonPath":".spec.enableExternal"}"#,
    printcolumn = r#"{"name":"Standby","type":"boolean","jsonPath":".status.standby"}"#,
    printcolumn = r#"{"name":"Subnets","type":"string","jsonPath":".status.subnets"}"#,
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VpcSpec {
    /// Namespaces whose Subnets may belong to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Static routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub static_routes: Vec<StaticRoute>,
    /// Policy routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_routes: Vec<PolicyRoute>,
    /// Peerings with other VPCs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpc_peerings: Vec<VpcPeering>,
    /// Whether it connects to the external network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_external: Option<bool>,
    /// Whether BFD watches its external gateways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_bfd: Option<bool>,
}

/// `Vpc.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcStatus {
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Whether the router exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby: Option<bool>,
    /// Whether it is the default VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Its logical router.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub router: String,
    /// Its Subnets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
}

/// `IPPool.spec`: addresses a Subnet reserves for the pods that name the pool.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IPPool",
    plural = "ippools",
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"IPs","type":"string","jsonPath":".spec.ips"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    /// The Subnet.
    #[serde(default)]
    pub subnet: String,
    /// Addresses (and ranges, as Kube-OVN accepts them).
    #[serde(default)]
    pub ips: Vec<String>,
    /// Namespaces that may use it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

/// A list of objects kept as written: the API server requires every schema node to name its
/// type (a structural schema), and keeps their fields rather than pruning them.
pub(crate) fn objects_as_written(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// An MTU: schemars says `format: uint32`, a format the API server does not know (it warns on
/// every apply); `int32` holds every MTU.
fn mtu_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "format": "int32",
        "minimum": 0,
        "nullable": true
    })
}

mod nat;
#[cfg(test)]
mod tests;

pub use nat::*;
