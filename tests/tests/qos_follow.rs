//! A rate changed on a running pod is enforced at once. The real agent and controller on a
//! node driven by the real Multus: a pod's `egress_rate` annotation is lowered with
//! `kubectl annotate --overwrite` while an iperf3 flow runs out of the pod, and within a
//! second the flow runs at the new rate; the attachment's counters carry on (they are not
//! reset by the change).

use std::{thread, time::Duration};

use serde_json::{Value, json};
use sidelane_agent::dataplane::qos::{Placement, QosDataplane, QosTarget};
use sidelane_tests::{
    cluster,
    control_plane::SidelaneCluster,
    iperf::{self, IperfSpec},
    macvlan_node::{Binaries, MacvlanNode},
    privilege,
    wait::eventually,
};

fn pod(name: &str, extra: &Value) -> Value {
    cluster::pod(name, &cluster::selecting("macvlan", extra))
}

/// `kubectl annotate --overwrite pod <pod> <key>=<value>` after `delay`, as a user would.
fn annotate_later(
    cluster: &SidelaneCluster,
    delay: Duration,
    pod: &'static str,
    key: &'static str,
    value: &'static str,
) -> thread::JoinHandle<()> {
    let kubeconfig = cluster.plane().admin_kubeconfig().to_owned();
    thread::spawn(move || {
        thread::sleep(delay);
        let kubectl = sidelane_tests::tools::binary("kubectl").expect("kubectl");
        let out = std::process::Command::new(kubectl)
            .env("KUBECONFIG", kubeconfig)
            .args([
                "annotate",
                "--overwrite",
                "pod",
                pod,
                &format!("{key}={value}"),
            ])
            .output()
            .expect("kubectl annotate");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
}

#[test]
fn traffic_a_rate_annotation_changed_on_a_running_pod_is_enforced_within_a_second() {
    let name = "traffic_a_rate_annotation_changed_on_a_running_pod_is_enforced_within_a_second";
    if !privilege::require_privileges(name) {
        return;
    }
    let cluster = SidelaneCluster::start();
    let binaries = Binaries::from_workspace();
    let node = MacvlanNode::start(&cluster, &binaries, 4, &[])
        .unwrap_or_else(|e| panic!("starting node1: {e:#}"));
    cluster.apply(&cluster::networks_of("multi-nic-ipam.yaml"));
    let rate_key = "macvlan.default.kubernetes.io/egress_rate";
    cluster.apply(&[
        pod("server", &json!({})),
        pod("client", &json!({rate_key: "50"})),
    ]);
    let sandbox = |pod: &str| {
        eventually(pod, Duration::from_mins(1), || {
            node.kubelet
                .sandbox("default", pod)
                .filter(|s| s.result.is_ok())
        })
    };
    let (server, client) = (sandbox("server"), sandbox("client"));
    let server_ip = eventually("the server's address", Duration::from_secs(10), || {
        cluster.get("v1", "Pod", "default", "server").and_then(|p| {
            p["metadata"]["annotations"]["macvlan.default.kubernetes.io/ip_address"]
                .as_str()
                .map(str::to_owned)
        })
    });
    let target = QosTarget {
        netns: Some(client.netns.path()),
        ifname: "net1".to_owned(),
        placement: Placement::PodDevice,
    };
    let dataplane = QosDataplane::new(node.pin_root()).expect("the agent's QoS pins");
    let changer = annotate_later(
        &cluster,
        Duration::from_millis(2500),
        "client",
        rate_key,
        "10",
    );
    let before = dataplane.status(&target).expect("the client's limits");
    assert_eq!(before.egress.limit.rate_mbps, 50);
    let m = iperf::measure(
        &server.netns,
        &server_ip,
        &client.netns,
        &IperfSpec::tcp(Duration::from_secs(6)).interval(Duration::from_millis(500)),
    )
    .expect("iperf3 from the client to the server");
    changer.join().expect("the annotating thread");
    let after = dataplane.status(&target).expect("the client's limits");
    let series: Vec<(f64, f64)> = m
        .receiver_intervals
        .iter()
        .map(|i| (i.end, i.bits_per_second / 1e6))
        .collect();
    assert_eq!(
        after.egress.limit.rate_mbps, 10,
        "the agent applied the change"
    );
    assert!(
        after.egress.passed_bytes
            > before.egress.passed_bytes
                + m.receiver_intervals.iter().map(|i| i.bytes).sum::<u64>() / 2,
        "the counters carried on across the change: {} then {} bytes",
        before.egress.passed_bytes,
        after.egress.passed_bytes
    );
    // The annotation lands at about t = 2.5 s; from t = 3.5 s on the flow runs at 10 Mbit/s.
    let late = m.receiver_rate_between(3.5, 6.0).expect("intervals after") / 1e6;
    assert!(
        late <= 11.5,
        "after the change: {late:.1} Mbit/s; {series:?}"
    );
    let early = m.receiver_rate_between(0.5, 2.0).expect("intervals before") / 1e6;
    assert!(
        (35.0..=55.0).contains(&early),
        "before the change: {early:.1} Mbit/s; {series:?}"
    );
}
