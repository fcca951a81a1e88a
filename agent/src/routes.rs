//! Which Subnets the fast path routes between, followed live: traffic between two Subnets of
//! one Vpc on the same node is routed on the fast path only where OVN's router would forward it
//! unchanged by the connected routes of its ports. A Vpc with anything the program cannot
//! prove the router does not apply (policy routes, source-based static routes, an external
//! gateway or a NAT gateway, whose rows sit on the router), and a Subnet a static route claims
//! part of, stay on OVS. Subnets, Vpcs and `VpcNatGateways` are watched; every change hands the
//! fast path the new table, which withdraws what is no longer routed.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::StreamExt as _;
use ipnet::IpNet;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use sidelane_api::{
    crd::VpcSpec,
    mac::{router_port_mac, router_port_name},
};
use tracing::{info, warn};

use crate::{
    dataplane::{
        fastpath::{PortRoute, domain_id, switch_id},
        ports::FastpathPorts,
    },
    subnets::{DEFAULT_VPC, SubnetInfo, info_of, subnet_resource},
    watched::Watched,
};

/// What routing on the fast path needs of a Vpc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VpcRouting {
    /// Why its router does more than route by its connected routes, if it does.
    pub special: Option<String>,
    /// Its destination-based static routes' prefixes.
    pub static_prefixes: Vec<IpNet>,
}

/// Reads a Vpc's spec; one that does not read is treated as special (not routed).
pub fn vpc_routing(obj: &DynamicObject) -> VpcRouting {
    let spec: VpcSpec = match obj
        .data
        .get("spec")
        .map(|v| serde_json::from_value(v.clone()))
        .transpose()
    {
        Ok(spec) => spec.unwrap_or_default(),
        Err(e) => {
            return VpcRouting {
                special: Some(format!("its spec does not read: {e}")),
                ..VpcRouting::default()
            };
        }
    };
    let mut special = Vec::new();
    if !spec.policy_routes.is_empty() {
        special.push(format!("{} policy routes", spec.policy_routes.len()));
    }
    if spec.enable_external == Some(true) {
        special.push("enableExternal".to_owned());
    }
    let mut static_prefixes = Vec::new();
    for (i, r) in spec.static_routes.iter().enumerate() {
        if r.policy == "policySrc" {
            special.push(format!("staticRoutes[{i}] is source-based"));
            continue;
        }
        match r.cidr.trim().parse::<IpNet>() {
            Ok(p) => static_prefixes.push(p),
            Err(_) => special.push(format!("staticRoutes[{i}].cidr {:?} does not read", r.cidr)),
        }
    }
    VpcRouting {
        special: (!special.is_empty()).then(|| special.join(", ")),
        static_prefixes,
    }
}

/// Whether a static route to `prefix` takes part of `cidr` from its connected route: it
/// overlaps it and is at least as specific.
fn claims(prefix: &IpNet, cidr: &IpNet) -> bool {
    prefix.prefix_len() >= cidr.prefix_len()
        && (cidr.contains(&prefix.network()) || prefix.contains(&cidr.network()))
}

/// The route on the fast path of each routed Subnet's switch ([`switch_id`]), from the Subnets,
/// the Vpcs (by name) and the Vpcs that have a NAT gateway. A Subnet whose Vpc is not there
/// (other than the default one, which needs no object) is not routed.
pub fn routes(
    subnets: &[SubnetInfo],
    vpcs: &BTreeMap<String, VpcRouting>,
    nat_vpcs: &BTreeSet<String>,
) -> BTreeMap<u32, PortRoute> {
    let default = VpcRouting::default();
    subnets
        .iter()
        .filter_map(|s| {
            let r = s.routing.as_ref()?;
            let vpc = match vpcs.get(&r.vpc) {
                Some(v) => v,
                None if r.vpc == DEFAULT_VPC => &default,
                None => return None,
            };
            if vpc.special.is_some() || nat_vpcs.contains(&r.vpc) {
                return None;
            }
            let claimed = vpc
                .static_prefixes
                .iter()
                .any(|p| r.cidrs.iter().any(|c| claims(p, c)));
            (!claimed).then(|| {
                (
                    switch_id(&s.name),
                    PortRoute {
                        domain: domain_id(&r.vpc),
                        gateway_mac: router_port_mac(&router_port_name(&r.vpc, &s.name)),
                    },
                )
            })
        })
        .collect()
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeovn.io", "v1", kind), plural)
}

/// The three kinds as last read.
#[derive(Default)]
struct Inputs {
    subnets: Watched<SubnetInfo>,
    vpcs: Watched<VpcRouting>,
    /// `VpcNatGateway` name → its Vpc.
    nat_gateways: Watched<String>,
}

enum Event {
    Subnet(watcher::Event<DynamicObject>),
    Vpc(watcher::Event<DynamicObject>),
    NatGateway(watcher::Event<DynamicObject>),
}

impl Inputs {
    fn take(&mut self, event: Event) -> bool {
        match event {
            Event::Subnet(e) => self.subnets.take(e, info_of),
            Event::Vpc(e) => self.vpcs.take(e, |o| Some(vpc_routing(o))),
            Event::NatGateway(e) => self.nat_gateways.take(e, |o| {
                Some(
                    o.data["spec"]["vpc"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            }),
        }
    }

    fn ready(&self) -> bool {
        self.subnets.ready && self.vpcs.ready && self.nat_gateways.ready
    }

    fn routes(&self) -> BTreeMap<u32, PortRoute> {
        let subnets: Vec<SubnetInfo> = self.subnets.items.values().cloned().collect();
        let nat_vpcs = self.nat_gateways.items.values().cloned().collect();
        routes(&subnets, &self.vpcs.items, &nat_vpcs)
    }
}

/// Follows Subnets, Vpcs and `VpcNatGateways` forever, handing `fastpath` the routed Subnets
/// on every change of them. Until all three have been listed, nothing is routed.
pub async fn follow_forever(client: kube::Client, fastpath: Arc<dyn FastpathPorts>) {
    let watch = |r: &ApiResource| {
        watcher(
            Api::<DynamicObject>::all_with(client.clone(), r),
            watcher::Config::default(),
        )
        .default_backoff()
    };
    let events = futures::stream::select_all([
        watch(&subnet_resource())
            .map(|e| e.map(Event::Subnet))
            .boxed(),
        watch(&resource("Vpc", "vpcs"))
            .map(|e| e.map(Event::Vpc))
            .boxed(),
        watch(&resource("VpcNatGateway", "vpc-nat-gateways"))
            .map(|e| e.map(Event::NatGateway))
            .boxed(),
    ]);
    futures::pin_mut!(events);
    let mut inputs = Inputs::default();
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "watching Subnets, Vpcs and VpcNatGateways; retrying");
                continue;
            }
        };
        if !inputs.take(event) || !inputs.ready() {
            continue;
        }
        let wanted = inputs.routes();
        if last.as_ref() == Some(&wanted) {
            continue;
        }
        last = Some(wanted.clone());
        let (count, fastpath) = (wanted.len(), Arc::clone(&fastpath));
        match tokio::task::spawn_blocking(move || fastpath.set_routes(wanted)).await {
            Ok(Ok(())) => info!(
                routed_subnets = count,
                "the fast path follows the Vpcs' routing"
            ),
            Ok(Err(e)) => warn!(error = %e, "handing the routed Subnets to the fast path"),
            Err(e) => warn!(error = %e, "handing the routed Subnets to the fast path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::subnets::SubnetRouting;

    fn subnet(name: &str, vpc: &str, cidrs: &[&str]) -> SubnetInfo {
        SubnetInfo {
            name: name.to_owned(),
            provider: format!("{name}.default.ovn"),
            mtu: None,
            fastpath: true,
            routing: Some(SubnetRouting {
                vpc: vpc.to_owned(),
                cidrs: cidrs.iter().map(|c| c.parse().expect("a CIDR")).collect(),
            }),
        }
    }

    fn vpc(spec: &serde_json::Value) -> VpcRouting {
        vpc_routing(
            &serde_json::from_value(json!({
                "apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "v"},
                "spec": spec,
            }))
            .expect("a Vpc"),
        )
    }

    fn routed(subnets: &[SubnetInfo], vpc_spec: &serde_json::Value, nat: bool) -> Vec<String> {
        let vpcs = BTreeMap::from([("vpc-a".to_owned(), vpc(vpc_spec))]);
        let nat_vpcs = if nat {
            BTreeSet::from(["vpc-a".to_owned()])
        } else {
            BTreeSet::new()
        };
        let table = routes(subnets, &vpcs, &nat_vpcs);
        subnets
            .iter()
            .filter(|s| table.contains_key(&switch_id(&s.name)))
            .map(|s| s.name.clone())
            .collect()
    }

    fn two() -> [SubnetInfo; 2] {
        [
            subnet("net-a", "vpc-a", &["10.1.0.0/24", "fd00:1::/64"]),
            subnet("net-b", "vpc-a", &["10.2.0.0/24", "fd00:2::/64"]),
        ]
    }

    #[test]
    fn subnets_of_a_plain_vpc_are_routed_behind_their_router_ports() {
        let subnets = two();
        assert_eq!(routed(&subnets, &json!({}), false), ["net-a", "net-b"]);
        let table = routes(
            &subnets,
            &BTreeMap::from([("vpc-a".to_owned(), VpcRouting::default())]),
            &BTreeSet::new(),
        );
        let a = table[&switch_id("net-a")];
        assert_eq!(a.domain, domain_id("vpc-a"));
        assert_eq!(a.domain, table[&switch_id("net-b")].domain);
        assert_eq!(a.gateway_mac, router_port_mac("vpc-a-net-a"));
    }

    #[test]
    fn a_default_route_leaves_the_subnets_routed_but_a_more_specific_one_takes_its_subnet_off() {
        let default = json!({"staticRoutes": [
            {"cidr": "0.0.0.0/0", "nextHopIP": "10.1.0.254"},
            {"cidr": "::/0", "nextHopIP": "fd00:1::fe"},
        ]});
        assert_eq!(routed(&two(), &default, false), ["net-a", "net-b"]);
        let inside = json!({"staticRoutes": [{"cidr": "10.2.0.128/25", "nextHopIP": "10.1.0.9"}]});
        assert_eq!(routed(&two(), &inside, false), ["net-a"]);
        let same = json!({"staticRoutes": [{"cidr": "fd00:1::/64", "nextHopIP": "fd00:2::9"}]});
        assert_eq!(routed(&two(), &same, false), ["net-b"]);
    }

    #[test]
    fn policy_routes_source_routes_an_external_gateway_or_a_nat_gateway_keep_the_vpc_on_ovs() {
        for spec in [
            json!({"policyRoutes": [{"priority": 10, "match": "ip4.src == 10.1.0.0/24",
                                      "action": "drop"}]}),
            json!({"staticRoutes": [{"policy": "policySrc", "cidr": "10.1.0.0/24",
                                      "nextHopIP": "10.2.0.9"}]}),
            json!({"enableExternal": true}),
            json!({"staticRoutes": [{"cidr": "not-a-cidr", "nextHopIP": "10.2.0.9"}]}),
            json!({"staticRoutes": "wrong"}),
        ] {
            assert!(routed(&two(), &spec, false).is_empty(), "{spec}");
        }
        assert!(routed(&two(), &json!({}), true).is_empty(), "a NAT gateway");
    }

    #[test]
    fn a_subnet_whose_vpc_is_missing_is_not_routed_unless_it_is_the_default_one() {
        let subnets = [
            subnet("net-a", "vpc-gone", &["10.1.0.0/24"]),
            subnet("net-c", DEFAULT_VPC, &["10.3.0.0/24"]),
        ];
        let table = routes(&subnets, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(
            table.keys().copied().collect::<Vec<_>>(),
            [switch_id("net-c")]
        );
    }

    #[test]
    fn a_subnet_that_does_not_allow_routing_is_left_out() {
        let mut subnets = two();
        subnets[1].routing = None;
        assert_eq!(routed(&subnets, &json!({}), false), ["net-a"]);
    }
}
