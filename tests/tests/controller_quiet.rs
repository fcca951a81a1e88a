//! A controller with nothing to do writes nothing. On a real control plane, with the
//! controller and an agent running as in production (the chart's identities), a pod attached
//! through Multus, pods whose attachments are refused (an address held by another pod, an
//! invalid Subnet) and the invalid Subnet itself: once settled, the API server serves no write
//! at all for a minute, counted by its own `apiserver_request_total`. The Lease renewals of
//! leader election are the one write expected, and are left out.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sidelane_tests::{
    cluster,
    control_plane::SidelaneCluster,
    macvlan_node::{Binaries, MacvlanNode},
    privilege,
    wait::eventually,
};

/// A pod of `networks` on `node` with these annotations besides.
fn pod(name: &str, node: &str, networks: &str, extra: &Value) -> Value {
    cluster::pod_on(name, node, &cluster::selecting(networks, extra))
}

/// Writes other than the Lease renewals of leader election.
fn writes(cluster: &SidelaneCluster) -> BTreeMap<String, u64> {
    let mut all = cluster.plane().writes().expect("the API server's metrics");
    all.retain(|what, _| !what.ends_with(" leases"));
    all
}

/// What grew between two counts.
fn grown(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let was = before.get(k).copied().unwrap_or(0);
            (*v > was).then(|| (k.clone(), v - was))
        })
        .collect()
}

fn has_warning(cluster: &SidelaneCluster, pod: &str) -> Option<()> {
    cluster
        .list("events.k8s.io/v1", "Event", Some("default"))
        .iter()
        .any(|e| e["regarding"]["name"] == pod && e["type"] == "Warning")
        .then_some(())
}

#[test]
fn an_idle_controller_and_agent_make_no_write_for_a_minute_with_refused_pods_and_an_invalid_subnet()
{
    let name = "an_idle_controller_and_agent_make_no_write_for_a_minute_with_refused_pods_and_an_invalid_subnet";
    if !privilege::require_privileges(name) {
        return;
    }
    let cluster = SidelaneCluster::start();
    let binaries = Binaries::from_workspace();
    let node = MacvlanNode::start(&cluster, &binaries, 4, &[])
        .unwrap_or_else(|e| panic!("starting node1: {e:#}"));
    cluster.apply(&cluster::networks_of("multi-nic-ipam.yaml"));
    // The gateway lies outside the CIDR block.
    cluster.apply(&[
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "broken", "namespace": "default"},
            "spec": {"config": r#"{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "ipam": {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "broken.default"}}"#}}),
        json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "broken"},
            "spec": {"provider": "broken.default", "cidrBlock": "10.88.0.0/24", "gateway": "10.99.0.1"}}),
    ]);
    let static_ip = json!({"macvlan.default.kubernetes.io/ip_address": "172.17.0.50"});
    // Attached through Multus on node1; the others are bound to a node nothing runs, so that
    // only Sidelane acts on them.
    cluster.apply(&[
        pod("attached", "node1", "macvlan", &json!({})),
        pod("holder", "elsewhere", "macvlan", &static_ip),
        pod("refused-taken", "elsewhere", "macvlan", &static_ip),
        pod("refused-invalid-subnet", "elsewhere", "broken", &json!({})),
    ]);
    eventually(
        "attached Running with network-status",
        Duration::from_mins(1),
        || {
            cluster.get("v1", "Pod", "default", "attached").filter(|p| {
                p["status"]["phase"] == "Running"
                    && p["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].is_string()
            })
        },
    );
    eventually(
        "a Warning on refused-taken",
        Duration::from_secs(30),
        || has_warning(&cluster, "refused-taken"),
    );
    eventually(
        "a Warning on refused-invalid-subnet",
        Duration::from_secs(30),
        || has_warning(&cluster, "refused-invalid-subnet"),
    );
    eventually(
        "the invalid Subnet's status",
        Duration::from_secs(30),
        || {
            cluster
                .get("kubeovn.io/v1", "Subnet", "", "broken")
                .filter(|s| s["status"]["conditions"][0]["status"] == "False")
        },
    );
    // Settled: the work above has been written (at most 20 s).
    let mut last = writes(&cluster);
    let settling = Instant::now();
    while settling.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_secs(3));
        let now = writes(&cluster);
        if now == last {
            break;
        }
        last = now;
    }
    let before = writes(&cluster);
    let window = Instant::now();
    let mut during = BTreeMap::new();
    // The whole minute, unless writes show up sooner (then the test has its answer).
    while window.elapsed() < Duration::from_mins(1) && during.is_empty() {
        std::thread::sleep(Duration::from_secs(2));
        during = grown(&before, &writes(&cluster));
    }
    assert!(
        during.is_empty(),
        "writes while idle (within {:.0} s): {during:?}\ncontroller log: {}",
        window.elapsed().as_secs_f64(),
        std::fs::read_to_string(node.dir().join("controller.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
