//! End to end on real OVN with OVS's userspace datapath: pods (network namespaces) get net1
//! through our CNI plugin, driven as Multus drives it, and the agent, which plugs the host end
//! into `br-int` of its node and answers once ovn-controller has bound the port; the controller
//! builds the logical topology. Pods on one switch ping and pass TCP; pods on two Subnets of one
//! Vpc reach each other through its router; DEL unplugs.

use std::time::{Duration, Instant};

use serde_json::json;
use sidelane_tests::{
    cluster,
    iperf::{self, IperfSpec},
    netns::NetNs,
    node_rig::{NodeRig, cni_vars},
    ovn, privilege,
};

fn ping(from: &NetNs, to: &str) -> Result<String, String> {
    from.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", to])
        .map_err(|e| format!("{e:#}"))
}

/// Pings until the first reply (OVN's flows may still be settling), then for real.
fn ping_eventually(from: &NetNs, to: &str) -> String {
    let start = Instant::now();
    loop {
        match ping(from, to) {
            Ok(out) => return out,
            Err(e) if start.elapsed() > Duration::from_secs(20) => panic!("ping {to}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn pods_on_one_switch_ping_and_pass_tcp_over_net1_through_ovn_and_del_unplugs_them() {
    let name = "pods_on_one_switch_ping_and_pass_tcp_over_net1_through_ovn_and_del_unplugs_them";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(false);
    for doc in cluster::example("attachnet.yaml")
        .into_iter()
        .filter(|d| d["kind"] != "Deployment" && d["kind"] != "Pod")
    {
        rig.api.apply(&[doc]);
    }
    let networks = json!({"k8s.v1.cni.cncf.io/networks": "default/attachnet"});
    rig.api
        .seed(cluster::pod("pod-a", &networks))
        .expect("pod-a");
    rig.api
        .seed(cluster::pod("pod-b", &networks))
        .expect("pod-b");
    let (a, b) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    let ip_a = rig.attach("pod-a", &a, "attachnet");
    let ip_b = rig.attach("pod-b", &b, "attachnet");
    // The ADD answered after ovn-controller bound the port.
    let port = rig
        .chassis()
        .vsctl(&[
            "--bare",
            "--columns=external_ids",
            "find",
            "Interface",
            "external_ids:iface-id=pod-a.default.attachnet.default.ovn",
        ])
        .expect("find");
    assert!(
        port.contains("ovn-installed=\"true\"") || port.contains("ovn-installed=true"),
        "{port}"
    );
    let out = ping_eventually(&a, &ip_b);
    assert!(out.contains("3 received"), "{out}");
    let report = iperf::measure(&b, &ip_b, &a, &IperfSpec::tcp(Duration::from_secs(1)))
        .expect("TCP over net1");
    assert!(
        report.receiver_bps > 1e6,
        "TCP passes: {} bit/s",
        report.receiver_bps
    );
    // The host ends meet nowhere but in br-int: the traffic crossed OVS and OVN's flows.
    // DEL unplugs: the OVS port goes, and pod-a no longer reaches pod-b.
    let out = sidelane_cni::run(
        &cni_vars("DEL", "pod-b", &b),
        rig.config("attachnet").as_bytes(),
    );
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let ports = rig
        .chassis()
        .vsctl(&["list-ports", "br-int"])
        .expect("list-ports");
    assert!(
        ports.contains(&NodeRig::host_end("pod-a")) && !ports.contains(&NodeRig::host_end("pod-b")),
        "pod-a's port stays, pod-b's is gone: {ports}"
    );
    assert!(
        ping(&a, &ip_b).is_err(),
        "pod-b's old address still answers"
    );
    assert!(ip_a.starts_with("172.17.0."), "{ip_a}");
}

#[test]
fn pods_on_two_subnets_of_one_vpc_reach_each_other_through_its_router() {
    let name = "pods_on_two_subnets_of_one_vpc_reach_each_other_through_its_router";
    if !privilege::require_privileges(name) || !ovn::require_installed(name) {
        return;
    }
    let rig = NodeRig::start(false);
    rig.api.seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Vpc", "metadata": {"name": "vpc-e2e"}, "spec": {}})).expect("vpc");
    for (nad, cidr) in [("net-a", "10.60.0.0/24"), ("net-b", "10.61.0.0/24")] {
        rig.api.seed(cluster::ovn_nad(nad)).expect("nad");
        rig.api
            .seed(cluster::ovn_subnet(nad, nad, cidr, "vpc-e2e"))
            .expect("subnet");
    }
    rig.api
        .seed(cluster::pod("pod-c", &json!({
            "k8s.v1.cni.cncf.io/networks": "default/net-a",
            "net-a.default.ovn.kubernetes.io/routes": r#"[{"dst":"10.61.0.0/24","gw":"10.60.0.1"}]"#,
        })))
        .expect("pod-c");
    rig.api
        .seed(cluster::pod("pod-d", &json!({
            "k8s.v1.cni.cncf.io/networks": "default/net-b",
            "net-b.default.ovn.kubernetes.io/routes": r#"[{"dst":"10.60.0.0/24","gw":"10.61.0.1"}]"#,
        })))
        .expect("pod-d");
    let (c, d) = (NetNs::new().expect("netns"), NetNs::new().expect("netns"));
    let ip_c = rig.attach("pod-c", &c, "net-a");
    let ip_d = rig.attach("pod-d", &d, "net-b");
    assert!(
        ip_c.starts_with("10.60.0.") && ip_d.starts_with("10.61.0."),
        "{ip_c} {ip_d}"
    );
    let out = ping_eventually(&c, &ip_d);
    assert!(
        out.contains("3 received") && out.contains("ttl=63"),
        "routed once: {out}"
    );
    let report = iperf::measure(&d, &ip_d, &c, &IperfSpec::tcp(Duration::from_secs(1)))
        .expect("TCP across subnets");
    assert!(
        report.receiver_bps > 1e6,
        "TCP passes: {} bit/s",
        report.receiver_bps
    );
}
