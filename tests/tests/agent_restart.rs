//! The `sidelane-agent` binary as a node runs it (its own process, pods read from the API double
//! through a kubeconfig, host ends in a node namespace): attachments made before it is killed keep working while it is down and
//! after it restarts; the restarted agent takes back what is still in place and cleans up after
//! a pod whose namespace went away meanwhile.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use serde_json::json;
use sidelane_tests::{
    cluster, control_plane::SidelaneCluster, netns::NetNs, privilege, process::Background,
    sidelane::PinRoot,
};

const PROVIDER: &str = "attachnet.default.ovn";

fn seed_pod(api: &SidelaneCluster, name: &str, ip: &str, mac: &str, ingress_rate: Option<&str>) {
    let mut annotations = json!({
        "k8s.v1.cni.cncf.io/networks": "default/attachnet",
        format!("{PROVIDER}.kubernetes.io/allocated"): "true",
        format!("{PROVIDER}.kubernetes.io/ip_address"): ip,
        format!("{PROVIDER}.kubernetes.io/cidr"): "172.17.0.0/16",
        format!("{PROVIDER}.kubernetes.io/gateway"): "172.17.0.1",
        format!("{PROVIDER}.kubernetes.io/mac_address"): mac,
    });
    if let Some(rate) = ingress_rate {
        annotations[format!("{PROVIDER}.kubernetes.io/ingress_rate")] = json!(rate);
    }
    api.seed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "alpine"}], "nodeName": "node1"}
    }))
    .expect("seeding the pod");
}

/// The seed's `attachnet` NAD, as Multus hands it to the plugin.
fn config(socket: &Path, version: &str) -> String {
    json!({"cniVersion": version, "name": "attachnet", "type": "kube-ovn",
           "server_socket": socket, "provider": PROVIDER})
    .to_string()
}

fn vars(command: &str, cid: &str, netns: &Path, pod: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", cid.to_owned()),
        ("CNI_NETNS", netns.display().to_string()),
        ("CNI_IFNAME", "net1".to_owned()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

struct Node {
    netns: NetNs,
    dir: tempfile::TempDir,
    pins: PinRoot,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("kube-ovn-daemon.sock")
    }

    fn records(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path().join("records"))
            .expect("the record directory")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Starts the agent binary inside the node's namespace and waits until it answers STATUS.
    fn start_agent(&self) -> Background {
        let agent = sidelane_tests::process::workspace_binary("sidelane-agent");
        // The agent runs beside the API double (loopback); the node's side of pod interfaces
        // is a namespace of its own, as the lab's simulated nodes have it.
        let socket = self.socket();
        let host_netns = self.netns.path();
        let mut cmd = std::process::Command::new(agent);
        cmd.args([
            "--host-netns".as_ref(),
            host_netns.as_os_str(),
            "--socket".as_ref(),
            socket.as_os_str(),
            "--pin-root".as_ref(),
            self.pins.path().as_os_str(),
            "--state-dir".as_ref(),
            self.dir.path().join("records").as_os_str(),
            "--allocation-timeout".as_ref(),
            "10".as_ref(),
            // This test is about the agent's own state: no OVS on this node.
            "--ovs-db".as_ref(),
            "none".as_ref(),
            "--metrics-addr".as_ref(),
            "127.0.0.1:0".as_ref(),
        ]);
        cmd.env("KUBECONFIG", self.dir.path().join("kubeconfig"))
            .env("RUST_LOG", "info");
        let mut process = Background::spawn(&mut cmd).expect("starting sidelane-agent");
        let status_vars: BTreeMap<String, String> =
            [("CNI_COMMAND".to_owned(), "STATUS".to_owned())].into();
        let cfg = config(&socket, "1.1.0");
        let start = Instant::now();
        loop {
            let out = sidelane_cni::run(&status_vars, cfg.as_bytes());
            if out.exit_code == 0 {
                return process;
            }
            assert!(
                process.is_running(),
                "sidelane-agent exited: {}",
                out.stdout
            );
            assert!(
                start.elapsed() < Duration::from_mins(1),
                "sidelane-agent never answered STATUS: {}",
                out.stdout
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ping(from: &NetNs, to: &str) -> bool {
    from.exec(&["ping", "-c", "1", "-W", "2", to]).is_ok()
}

#[test]
fn a_restarted_agent_keeps_attachments_in_place_and_cleans_up_after_vanished_pods() {
    if !privilege::require_privileges(
        "a_restarted_agent_keeps_attachments_in_place_and_cleans_up_after_vanished_pods",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    api.seed(cluster::subnet(
        "attachnet",
        PROVIDER,
        "172.17.0.0/16",
        None,
    ))
    .expect("seeding the Subnet");
    seed_pod(&api, "ra", "172.17.0.21", "00:00:00:21:00:01", Some("50"));
    seed_pod(&api, "rb", "172.17.0.22", "00:00:00:21:00:02", None);
    let node = Node {
        netns: NetNs::new().expect("node namespace"),
        dir: tempfile::tempdir().expect("a temporary directory"),
        pins: PinRoot::new("sidelane-agent-restart"),
    };
    // The agent runs as the chart's agent ServiceAccount.
    std::fs::copy(api.agent_kubeconfig(), node.dir.path().join("kubeconfig"))
        .expect("writing the kubeconfig");
    let pod_a = NetNs::new().expect("pod namespace");
    let pod_b = NetNs::new().expect("pod namespace");

    let mut agent = node.start_agent();
    let cfg = config(&node.socket(), "0.3.0");
    let mut results = Vec::new();
    for (cid, pod, ns) in [("aaaa1111", "ra", &pod_a), ("bbbb2222", "rb", &pod_b)] {
        let out = sidelane_cni::run(&vars("ADD", cid, &ns.path(), pod), cfg.as_bytes());
        assert_eq!(out.exit_code, 0, "{pod}: {}", out.stdout);
        results.push(out.stdout);
    }
    assert_eq!(node.records(), ["aaaa1111+net1.json", "bbbb2222+net1.json"]);
    // The host end stands in for OVS: an address on it lets the node reach the pod.
    node.netns
        .exec(&[
            "ip",
            "addr",
            "add",
            "172.17.0.1/16",
            "dev",
            "aaaa1111_net1_h",
        ])
        .expect("an address on the host end");
    assert!(ping(&node.netns, "172.17.0.21"), "the pod answers");
    let filters = || {
        node.netns
            .exec(&["tc", "filter", "show", "dev", "aaaa1111_net1_h", "egress"])
            .expect("tc filter")
    };
    assert!(filters().contains("sl_qos"), "ingress_rate: {}", filters());

    // The agent dies; the attachment keeps working without it.
    agent.child_mut().kill().expect("killing the agent");
    let _ = agent.child_mut().wait();
    assert!(
        ping(&node.netns, "172.17.0.21"),
        "the pod answers while the agent is down"
    );
    // Pod rb goes away meanwhile (its namespace, and with it both ends of its veth).
    drop(pod_b);
    let links = node.netns.exec(&["ip", "-o", "link"]).expect("node links");
    assert!(!links.contains("bbbb2222_net1_h"), "{links}");

    let _agent = node.start_agent();
    assert_eq!(
        node.records(),
        ["aaaa1111+net1.json"],
        "the vanished pod's record is gone, the live one kept"
    );
    assert!(
        ping(&node.netns, "172.17.0.21"),
        "the pod answers after the restart"
    );
    assert!(
        filters().contains("sl_qos"),
        "the limit stays: {}",
        filters()
    );
    // CHECK with the ADD's result as prevResult, as a runtime passes it.
    let mut check_cfg: serde_json::Value =
        serde_json::from_str(&config(&node.socket(), "0.4.0")).expect("the config");
    check_cfg["prevResult"] = serde_json::from_str(&results[0]).expect("ADD's result");
    let check = sidelane_cni::run(
        &vars("CHECK", "aaaa1111", &pod_a.path(), "ra"),
        check_cfg.to_string().as_bytes(),
    );
    assert_eq!(check.exit_code, 0, "{}", check.stdout);

    let out = sidelane_cni::run(
        &vars("DEL", "aaaa1111", &pod_a.path(), "ra"),
        cfg.as_bytes(),
    );
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert!(node.records().is_empty(), "{:?}", node.records());
    let links = node.netns.exec(&["ip", "-o", "link"]).expect("node links");
    assert!(!links.contains("aaaa1111_net1_h"), "{links}");
    let pinned: Vec<_> = std::fs::read_dir(node.pins.path().join("qos"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pinned.is_empty(), "no pins remain: {pinned:?}");
}
