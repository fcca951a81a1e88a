use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;
use sidelane_ovsdb::Operation;

use super::{observed::Found, *};

mod isolation;
mod nat;
use crate::subnet::{SubnetConfig, SubnetInput};

fn subnet(name: &str, cidr: &str, provider: &str, vpc: &str) -> SubnetConfig {
    SubnetConfig::from_input(&SubnetInput {
        name: name.to_owned(),
        cidr_block: cidr.to_owned(),
        provider: provider.to_owned(),
        vpc: vpc.to_owned(),
        exclude_ips: vec!["172.17.0.0..172.17.0.10".to_owned()],
        ..SubnetInput::default()
    })
    .expect("a valid subnet")
}

fn attachnet() -> SubnetConfig {
    subnet("attachnet", "172.17.0.0/16", "attachnet.default.ovn", "")
}

fn port(name: &str, subnet: &str, ip: &str) -> PortInput {
    PortInput {
        name: name.to_owned(),
        subnet: subnet.to_owned(),
        mac: [0x0a, 0, 0, 0, 0, 7],
        ips: vec![ip.parse().expect("an address")],
        pod: "default/samplepod".to_owned(),
        provider: "attachnet.default.ovn".to_owned(),
        port_security: false,
        security_groups: Vec::new(),
    }
}

/// What the database would hold once `t` is in place (every row owned).
fn observed_from(t: &Topology) -> Observed {
    let mut o = Observed::default();
    for (name, r) in &t.routers {
        let uuid = format!("lr-{name}");
        o.routes.insert(
            uuid.clone(),
            r.static_routes
                .iter()
                .enumerate()
                .map(|(i, s)| Found {
                    uuid: format!("{uuid}-route{i}"),
                    owned: true,
                    value: s.clone(),
                })
                .collect(),
        );
        observe_nat(&mut o, &uuid, r);
        o.routers.entry(name.clone()).or_default().push(Found {
            uuid,
            owned: true,
            value: r.clone(),
        });
    }
    for (name, s) in &t.switches {
        o.switches.entry(name.clone()).or_default().push(Found {
            uuid: format!("ls-{name}"),
            owned: true,
            value: s.clone(),
        });
    }
    for (name, p) in &t.router_ports {
        let mut v = p.clone();
        v.router = format!("lr-{}", p.router);
        if !p.gateway_chassis.is_empty() {
            o.gateway_chassis.insert(
                format!("lrp-{name}"),
                p.gateway_chassis
                    .keys()
                    .map(|c| (format!("{name}-{c}"), format!("gc-{name}-{c}")))
                    .collect(),
            );
        }
        o.router_ports.insert(
            name.clone(),
            Found {
                uuid: format!("lrp-{name}"),
                owned: true,
                value: v,
            },
        );
    }
    for (name, p) in &t.switch_ports {
        let mut v = p.clone();
        v.switch = format!("ls-{}", p.switch);
        o.switch_ports.insert(
            name.clone(),
            Found {
                uuid: format!("lsp-{name}"),
                owned: true,
                value: v,
            },
        );
    }
    let acls = |parent: &str, acls: &BTreeSet<Acl>| -> Vec<Found<Acl>> {
        acls.iter()
            .enumerate()
            .map(|(i, a)| Found {
                uuid: format!("{parent}-acl{i}"),
                owned: true,
                value: a.clone(),
            })
            .collect()
    };
    for (name, s) in &t.switches {
        let uuid = format!("ls-{name}");
        o.acls.insert(uuid.clone(), acls(&uuid, &s.acls));
    }
    for (name, g) in &t.port_groups {
        let uuid = format!("pg-{name}");
        o.acls.insert(uuid.clone(), acls(&uuid, &g.acls));
        o.port_groups.entry(name.clone()).or_default().push(Found {
            uuid,
            owned: true,
            value: g.clone(),
        });
    }
    for (name, a) in &t.address_sets {
        o.address_sets.entry(name.clone()).or_default().push(Found {
            uuid: format!("as-{name}"),
            owned: true,
            value: a.clone(),
        });
    }
    observe_load_balancers(&mut o, t);
    o
}

/// A router's NAT rows and load balancers, as the database would hold them.
fn observe_nat(o: &mut Observed, uuid: &str, r: &Router) {
    o.nats.insert(
        uuid.to_owned(),
        r.nats
            .iter()
            .enumerate()
            .map(|(i, n)| Found {
                uuid: format!("{uuid}-nat{i}"),
                owned: true,
                value: n.clone(),
            })
            .collect(),
    );
    if !r.load_balancers.is_empty() {
        o.router_lbs.insert(
            uuid.to_owned(),
            r.load_balancers.iter().map(|n| format!("lb-{n}")).collect(),
        );
    }
}

/// The load balancers of `t`, as the database would hold them.
fn observe_load_balancers(o: &mut Observed, t: &Topology) {
    for (name, lb) in &t.load_balancers {
        o.load_balancers
            .entry(name.clone())
            .or_default()
            .push(Found {
                uuid: format!("lb-{name}"),
                owned: true,
                value: lb.clone(),
            });
    }
}

#[test]
fn the_seeds_attachnet_subnet_becomes_a_switch_on_the_default_router_with_kube_ovns_names() {
    let t = build(
        [&attachnet()],
        &BTreeMap::new(),
        [port(
            "samplepod.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.11",
        )],
        &Isolation::default(),
    );
    let ls = &t.switches["attachnet"];
    assert_eq!(ls.other_config["subnet"], "172.17.0.0/16");
    assert_eq!(ls.other_config["exclude_ips"], "172.17.0.0..172.17.0.10");
    assert_eq!(ls.external_ids[OWNER_KEY], OWNER);
    assert!(t.routers.contains_key(DEFAULT_VPC));
    let lrp = &t.router_ports["ovn-cluster-attachnet"];
    assert_eq!(lrp.router, "ovn-cluster");
    assert_eq!(lrp.networks.iter().collect::<Vec<_>>(), ["172.17.0.1/16"]);
    assert_eq!(lrp.mac, router_port_mac("ovn-cluster-attachnet"));
    let peer = &t.switch_ports["attachnet-ovn-cluster"];
    assert_eq!(peer.kind, "router");
    assert_eq!(peer.options["router-port"], "ovn-cluster-attachnet");
    let lsp = &t.switch_ports["samplepod.default.attachnet.default.ovn"];
    assert_eq!(
        lsp.addresses.iter().collect::<Vec<_>>(),
        ["0a:00:00:00:00:07 172.17.0.11"]
    );
    assert!(
        lsp.port_security.is_empty(),
        "as Kube-OVN: no port security unless the pod asks (link-local IPv6, ND pass)"
    );
    assert_eq!(lsp.external_ids["pod"], "default/samplepod");
}

#[test]
fn a_pod_that_asks_for_port_security_gets_it_on_its_port() {
    let secured = PortInput {
        port_security: true,
        ..port(
            "secured.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.12",
        )
    };
    let t = build(
        [&attachnet()],
        &BTreeMap::new(),
        [secured],
        &Isolation::default(),
    );
    let lsp = &t.switch_ports["secured.default.attachnet.default.ovn"];
    assert_eq!(
        lsp.port_security.iter().collect::<Vec<_>>(),
        ["0a:00:00:00:00:07 172.17.0.12"]
    );
}

#[test]
fn ipam_only_subnets_and_their_attachments_get_no_ovn_rows() {
    let macvlan = subnet("macvlan", "172.18.0.0/16", "macvlan.default", "");
    let t = build(
        [&macvlan],
        &BTreeMap::new(),
        [port("p.default.macvlan.default", "macvlan", "172.18.0.11")],
        &Isolation::default(),
    );
    assert_eq!(t, Topology::default());
}

#[test]
fn a_vpc_with_two_subnets_is_one_router_with_two_ports_and_its_static_routes() {
    let a = subnet("net1", "10.0.1.0/24", "ovn", "vpc1");
    let b = subnet("net2", "10.0.2.0/24", "ovn", "vpc1");
    let vpcs = BTreeMap::from([(
        "vpc1".to_owned(),
        VpcInput {
            static_routes: vec![StaticRoute {
                ip_prefix: "0.0.0.0/0".into(),
                nexthop: "10.0.1.254".into(),
                policy: route_policy("policyDst").into(),
            }],
        },
    )]);
    let t = build([&a, &b], &vpcs, [], &Isolation::default());
    assert_eq!(t.routers.keys().collect::<Vec<_>>(), ["vpc1"]);
    assert_eq!(
        t.router_ports.keys().collect::<Vec<_>>(),
        ["vpc1-net1", "vpc1-net2"]
    );
    assert_eq!(t.routers["vpc1"].static_routes.len(), 1);
    assert_ne!(
        t.router_ports["vpc1-net1"].mac,
        t.router_ports["vpc1-net2"].mac
    );
}

#[test]
fn an_empty_database_gets_every_row_in_one_transaction_children_before_parents() {
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
    let p = diff(&t, &Observed::default());
    assert!(p.conflicts.is_empty());
    // Router, router port, switch, router-type switch port, attachment port.
    assert_eq!(p.inserted, 5);
    let first_parent = p
        .ops
        .iter()
        .position(|op| matches!(op, Operation::Wait { .. }))
        .expect("a wait before each parent insert");
    assert!(p.ops[..first_parent].iter().all(|op| matches!(
        op,
        Operation::Insert {
            uuid_name: Some(_),
            ..
        }
    )));
    let ls = p
        .ops
        .iter()
        .find_map(|op| match op {
            Operation::Insert { table, row, .. } if table == "Logical_Switch" => Some(row.clone()),
            _ => None,
        })
        .expect("the switch is inserted");
    assert_eq!(ls["name"], json!("attachnet"));
    assert_eq!(ls["ports"][1].as_array().map(Vec::len), Some(2));
}

#[test]
fn a_database_that_matches_needs_no_operation() {
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
    let p = diff(&t, &observed_from(&t));
    assert!(p.ops.is_empty(), "{:?}", p.ops);
}

#[test]
fn a_stale_owned_port_is_released_and_a_changed_one_updated() {
    let before = build(
        [&attachnet()],
        &BTreeMap::new(),
        [
            port(
                "gone.default.attachnet.default.ovn",
                "attachnet",
                "172.17.0.11",
            ),
            port(
                "moved.default.attachnet.default.ovn",
                "attachnet",
                "172.17.0.12",
            ),
        ],
        &Isolation::default(),
    );
    let after = build(
        [&attachnet()],
        &BTreeMap::new(),
        [port(
            "moved.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.13",
        )],
        &Isolation::default(),
    );
    let p = diff(&after, &observed_from(&before));
    assert_eq!((p.inserted, p.updated, p.deleted), (0, 1, 1), "{:?}", p.ops);
    assert!(p.ops.iter().any(|op| matches!(op, Operation::Mutate { mutations, .. }
        if mutations[0].mutator == "delete" && mutations[0].value == json!(["set", [["uuid", "lsp-gone.default.attachnet.default.ovn"]]]))));
}

#[test]
fn rows_without_the_marker_are_never_touched_and_a_name_clash_is_reported() {
    let t = build([&attachnet()], &BTreeMap::new(), [], &Isolation::default());
    let mut o = observed_from(&t);
    // Someone else's switch of the same name, and their own port elsewhere.
    o.switches.get_mut("attachnet").expect("switch")[0].owned = false;
    o.switch_ports.insert(
        "theirs".into(),
        Found {
            uuid: "x".into(),
            owned: false,
            value: SwitchPort {
                switch: "ls-other".into(),
                ..SwitchPort::default()
            },
        },
    );
    let p = diff(&t, &o);
    assert_eq!(p.conflicts.len(), 1, "{:?}", p.conflicts);
    assert!(p.conflicts[0].contains("Logical_Switch attachnet"));
    assert!(
        p.ops
            .iter()
            .all(|op| !matches!(op, Operation::Delete { .. })),
        "{:?}",
        p.ops
    );
    assert!(!format!("{:?}", p.ops).contains("\"x\""));
}

#[test]
fn owned_duplicates_of_a_switch_are_deleted_keeping_one() {
    let t = build([&attachnet()], &BTreeMap::new(), [], &Isolation::default());
    let mut o = observed_from(&t);
    let dup = Found {
        uuid: "ls-dup".into(),
        owned: true,
        value: t.switches["attachnet"].clone(),
    };
    o.switches.get_mut("attachnet").expect("switch").push(dup);
    let p = diff(&t, &o);
    assert_eq!(p.deleted, 1);
    assert!(matches!(&p.ops[..], [Operation::Delete { table, .. }] if table == "Logical_Switch"));
}

/// `o` with a port of another owner on switch `switch`.
fn with_foreign_port(mut o: Observed, switch: &str) -> Observed {
    o.switch_ports.insert(
        "theirs".into(),
        Found {
            uuid: "x".into(),
            owned: false,
            value: SwitchPort {
                switch: format!("ls-{switch}"),
                ..SwitchPort::default()
            },
        },
    );
    o
}

#[test]
fn a_switch_nothing_wants_that_holds_another_owners_port_is_left_in_place_and_reported() {
    let was = build(
        [&attachnet()],
        &BTreeMap::new(),
        [port(
            "p.default.attachnet.default.ovn",
            "attachnet",
            "172.17.0.11",
        )],
        &Isolation::default(),
    );
    let o = with_foreign_port(observed_from(&was), "attachnet");
    // The Subnet is deleted: nothing wants the switch, its router or its ports.
    let p = diff(&Topology::default(), &o);
    let ops = format!("{:?}", p.ops);
    assert!(
        !p.ops
            .iter()
            .any(|op| matches!(op, Operation::Delete { table, .. } if table == "Logical_Switch")),
        "the switch stays: {ops}"
    );
    assert!(!ops.contains("\"x\""), "their port is not touched: {ops}");
    assert!(
        ops.contains("lsp-p.default.attachnet.default.ovn"),
        "our own port on it goes: {ops}"
    );
    assert_eq!(
        p.kept,
        [
            "Logical_Switch attachnet is left in place: it holds Logical_Switch_Port theirs of another owner"
        ]
    );
    // Once their port is gone, the switch goes too.
    let p = diff(&Topology::default(), &observed_from(&was));
    assert!(p.kept.is_empty());
    assert!(
        p.ops
            .iter()
            .any(|op| matches!(op, Operation::Delete { table, .. } if table == "Logical_Switch"))
    );
}

#[test]
fn a_router_nothing_wants_that_holds_another_owners_port_or_route_is_left_in_place() {
    let was = build([&attachnet()], &BTreeMap::new(), [], &Isolation::default());
    let mut o = observed_from(&was);
    o.router_ports.insert(
        "their-lrp".into(),
        Found {
            uuid: "y".into(),
            owned: false,
            value: RouterPort {
                router: format!("lr-{DEFAULT_VPC}"),
                ..RouterPort::default()
            },
        },
    );
    o.foreign_routes.insert(
        format!("lr-{DEFAULT_VPC}"),
        vec!["Logical_Router_Static_Route 0.0.0.0/0 via 10.0.0.1".to_owned()],
    );
    let p = diff(&Topology::default(), &o);
    assert!(
        !p.ops
            .iter()
            .any(|op| matches!(op, Operation::Delete { table, .. } if table == "Logical_Router")),
        "{:?}",
        p.ops
    );
    assert_eq!(
        p.kept,
        [format!(
            "Logical_Router {DEFAULT_VPC} is left in place: it holds Logical_Router_Port their-lrp, \
             Logical_Router_Static_Route 0.0.0.0/0 via 10.0.0.1 of another owner"
        )]
    );
}
