//! Isolation in the topology, rendered as Kube-OVN renders it, with its names and priorities:
//!
//! - every port in any security group is in the `Port_Group` `ovn.sg.kubeovn_deny_all`, whose
//!   ACLs drop all IP traffic to and from it at priority 2003 (a port naming a group that does
//!   not exist is there too: it fails closed);
//! - each group is a `Port_Group` `ovn.sg.<name>` (dashes as dots) of its members with: ARP,
//!   neighbour discovery and DHCP allowed at 2005; with `allowSameGroupTraffic`, traffic among
//!   members allowed at 2004 (by the group's address sets); each rule at `2300 - priority`;
//! - each group's members' addresses are the `Address_Sets` `ovn.sg.<name>.associated.v4` and
//!   `.v6`, which rules with a `securityGroup` remote match (made, empty, for a remote group that
//!   does not exist, so such a rule matches nothing rather than failing to parse);
//! - a private Subnet's switch drops all IP traffic into its ports at 1000 except from its own
//!   CIDR and its `allowSubnets` (1001); a Subnet's `acls` go on its switch as written.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use sidelane_api::{
    acl::SubnetAcl,
    security_group::{
        self as sg, DENY_ALL_PORT_GROUP, Direction, IpVersion, Policy, Protocol, Remote, Rule,
    },
};

use super::{Acl, AddressSet, PortGroup, PortInput, Topology, owned_ids};
use crate::subnet::SubnetConfig;

/// What isolates which ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Security groups by name (each as last accepted).
    pub groups: BTreeMap<String, GroupInput>,
    /// Subnets' isolation by name.
    pub subnets: BTreeMap<String, SubnetIsolation>,
}

/// A security group's checked spec.
pub use sg::Group as GroupInput;

/// A Subnet's isolation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetIsolation {
    /// `private`.
    pub private: bool,
    /// `allowSubnets`.
    pub allow_subnets: Vec<IpNet>,
    /// `acls`, checked.
    pub acls: Vec<SubnetAcl>,
}

/// Kube-OVN's priorities.
const BASE: u16 = 2005;
const SAME_GROUP: u16 = 2004;
const DENY: u16 = 2003;
const RULE_TOP: u16 = 2300;
const SUBNET_ALLOW: u16 = 1001;
const SUBNET_DROP: u16 = 1000;

const TO: &str = "to-lport";
const FROM: &str = "from-lport";

fn acl(direction: &str, priority: u16, m: String, action: &str) -> Acl {
    Acl {
        direction: direction.to_owned(),
        priority,
        r#match: m,
        action: action.to_owned(),
    }
}

fn family(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "ip4",
        IpVersion::V6 => "ip6",
    }
}

/// A net as OVN reads it: the address alone for a host, else the network with its prefix.
fn net_text(net: &IpNet) -> String {
    if net.prefix_len() == net.max_prefix_len() {
        net.addr().to_string()
    } else {
        net.trunc().to_string()
    }
}

/// The match of one rule on the group's port group `pg`, as Kube-OVN writes it.
pub fn rule_match(pg: &str, rule: &Rule) -> String {
    let (port, side) = match rule.direction {
        Direction::Ingress => ("outport", "src"),
        Direction::Egress => ("inport", "dst"),
    };
    let ip = family(rule.ip_version);
    let remote = match &rule.remote {
        Remote::Net(net) => net_text(net),
        Remote::Group(g) => format!("${}", sg::address_set(g, rule.ip_version)),
    };
    let mut m = format!("{port} == @{pg} && {ip} && {ip}.{side} == {remote}");
    match rule.protocol {
        Protocol::All => {}
        Protocol::Icmp => m.push_str(match rule.ip_version {
            IpVersion::V4 => " && icmp4",
            IpVersion::V6 => " && icmp6",
        }),
        Protocol::Tcp { min, max } | Protocol::Udp { min, max } => {
            let l4 = if matches!(rule.protocol, Protocol::Tcp { .. }) {
                "tcp"
            } else {
                "udp"
            };
            let range = if min == max {
                format!(" && {l4}.dst == {min}")
            } else {
                format!(" && {min} <= {l4}.dst <= {max}")
            };
            m.push_str(&range);
        }
    }
    m
}

/// A group's ACLs on its port group `pg`.
fn group_acls(name: &str, pg: &str, g: &GroupInput) -> BTreeSet<Acl> {
    let mut acls = BTreeSet::new();
    for (direction, port, dhcp4, dhcp6) in [
        (TO, "outport", ("67", "68"), ("547", "546")),
        (FROM, "inport", ("68", "67"), ("546", "547")),
    ] {
        let base = [
            format!("{port} == @{pg} && arp"),
            format!(
                "{port} == @{pg} && icmp6.type == {{130, 134, 135, 136}} && icmp6.code == 0 && ip.ttl == 255"
            ),
            format!(
                "{port} == @{pg} && udp.src == {} && udp.dst == {} && ip4",
                dhcp4.0, dhcp4.1
            ),
            format!(
                "{port} == @{pg} && udp.src == {} && udp.dst == {} && ip6",
                dhcp6.0, dhcp6.1
            ),
        ];
        for m in base {
            acls.insert(acl(direction, BASE, m, "allow-related"));
        }
        if g.allow_same_group_traffic {
            let side = if direction == TO { "src" } else { "dst" };
            for v in [IpVersion::V4, IpVersion::V6] {
                let ip = family(v);
                let set = sg::address_set(name, v);
                acls.insert(acl(
                    direction,
                    SAME_GROUP,
                    format!("{port} == @{pg} && {ip} && {ip}.{side} == ${set}"),
                    "allow-related",
                ));
            }
        }
    }
    for rule in &g.rules {
        let direction = match rule.direction {
            Direction::Ingress => TO,
            Direction::Egress => FROM,
        };
        let action = match rule.policy {
            Policy::Allow => "allow-related",
            Policy::Drop => "drop",
            Policy::Pass => "pass",
        };
        acls.insert(acl(
            direction,
            RULE_TOP - u16::from(rule.priority),
            rule_match(pg, rule),
            action,
        ));
    }
    acls
}

/// The ACLs of a private Subnet's switch.
fn private_acls(s: &SubnetConfig, allow: &[IpNet]) -> Vec<Acl> {
    let mut out = vec![acl(TO, SUBNET_DROP, "ip".to_owned(), "drop")];
    for cidr in &s.cidrs {
        let ip = if cidr.addr().is_ipv4() { "ip4" } else { "ip6" };
        let c = net_text(&cidr.trunc());
        out.push(acl(
            TO,
            SUBNET_ALLOW,
            format!("{ip}.src == {c} && {ip}.dst == {c}"),
            "allow-related",
        ));
        for a in allow
            .iter()
            .filter(|a| a.addr().is_ipv4() == cidr.addr().is_ipv4())
        {
            let a = net_text(a);
            out.push(acl(
                TO,
                SUBNET_ALLOW,
                format!(
                    "({ip}.src == {c} && {ip}.dst == {a}) || ({ip}.src == {a} && {ip}.dst == {c})"
                ),
                "allow-related",
            ));
        }
    }
    out
}

impl Topology {
    /// A Subnet's private ACLs and its own, on its switch.
    pub(super) fn isolate_subnet(&mut self, s: &SubnetConfig, i: &SubnetIsolation) {
        let Some(switch) = self.switches.get_mut(&s.name) else {
            return;
        };
        if i.private {
            switch.acls.extend(private_acls(s, &i.allow_subnets));
        }
        switch.acls.extend(i.acls.iter().map(|a| Acl {
            direction: a.direction.clone(),
            priority: a.priority,
            r#match: a.r#match.clone(),
            action: a.action.clone(),
        }));
    }

    /// The security groups' port groups and address sets, and the deny-all port group.
    pub(super) fn add_security_groups(
        &mut self,
        groups: &BTreeMap<String, GroupInput>,
        members: &[PortInput],
    ) {
        if groups.is_empty() && members.is_empty() {
            return;
        }
        let mut deny = PortGroup {
            external_ids: owned_ids([("type", "security_group"), ("sg", "kubeovn_deny_all")]),
            ..PortGroup::default()
        };
        deny.acls.insert(acl(
            TO,
            DENY,
            format!("outport == @{DENY_ALL_PORT_GROUP} && ip"),
            "drop",
        ));
        deny.acls.insert(acl(
            FROM,
            DENY,
            format!("inport == @{DENY_ALL_PORT_GROUP} && ip"),
            "drop",
        ));
        deny.ports = members.iter().map(|p| p.name.clone()).collect();
        self.port_groups
            .insert(DENY_ALL_PORT_GROUP.to_owned(), deny);
        // Remote groups that do not exist get empty sets: their rules match nothing.
        let remotes = groups
            .values()
            .flat_map(|g| &g.rules)
            .filter_map(|r| match &r.remote {
                Remote::Group(g) => Some(g.as_str()),
                Remote::Net(_) => None,
            });
        for name in groups.keys().map(String::as_str).chain(remotes) {
            for v in [IpVersion::V4, IpVersion::V6] {
                let addresses = members
                    .iter()
                    .filter(|p| p.security_groups.iter().any(|g| g == name))
                    .flat_map(|p| &p.ips)
                    .filter(|ip| ip.is_ipv4() == (v == IpVersion::V4))
                    .map(ToString::to_string)
                    .collect();
                self.address_sets.insert(
                    sg::address_set(name, v),
                    AddressSet {
                        addresses,
                        external_ids: owned_ids([("sg", name)]),
                    },
                );
            }
        }
        for (name, g) in groups {
            let pg = sg::port_group(name);
            let acls = group_acls(name, &pg, g);
            self.port_groups.insert(
                pg,
                PortGroup {
                    ports: members
                        .iter()
                        .filter(|p| p.security_groups.contains(name))
                        .map(|p| p.name.clone())
                        .collect(),
                    acls,
                    external_ids: owned_ids([("type", "security_group"), ("sg", name)]),
                },
            );
        }
    }
}
