//! IPv6 and dual stack on the traffic paths IPv4 runs, beside real OVN with OVS's userspace
//! datapath: on a dual-stack Subnet, pods of one switch on one node (the fast path, both
//! families), the same pair with the fast path off (OVS's own switching), pods on two nodes (OVS
//! and geneve), spoofed IPv6 sources (never fast-pathed, dropped by OVN's port security) and an
//! ingress limit holding an IPv6 flow on the fast path. ND as OVN gives it: its router answers
//! for the gateway's IPv6 address with the router port's MAC, and sends no router
//! advertisements (OVN sends them only from router ports configured to). Routing between
//! dual-stack Subnets of a Vpc is tested in `fastpath_traffic.rs`.

use std::time::Duration;

use serde_json::json;
use sidelane_api::mac::{format, router_port_mac, router_port_name};
use sidelane_tests::{
    cluster,
    iperf::{self, IperfSpec},
    netns::NetNs,
    node_rig::NodeRig,
    ovn,
    ping::{replies, until_reply},
    privilege,
};

/// How long a first ping may take to be answered.
const SETTLE: Duration = Duration::from_secs(30);

/// The dual-stack Subnet's name (its NAD's too) and CIDRs.
const SUBNET: &str = "dual6";
const V4: &str = "10.60.0.0/24";
const V6: &str = "fd00:60::/64";
const GATEWAY_V6: &str = "fd00:60::1";

/// The dual-stack Subnet (on the default Vpc), on the fast path unless `fastpath` is false.
fn dual_subnet(rig: &NodeRig, fastpath: bool) {
    rig.api.seed(cluster::ovn_nad(SUBNET)).expect("nad");
    let mut subnet = cluster::ovn_subnet(SUBNET, SUBNET, &format!("{V4},{V6}"), "");
    subnet["spec"]["protocol"] = json!("Dual");
    if !fastpath {
        subnet["metadata"]["annotations"] = json!({"sidelane.io/fastpath": "false"});
    }
    rig.api.seed(subnet).expect("subnet");
}

/// A pod on the dual-stack Subnet on node `node`, with `annotations` besides; its IPv6 address.
fn pod(rig: &NodeRig, node: usize, name: &str, annotations: &serde_json::Value) -> (NetNs, String) {
    let mut all = json!({"k8s.v1.cni.cncf.io/networks": format!("default/{SUBNET}")});
    for (k, v) in annotations.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    rig.api.seed(cluster::pod(name, &all)).expect("pod");
    let ns = NetNs::new().expect("netns");
    let ips = rig.attach_all_on(node, name, &ns, SUBNET);
    let v6 = ips
        .into_iter()
        .find(|ip| ip.contains(':'))
        .expect("an IPv6 address on a dual-stack Subnet");
    (ns, v6)
}

fn mac_of(ns: &NetNs) -> String {
    ns.exec(&["cat", "/sys/class/net/net1/address"])
        .expect("mac")
        .trim()
        .to_owned()
}

#[test]
fn on_a_dual_stack_switch_ipv6_takes_the_fast_path_and_ovn_answers_nd_for_the_gateway() {
    let name = "on_a_dual_stack_switch_ipv6_takes_the_fast_path_and_ovn_answers_nd_for_the_gateway";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    dual_subnet(&rig, true);
    let (a, _) = pod(&rig, 0, "six-a", &json!({}));
    let (b, b6) = pod(&rig, 0, "six-b", &json!({}));
    until_reply(&a, &b6, SETTLE);
    let before = rig.counters("six-a");
    let out = replies(&a, &b6, 20).expect("ping over the fast path");
    assert!(
        out.contains("20 received") && !out.contains("DUP!"),
        "{out}"
    );
    let report = iperf::measure(&b, &b6, &a, &IperfSpec::tcp(Duration::from_secs(2)))
        .expect("TCP over IPv6");
    assert!(
        report.receiver_bps > 1e9,
        "TCP at veth speed, not OVS's: {} bit/s",
        report.receiver_bps
    );
    let after = rig.counters("six-a");
    assert!(
        after.hits > before.hits + 1000 && after.spoofed == before.spoofed,
        "IPv6 took the fast path: {before:?} -> {after:?}"
    );
    // ND: the peer's address resolves to its MAC, the gateway's to the router port's.
    let peer = a
        .exec(&["ip", "-6", "neigh", "show", &b6, "dev", "net1"])
        .expect("neighbours");
    assert!(peer.contains(&mac_of(&b)), "{peer}");
    until_reply(&a, GATEWAY_V6, SETTLE);
    let gateway = a
        .exec(&["ip", "-6", "neigh", "show", GATEWAY_V6, "dev", "net1"])
        .expect("neighbours");
    let router_mac = format(router_port_mac(&router_port_name("ovn-cluster", SUBNET)));
    assert!(
        gateway.contains(&router_mac),
        "OVN's router answered for {GATEWAY_V6} with {router_mac}: {gateway}"
    );
    // No router advertisement: no default route learned.
    let defaults = a
        .exec(&["ip", "-6", "route", "show", "default"])
        .expect("routes");
    assert!(defaults.trim().is_empty(), "{defaults}");
}

#[test]
fn with_the_fast_path_off_ovs_switches_ipv6_between_pods_of_a_dual_stack_switch() {
    let name = "with_the_fast_path_off_ovs_switches_ipv6_between_pods_of_a_dual_stack_switch";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    dual_subnet(&rig, false);
    let (a, _) = pod(&rig, 0, "six-a", &json!({}));
    let (b, b6) = pod(&rig, 0, "six-b", &json!({}));
    until_reply(&a, &b6, SETTLE);
    let out = replies(&a, &b6, 20).expect("ping through OVS");
    assert!(
        out.contains("20 received") && !out.contains("DUP!"),
        "{out}"
    );
    let report = iperf::measure(&b, &b6, &a, &IperfSpec::tcp(Duration::from_secs(1)))
        .expect("TCP over IPv6 through OVS");
    assert!(report.receiver_bps > 1e6, "{}", report.receiver_bps);
    assert_eq!(rig.counters("six-a").hits, 0, "nothing took the fast path");
}

#[test]
fn spoofed_ipv6_sources_are_never_fast_pathed_and_ovn_drops_them() {
    let name = "spoofed_ipv6_sources_are_never_fast_pathed_and_ovn_drops_them";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    dual_subnet(&rig, true);
    let secured = json!({format!("{SUBNET}.default.ovn.kubernetes.io/port_security"): "true"});
    let (a, a6) = pod(&rig, 0, "six-a", &secured);
    let (b, b6) = pod(&rig, 0, "six-b", &json!({}));
    until_reply(&a, &b6, SETTLE);
    let before = rig.counters("six-a");
    // A second address in pod A (no DAD: it is used at once) and B's MAC pinned (ND from a
    // spoofed address would not resolve through OVN's port security).
    a.exec(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:60::250/64",
        "dev",
        "net1",
        "nodad",
    ])
    .expect("spoofed address");
    a.exec(&[
        "ip",
        "-6",
        "neigh",
        "replace",
        &b6,
        "lladdr",
        &mac_of(&b),
        "dev",
        "net1",
    ])
    .expect("neighbour");
    let spoofed = a.exec(&[
        "ping",
        "-c",
        "5",
        "-i",
        "0.05",
        "-W",
        "1",
        "-I",
        "fd00:60::250",
        &b6,
    ]);
    assert!(spoofed.is_err(), "a spoofed IPv6 source was delivered");
    let after = rig.counters("six-a");
    assert_eq!(after.hits, before.hits, "no spoofed frame fast-pathed");
    assert!(
        after.spoofed >= before.spoofed + 5,
        "spoofed frames counted: {after:?}"
    );
    // Its own address still reaches B.
    let own = a.exec(&["ping", "-c", "3", "-i", "0.05", "-W", "2", "-I", &a6, &b6]);
    assert!(own.is_ok(), "{own:?}");
}

#[test]
fn an_ingress_limit_holds_an_ipv6_flow_on_the_fast_path() {
    let name = "an_ingress_limit_holds_an_ipv6_flow_on_the_fast_path";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    dual_subnet(&rig, true);
    let (a, _) = pod(&rig, 0, "six-a", &json!({}));
    let limited = json!({format!("{SUBNET}.default.ovn.kubernetes.io/ingress_rate"): "50"});
    let (b, b6) = pod(&rig, 0, "six-b", &limited);
    until_reply(&a, &b6, SETTLE);
    rig.assert_limited_flow_on_the_fast_path("six-a", &a, &b, &b6, 50.0);
}

#[test]
fn pods_on_two_nodes_reach_each_other_over_ipv6_through_ovs_and_a_tunnel() {
    let name = "pods_on_two_nodes_reach_each_other_over_ipv6_through_ovs_and_a_tunnel";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start_nodes(2, true);
    dual_subnet(&rig, true);
    let (a, _) = pod(&rig, 0, "six-a", &json!({}));
    let (b, b6) = pod(&rig, 1, "six-b", &json!({}));
    until_reply(&a, &b6, SETTLE);
    rig.assert_reached_across_nodes("six-a", &a, &b, &b6);
}
