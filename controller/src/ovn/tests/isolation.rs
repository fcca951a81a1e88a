//! Security groups, private Subnets and Subnet ACLs, rendered and diffed.

use std::collections::BTreeMap;

use serde_json::json;
use sidelane_api::{acl::SubnetAcl, security_group as sg};
use sidelane_ovsdb::Operation;

use super::{attachnet, observed_from, port};
use crate::ovn::{
    GroupInput, Isolation, Observed, PortInput, SubnetIsolation, Topology, build, diff,
};

fn group(spec: &serde_json::Value) -> GroupInput {
    let spec = sg::spec_of(&json!({ "spec": spec })).expect("a spec");
    GroupInput {
        allow_same_group_traffic: spec.allow_same_group_traffic,
        rules: sg::rules(&spec).expect("valid rules"),
    }
}

fn member(name: &str, ip: &str, groups: &[&str]) -> PortInput {
    PortInput {
        security_groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..port(name, "attachnet", ip)
    }
}

/// Kube-OVN's documented group: drop from one address, SSH from group `web`, ICMP out.
fn example() -> Isolation {
    let mut i = Isolation::default();
    i.groups.insert(
        "sg-example".to_owned(),
        group(&json!({
            "allowSameGroupTraffic": true,
            "ingressRules": [
                {"ipVersion": "ipv4", "policy": "drop", "priority": 1, "protocol": "all",
                 "remoteType": "address", "remoteAddress": "172.17.0.99"},
                {"ipVersion": "ipv4", "policy": "allow", "priority": 2, "protocol": "tcp",
                 "portRangeMin": 20, "portRangeMax": 22,
                 "remoteType": "securityGroup", "remoteSecurityGroup": "web"},
            ],
            "egressRules": [
                {"ipVersion": "ipv4", "policy": "allow", "priority": 5, "protocol": "icmp",
                 "remoteType": "address", "remoteAddress": "10.0.0.7/8"},
            ],
        })),
    );
    i
}

fn topology(isolation: &Isolation) -> Topology {
    topology_with(isolation, &[])
}

/// Members a (`sg-example`), b (`sg-example`, `web`), c (`ghost`, which does not exist) and
/// `open` in `open_groups`.
fn topology_with(isolation: &Isolation, open_groups: &[&str]) -> Topology {
    build(
        [&attachnet()],
        &BTreeMap::new(),
        [
            member(
                "a.default.attachnet.default.ovn",
                "172.17.0.11",
                &["sg-example"],
            ),
            member(
                "b.default.attachnet.default.ovn",
                "172.17.0.12",
                &["sg-example", "web"],
            ),
            member("c.default.attachnet.default.ovn", "172.17.0.13", &["ghost"]),
            member(
                "open.default.attachnet.default.ovn",
                "172.17.0.14",
                open_groups,
            ),
        ],
        isolation,
    )
}

fn matches(t: &Topology, pg: &str) -> Vec<(String, u16, String, String)> {
    t.port_groups[pg]
        .acls
        .iter()
        .map(|a| {
            (
                a.direction.clone(),
                a.priority,
                a.r#match.clone(),
                a.action.clone(),
            )
        })
        .collect()
}

#[test]
fn a_security_group_is_a_port_group_with_kube_ovns_acls_and_address_sets_of_its_members() {
    let t = topology(&example());
    let pg = &t.port_groups["ovn.sg.sg.example"];
    assert_eq!(
        pg.ports.iter().collect::<Vec<_>>(),
        [
            "a.default.attachnet.default.ovn",
            "b.default.attachnet.default.ovn"
        ]
    );
    let acls = matches(&t, "ovn.sg.sg.example");
    let has = |direction: &str, priority: u16, m: &str, action: &str| {
        assert!(
            acls.contains(&(direction.into(), priority, m.into(), action.into())),
            "{direction} {priority} {m} {action} in {acls:#?}"
        );
    };
    has(
        "to-lport",
        2299,
        "outport == @ovn.sg.sg.example && ip4 && ip4.src == 172.17.0.99",
        "drop",
    );
    has(
        "to-lport",
        2298,
        "outport == @ovn.sg.sg.example && ip4 && ip4.src == $ovn.sg.web.associated.v4 && 20 <= tcp.dst <= 22",
        "allow-related",
    );
    has(
        "from-lport",
        2295,
        "inport == @ovn.sg.sg.example && ip4 && ip4.dst == 10.0.0.0/8 && icmp4",
        "allow-related",
    );
    has(
        "to-lport",
        2004,
        "outport == @ovn.sg.sg.example && ip4 && ip4.src == $ovn.sg.sg.example.associated.v4",
        "allow-related",
    );
    has(
        "from-lport",
        2005,
        "inport == @ovn.sg.sg.example && arp",
        "allow-related",
    );
    assert_eq!(
        t.address_sets["ovn.sg.sg.example.associated.v4"]
            .addresses
            .iter()
            .collect::<Vec<_>>(),
        ["172.17.0.11", "172.17.0.12"]
    );
    // The remote group `web` has no object: its set exists, empty, so the rule parses and
    // matches nothing; it has no port group.
    assert!(
        t.address_sets["ovn.sg.web.associated.v4"]
            .addresses
            .iter()
            .eq(["172.17.0.12"].iter())
    );
    assert!(!t.port_groups.contains_key("ovn.sg.web"));
}

#[test]
fn every_port_in_any_group_is_denied_by_default_and_one_in_none_is_not() {
    let t = topology(&example());
    let deny = &t.port_groups[sg::DENY_ALL_PORT_GROUP];
    assert_eq!(
        deny.ports.iter().collect::<Vec<_>>(),
        [
            "a.default.attachnet.default.ovn",
            "b.default.attachnet.default.ovn",
            "c.default.attachnet.default.ovn",
        ]
    );
    assert_eq!(
        matches(&t, sg::DENY_ALL_PORT_GROUP),
        [
            (
                "from-lport".to_owned(),
                2003,
                "inport == @ovn.sg.kubeovn_deny_all && ip".to_owned(),
                "drop".to_owned()
            ),
            (
                "to-lport".to_owned(),
                2003,
                "outport == @ovn.sg.kubeovn_deny_all && ip".to_owned(),
                "drop".to_owned()
            ),
        ]
    );
}

#[test]
fn without_any_group_nothing_of_isolation_is_written() {
    let t = build(
        [&attachnet()],
        &BTreeMap::new(),
        [port(
            "p.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.11",
        )],
        &Isolation::default(),
    );
    assert!(t.port_groups.is_empty());
    assert!(t.address_sets.is_empty());
    assert!(t.switches["attachnet"].acls.is_empty());
}

#[test]
fn a_private_subnet_drops_what_is_not_from_itself_or_its_allowed_subnets_and_keeps_its_acls() {
    let mut i = Isolation::default();
    i.subnets.insert(
        "attachnet".to_owned(),
        SubnetIsolation {
            private: true,
            allow_subnets: vec!["10.16.0.0/16".parse().expect("a CIDR")],
            acls: vec![SubnetAcl {
                direction: "to-lport".to_owned(),
                priority: 1002,
                r#match: "ip4.src == 172.17.0.2".to_owned(),
                action: "drop".to_owned(),
            }],
        },
    );
    let t = topology(&i);
    let acls: Vec<(u16, &str, &str)> = t.switches["attachnet"]
        .acls
        .iter()
        .map(|a| (a.priority, a.r#match.as_str(), a.action.as_str()))
        .collect();
    assert_eq!(
        acls,
        [
            (1000, "ip", "drop"),
            (
                1001,
                "(ip4.src == 172.17.0.0/16 && ip4.dst == 10.16.0.0/16) || (ip4.src == 10.16.0.0/16 && ip4.dst == 172.17.0.0/16)",
                "allow-related"
            ),
            (
                1001,
                "ip4.src == 172.17.0.0/16 && ip4.dst == 172.17.0.0/16",
                "allow-related"
            ),
            (1002, "ip4.src == 172.17.0.2", "drop"),
        ]
    );
    for a in &t.switches["attachnet"].acls {
        assert_eq!(a.direction, "to-lport");
        assert_eq!(
            sidelane_api::acl::check_match(&a.r#match),
            Ok(()),
            "{}",
            a.r#match
        );
    }
}

#[test]
fn every_rendered_match_parses_as_ovn_reads_it() {
    let t = topology(&example());
    for g in t.port_groups.values() {
        for a in &g.acls {
            assert_eq!(
                sidelane_api::acl::check_match(&a.r#match),
                Ok(()),
                "{}",
                a.r#match
            );
        }
    }
}

#[test]
fn isolation_is_written_in_the_same_transaction_as_the_ports_it_names() {
    let t = topology(&example());
    let p = diff(&t, &Observed::default());
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    let deny = p
        .ops
        .iter()
        .find_map(|op| match op {
            Operation::Insert { table, row, .. }
                if table == "Port_Group" && row["name"] == json!(sg::DENY_ALL_PORT_GROUP) =>
            {
                Some(row.clone())
            }
            _ => None,
        })
        .expect("the deny-all port group is inserted");
    // Three new ports by their names in this transaction, two ACLs.
    assert_eq!(deny["ports"][1].as_array().map(Vec::len), Some(3));
    assert_eq!(deny["acls"][1].as_array().map(Vec::len), Some(2));
    let sets = p
        .ops
        .iter()
        .filter(|op| matches!(op, Operation::Insert { table, .. } if table == "Address_Set"))
        .count();
    // sg-example, web (a remote), v4 and v6 each.
    assert_eq!(sets, 4);
}

#[test]
fn a_database_that_holds_the_isolation_needs_no_operation() {
    let t = topology(&example());
    let p = diff(&t, &observed_from(&t));
    assert!(p.ops.is_empty(), "{:#?}", p.ops);
}

#[test]
fn a_changed_rule_replaces_only_its_acl_and_a_new_member_updates_the_group_and_its_set() {
    let before = topology(&example());
    let mut i = example();
    i.groups.get_mut("sg-example").expect("a group").rules[1].protocol =
        sg::Protocol::Tcp { min: 22, max: 22 };
    let after = topology_with(&i, &["sg-example"]);
    let p = diff(&after, &observed_from(&before));
    assert!(p.conflicts.is_empty());
    // One ACL in, one out; the group's ports, the deny-all's ports and the v4 set updated.
    assert_eq!(
        (p.inserted, p.deleted, p.updated),
        (1, 1, 3),
        "{:#?}",
        p.ops
    );
}

#[test]
fn a_port_group_of_another_owner_is_never_touched_and_reported() {
    let t = topology(&example());
    let mut o = observed_from(&t);
    o.port_groups
        .get_mut("ovn.sg.sg.example")
        .expect("the group")[0]
        .owned = false;
    let mut changed = t.clone();
    changed
        .port_groups
        .get_mut("ovn.sg.sg.example")
        .expect("the group")
        .ports
        .clear();
    let p = diff(&changed, &o);
    assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
    assert!(p.conflicts[0].contains("ovn.sg.sg.example"));
    assert!(p.ops.iter().all(|op| !matches!(
        op,
        Operation::Update { table, .. } | Operation::Delete { table, .. } if table == "Port_Group"
    )));
}

#[test]
fn a_group_nothing_wants_any_more_is_deleted_with_its_sets() {
    let t = topology(&example());
    let none = build(
        [&attachnet()],
        &BTreeMap::new(),
        [port(
            "a.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.11",
        )],
        &Isolation::default(),
    );
    let p = diff(&none, &observed_from(&t));
    let deleted: Vec<&str> = p
        .ops
        .iter()
        .filter_map(|op| match op {
            Operation::Delete { table, .. } => Some(table.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(deleted.iter().filter(|t| **t == "Port_Group").count(), 2);
    assert_eq!(deleted.iter().filter(|t| **t == "Address_Set").count(), 4);
}
