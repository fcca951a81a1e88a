use super::*;

fn lan() -> SubnetConfig {
    subnet("subnet-secondary", "10.100.0.0/16", "ovn", "vpc-secondary")
}

fn gateway() -> GatewayInput {
    GatewayInput {
        name: "vpc-nat-gw".to_owned(),
        vpc: "vpc-secondary".to_owned(),
        subnet: "subnet-secondary".to_owned(),
        lan_ip: "10.100.0.254/16".parse().expect("a CIDR"),
        external_subnet: "ovn-vpc-external-network".to_owned(),
        external_cidr: "172.20.0.0/24".parse().expect("a CIDR"),
        external_gateway: "172.20.0.1".parse().expect("an address"),
        external_ip: "172.20.0.2".parse().expect("an address"),
        chassis: vec!["node1".to_owned(), "node2".to_owned()],
        snat: [(
            "10.100.0.0/16".parse().expect("a CIDR"),
            "172.20.0.10".parse().expect("an address"),
        )]
        .into(),
        fip: [(
            "10.100.0.20".parse().expect("an address"),
            "172.20.0.11".parse().expect("an address"),
        )]
        .into(),
        dnat: [Dnat {
            eip: "172.20.0.10".parse().expect("an address"),
            protocol: "tcp".to_owned(),
            external_port: 8080,
            internal_ip: "10.100.0.21".parse().expect("an address"),
            internal_port: 80,
        }]
        .into(),
        routes: BTreeSet::new(),
        internal_cidrs: ["10.100.0.0/16".parse().expect("a CIDR")].into(),
    }
}

fn with_gateway(g: &GatewayInput, static_routes: Vec<StaticRoute>) -> Topology {
    let vpcs = [("vpc-secondary".to_owned(), VpcInput { static_routes })].into();
    let mut t = build([&lan()], &vpcs, [], &Isolation::default());
    t.add_gateways(std::slice::from_ref(g));
    t
}

fn to_lan_ip() -> StaticRoute {
    StaticRoute {
        ip_prefix: "0.0.0.0/0".to_owned(),
        nexthop: "10.100.0.254".to_owned(),
        policy: "dst-ip".to_owned(),
    }
}

#[test]
fn a_gateway_is_a_gateway_port_on_the_external_switch_bound_to_its_chassis_by_priority() {
    let t = with_gateway(&gateway(), vec![to_lan_ip()]);
    let ext = &t.switches["ovn-vpc-external-network"];
    assert_eq!(ext.other_config["subnet"], "172.20.0.0/24");
    // From outside, the Vpc's own addresses are not reachable: only EIPs lead in.
    assert_eq!(
        ext.acls
            .iter()
            .map(|a| (a.r#match.as_str(), a.action.as_str()))
            .collect::<Vec<_>>(),
        vec![(
            r#"inport == "ln-ovn-vpc-external-network" && ip4.dst == {10.100.0.0/16}"#,
            "drop"
        )]
    );
    let ln = &t.switch_ports["ln-ovn-vpc-external-network"];
    assert_eq!(ln.kind, "localnet");
    assert_eq!(ln.options["network_name"], "ovn-vpc-external-network");
    let lrp = &t.router_ports["vpc-secondary-external"];
    assert_eq!(lrp.router, "vpc-secondary");
    assert_eq!(lrp.networks, ["172.20.0.2/24".to_owned()].into());
    assert_eq!(
        lrp.gateway_chassis,
        [("node1".to_owned(), 100), ("node2".to_owned(), 99)].into()
    );
    let lsp = &t.switch_ports["ovn-vpc-external-network-vpc-secondary"];
    assert_eq!(lsp.kind, "router");
    assert_eq!(lsp.options["router-port"], "vpc-secondary-external");
    // lanIp is the router's second address on the LAN; the route to it leaves by the gateway.
    assert!(
        t.router_ports["vpc-secondary-subnet-secondary"]
            .networks
            .contains("10.100.0.254/16")
    );
    let routes = &t.routers["vpc-secondary"].static_routes;
    assert_eq!(routes.len(), 1);
    assert_eq!(
        routes.first().map(|r| r.nexthop.as_str()),
        Some("172.20.0.1")
    );
}

#[test]
fn snat_and_fip_are_nat_rows_and_dnat_is_a_router_load_balancer() {
    let t = with_gateway(&gateway(), Vec::new());
    let r = &t.routers["vpc-secondary"];
    assert_eq!(
        r.nats,
        [
            Nat {
                kind: "dnat_and_snat".to_owned(),
                external_ip: "172.20.0.11".to_owned(),
                logical_ip: "10.100.0.20".to_owned(),
            },
            Nat {
                kind: "snat".to_owned(),
                external_ip: "172.20.0.10".to_owned(),
                logical_ip: "10.100.0.0/16".to_owned(),
            },
        ]
        .into()
    );
    let lb_name = "vpc-nat-gw-172.20.0.10-tcp";
    assert!(r.load_balancers.contains(lb_name));
    let lb = &t.load_balancers[lb_name];
    assert_eq!(lb.protocol, "tcp");
    assert_eq!(lb.vips["172.20.0.10:8080"], "10.100.0.21:80");
    // Without a route of its own, the Vpc gets a default route out.
    assert_eq!(
        r.static_routes
            .first()
            .map(|r| (r.ip_prefix.as_str(), r.nexthop.as_str())),
        Some(("0.0.0.0/0", "172.20.0.1"))
    );
}

#[test]
fn a_database_holding_the_gateway_needs_no_operation() {
    let t = with_gateway(&gateway(), vec![to_lan_ip()]);
    let p = diff(&t, &observed_from(&t));
    assert!(p.ops.is_empty(), "{:?}", p.ops);
}

#[test]
fn an_empty_database_gets_the_gateway_in_one_transaction() {
    let t = with_gateway(&gateway(), vec![to_lan_ip()]);
    let p = diff(&t, &Observed::default());
    assert!(p.conflicts.is_empty(), "{:?}", p.conflicts);
    let tables: BTreeSet<&str> = p
        .ops
        .iter()
        .filter_map(|op| match op {
            Operation::Insert { table, .. } => Some(table.as_str()),
            _ => None,
        })
        .collect();
    for t in [
        "NAT",
        "Load_Balancer",
        "Gateway_Chassis",
        "Logical_Router_Port",
    ] {
        assert!(tables.contains(t), "{t} inserted: {tables:?}");
    }
    let lr = p
        .ops
        .iter()
        .find_map(|op| match op {
            Operation::Insert { table, row, .. } if table == "Logical_Router" => Some(row.clone()),
            _ => None,
        })
        .expect("the router is inserted");
    assert_eq!(lr["nat"][1].as_array().map(Vec::len), Some(2));
    assert_eq!(lr["load_balancer"][1].as_array().map(Vec::len), Some(1));
}

#[test]
fn a_rule_removed_live_takes_only_its_row_and_a_last_dnat_takes_its_load_balancer() {
    let before = with_gateway(&gateway(), Vec::new());
    let mut g = gateway();
    g.dnat.clear();
    g.fip.clear();
    let after = with_gateway(&g, Vec::new());
    let p = diff(&after, &observed_from(&before));
    let deleted_lb = p.ops.iter().any(|op| {
        matches!(op, Operation::Delete { table, conditions }
            if table == "Load_Balancer" && format!("{conditions:?}").contains("lb-vpc-nat-gw-172.20.0.10-tcp"))
    });
    assert!(deleted_lb, "{:?}", p.ops);
    let text = format!("{:?}", p.ops);
    assert!(
        text.contains("lr-vpc-secondary-nat"),
        "the FIP row is released: {text}"
    );
    assert!(!text.contains("\"snat\""), "the SNAT row stays: {text}");
}

#[test]
fn another_owners_nat_row_on_the_router_is_never_touched() {
    let t = with_gateway(&gateway(), Vec::new());
    let mut o = observed_from(&t);
    o.foreign_routes.insert(
        "lr-vpc-secondary".to_owned(),
        vec!["NAT snat 172.20.0.99 10.100.0.0/16".to_owned()],
    );
    let p = diff(&t, &o);
    assert!(p.ops.is_empty(), "{:?}", p.ops);
}

#[test]
fn a_chassis_whose_priority_changes_is_updated_in_place() {
    let before = with_gateway(&gateway(), Vec::new());
    let mut g = gateway();
    g.chassis.reverse();
    let after = with_gateway(&g, Vec::new());
    let p = diff(&after, &observed_from(&before));
    let updates: Vec<String> = p
        .ops
        .iter()
        .filter_map(|op| match op {
            Operation::Update {
                table,
                conditions,
                row,
            } if table == "Gateway_Chassis" => Some(format!("{conditions:?} {row:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 2, "{:?}", p.ops);
    assert!(
        !p.ops
            .iter()
            .any(|op| matches!(op, Operation::Insert { table, .. } if table == "Gateway_Chassis"))
    );
}

#[test]
fn a_gateways_routes_are_routes_of_the_vpcs_router() {
    let mut g = gateway();
    g.routes.insert((
        "192.168.0.0/16".parse().expect("a CIDR"),
        "172.20.0.254".parse().expect("an address"),
    ));
    let t = with_gateway(&g, vec![to_lan_ip()]);
    assert!(
        t.routers["vpc-secondary"]
            .static_routes
            .contains(&StaticRoute {
                ip_prefix: "192.168.0.0/16".to_owned(),
                nexthop: "172.20.0.254".to_owned(),
                policy: "dst-ip".to_owned(),
            })
    );
}
