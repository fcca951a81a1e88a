//! The agent serving IPAM to other plugins over its CNI socket, with pods read from the API
//! double: our plugin driven as Multus drives it, and Debian's reference `macvlan` plugin
//! calling us as its IPAM plugin with the seed's NAD verbatim.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use sidelane_agent::{
    api_server::KubePods,
    attach::{Attacher, QosPort},
    cni_server,
    dataplane::{
        DataplaneError,
        qos::{QosDataplane, QosTarget},
    },
    netns::NetnsPolicy,
    records::Records,
};
use sidelane_api::qos::QosSpec;
use sidelane_tests::{
    cluster, control_plane::SidelaneCluster, netns::NetNs, privilege, sidelane::PinRoot,
};

/// Records what the agent asked of the dataplane.
#[derive(Clone, Default)]
struct RecordingQos(Arc<Mutex<Vec<(QosTarget, QosSpec)>>>);

impl QosPort for RecordingQos {
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError> {
        self.0.lock().expect("lock").push((target.clone(), *spec));
        Ok(())
    }

    fn detach(&self, _target: &QosTarget) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn sweep(&self) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// An agent serving a socket in a temporary directory, on a runtime of its own.
struct Agent {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl Agent {
    /// An agent whose dataplane is a double: it accepts the test's own namespace.
    fn start<Q: QosPort>(api: &SidelaneCluster, qos: Q, timeout: Duration) -> Agent {
        Agent::start_with(
            api,
            qos,
            timeout,
            NetnsPolicy::default().accepting_own_namespace(),
        )
    }

    fn start_with<Q: QosPort>(
        api: &SidelaneCluster,
        qos: Q,
        timeout: Duration,
        policy: NetnsPolicy,
    ) -> Agent {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("kube-ovn-daemon.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let client = runtime.block_on(api.agent_client());
        let listener = runtime
            .block_on(async { cni_server::bind(&socket) })
            .expect("binding");
        let records = Records::open(dir.path().join("records")).expect("the record directory");
        let attacher = Arc::new(
            Attacher::new(KubePods::new(client), qos, records, timeout).with_netns_policy(policy),
        );
        runtime.spawn(cni_server::serve(listener, attacher));
        Agent {
            _dir: dir,
            socket,
            _runtime: runtime,
        }
    }
}

/// The cluster of the seed's macvlan NAD: its Subnet (provider `macvlan.default`).
fn seed_subnet(api: &SidelaneCluster) {
    api.seed(cluster::subnet(
        "macvlan",
        "macvlan.default",
        "172.18.0.0/16",
        None,
    ))
    .expect("seeding the Subnet");
}

/// A network namespace that exists without privileges: the test's own. Tests that fake the
/// dataplane point the runtime's `CNI_NETNS` here.
const OWN_NETNS: &str = "/proc/self/ns/net";

fn seed_pod(api: &SidelaneCluster, name: &str, annotations: &Value) {
    api.seed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "node1"}
    }))
    .expect("seeding the pod");
}

fn allocate(api: &SidelaneCluster, name: &str, annotations: &Value) {
    let client_api = api.plane().url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pods: Api<Pod> = Api::namespaced(api.client(), "default");
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching the pod on {client_api}: {e}"));
    });
}

fn macvlan_seed_config(socket: &Path) -> Value {
    // The seed's NAD (multi-nic-ipam.en.txt) verbatim, plus the name Multus adds and our socket.
    let mut cfg: Value = serde_json::from_str(
        r#"{
      "cniVersion": "0.3.0",
      "type": "macvlan",
      "master": "eth0",
      "mode": "bridge",
      "ipam": {
        "type": "kube-ovn",
        "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
        "provider": "macvlan.default"
      }
    }"#,
    )
    .expect("the seed's JSON");
    cfg["name"] = json!("macvlan");
    cfg["ipam"]["server_socket"] = json!(socket);
    cfg
}

fn cni_vars(command: &str, netns: &str, ifname: &str, pod: &str) -> BTreeMap<String, String> {
    [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", format!("cid-{pod}")),
        ("CNI_NETNS", netns.to_owned()),
        ("CNI_IFNAME", ifname.to_owned()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

const ALLOCATION: &[(&str, &str)] = &[
    ("macvlan.default.kubernetes.io/allocated", "true"),
    ("macvlan.default.kubernetes.io/ip_address", "172.18.0.9"),
    ("macvlan.default.kubernetes.io/cidr", "172.18.0.0/16"),
    ("macvlan.default.kubernetes.io/gateway", "172.18.0.1"),
    (
        "macvlan.default.kubernetes.io/routes",
        r#"[{"dst":"10.96.0.0/12","gw":"172.18.0.1"}]"#,
    ),
    ("macvlan.default.kubernetes.io/ingress_rate", "20"),
];

fn allocation() -> Value {
    Value::Object(
        ALLOCATION
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect(),
    )
}

#[test]
fn an_ipam_add_waits_for_the_controllers_allocation_and_answers_with_it() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    seed_pod(&api, "p1", &json!({}));
    let qos = RecordingQos::default();
    let agent = Agent::start(&api, qos.clone(), Duration::from_secs(20));
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let plugin = thread::spawn(move || {
        sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", "p1"), cfg.as_bytes())
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!plugin.is_finished(), "ADD must wait for the allocation");
    allocate(&api, "p1", &allocation());
    let out = plugin.join().expect("the plugin thread");
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
    assert_eq!(result["cniVersion"], json!("0.3.0"));
    assert_eq!(
        result.get("interfaces"),
        None,
        "an IPAM result names no interface"
    );
    assert_eq!(
        result["ips"],
        json!([{"address": "172.18.0.9/16", "version": "4"}]),
        "no gateway on a non-default attachment"
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "10.96.0.0/12", "gw": "172.18.0.1"}])
    );
    let applied = qos.0.lock().expect("lock").clone();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].0.ifname, "net1");
    assert_eq!(
        applied[0].1.ingress.rate_mbps, 20,
        "the pod's rate applies to IPAM-only attachments too"
    );
}

#[test]
fn an_add_that_is_never_allocated_fails_naming_pod_provider_and_what_was_missing() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    seed_pod(&api, "p2", &json!({}));
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_millis(500));
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let out = sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", "p2"), cfg.as_bytes());
    assert_eq!(out.exit_code, 1);
    let err: Value = serde_json::from_str(&out.stdout).expect("a JSON error");
    assert_eq!(err["code"], json!(11));
    let details = err["details"].as_str().expect("details");
    assert!(
        details.starts_with(
            "request ip return 500 no address allocated to pod default/p2 provider macvlan.default"
        ),
        "{details}"
    );
    assert!(
        details.contains("macvlan.default.kubernetes.io/allocated"),
        "{details}"
    );
}

#[test]
fn a_malformed_allocation_is_a_400_naming_the_annotation() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    let mut bad = allocation();
    bad["macvlan.default.kubernetes.io/ingress_rate"] = json!("-5");
    seed_pod(&api, "p3", &bad);
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_secs(5));
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let out = sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", "p3"), cfg.as_bytes());
    let err: Value = serde_json::from_str(&out.stdout).expect("a JSON error");
    let details = err["details"].as_str().expect("details");
    assert!(details.starts_with("request ip return 400"), "{details}");
    assert!(
        details.contains("macvlan.default.kubernetes.io/ingress_rate"),
        "{details}"
    );
    assert!(details.contains("-5"), "{details}");
    // A value that can never work is the spec's "invalid network configuration", not
    // "try again later".
    assert_eq!(
        (err["code"].clone(), err["msg"].clone()),
        (json!(7), json!("invalid network configuration"))
    );
}

#[test]
fn fifty_concurrent_adds_for_fifty_pods_all_get_their_own_address() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    for i in 0..50 {
        let mut a = allocation();
        a["macvlan.default.kubernetes.io/ip_address"] = json!(format!("172.18.1.{}", i + 10));
        seed_pod(&api, &format!("c{i}"), &a);
    }
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_secs(20));
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let handles: Vec<_> = (0..50)
        .map(|i| {
            let cfg = cfg.clone();
            thread::spawn(move || {
                let pod = format!("c{i}");
                let out =
                    sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", &pod), cfg.as_bytes());
                (i, out)
            })
        })
        .collect();
    for h in handles {
        let (i, out) = h.join().expect("a plugin thread");
        assert_eq!(out.exit_code, 0, "pod c{i}: {}", out.stdout);
        let result: Value = serde_json::from_str(&out.stdout).expect("JSON");
        assert_eq!(
            result["ips"][0]["address"],
            json!(format!("172.18.1.{}/16", i + 10))
        );
    }
}

#[test]
fn a_provider_that_no_subnet_serves_is_refused_with_kube_ovns_400_without_waiting() {
    let api = SidelaneCluster::start();
    seed_pod(&api, "p4", &allocation());
    // A long allocation timeout: a wait would end in a 500, not the 400 asserted.
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_mins(2));
    let mut cfg = macvlan_seed_config(&agent.socket);
    cfg["ipam"]["provider"] = json!("nosuch.default");
    let out = sidelane_cni::run(
        &cni_vars("ADD", OWN_NETNS, "net1", "p4"),
        cfg.to_string().as_bytes(),
    );
    assert_eq!(out.exit_code, 1, "{}", out.stdout);
    let err: Value = serde_json::from_str(&out.stdout).expect("a JSON error");
    assert_eq!(
        err["details"],
        json!("request ip return 400 provider nosuch.default is not bound to any subnet")
    );
}

#[test]
fn a_pod_naming_an_ovn_subnet_in_its_logical_switch_annotation_is_served_by_it() {
    // The seed's second macvlan case: the Subnet's provider is `ovn`, and the pod picks it
    // with `macvlan.default.kubernetes.io/logical_switch: macvlan`.
    let api = SidelaneCluster::start();
    api.seed(cluster::subnet("macvlan", "ovn", "172.17.0.0/16", None))
        .expect("seeding the Subnet");
    let mut annotations = allocation();
    annotations["macvlan.default.kubernetes.io/logical_switch"] = json!("macvlan");
    seed_pod(&api, "p6", &annotations);
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_secs(20));
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let out = sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", "p6"), cfg.as_bytes());
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
    assert_eq!(result["ips"][0]["address"], json!("172.18.0.9/16"));
}

#[test]
fn a_netns_path_outside_the_runtime_directories_not_a_namespace_or_the_nodes_own_is_refused_naming_it()
 {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    seed_pod(&api, "p5", &allocation());
    // A node's policy: the runtime's directories, never the agent's own namespace.
    let agent = Agent::start_with(
        &api,
        RecordingQos::default(),
        Duration::from_secs(20),
        NetnsPolicy::default(),
    );
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    // The agent runs in this process: its namespace is the node's own.
    let own = format!("/proc/{}/ns/net", std::process::id());
    for (path, reason) in [
        (
            "/etc/hostname",
            "outside the runtime's network namespace directories",
        ),
        (
            "/proc/self/ns/mnt",
            "outside the runtime's network namespace directories",
        ),
        // A network namespace, but not where a runtime puts pods.
        (
            "/proc/self/ns/net",
            "outside the runtime's network namespace directories",
        ),
        (
            "/run/netns/../../etc/hostname",
            "not an absolute path without `.` or `..`",
        ),
        ("/var/run/netns/no-such-pod", "not a network namespace"),
        (own.as_str(), "the node's own network namespace"),
    ] {
        let out = sidelane_cni::run(&cni_vars("ADD", path, "net1", "p5"), cfg.as_bytes());
        assert_eq!(out.exit_code, 1, "{path}: {}", out.stdout);
        let err: Value = serde_json::from_str(&out.stdout).expect("a JSON error");
        let details = err["details"].as_str().expect("details");
        assert_eq!(
            details,
            format!("request ip return 400 bad request: net_ns is {path:?}: {reason}")
        );
        // CNI_NETNS is the runtime's variable: the spec's code 4, not 11.
        assert_eq!(err["code"], json!(4), "{path}");
    }
}

#[test]
fn gc_removes_the_attachments_the_runtime_no_longer_lists_and_keeps_the_others() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    for pod in ["g1", "g2", "g3"] {
        seed_pod(&api, pod, &allocation());
    }
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_secs(20));
    let mut cfg = macvlan_seed_config(&agent.socket);
    for pod in ["g1", "g2", "g3"] {
        let out = sidelane_cni::run(
            &cni_vars("ADD", OWN_NETNS, "net1", pod),
            cfg.to_string().as_bytes(),
        );
        assert_eq!(out.exit_code, 0, "{pod}: {}", out.stdout);
    }
    let recorded = || {
        let mut names: Vec<String> = std::fs::read_dir(agent.socket.with_file_name("records"))
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
    };
    assert_eq!(
        recorded(),
        ["cid-g1+net1.json", "cid-g2+net1.json", "cid-g3+net1.json"]
    );
    // As a runtime sends GC (CNI 1.1.0): the network's config with what it still uses.
    cfg["cniVersion"] = json!("1.1.0");
    cfg["cni.dev/valid-attachments"] = json!([{"containerID": "cid-g2", "ifname": "net1"}]);
    let mut vars = cni_vars("GC", "", "", "");
    vars.retain(|k, _| k == "CNI_COMMAND");
    let out = sidelane_cni::run(&vars, cfg.to_string().as_bytes());
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert_eq!(recorded(), ["cid-g2+net1.json"]);
    // Another network's GC never touches this network's attachments.
    cfg["ipam"]["provider"] = json!("other.default");
    cfg["cni.dev/valid-attachments"] = json!([]);
    let out = sidelane_cni::run(&vars, cfg.to_string().as_bytes());
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    assert_eq!(recorded(), ["cid-g2+net1.json"]);
}

/// Our plugin installed as `kube-ovn` in a `CNI_PATH` directory, as a node has it.
fn installed_plugin_dir() -> tempfile::TempDir {
    let exe = std::env::current_exe().expect("the test binary's path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sidelane-cni"))
        .expect("the target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (cargo build) before this test",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::os::unix::fs::symlink(&bin, dir.path().join("kube-ovn")).expect("installing kube-ovn");
    dir
}

#[test]
fn the_reference_macvlan_plugin_gets_the_annotated_address_from_us_and_its_rate_is_attached() {
    if !privilege::require_privileges(
        "the_reference_macvlan_plugin_gets_the_annotated_address_from_us_and_its_rate_is_attached",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    seed_pod(&api, "m1", &allocation());
    let pins = PinRoot::new("sidelane-cni-test");
    let dataplane = QosDataplane::new(pins.path()).expect("the QoS dataplane");
    let agent = Agent::start(&api, dataplane, Duration::from_secs(20));
    // The node: a namespace whose "eth0" is the macvlan master, as in the seed.
    let node = NetNs::new().expect("node namespace");
    let peer = NetNs::new().expect("peer namespace");
    node.veth_to("eth0", &peer, "up0").expect("the node's eth0");
    let pod = NetNs::new().expect("pod namespace");
    let plugins = installed_plugin_dir();
    let cni_path = format!("{}:/usr/lib/cni", plugins.path().display());
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let run = |command: &str| {
        let mut cmd = node.command(&["/usr/lib/cni/macvlan"]);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "cid-m1")
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "net1")
            .env("CNI_PATH", &cni_path)
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=m1",
            );
        sidelane_tests::process::run(&mut cmd, Some(cfg.as_bytes()), Duration::from_mins(1))
            .expect("running the macvlan plugin")
    };
    let added = run("ADD");
    assert!(
        added.status.success(),
        "macvlan ADD: {} {}",
        added.stdout,
        added.stderr
    );
    let result: Value = serde_json::from_str(&added.stdout).expect("macvlan's result");
    assert_eq!(
        result["ips"][0]["address"],
        json!("172.18.0.9/16"),
        "{result}"
    );

    let addrs: Value = serde_json::from_str(
        &pod.exec(&["ip", "-j", "-4", "addr", "show", "dev", "net1"])
            .expect("ip addr"),
    )
    .expect("ip's JSON");
    let inet: Vec<String> = addrs[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            format!(
                "{}/{}",
                a["local"].as_str().unwrap_or_default(),
                a["prefixlen"]
            )
        })
        .collect();
    assert_eq!(inet, vec!["172.18.0.9/16".to_owned()]);
    let routes = pod
        .exec(&["ip", "-4", "route", "show", "dev", "net1"])
        .expect("ip route");
    assert!(routes.contains("10.96.0.0/12 via 172.18.0.1"), "{routes}");
    let filters = pod
        .exec(&["tc", "filter", "show", "dev", "net1", "ingress"])
        .expect("tc filter");
    assert!(
        filters.contains("sl_qos_pod_ingress"),
        "the ingress_rate is enforced on the macvlan inside the pod: {filters}"
    );

    let deleted = run("DEL");
    assert!(
        deleted.status.success(),
        "macvlan DEL: {} {}",
        deleted.stdout,
        deleted.stderr
    );
    let links = pod.exec(&["ip", "-o", "link"]).expect("ip link");
    assert!(!links.contains("net1"), "{links}");
}

#[test]
fn traffic_into_an_ipam_only_macvlan_pod_is_held_to_its_ingress_rate() {
    if !privilege::require_privileges(
        "traffic_into_an_ipam_only_macvlan_pod_is_held_to_its_ingress_rate",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    // Pod "limited" has ingress_rate 20 (from ALLOCATION); pod "sender" has no limit.
    seed_pod(&api, "limited", &allocation());
    let mut sender = allocation();
    sender["macvlan.default.kubernetes.io/ip_address"] = json!("172.18.0.10");
    sender
        .as_object_mut()
        .expect("an object")
        .remove("macvlan.default.kubernetes.io/ingress_rate");
    seed_pod(&api, "sender", &sender);
    let pins = PinRoot::new("sidelane-cni-traffic");
    let dataplane = QosDataplane::new(pins.path()).expect("the QoS dataplane");
    let agent = Agent::start(&api, dataplane, Duration::from_secs(20));
    let node = NetNs::new().expect("node namespace");
    let peer = NetNs::new().expect("peer namespace");
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
        peer.name(),
    ])
    .expect("the node's eth0");
    node.exec(&["ip", "link", "set", "eth0", "up"])
        .expect("eth0 up");
    // The master needs a carrier for its macvlans to have one.
    peer.exec(&["ip", "link", "set", "up0", "up"])
        .expect("the wire's far end up");
    let plugins = installed_plugin_dir();
    let cni_path = format!("{}:/usr/lib/cni", plugins.path().display());
    let cfg = macvlan_seed_config(&agent.socket).to_string();
    let pods: Vec<(NetNs, &str)> = ["limited", "sender"]
        .into_iter()
        .map(|name| (NetNs::new().expect("pod namespace"), name))
        .collect();
    for (pod, name) in &pods {
        let mut cmd = node.command(&["/usr/lib/cni/macvlan"]);
        cmd.env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("cid-{name}"))
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "net1")
            .env("CNI_PATH", &cni_path)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
            );
        let out =
            sidelane_tests::process::run(&mut cmd, Some(cfg.as_bytes()), Duration::from_mins(1))
                .expect("running macvlan");
        assert!(
            out.status.success(),
            "macvlan ADD for {name}: {} {}",
            out.stdout,
            out.stderr
        );
    }
    let spec = sidelane_tests::iperf::IperfSpec::tcp(Duration::from_secs(5));
    let report = sidelane_tests::iperf::measure(&pods[0].0, "172.18.0.9", &pods[1].0, &spec)
        .expect("iperf3 between the two macvlan pods");
    let mbps = report.receiver_bps / 1e6;
    assert!(
        (15.0..=21.0).contains(&mbps),
        "ingress (into the pod) at 20 Mbit/s on an IPAM-only macvlan measured {mbps:.1} Mbit/s"
    );
}

/// Sends `raw` on a fresh connection to `socket` and returns the status line's code, or `None`
/// when the agent closed the connection without an answer.
fn raw_exchange(socket: &Path, raw: &[u8]) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("a read timeout");
    // The agent may answer (and close) before the whole body is written.
    let _ = stream.write_all(raw);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: agent\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[test]
fn ten_thousand_malformed_requests_leave_the_agent_serving_others() {
    let api = SidelaneCluster::start();
    seed_subnet(&api);
    seed_pod(&api, "p9", &allocation());
    let agent = Agent::start(&api, RecordingQos::default(), Duration::from_secs(20));
    let socket = agent.socket.clone();
    // Connections that send half a request and hold it: they must not starve the others.
    let mut held = Vec::new();
    for _ in 0..32 {
        use std::io::Write as _;
        let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connecting");
        s.write_all(b"POST /api/v1/add HTTP/1.1\r\nHost: ag")
            .expect("writing half a request");
        held.push(s);
    }
    let valid_but_hostile = serde_json::to_vec(&json!({
        "cni_type": "macvlan", "pod_name": "p9", "pod_namespace": "default",
        "container_id": "x", "net_ns": "/etc/passwd", "if_name": "net1", "provider": "macvlan.default"
    }))
    .expect("JSON");
    let kinds: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x00\xff\xfeGARBAGE \r\n\r\n".to_vec()),
        ("invalid JSON", post("/api/v1/add", b"{\"pod_name\": ")),
        ("wrong type", post("/api/v1/del", b"[1, 2, 3]")),
        (
            "GET",
            b"GET /api/v1/add HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("unknown path", post("/api/v1/../../etc/passwd", b"{}")),
        ("netns outside", post("/api/v1/add", &valid_but_hostile)),
        (
            "truncated body",
            b"POST /api/v1/add HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n{\"pod".to_vec(),
        ),
        (
            "oversized body",
            post("/api/v1/add", &vec![b' '; 70 * 1024]),
        ),
    ];
    let kinds = Arc::new(kinds);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let socket = socket.clone();
            let kinds = Arc::clone(&kinds);
            thread::spawn(move || {
                let mut answers: BTreeMap<String, usize> = BTreeMap::new();
                for i in 0..1250 {
                    let (name, raw) = &kinds[(t + i) % kinds.len()];
                    let code = raw_exchange(&socket, raw)
                        .map_or_else(|| "closed".to_owned(), |c| c.to_string());
                    *answers.entry(format!("{name}: {code}")).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    // A real ADD while the barrage runs.
    let cfg = macvlan_seed_config(&socket).to_string();
    let during = sidelane_cni::run(&cni_vars("ADD", OWN_NETNS, "net1", "p9"), cfg.as_bytes());
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for t in threads {
        for (k, n) in t.join().expect("a barrage thread") {
            *answers.entry(k).or_default() += n;
        }
    }
    assert_eq!(
        during.exit_code, 0,
        "the ADD during the barrage: {}",
        during.stdout
    );
    // Each kind refused with its own status, every time; none served, none dropped.
    let expected: BTreeMap<String, usize> = [
        ("garbage: 400", 1250),
        ("invalid JSON: 400", 1250),
        ("wrong type: 400", 1250),
        ("GET: 405", 1250),
        ("unknown path: 404", 1250),
        ("netns outside: 400", 1250),
        ("truncated body: 400", 1250),
        ("oversized body: 413", 1250),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_owned(), n))
    .collect();
    assert_eq!(answers, expected);
    // And after it a DEL still works.
    let check = sidelane_cni::run(&cni_vars("DEL", OWN_NETNS, "net1", "p9"), cfg.as_bytes());
    assert_eq!(
        check.exit_code, 0,
        "the DEL after the barrage: {}",
        check.stdout
    );
    drop(held);
}
