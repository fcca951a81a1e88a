//! End to end on real OVN with OVS's userspace datapath: pods (network namespaces) get net1
//! through our CNI plugin, driven as Multus drives it, and the agent, which plugs the host end
//! into `br-int` of its node and answers once ovn-controller has bound the port; the controller
//! builds the logical topology. Pods on one switch ping and pass TCP; pods on two Subnets of one
//! Vpc reach each other through its router; DEL unplugs.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sidelane_agent::{
    attach::{Attacher, QosPort},
    cni_server,
    dataplane::{DataplaneError, qos::QosTarget},
    ovs::{Datapath, OvsBridge},
    pods::KubePods,
    records::Records,
};
use sidelane_api::qos::QosSpec;
use sidelane_controller::{
    metrics::Metrics,
    run::{self, Options},
};
use sidelane_ovsdb::parse_remotes;
use sidelane_tests::{
    apiserver::ApiServer,
    cluster,
    iperf::{self, IperfSpec},
    netns::NetNs,
    ovn::{self, Central, Chassis},
    privilege,
};
use tokio::sync::watch;

struct NoQos;

impl QosPort for NoQos {
    fn apply(&self, _: &QosTarget, _: &QosSpec) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn detach(&self, _: &QosTarget) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn sweep(&self) -> Result<(), DataplaneError> {
        Ok(())
    }
}

/// OVN central, one chassis, the API double, the controller and the node's agent.
struct Rig {
    _central: Central,
    chassis: Chassis,
    api: ApiServer,
    /// Runs the controller and the agent.
    _runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    _leading: watch::Sender<bool>,
}

impl Rig {
    fn start() -> Rig {
        let central = Central::start().expect("OVN central starts");
        let chassis = Chassis::start(&central, "node1").expect("the chassis starts");
        let api = ApiServer::start();
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The controller, leading at once, with the Northbound database.
        let (leading, rx) = watch::channel(true);
        let opts = Options {
            instance: "test".to_owned(),
            ovn_nb: Some(sidelane_ovsdb::Options::new(
                parse_remotes(&central.nb.unix_remote()).expect("remote"),
            )),
            ..Options::default()
        };
        let client = runtime.block_on(async { api.client() });
        runtime.spawn(run::lead(client, opts, Arc::new(Metrics::new()), rx));
        // The node's agent: host ends in the chassis' namespace, plugged into its br-int.
        let socket = dir.path().join("kube-ovn-daemon.sock");
        let records = Records::open(dir.path().join("records")).expect("records");
        let bridge = runtime
            .block_on(OvsBridge::connect(
                parse_remotes(&chassis.db.unix_remote())
                    .expect("remote")
                    .remove(0),
                "br-int",
                Datapath::Netdev,
                Duration::from_secs(30),
            ))
            .expect("the agent opens the chassis' Open_vSwitch database");
        let client = runtime.block_on(async { api.client() });
        let attacher = Attacher::new(
            KubePods::new(client),
            NoQos,
            records,
            Duration::from_secs(20),
        )
        .with_host_netns(chassis.ns.path())
        .with_ovs(Arc::new(bridge));
        let listener = runtime
            .block_on(async { cni_server::bind(&socket) })
            .expect("binding");
        runtime.spawn(cni_server::serve(listener, Arc::new(attacher)));
        Rig {
            _central: central,
            chassis,
            api,
            _runtime: runtime,
            dir,
            _leading: leading,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("kube-ovn-daemon.sock")
    }

    /// The NAD's config as Multus passes it to our plugin.
    fn config(&self, nad: &str) -> String {
        json!({
            "cniVersion": "0.3.1", "name": nad, "type": "kube-ovn",
            "server_socket": self.socket(), "provider": format!("{nad}.default.ovn"),
        })
        .to_string()
    }

    /// Attaches net1 of `pod` (already seeded) in `ns` through `nad`; returns its address.
    fn attach(&self, pod: &str, ns: &NetNs, nad: &str) -> String {
        let out = sidelane_cni::run(&vars("ADD", pod, ns), self.config(nad).as_bytes());
        assert_eq!(out.exit_code, 0, "ADD {pod}: {}", out.stdout);
        let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
        let cidr = result["ips"][0]["address"].as_str().expect("an address");
        cidr.split('/').next().unwrap_or_default().to_owned()
    }
}

fn vars(command: &str, pod: &str, ns: &NetNs) -> BTreeMap<String, String> {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    let container = format!("{pod}-c0ffee");
    [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container.as_str()),
        ("CNI_NETNS", &ns.path().display().to_string()),
        ("CNI_IFNAME", "net1"),
        ("CNI_ARGS", &args),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

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
    let rig = Rig::start();
    for doc in cluster::example("attachnet.yaml")
        .into_iter()
        .filter(|d| d["kind"] != "Deployment" && d["kind"] != "Pod")
    {
        cluster::apply(&rig.api, &doc);
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
        .chassis
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
        &vars("DEL", "pod-b", &b),
        rig.config("attachnet").as_bytes(),
    );
    assert_eq!(out.exit_code, 0, "{}", out.stdout);
    let ports = rig
        .chassis
        .vsctl(&["list-ports", "br-int"])
        .expect("list-ports");
    assert!(
        !ports.contains("net1_h") || ports.lines().count() == 1,
        "one port left: {ports}"
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
    let rig = Rig::start();
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
