use std::collections::{BTreeMap, BTreeSet};

use sidelane_api::crd::{
    IptablesDnatRuleSpec, IptablesEipSpec, IptablesFipRuleSpec, IptablesSnatRuleSpec,
    VpcNatGatewaySpec,
};

use sidelane_api::annotations::EXTERNAL_NETWORK_LABEL;

use super::*;
use crate::subnet::{SubnetConfig, SubnetInput};

/// Addresses as a map: holder → (subnet, address); the next free one counts up from .10.
#[derive(Default)]
struct FakeAddresses {
    held: BTreeMap<String, (String, IpAddr)>,
    next: u8,
}

impl Addresses for FakeAddresses {
    fn hold(&mut self, holder: &str, subnet: &str, ip: Option<IpAddr>) -> Result<IpAddr, String> {
        if let Some((s, have)) = self.held.get(holder)
            && s == subnet
            && ip.is_none_or(|w| w == *have)
        {
            return Ok(*have);
        }
        let ip = ip.unwrap_or_else(|| {
            self.next += 1;
            IpAddr::from([172, 20, 0, 10 + self.next])
        });
        if let Some((other, _)) = self
            .held
            .iter()
            .find(|(h, (s, a))| *h != holder && s == subnet && *a == ip)
        {
            return Err(format!("{ip} is held by {other}"));
        }
        self.held.insert(holder.to_owned(), (subnet.to_owned(), ip));
        Ok(ip)
    }

    fn release_others(&mut self, keep: &BTreeSet<String>) {
        self.held.retain(|h, _| keep.contains(h));
    }
}

fn subnet(name: &str, cidr: &str, provider: &str, vpc: &str) -> SubnetConfig {
    SubnetConfig::from_input(&SubnetInput {
        name: name.to_owned(),
        cidr_block: cidr.to_owned(),
        provider: provider.to_owned(),
        vpc: vpc.to_owned(),
        ..SubnetInput::default()
    })
    .expect("a valid subnet")
}

fn subnets() -> Vec<SubnetConfig> {
    vec![
        subnet("subnet-secondary", "10.100.0.0/16", "ovn", "vpc-secondary"),
        subnet(
            DEFAULT_EXTERNAL_SUBNET,
            "172.20.0.0/24",
            "ovn-vpc-external-network.kube-system",
            "",
        ),
    ]
}

fn world(subnets: &[SubnetConfig]) -> World<'_> {
    World {
        subnets: subnets.iter().map(|s| (s.name.as_str(), s)).collect(),
        vpcs: ["vpc-secondary".to_owned()].into(),
    }
}

/// The seed's VpcNatGateway, an EIP, and an SNAT, a DNAT and a FIP on two EIPs.
fn seed() -> Store {
    let mut s = Store::default();
    let carries = (
        EXTERNAL_NETWORK_LABEL.to_owned(),
        DEFAULT_EXTERNAL_SUBNET.to_owned(),
    );
    s.nodes.insert(
        "node1".to_owned(),
        [
            (
                "ovn.kubernetes.io/external-gw".to_owned(),
                "true".to_owned(),
            ),
            carries.clone(),
        ]
        .into(),
    );
    s.nodes.insert("node2".to_owned(), [carries].into());
    // A node without the external network is never a gateway chassis.
    s.nodes.insert("node3".to_owned(), BTreeMap::new());
    s.gateways.insert(
        "vpc-nat-gw".to_owned(),
        VpcNatGatewaySpec {
            vpc: "vpc-secondary".to_owned(),
            subnet: "subnet-secondary".to_owned(),
            lan_ip: "10.100.0.254".to_owned(),
            ..VpcNatGatewaySpec::default()
        },
    );
    for (name, ip) in [("eip-out", "172.20.0.50"), ("eip-fip", "")] {
        s.eips.insert(
            name.to_owned(),
            (
                IptablesEipSpec {
                    v4_ip: ip.to_owned(),
                    nat_gw_dp: "vpc-nat-gw".to_owned(),
                    ..IptablesEipSpec::default()
                },
                false,
            ),
        );
    }
    s.snats.insert(
        "snat".to_owned(),
        IptablesSnatRuleSpec {
            eip: "eip-out".to_owned(),
            internal_cidr: "10.100.0.0/16".to_owned(),
        },
    );
    s.dnats.insert(
        "dnat".to_owned(),
        IptablesDnatRuleSpec {
            eip: "eip-out".to_owned(),
            external_port: "8080".to_owned(),
            protocol: "TCP".to_owned(),
            internal_ip: "10.100.0.21".to_owned(),
            internal_port: "80".to_owned(),
        },
    );
    s.fips.insert(
        "fip".to_owned(),
        IptablesFipRuleSpec {
            eip: "eip-fip".to_owned(),
            internal_ip: "10.100.0.20".to_owned(),
        },
    );
    s
}

fn refusal(r: &Resolved, kind: &'static str, name: &str) -> (String, String) {
    match r.verdicts.get(&(kind, name.to_owned())) {
        Some(Verdict::Refused { field, message }) => (field.clone(), message.clone()),
        other => panic!("{kind} {name} is not refused: {other:?}"),
    }
}

#[test]
fn the_seeds_gateway_with_an_eip_and_each_rule_resolves_into_one_gateway() {
    let subnets = subnets();
    let mut a = FakeAddresses::default();
    let r = seed().resolve(&world(&subnets), &mut a);
    assert_eq!(r.gateways.len(), 1, "{:?}", r.verdicts);
    let g = &r.gateways[0];
    assert_eq!(g.vpc, "vpc-secondary");
    assert_eq!(g.lan_ip.to_string(), "10.100.0.254/16");
    assert_eq!(g.external_gateway.to_string(), "172.20.0.1");
    // An empty selector: every node, by name.
    assert_eq!(g.chassis, vec!["node1".to_owned(), "node2".to_owned()]);
    let out: IpAddr = "172.20.0.50".parse().expect("an address");
    assert!(
        g.snat
            .contains(&("10.100.0.0/16".parse().expect("a CIDR"), out))
    );
    assert_eq!(
        g.dnat
            .iter()
            .next()
            .map(|d| (d.protocol.as_str(), d.external_port)),
        Some(("tcp", 8080))
    );
    assert_eq!(g.fip.len(), 1);
    match &r.verdicts[&(EIP, "eip-out".to_owned())] {
        Verdict::Accepted(s) => {
            assert_eq!(s.ip, "172.20.0.50");
            assert_eq!(s.uses, vec!["dnat".to_owned(), "snat".to_owned()]);
        }
        v @ Verdict::Refused { .. } => panic!("{v:?}"),
    }
    // lanIp, the gateway port's address and both EIPs are held.
    assert_eq!(a.held.len(), 4, "{:?}", a.held);
}

#[test]
fn a_selector_picks_the_gateway_chassis_and_a_selector_nothing_matches_is_reported() {
    let subnets = subnets();
    let mut s = seed();
    if let Some(g) = s.gateways.get_mut("vpc-nat-gw") {
        g.selector = vec!["ovn.kubernetes.io/external-gw: true".to_owned()];
    }
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    assert_eq!(r.gateways[0].chassis, vec!["node1".to_owned()]);
    if let Some(g) = s.gateways.get_mut("vpc-nat-gw") {
        g.selector = vec!["kubernetes.io/hostname: node9".to_owned()];
    }
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    assert_eq!(refusal(&r, GATEWAY, "vpc-nat-gw").0, "spec.selector");
}

#[test]
fn a_lan_ip_outside_the_subnet_is_refused_naming_the_field_and_takes_its_eips_and_rules_down() {
    let subnets = subnets();
    let mut s = seed();
    if let Some(g) = s.gateways.get_mut("vpc-nat-gw") {
        g.lan_ip = "10.200.0.254".to_owned();
    }
    let mut a = FakeAddresses::default();
    let r = s.resolve(&world(&subnets), &mut a);
    let (field, message) = refusal(&r, GATEWAY, "vpc-nat-gw");
    assert_eq!(field, "spec.lanIp");
    assert!(
        message.contains("10.200.0.254") && message.contains("subnet-secondary"),
        "{message}"
    );
    assert!(r.gateways.is_empty());
    assert_eq!(refusal(&r, EIP, "eip-out").0, "spec.natGwDp");
    assert_eq!(refusal(&r, SNAT, "snat").0, "spec.eip");
    assert!(a.held.is_empty(), "nothing stays held: {:?}", a.held);
}

#[test]
fn an_eip_outside_the_external_subnet_is_refused_and_the_rest_stays_in_force() {
    let subnets = subnets();
    let mut s = seed();
    if let Some((e, _)) = s.eips.get_mut("eip-fip") {
        e.v4_ip = "192.168.9.9".to_owned();
    }
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    let (field, message) = refusal(&r, EIP, "eip-fip");
    assert_eq!(field, "spec.v4ip");
    assert!(
        message.contains("192.168.9.9") && message.contains("172.20.0.0/24"),
        "{message}"
    );
    assert_eq!(refusal(&r, FIP, "fip").0, "spec.eip");
    assert!(matches!(
        r.verdicts[&(SNAT, "snat".to_owned())],
        Verdict::Accepted(_)
    ));
    assert_eq!(r.gateways[0].snat.len(), 1);
}

#[test]
fn a_rule_naming_a_missing_eip_and_bad_ports_and_protocols_are_refused_naming_the_field() {
    let subnets = subnets();
    let mut s = seed();
    s.snats.insert(
        "ghost".to_owned(),
        IptablesSnatRuleSpec {
            eip: "no-such-eip".to_owned(),
            internal_cidr: "10.100.0.0/16".to_owned(),
        },
    );
    let mut bad = s.dnats["dnat"].clone();
    bad.protocol = "sctp".to_owned();
    s.dnats.insert("bad-proto".to_owned(), bad.clone());
    bad.protocol = "udp".to_owned();
    bad.external_port = "70000".to_owned();
    s.dnats.insert("bad-port".to_owned(), bad.clone());
    bad.external_port = "8080".to_owned();
    bad.internal_ip = "192.168.1.1".to_owned();
    s.dnats.insert("outside".to_owned(), bad);
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    let (field, message) = refusal(&r, SNAT, "ghost");
    assert_eq!(field, "spec.eip");
    assert!(message.contains("no-such-eip"), "{message}");
    assert_eq!(refusal(&r, DNAT, "bad-proto").0, "spec.protocol");
    assert_eq!(refusal(&r, DNAT, "bad-port").0, "spec.externalPort");
    assert_eq!(refusal(&r, DNAT, "outside").0, "spec.internalIp");
    assert!(matches!(
        r.verdicts[&(DNAT, "dnat".to_owned())],
        Verdict::Accepted(_)
    ));
}

#[test]
fn an_eip_of_a_fip_serves_that_fip_alone() {
    let subnets = subnets();
    let mut s = seed();
    s.snats.insert(
        "steals".to_owned(),
        IptablesSnatRuleSpec {
            eip: "eip-fip".to_owned(),
            internal_cidr: "10.100.1.0/24".to_owned(),
        },
    );
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    let (field, message) = refusal(&r, SNAT, "steals");
    assert_eq!(field, "spec.eip");
    assert!(message.contains("IptablesFIPRule/fip"), "{message}");
}

#[test]
fn an_eip_deleted_while_in_use_stays_until_its_last_rule_goes() {
    let subnets = subnets();
    let mut s = seed();
    if let Some((_, deleting)) = s.eips.get_mut("eip-out") {
        *deleting = true;
    }
    let mut a = FakeAddresses::default();
    let r = s.resolve(&world(&subnets), &mut a);
    assert!(!r.eip_free("eip-out"));
    match &r.verdicts[&(EIP, "eip-out".to_owned())] {
        Verdict::Accepted(shown) => assert_eq!(
            shown.held_for,
            vec![
                "IptablesSnatRule/snat".to_owned(),
                "IptablesDnatRule/dnat".to_owned()
            ]
        ),
        v @ Verdict::Refused { .. } => panic!("{v:?}"),
    }
    assert_eq!(r.gateways[0].snat.len(), 1, "the SNAT stays in force");
    s.snats.clear();
    s.dnats.clear();
    let r = s.resolve(&world(&subnets), &mut a);
    assert!(r.eip_free("eip-out"));
    assert!(
        !a.held.contains_key("IptablesEIP/eip-out"),
        "its address is released"
    );
}

#[test]
fn a_second_gateway_on_one_vpc_is_refused() {
    let subnets = subnets();
    let mut s = seed();
    let mut second = s.gateways["vpc-nat-gw"].clone();
    second.lan_ip = "10.100.0.253".to_owned();
    s.gateways.insert("z-second".to_owned(), second);
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    let (field, message) = refusal(&r, GATEWAY, "z-second");
    assert_eq!(field, "spec.vpc");
    assert!(message.contains("vpc-nat-gw"), "{message}");
}

#[test]
fn an_eip_keeps_the_address_its_status_showed_when_it_is_free() {
    let subnets = subnets();
    let mut s = seed();
    s.previous.insert(
        "IptablesEIP/eip-fip".to_owned(),
        "172.20.0.77".parse().expect("an address"),
    );
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    match &r.verdicts[&(EIP, "eip-fip".to_owned())] {
        Verdict::Accepted(shown) => assert_eq!(shown.ip, "172.20.0.77"),
        v @ Verdict::Refused { .. } => panic!("{v:?}"),
    }
}

#[test]
fn a_gateways_routes_are_taken_and_one_without_a_next_hop_is_refused_naming_the_field() {
    let subnets = subnets();
    let mut s = seed();
    if let Some(g) = s.gateways.get_mut("vpc-nat-gw") {
        g.routes = vec![serde_json::json!({"cidr": "192.168.0.0/16", "nextHopIP": "172.20.0.254"})];
    }
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    let want = (
        "192.168.0.0/16".parse().expect("a CIDR"),
        "172.20.0.254".parse().expect("an address"),
    );
    assert!(
        r.gateways[0].routes.contains(&want),
        "{:?}",
        r.gateways[0].routes
    );
    if let Some(g) = s.gateways.get_mut("vpc-nat-gw") {
        g.routes = vec![serde_json::json!({"cidr": "192.168.0.0/16"})];
    }
    let r = s.resolve(&world(&subnets), &mut FakeAddresses::default());
    assert_eq!(refusal(&r, GATEWAY, "vpc-nat-gw").0, "spec.routes");
}
