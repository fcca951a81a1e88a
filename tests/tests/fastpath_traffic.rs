//! The fast path on real traffic, beside real OVN with OVS's userspace datapath: pods of one
//! switch on one node reach each other straight from veth to veth (hits counted, the devices OVS
//! reads see none of it, no frame delivered twice); other traffic still crosses OVS; spoofed
//! frames are never fast-pathed; the receiver's ingress limit holds; DEL removes the entries;
//! an agent restart leaves a running flow untouched. Pods of two Subnets of one Vpc are routed
//! on the fast path (IPv4 and IPv6, one hop, TTL 1 answered by OVN's router) until the Vpc
//! gains what the program cannot prove, a policy route.

use std::time::{Duration, Instant};

use serde_json::json;
use sidelane_agent::dataplane::fastpath::{Table, endpoint_key, switch_id};
use sidelane_agent_common::fastpath::FastpathCounters;
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
const SETTLE: Duration = Duration::from_secs(20);

/// Two pods on the seed's `attachnet` switch.
fn two_pods(rig: &NodeRig, annotations_b: &serde_json::Value) -> (NetNs, String, NetNs, String) {
    two_pods_with(rig, &json!({}), annotations_b)
}

/// Both pods on `attachnet`, each with its annotations besides.
fn two_pods_with(
    rig: &NodeRig,
    annotations_a: &serde_json::Value,
    annotations_b: &serde_json::Value,
) -> (NetNs, String, NetNs, String) {
    for doc in cluster::networks_of("attachnet.yaml") {
        rig.api.apply(&[doc]);
    }
    let with = |extra: &serde_json::Value| cluster::selecting("default/attachnet", extra);
    let b_annotations = with(annotations_b);
    rig.api
        .seed(cluster::pod("fast-a", &with(annotations_a)))
        .expect("fast-a");
    rig.api
        .seed(cluster::pod("fast-b", &b_annotations))
        .expect("fast-b");
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    let ip_a = rig.attach("fast-a", &a, "attachnet");
    let ip_b = rig.attach("fast-b", &b, "attachnet");
    (a, ip_a, b, ip_b)
}

#[test]
fn traffic_between_pods_of_one_switch_takes_the_fast_path_past_ovs_without_duplicates() {
    let name = "traffic_between_pods_of_one_switch_takes_the_fast_path_past_ovs_without_duplicates";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let (a, _ip_a, b, ip_b) = two_pods(&rig, &json!({}));
    until_reply(&a, &ip_b, SETTLE);
    let ovs_a = NodeRig::ovs_port("fast-a");
    let ovs_b = NodeRig::ovs_port("fast-b");
    let before = (
        rig.counters("fast-a"),
        rig.device_counter(&ovs_a, "rx_packets"),
        rig.device_counter(&ovs_b, "tx_packets"),
    );
    let out = replies(&a, &ip_b, 50).expect("ping over the fast path");
    assert!(out.contains("50 received"), "{out}");
    assert!(!out.contains("DUP!"), "a frame was delivered twice: {out}");
    let report = iperf::measure(&b, &ip_b, &a, &IperfSpec::tcp(Duration::from_secs(2)))
        .expect("TCP over the fast path");
    assert!(
        report.receiver_bps > 1e9,
        "TCP at veth speed, not OVS's: {} bit/s",
        report.receiver_bps
    );
    let after = (
        rig.counters("fast-a"),
        rig.device_counter(&ovs_a, "rx_packets"),
        rig.device_counter(&ovs_b, "tx_packets"),
    );
    assert!(
        after.0.hits >= before.0.hits + 50,
        "hits rose: {:?} -> {:?}",
        before.0,
        after.0
    );
    assert_eq!(after.0.spoofed, 0);
    // The agent exports them.
    let metrics = rig.metrics_text();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("sidelane_agent_fastpath_hits_total{") && l.contains("pod=\"fast-a\"")
        })
        .unwrap_or_else(|| panic!("fast-a's hits in the metrics:\n{metrics}"));
    let exported: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a count");
    assert!(exported >= after.0.hits, "{line}");
    // What OVS reads for both pods saw a few link-local strays (ARP refreshes, IPv6 neighbour
    // and multicast-listener chatter), never the traffic: tens of frames against the
    // tens of thousands fast-pathed.
    let fast = after.0.hits - before.0.hits;
    let (read, written) = (after.1 - before.1, after.2 - before.2);
    assert!(fast > 10_000, "{fast} frames fast-pathed");
    assert!(
        read < 50 && written < 50,
        "OVS read {read} frames of fast-a's and wrote {written} to fast-b while {fast} were \
         fast-pathed (fast-a's misses: {})",
        after.0.misses - before.0.misses
    );
}

#[test]
fn spoofed_source_addresses_are_never_fast_pathed_and_are_counted() {
    let name = "spoofed_source_addresses_are_never_fast_pathed_and_are_counted";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    // The sender asks for OVN's port security (as Kube-OVN, it is off unless asked): OVS
    // drops what it spoofs; the fast path never takes a spoofed frame either way.
    let secured = json!({"attachnet.default.ovn.kubernetes.io/port_security": "true"});
    let (a, _ip_a, b, ip_b) = two_pods_with(&rig, &secured, &json!({}));
    until_reply(&a, &ip_b, SETTLE);
    let mac_b = b
        .exec(&["cat", "/sys/class/net/net1/address"])
        .expect("mac")
        .trim()
        .to_owned();
    let before = rig.counters("fast-a");
    // A spoofed source IP: a second address in pod A, and B's MAC pinned (ARP from a spoofed
    // address would not resolve through OVN's port security).
    a.exec(&["ip", "addr", "add", "172.17.0.250/16", "dev", "net1"])
        .expect("spoofed address");
    a.exec(&[
        "ip", "neigh", "replace", &ip_b, "lladdr", &mac_b, "dev", "net1",
    ])
    .expect("neighbour");
    assert!(
        a.exec(&[
            "ping",
            "-c",
            "5",
            "-i",
            "0.05",
            "-W",
            "1",
            "-I",
            "172.17.0.250",
            &ip_b
        ])
        .is_err(),
        "a spoofed source IP was delivered"
    );
    let mid = rig.counters("fast-a");
    assert_eq!(mid.hits, before.hits, "no spoofed frame fast-pathed");
    assert!(mid.spoofed >= 5, "spoofed frames counted: {mid:?}");
    // A spoofed source MAC.
    a.exec(&["ip", "link", "set", "net1", "address", "02:00:00:00:66:66"])
        .expect("spoofed MAC");
    // Changing the MAC flushed the neighbour table: pin B's MAC again.
    a.exec(&[
        "ip", "neigh", "replace", &ip_b, "lladdr", &mac_b, "dev", "net1",
    ])
    .expect("neighbour");
    assert!(
        replies(&a, &ip_b, 5).is_err(),
        "a spoofed source MAC was delivered"
    );
    let after = rig.counters("fast-a");
    assert_eq!(after.hits, before.hits);
    assert!(
        after.spoofed >= mid.spoofed + 5,
        "spoofed MAC counted: {after:?}"
    );
}

#[test]
fn traffic_into_a_pod_with_an_ingress_limit_is_held_to_it_on_the_fast_path() {
    let name = "traffic_into_a_pod_with_an_ingress_limit_is_held_to_it_on_the_fast_path";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let (a, _ip_a, b, ip_b) = two_pods(
        &rig,
        &json!({"attachnet.default.ovn.kubernetes.io/ingress_rate": "50"}),
    );
    until_reply(&a, &ip_b, SETTLE);
    rig.assert_limited_flow_on_the_fast_path("fast-a", &a, &b, &ip_b, 50.0);
}

#[test]
fn del_removes_a_pods_entries_before_it_returns_and_its_old_address_reaches_nothing() {
    let name = "del_removes_a_pods_entries_before_it_returns_and_its_old_address_reaches_nothing";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let (a, _ip_a, b, ip_b) = two_pods(&rig, &json!({}));
    until_reply(&a, &ip_b, SETTLE);
    let key = endpoint_key(switch_id("attachnet"), ip_b.parse().expect("an address"));
    let entries = |rig: &NodeRig| {
        rig.fastpath()
            .lock()
            .expect("lock")
            .endpoints(Table::Switched)
    };
    assert!(
        entries(&rig).iter().any(|(k, _)| *k == key),
        "fast-b is an endpoint"
    );
    rig.detach("fast-b", &b, "attachnet");
    assert!(
        !entries(&rig).iter().any(|(k, _)| *k == key),
        "fast-b's entry is gone once DEL returned"
    );
    assert!(
        replies(&a, &ip_b, 3).is_err(),
        "fast-b's old address still answers"
    );
}

#[test]
fn traffic_a_running_flow_on_the_fast_path_survives_an_agent_restart() {
    let name = "traffic_a_running_flow_on_the_fast_path_survives_an_agent_restart";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let mut rig = NodeRig::start(true);
    let (a, _ip_a, b, ip_b) = two_pods(&rig, &json!({}));
    until_reply(&a, &ip_b, SETTLE);
    let spec = IperfSpec::tcp(Duration::from_secs(6)).interval(Duration::from_millis(500));
    let flow = std::thread::scope(|s| {
        let flow = s.spawn(|| iperf::measure(&b, &ip_b, &a, &spec));
        std::thread::sleep(Duration::from_secs(2));
        rig.stop_agent();
        std::thread::sleep(Duration::from_secs(1));
        rig.start_agent();
        flow.join().expect("the flow's thread")
    })
    .expect("the flow runs to its end");
    let slowest = flow
        .receiver_intervals
        .iter()
        .map(|i| i.bits_per_second)
        .fold(f64::INFINITY, f64::min);
    assert!(
        slowest > 1e8,
        "no interval stalled across the restart: slowest {slowest:.0} bit/s"
    );
    assert!(
        rig.counters("fast-a").hits > 1000,
        "the flow stayed on the fast path"
    );
}

/// Vpc `vpc-fp` holding the dual-stack Subnets `net-a` (`10.70.0.0/24`, `fd00:70::/64`) and
/// `net-b` (`10.71.0.0/24`, `fd00:71::/64`), and a pod on each (`fast-c`, `fast-d`, the latter
/// with `d_annotations` besides) with routes to the other Subnet through its gateway; returns
/// the pods and `fast-d`'s addresses (IPv4, IPv6).
fn pods_on_two_subnets(
    rig: &NodeRig,
    d_annotations: &serde_json::Value,
) -> (NetNs, NetNs, [String; 2]) {
    rig.api
        .seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Vpc",
                     "metadata": {"name": "vpc-fp"}, "spec": {}}))
        .expect("vpc");
    for (nad, v4, v6) in [
        ("net-a", "10.70.0.0/24", "fd00:70::/64"),
        ("net-b", "10.71.0.0/24", "fd00:71::/64"),
    ] {
        rig.api.seed(cluster::ovn_nad(nad)).expect("nad");
        let mut subnet = cluster::ovn_subnet(nad, nad, &format!("{v4},{v6}"), "vpc-fp");
        subnet["spec"]["protocol"] = json!("Dual");
        rig.api.seed(subnet).expect("subnet");
    }
    let routes = |v4: &str, gw4: &str, v6: &str, gw6: &str| {
        json!([{"dst": v4, "gw": gw4}, {"dst": v6, "gw": gw6}]).to_string()
    };
    rig.api
        .seed(cluster::pod(
            "fast-c",
            &json!({"k8s.v1.cni.cncf.io/networks": "default/net-a",
                    "net-a.default.ovn.kubernetes.io/routes":
                        routes("10.71.0.0/24", "10.70.0.1", "fd00:71::/64", "fd00:70::1")}),
        ))
        .expect("pod");
    let mut d_all = json!({"k8s.v1.cni.cncf.io/networks": "default/net-b",
                           "net-b.default.ovn.kubernetes.io/routes":
                               routes("10.70.0.0/24", "10.71.0.1", "fd00:70::/64", "fd00:71::1")});
    for (k, v) in d_annotations.as_object().into_iter().flatten() {
        d_all[k] = v.clone();
    }
    rig.api.seed(cluster::pod("fast-d", &d_all)).expect("pod");
    let (c, d) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    let _ = rig.attach_all_on(0, "fast-c", &c, "net-a");
    let ips = rig.attach_all_on(0, "fast-d", &d, "net-b");
    let [v4, v6] = <[String; 2]>::try_from(ips).expect("fast-d has an IPv4 and an IPv6 address");
    (c, d, [v4, v6])
}

/// Pings `to` once a while until a reply came and `counted` holds of fast-c's counters (the
/// routing follower hands the fast path its table within the watch's delay).
fn ping_until(rig: &NodeRig, from: &NetNs, to: &str, counted: impl Fn(&FastpathCounters) -> bool) {
    let start = Instant::now();
    loop {
        let replied = replies(from, to, 1).is_ok();
        if replied && counted(&rig.counters("fast-c")) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ping {to}: replied {replied}, fast-c's counters {:?}",
            rig.counters("fast-c")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pods_on_two_subnets_of_one_vpc_are_routed_on_the_fast_path_one_hop_at_veth_speed() {
    let name = "pods_on_two_subnets_of_one_vpc_are_routed_on_the_fast_path_one_hop_at_veth_speed";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let (c, d, [d4, d6]) = pods_on_two_subnets(&rig, &json!({}));
    for ip in [&d4, &d6] {
        let before = rig.counters("fast-c").routed;
        ping_until(&rig, &c, ip, |n| n.routed > before);
        let out = replies(&c, ip, 20).expect("a routed ping");
        assert!(
            out.contains("20 received") && !out.contains("DUP!"),
            "{out}"
        );
        assert!(
            out.contains("ttl=63"),
            "the reply crossed one router (TTL or hop limit 64 less one): {out}"
        );
    }
    // TTL 1: the router answers time exceeded, from the sender's gateway; TTL 2 arrives.
    let expired_before = rig.counters("fast-c").expired;
    for (ip, gateway) in [(&d4, "10.70.0.1"), (&d6, "fd00:70::1")] {
        let expired = ping_with_ttl(&c, ip, 1).expect_err("TTL 1 never arrives");
        assert!(
            expired.contains(&format!("From {gateway}")) && expired.contains("exceeded"),
            "time exceeded from the gateway: {expired}"
        );
        let arrived = ping_with_ttl(&c, ip, 2).expect("TTL 2 arrives");
        assert!(arrived.contains("1 received"), "{arrived}");
    }
    let counters = rig.counters("fast-c");
    assert!(
        counters.expired >= expired_before + 2,
        "expiring frames went to OVS: {counters:?}"
    );
    let before = rig.counters("fast-c");
    let report = iperf::measure(&d, &d4, &c, &IperfSpec::tcp(Duration::from_secs(2)))
        .expect("TCP across the Subnets");
    assert!(
        report.receiver_bps > 1e9,
        "TCP at veth speed, not OVS's: {} bit/s",
        report.receiver_bps
    );
    let after = rig.counters("fast-c");
    assert!(
        after.routed > before.routed + 1000 && after.spoofed == before.spoofed,
        "the flow was routed on the fast path: {before:?} -> {after:?}"
    );
}

fn ping_with_ttl(from: &NetNs, to: &str, ttl: u8) -> Result<String, String> {
    from.exec(&["ping", "-c", "1", "-W", "2", "-t", &ttl.to_string(), to])
        .map_err(|e| format!("{e:#}"))
}

#[test]
fn a_policy_route_on_the_vpc_sends_its_subnets_traffic_back_through_ovs() {
    let name = "a_policy_route_on_the_vpc_sends_its_subnets_traffic_back_through_ovs";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let (c, _d, [d4, d6]) = pods_on_two_subnets(&rig, &json!({}));
    ping_until(&rig, &c, &d4, |n| n.routed > 0);
    let before = rig.counters("fast-c").routed;
    ping_until(&rig, &c, &d6, |n| n.routed > before);
    rig.api.apply(&[json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "vpc-fp"},
        "spec": {"policyRoutes": [
            {"priority": 10, "match": "ip4.src == 10.70.0.0/24", "action": "allow"}
        ]}
    })]);
    // Routed frames stop being fast-pathed once the agent has read the Vpc, in both families
    // (the program cannot prove what any policy route does); OVS routes them.
    let start = Instant::now();
    loop {
        let before = rig.counters("fast-c");
        let out = replies(&c, &d4, 5).and_then(|_| replies(&c, &d6, 5));
        let after = rig.counters("fast-c");
        if out.is_ok() && after.routed == before.routed && after.misses >= before.misses + 10 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still routed on the fast path: {before:?} -> {after:?} ({out:?})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_ovs_and_a_tunnel_not_the_fast_path() {
    let name = "pods_on_two_nodes_reach_each_other_through_ovs_and_a_tunnel_not_the_fast_path";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start_nodes(2, true);
    for doc in cluster::networks_of("attachnet.yaml") {
        rig.api.apply(&[doc]);
    }
    let networks = json!({"k8s.v1.cni.cncf.io/networks": "default/attachnet"});
    rig.api
        .seed(cluster::pod("node1-pod", &networks))
        .expect("pod");
    rig.api
        .seed(cluster::pod("node2-pod", &networks))
        .expect("pod");
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    let _ = rig.attach_on(0, "node1-pod", &a, "attachnet");
    let ip_b = rig.attach_on(1, "node2-pod", &b, "attachnet");
    until_reply(&a, &ip_b, SETTLE);
    let counters = rig.assert_reached_across_nodes("node1-pod", &a, &b, &ip_b);
    assert!(counters.misses > 20, "{counters:?}");
}

#[test]
fn a_routed_flow_into_a_pod_with_an_ingress_limit_is_held_to_it_on_the_fast_path() {
    let name = "a_routed_flow_into_a_pod_with_an_ingress_limit_is_held_to_it_on_the_fast_path";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(true);
    let limited = json!({"net-b.default.ovn.kubernetes.io/ingress_rate": "50"});
    let (c, d, [d4, _]) = pods_on_two_subnets(&rig, &limited);
    ping_until(&rig, &c, &d4, |n| n.routed > 0);
    let before = rig.counters("fast-c");
    rig.assert_limited_flow_on_the_fast_path("fast-c", &c, &d, &d4, 50.0);
    let after = rig.counters("fast-c");
    assert!(
        after.routed > before.routed + 100,
        "the limited flow was routed on the fast path: {before:?} -> {after:?}"
    );
}
