//! Kube-OVN's NAT gateway resources, verbatim: `VpcNatGateway` and the `Iptables*` EIP and
//! rules that hang on it. Sidelane runs them on the Vpc's own OVN logical router (see
//! docs/nat.md), but the fields and status are Kube-OVN's, so the same YAML applies.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Condition, objects_as_written};

/// `VpcNatGateway.spec`: a Vpc's way out to an external Subnet.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "VpcNatGateway",
    plural = "vpc-nat-gateways",
    status = "VpcNatGatewayStatus",
    printcolumn = r#"{"name":"Vpc","type":"string","jsonPath":".spec.vpc"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#,
    printcolumn = r#"{"name":"LanIP","type":"string","jsonPath":".spec.lanIp"}"#,
    printcolumn = r#"{"name":"ExternalIP","type":"string","jsonPath":".status.externalIp"}"#,
    printcolumn = r#"{"name":"Chassis","type":"string","jsonPath":".status.chassis"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VpcNatGatewaySpec {
    /// The VPC.
    #[serde(default)]
    pub vpc: String,
    /// The Subnet its LAN side sits in.
    #[serde(default)]
    pub subnet: String,
    /// Its LAN address.
    #[serde(default)]
    pub lan_ip: String,
    /// External Subnets (default `ovn-vpc-external-network`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_subnets: Vec<String>,
    /// Node selector terms (`key: value`): the nodes that may carry the gateway.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selector: Vec<String>,
    /// Pod tolerations, as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "objects_as_written")]
    pub tolerations: Vec<serde_json::Value>,
    /// A QoS policy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_policy: String,
    /// Routes (`cidr`, `nextHopIP`), as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "objects_as_written")]
    pub routes: Vec<serde_json::Value>,
    /// Whether no default EIP is made.
    #[serde(
        default,
        rename = "noDefaultEIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub no_default_eip: Option<bool>,
}

/// `VpcNatGateway.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VpcNatGatewayStatus {
    /// The QoS policy in force.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_policy: String,
    /// The external Subnets in use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_subnets: Vec<String>,
    /// The selector in force.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selector: Vec<String>,
    /// The gateway's own address on the external Subnet (its default EIP).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_ip: String,
    /// The gateway chassis, highest priority first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chassis: Vec<String>,
    /// `Validated` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `IptablesEIP.spec`: an address of the external Subnet on a gateway.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IptablesEIP",
    plural = "iptables-eips",
    status = "IptablesEipStatus",
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.ip"}"#,
    printcolumn = r#"{"name":"Mac","type":"string","jsonPath":".spec.macAddress"}"#,
    printcolumn = r#"{"name":"Nat","type":"string","jsonPath":".status.nat"}"#,
    printcolumn = r#"{"name":"NatGwDp","type":"string","jsonPath":".spec.natGwDp"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IptablesEipSpec {
    /// The address (empty: allocated from the external Subnet).
    #[serde(default, rename = "v4ip", skip_serializing_if = "String::is_empty")]
    pub v4_ip: String,
    /// An IPv6 address (not supported by Kube-OVN's gateway either).
    #[serde(default, rename = "v6ip", skip_serializing_if = "String::is_empty")]
    pub v6_ip: String,
    /// A MAC, as written (unused, as in Kube-OVN).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
    /// The `VpcNatGateway`.
    #[serde(default)]
    pub nat_gw_dp: String,
    /// A QoS policy.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_policy: String,
    /// The external Subnet (default: the gateway's first).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub external_subnet: String,
}

/// `IptablesEIP.status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IptablesEipStatus {
    /// Whether it is in force.
    #[serde(default)]
    pub ready: bool,
    /// The address it holds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// What uses it: `fip`, `snat`, `dnat`, comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nat: String,
    /// Kube-OVN's redo stamp (unused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redo: String,
    /// The QoS policy in force.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub qos_policy: String,
    /// `Validated` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `IptablesSnatRule.spec`: a Vpc CIDR goes out as an EIP.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IptablesSnatRule",
    plural = "iptables-snat-rules",
    status = "NatRuleStatus",
    printcolumn = r#"{"name":"EIP","type":"string","jsonPath":".spec.eip"}"#,
    printcolumn = r#"{"name":"V4IP","type":"string","jsonPath":".status.v4ip"}"#,
    printcolumn = r#"{"name":"InternalCIDR","type":"string","jsonPath":".spec.internalCIDR"}"#,
    printcolumn = r#"{"name":"NatGwDp","type":"string","jsonPath":".status.natGwDp"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IptablesSnatRuleSpec {
    /// The `IptablesEIP`.
    #[serde(default)]
    pub eip: String,
    /// The internal CIDR (or one address).
    #[serde(default, rename = "internalCIDR")]
    pub internal_cidr: String,
}

/// `IptablesDnatRule.spec`: an EIP's port forwarded to an internal address and port.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IptablesDnatRule",
    plural = "iptables-dnat-rules",
    status = "NatRuleStatus",
    printcolumn = r#"{"name":"EIP","type":"string","jsonPath":".spec.eip"}"#,
    printcolumn = r#"{"name":"Protocol","type":"string","jsonPath":".spec.protocol"}"#,
    printcolumn = r#"{"name":"V4EIP","type":"string","jsonPath":".status.v4ip"}"#,
    printcolumn = r#"{"name":"InternalIP","type":"string","jsonPath":".spec.internalIp"}"#,
    printcolumn = r#"{"name":"ExternalPort","type":"string","jsonPath":".spec.externalPort"}"#,
    printcolumn = r#"{"name":"InternalPort","type":"string","jsonPath":".spec.internalPort"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IptablesDnatRuleSpec {
    /// The `IptablesEIP`.
    #[serde(default)]
    pub eip: String,
    /// The EIP's port.
    #[serde(default)]
    pub external_port: String,
    /// `tcp` or `udp`.
    #[serde(default)]
    pub protocol: String,
    /// The internal address.
    #[serde(default)]
    pub internal_ip: String,
    /// The internal port.
    #[serde(default)]
    pub internal_port: String,
}

/// `IptablesFIPRule.spec`: an EIP that is one internal address, both ways.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "IptablesFIPRule",
    plural = "iptables-fip-rules",
    status = "NatRuleStatus",
    printcolumn = r#"{"name":"EIP","type":"string","jsonPath":".spec.eip"}"#,
    printcolumn = r#"{"name":"V4IP","type":"string","jsonPath":".status.v4ip"}"#,
    printcolumn = r#"{"name":"InternalIP","type":"string","jsonPath":".spec.internalIp"}"#,
    printcolumn = r#"{"name":"NatGwDp","type":"string","jsonPath":".status.natGwDp"}"#,
    printcolumn = r#"{"name":"Ready","type":"boolean","jsonPath":".status.ready"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IptablesFipRuleSpec {
    /// The `IptablesEIP`.
    #[serde(default)]
    pub eip: String,
    /// The internal address.
    #[serde(default)]
    pub internal_ip: String,
}

/// The status of an SNAT, DNAT or FIP rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatRuleStatus {
    /// Whether it is in force.
    #[serde(default)]
    pub ready: bool,
    /// The EIP's address.
    #[serde(default, rename = "v4ip", skip_serializing_if = "String::is_empty")]
    pub v4_ip: String,
    /// The EIP's IPv6 address.
    #[serde(default, rename = "v6ip", skip_serializing_if = "String::is_empty")]
    pub v6_ip: String,
    /// The `VpcNatGateway`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub nat_gw_dp: String,
    /// Kube-OVN's redo stamp (unused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub redo: String,
    /// `Validated` and `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
