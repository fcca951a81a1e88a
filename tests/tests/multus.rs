//! The real Multus thin plugin drives our CNI path as in production: a pod of the multi-NIC
//! IPAM seed, bound to a node by the real kube-scheduler, gets eth0 from the primary network and
//! net1 from the reference macvlan plugin calling our IPAM (the address the controller
//! allocated); Multus writes `network-status` to match; deleting the pod runs DEL through
//! Multus and releases the address.

use std::{path::Path, time::Duration};

use serde_json::Value;
use sidelane_tests::{
    control_plane::SidelaneCluster,
    macvlan_node::{Binaries, MacvlanNode},
    privilege,
    wait::eventually,
};

/// The entry for `ifname` in the pod's `k8s.v1.cni.cncf.io/network-status` (Multus').
fn network_status(pod: &Value, ifname: &str) -> Value {
    let status: Value = serde_json::from_str(
        pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
            .as_str()
            .unwrap_or_default(),
    )
    .expect("network-status is JSON");
    status
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["interface"] == ifname)
        .cloned()
        .unwrap_or_else(|| panic!("network-status lists {ifname}: {status}"))
}

#[test]
fn multus_attaches_the_multi_nic_seed_through_our_ipam_and_reports_network_status() {
    let name = "multus_attaches_the_multi_nic_seed_through_our_ipam_and_reports_network_status";
    if !privilege::require_privileges(name) {
        return;
    }
    let cluster = SidelaneCluster::with_controllers();
    let binaries = Binaries::from_workspace();
    let node = MacvlanNode::start(&cluster, &binaries, 4, &[])
        .unwrap_or_else(|e| panic!("starting node1: {e:#}"));
    let (kubelet, dir) = (&node.kubelet, node.dir());

    // The seed, verbatim, with validation on.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/multi-nic-ipam.yaml");
    cluster
        .plane()
        .kubectl_run(
            &[
                "apply",
                "--validate=strict",
                "-f",
                &seed.display().to_string(),
            ],
            None,
        )
        .expect("kubectl apply of the seed");

    let sandbox = eventually("samplepod's sandbox", Duration::from_mins(1), || {
        kubelet.sandbox("default", "samplepod")
    });
    let result = sandbox.result.as_ref().unwrap_or_else(|e| {
        panic!(
            "Multus ADD failed: {e}\nagent log: {}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        )
    });
    assert!(
        result["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.244.")),
        "eth0 from the primary network: {result}"
    );
    let net1: Value = serde_json::from_str(
        &sandbox
            .netns
            .exec(&["ip", "-j", "-4", "addr", "show", "dev", "net1"])
            .expect("ip addr"),
    )
    .expect("ip's JSON");
    assert_eq!(
        net1[0]["addr_info"][0]["local"], "172.17.0.11",
        "net1 has the seed's first free address"
    );

    // Multus wrote network-status, and it matches the pod's interfaces.
    let pod = eventually(
        "samplepod Running with network-status",
        Duration::from_secs(30),
        || {
            cluster
                .get("v1", "Pod", "default", "samplepod")
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"]
                            .is_string()
                })
        },
    );
    let attachment = network_status(&pod, "net1");
    assert_eq!(attachment["name"], "default/macvlan");
    assert_eq!(attachment["ips"][0], "172.17.0.11");
    assert_eq!(
        pod["spec"]["nodeName"], "node1",
        "bound by the real scheduler"
    );

    // Deleting the pod: DEL through Multus, the deletion confirmed, the address released.
    cluster
        .plane()
        .kubectl_run(&["delete", "pod", "samplepod", "--wait=false"], None)
        .expect("deleting samplepod");
    eventually("samplepod gone", Duration::from_mins(1), || {
        cluster
            .get("v1", "Pod", "default", "samplepod")
            .is_none()
            .then_some(())
    });
    eventually("its IP resource released", Duration::from_secs(30), || {
        cluster
            .get(
                "kubeovn.io/v1",
                "IP",
                "",
                "samplepod.default.macvlan.default",
            )
            .is_none()
            .then_some(())
    });
    assert!(
        kubelet.sandbox("default", "samplepod").is_none(),
        "the sandbox is gone"
    );
}
