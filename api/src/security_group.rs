//! A `SecurityGroup`'s spec as Kube-OVN writes it (`kubeovn.io/v1`, cluster-scoped), read into
//! checked rules with Kube-OVN's validation: `ipVersion` is `ipv4` or `ipv6`; `priority` is
//! 1 to 200; an `address` remote is an address or a CIDR of that family; a `securityGroup`
//! remote names a group; TCP and UDP rules carry a port range within 1-65535 whose minimum is
//! not above its maximum; `policy` is `allow` or `drop` (or `pass`, Kube-OVN's tiered ACLs). Each
//! refusal names the rule (`ingressRules[2]`), the field and the value.
//!
//! The controller renders the checked rules as OVN ACLs on the group's `Port_Group` (issue 17);
//! this module holds only what the YAML means.

use std::net::IpAddr;

use ipnet::IpNet;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::crd::Condition;

/// `SecurityGroup.spec`, as the YAML has it (`cargo xtask crds` makes its CRD).
#[derive(
    CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq,
)]
#[kube(
    group = "kubeovn.io",
    version = "v1",
    kind = "SecurityGroup",
    plural = "security-groups",
    shortname = "sg",
    status = "SecurityGroupStatus",
    printcolumn = r#"{"name":"AllowSameGroup","type":"boolean","jsonPath":".spec.allowSameGroupTraffic"}"#,
    printcolumn = r#"{"name":"PortGroup","type":"string","jsonPath":".status.portGroup"}"#
)]
#[serde(rename_all = "camelCase")]
// Fields a later Kube-OVN adds are kept, not pruned, so its YAML applies unchanged.
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct SecurityGroupSpec {
    /// Rules for traffic into the group's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress_rules: Vec<RawRule>,
    /// Rules for traffic out of the group's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_rules: Vec<RawRule>,
    /// Whether the group's pods reach each other (below every rule's priority).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_same_group_traffic: bool,
}

/// `SecurityGroup.status`: Kube-OVN's fields, and conditions naming what was refused.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroupStatus {
    /// The OVN `Port_Group` of the group (`ovn.sg.<name>`, dashes as dots).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port_group: String,
    /// `allowSameGroupTraffic` as rendered.
    #[serde(default)]
    pub allow_same_group_traffic: bool,
    /// Whether the ingress rules are rendered as written.
    #[serde(default)]
    pub ingress_last_sync_success: bool,
    /// Whether the egress rules are rendered as written.
    #[serde(default)]
    pub egress_last_sync_success: bool,
    /// `Validated` (the rules parse) and `Ready` (rendered).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// One rule, as the YAML has it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RawRule {
    /// `ipv4` or `ipv6`.
    #[serde(default)]
    pub ip_version: String,
    /// `all`, `icmp`, `tcp` or `udp`; `all` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// 1 to 200: the lower, the earlier it applies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i64,
    /// `address` or `securityGroup`.
    #[serde(default)]
    pub remote_type: String,
    /// An address or a CIDR (`remoteType: address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    /// A group's name (`remoteType: securityGroup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_security_group: Option<String>,
    /// First port (TCP and UDP).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port_range_min: i64,
    /// Last port (TCP and UDP).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port_range_max: i64,
    /// `allow`, `drop` or `pass`.
    #[serde(default)]
    pub policy: String,
}

/// The address family a rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpVersion {
    V4,
    V6,
}

/// What a rule matches above IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// Any protocol.
    All,
    Icmp,
    /// TCP to ports `min..=max`.
    Tcp {
        min: u16,
        max: u16,
    },
    /// UDP to ports `min..=max`.
    Udp {
        min: u16,
        max: u16,
    },
}

/// Whom a rule is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// These addresses.
    Net(IpNet),
    /// The pods of this group.
    Group(String),
}

/// What a matching packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Drop,
    /// On to the next ACL tier.
    Pass,
}

/// Which list a rule is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `ingressRules`: into the group's pods.
    Ingress,
    /// `egressRules`: out of them.
    Egress,
}

/// One checked rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub direction: Direction,
    pub ip_version: IpVersion,
    pub protocol: Protocol,
    /// 1 to 200.
    pub priority: u8,
    pub remote: Remote,
    pub policy: Policy,
}

/// A rule Kube-OVN would refuse, named by its place, field and value.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{rule}.{field}: {value:?} {reason}")]
pub struct RuleError {
    /// `ingressRules[0]`, `egressRules[3]`, or `spec`.
    pub rule: String,
    /// The field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A group's checked spec: what the controller renders and the agent's fast path honours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Group {
    /// `allowSameGroupTraffic`.
    pub allow_same_group_traffic: bool,
    /// Its rules, checked.
    pub rules: Vec<Rule>,
}

impl Group {
    /// A group's checked spec out of its object's JSON.
    pub fn of(object: &Value) -> Result<Group, RuleError> {
        let spec = spec_of(object)?;
        Ok(Group {
            allow_same_group_traffic: spec.allow_same_group_traffic,
            rules: rules(&spec)?,
        })
    }
}

/// The `Port_Group` of every port in any group: it drops all IP traffic to and from its
/// ports below the groups' own ACLs (Kube-OVN's `kubeovn_deny_all`).
pub const DENY_ALL_PORT_GROUP: &str = "ovn.sg.kubeovn_deny_all";

/// A group's OVN `Port_Group`, as Kube-OVN names it: `ovn.sg.<name>` with dashes as dots.
pub fn port_group(group: &str) -> String {
    format!("ovn.sg.{}", group.replace('-', "."))
}

/// The `Address_Set` of a group's members' addresses of one family, as Kube-OVN names it:
/// `ovn.sg.<name>.associated.v4` (or `.v6`), dashes as dots.
pub fn address_set(group: &str, v: IpVersion) -> String {
    let family = match v {
        IpVersion::V4 => "v4",
        IpVersion::V6 => "v6",
    };
    format!("ovn.sg.{}.associated.{family}", group.replace('-', "."))
}

/// The groups a pod's attachment joins: `<prefix>.kubernetes.io/security_groups`, or the
/// pod-wide `ovn.kubernetes.io/security_groups`; a comma list, sorted, without repeats.
pub fn membership(
    annotations: &std::collections::BTreeMap<String, String>,
    prefix: &str,
) -> Vec<String> {
    let value = annotations
        .get(&crate::annotations::key(prefix, "security_groups"))
        .or_else(|| {
            annotations.get(&crate::annotations::key(
                crate::annotations::DEFAULT_PROVIDER,
                "security_groups",
            ))
        });
    let mut groups: Vec<String> = value
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    groups.sort();
    groups.dedup();
    groups
}

/// The checked rules of a group, ingress first.
pub fn rules(spec: &SecurityGroupSpec) -> Result<Vec<Rule>, RuleError> {
    let lists = [
        (Direction::Ingress, "ingressRules", &spec.ingress_rules),
        (Direction::Egress, "egressRules", &spec.egress_rules),
    ];
    let mut out = Vec::new();
    for (direction, list, raw) in lists {
        for (i, r) in raw.iter().enumerate() {
            out.push(rule(direction, &format!("{list}[{i}]"), r)?);
        }
    }
    Ok(out)
}

/// A group's spec out of its object's JSON (`spec`), refusing what does not parse.
pub fn spec_of(object: &Value) -> Result<SecurityGroupSpec, RuleError> {
    SecurityGroupSpec::deserialize(&object["spec"]).map_err(|e| RuleError {
        rule: "spec".to_owned(),
        field: "spec",
        value: e.to_string(),
        reason: "does not parse",
    })
}

/// Where a rule is (`ingressRules[2]`), to name it in a refusal.
#[derive(Clone, Copy)]
struct At<'a>(&'a str);

impl At<'_> {
    fn refuse(self, field: &'static str, value: &str, reason: &'static str) -> RuleError {
        RuleError {
            rule: self.0.to_owned(),
            field,
            value: value.to_owned(),
            reason,
        }
    }
}

fn rule(direction: Direction, at: &str, r: &RawRule) -> Result<Rule, RuleError> {
    let at = At(at);
    let ip_version = match r.ip_version.as_str() {
        "ipv4" => IpVersion::V4,
        "ipv6" => IpVersion::V6,
        other => return Err(at.refuse("ipVersion", other, "should be 'ipv4' or 'ipv6'")),
    };
    let priority = u8::try_from(r.priority)
        .ok()
        .filter(|p| (1..=200).contains(p))
        .ok_or_else(|| {
            at.refuse(
                "priority",
                &r.priority.to_string(),
                "is not in the range of 1 to 200",
            )
        })?;
    let policy = match r.policy.as_str() {
        "allow" => Policy::Allow,
        "drop" => Policy::Drop,
        "pass" => Policy::Pass,
        other => return Err(at.refuse("policy", other, "should be 'allow', 'drop' or 'pass'")),
    };
    Ok(Rule {
        direction,
        ip_version,
        protocol: protocol(at, r)?,
        priority,
        remote: remote(at, r, ip_version)?,
        policy,
    })
}

fn remote(at: At<'_>, r: &RawRule, ip_version: IpVersion) -> Result<Remote, RuleError> {
    match r.remote_type.as_str() {
        "address" => {
            let text = r.remote_address.as_deref().unwrap_or_default();
            let net = address(text)
                .ok_or_else(|| at.refuse("remoteAddress", text, "is not an address or a CIDR"))?;
            if matches!(net, IpNet::V4(_)) != (ip_version == IpVersion::V4) {
                return Err(at.refuse("remoteAddress", text, "is not of the rule's ipVersion"));
            }
            Ok(Remote::Net(net))
        }
        "securityGroup" => {
            let name = r.remote_security_group.as_deref().unwrap_or_default();
            if name.is_empty() {
                return Err(at.refuse("remoteSecurityGroup", name, "names no group"));
            }
            Ok(Remote::Group(name.to_owned()))
        }
        other => Err(at.refuse(
            "remoteType",
            other,
            "should be 'address' or 'securityGroup'",
        )),
    }
}

fn protocol(at: At<'_>, r: &RawRule) -> Result<Protocol, RuleError> {
    let ports = || -> Result<(u16, u16), RuleError> {
        let port = |field, value: i64| {
            u16::try_from(value)
                .ok()
                .filter(|p| *p >= 1)
                .ok_or_else(|| at.refuse(field, &value.to_string(), "is out of the range 1-65535"))
        };
        let (min, max) = (
            port("portRangeMin", r.port_range_min)?,
            port("portRangeMax", r.port_range_max)?,
        );
        if min > max {
            return Err(at.refuse(
                "portRangeMin",
                &min.to_string(),
                "is greater than portRangeMax",
            ));
        }
        Ok((min, max))
    };
    match r.protocol.as_deref().unwrap_or("all") {
        "all" | "" => Ok(Protocol::All),
        "icmp" => Ok(Protocol::Icmp),
        "tcp" => ports().map(|(min, max)| Protocol::Tcp { min, max }),
        "udp" => ports().map(|(min, max)| Protocol::Udp { min, max }),
        other => Err(at.refuse("protocol", other, "should be 'all', 'icmp', 'tcp' or 'udp'")),
    }
}

/// An address (a host route) or a CIDR, as Kube-OVN accepts in `remoteAddress`.
fn address(text: &str) -> Option<IpNet> {
    if text.contains('/') {
        text.parse().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Kube-OVN's documented example: SSH from an address range, ICMP from anywhere.
    fn documented() -> Value {
        json!({
            "apiVersion": "kubeovn.io/v1", "kind": "SecurityGroup",
            "metadata": {"name": "sg-example"},
            "spec": {
                "allowSameGroupTraffic": true,
                "egressRules": [{
                    "ipVersion": "ipv4", "policy": "allow", "priority": 1,
                    "protocol": "all", "remoteAddress": "10.16.0.13", "remoteType": "address",
                }],
                "ingressRules": [
                    {"ipVersion": "ipv4", "policy": "drop", "priority": 1, "protocol": "all",
                     "remoteAddress": "10.16.0.13", "remoteType": "address"},
                    {"ipVersion": "ipv4", "policy": "allow", "priority": 2, "protocol": "tcp",
                     "portRangeMin": 22, "portRangeMax": 22,
                     "remoteSecurityGroup": "web", "remoteType": "securityGroup"},
                ],
            },
        })
    }

    #[test]
    fn kube_ovns_example_reads_into_checked_rules_ingress_first() {
        let spec = spec_of(&documented()).expect("the spec parses");
        assert!(spec.allow_same_group_traffic);
        let rules = rules(&spec).expect("the rules are valid");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].direction, Direction::Ingress);
        assert_eq!(rules[0].policy, Policy::Drop);
        assert_eq!(
            rules[0].remote,
            Remote::Net("10.16.0.13/32".parse().expect("a net"))
        );
        assert_eq!(rules[1].protocol, Protocol::Tcp { min: 22, max: 22 });
        assert_eq!(rules[1].remote, Remote::Group("web".to_owned()));
        assert_eq!(rules[2].direction, Direction::Egress);
        assert_eq!(rules[2].protocol, Protocol::All);
    }

    fn refusal(change: impl FnOnce(&mut Value)) -> String {
        let mut object = documented();
        change(&mut object);
        let spec = spec_of(&object).expect("the spec parses");
        rules(&spec).expect_err("refused").to_string()
    }

    #[test]
    fn what_kube_ovn_refuses_is_refused_naming_the_rule_field_and_value() {
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][1]["ipVersion"] = json!("IPv4")),
            "ingressRules[1].ipVersion: \"IPv4\" should be 'ipv4' or 'ipv6'"
        );
        assert_eq!(
            refusal(|o| o["spec"]["egressRules"][0]["priority"] = json!(201)),
            "egressRules[0].priority: \"201\" is not in the range of 1 to 200"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][0]["remoteAddress"] = json!("10.16.0.300")),
            "ingressRules[0].remoteAddress: \"10.16.0.300\" is not an address or a CIDR"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][0]["remoteAddress"] = json!("fd00::/64")),
            "ingressRules[0].remoteAddress: \"fd00::/64\" is not of the rule's ipVersion"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][1]["portRangeMax"] = json!(65536)),
            "ingressRules[1].portRangeMax: \"65536\" is out of the range 1-65535"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][1]["portRangeMin"] = json!(80)),
            "ingressRules[1].portRangeMin: \"80\" is greater than portRangeMax"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][1]["protocol"] = json!("sctp")),
            "ingressRules[1].protocol: \"sctp\" should be 'all', 'icmp', 'tcp' or 'udp'"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][0]["policy"] = json!("reject")),
            "ingressRules[0].policy: \"reject\" should be 'allow', 'drop' or 'pass'"
        );
        assert_eq!(
            refusal(|o| o["spec"]["ingressRules"][1]["remoteType"] = json!("cidr")),
            "ingressRules[1].remoteType: \"cidr\" should be 'address' or 'securityGroup'"
        );
    }

    #[test]
    fn a_spec_that_does_not_parse_is_refused() {
        let err = spec_of(&json!({"spec": {"ingressRules": "all"}})).expect_err("refused");
        assert_eq!(err.rule, "spec");
        assert!(err.to_string().contains("does not parse"), "{err}");
    }
}
