//! The real Multus thin plugin drives our CNI path as in production: a pod of the multi-NIC
//! IPAM seed, bound to a node by the real kube-scheduler, gets eth0 from the primary network and
//! net1 from the reference macvlan plugin calling our IPAM (the address the controller
//! allocated); Multus writes `network-status` to match; deleting the pod runs DEL through
//! Multus and releases the address.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sidelane_tests::{
    control_plane::{SIDELANE_NAMESPACE, SidelaneCluster},
    kubelet_standin::{self, KubeletStandin, NodeConfig},
    netns::NetNs,
    privilege,
    process::{Background, workspace_binary},
    sidelane::PinRoot,
    tools,
};

fn eventually<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(start.elapsed() < within, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The CNI folder a node installs: Multus, our plugin as `kube-ovn`, the reference plugins.
fn cni_bin(dir: &Path) {
    std::fs::create_dir_all(dir).expect("the CNI folder");
    let link = |from: &Path, name: &str| {
        std::os::unix::fs::symlink(from, dir.join(name))
            .unwrap_or_else(|e| panic!("linking {name}: {e}"));
    };
    link(
        &tools::binary("multus").expect("multus is built by setup"),
        "multus",
    );
    link(&workspace_binary("sidelane-cni"), "kube-ovn");
    for plugin in ["bridge", "host-local", "macvlan", "static", "loopback"] {
        let path = Path::new("/usr/lib/cni").join(plugin);
        if path.exists() {
            link(&path, plugin);
        }
    }
}

/// One node: a namespace whose eth0 is the macvlan master, its agent, the controller, and
/// the kubelet stand-in running Multus.
struct Node {
    kubelet: KubeletStandin,
    _agent: Background,
    _controller: Background,
    _pins: PinRoot,
    _wire: NetNs,
    _netns: NetNs,
    dir: tempfile::TempDir,
}

impl Node {
    fn start(cluster: &SidelaneCluster) -> Node {
        let multus = kubelet_standin::install_multus(cluster.plane()).expect("Multus' RBAC");
        let dir = tempfile::tempdir().expect("a temporary folder");

        // The node: a namespace whose eth0 is the macvlan master, its agent and the controller.
        let node = NetNs::new().expect("the node's namespace");
        let wire = NetNs::new().expect("the wire's namespace");
        node.exec(&[
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "up0",
            "netns",
            wire.name(),
        ])
        .expect("the node's eth0");
        node.exec(&["ip", "link", "set", "eth0", "up"])
            .expect("eth0 up");
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).expect("the run folder");
        let pins = PinRoot::new("sidelane-multus-test");
        let mut agent = Command::new(workspace_binary("sidelane-agent"));
        agent
            .arg(format!(
                "--socket={}",
                run.join("kube-ovn-daemon.sock").display()
            ))
            .arg(format!("--pin-root={}", pins.path().display()))
            .arg(format!(
                "--state-dir={}",
                dir.path().join("records").display()
            ))
            .arg(format!("--host-netns={}", node.path().display()))
            .args([
                "--ovs-db=none",
                "--fastpath=false",
                "--metrics-addr=127.0.0.1:0",
            ])
            .env("KUBECONFIG", cluster.agent_kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("the agent's log"));
        let agent = Background::spawn(&mut agent).expect("the agent starts");
        let mut controller = Command::new(workspace_binary("sidelane-controller"));
        controller
            .args([
                "--lease-namespace",
                SIDELANE_NAMESPACE,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", cluster.controller_kubeconfig())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let controller = Background::spawn(&mut controller).expect("the controller starts");

        let bin = dir.path().join("cni-bin");
        cni_bin(&bin);
        let kubelet = KubeletStandin::start(
            cluster.plane(),
            NodeConfig {
                name: "node1".to_owned(),
                netns: Some(node.name().to_owned()),
                run_dir: Some(run.clone()),
                cni_bin: bin,
                pod_cidr: "10.244.1.0/24".to_owned(),
                parallel: 4,
                dir: dir.path().join("node1"),
            },
            &multus,
        )
        .expect("the kubelet stand-in registers node1");

        Node {
            kubelet,
            _agent: agent,
            _controller: controller,
            _pins: pins,
            _wire: wire,
            _netns: node,
            dir,
        }
    }
}

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
    let node = Node::start(&cluster);
    let (kubelet, dir) = (&node.kubelet, node.dir.path());

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
            .is_some_and(|a| a.starts_with("10.244.1.")),
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
