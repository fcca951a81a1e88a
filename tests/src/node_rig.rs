//! One node of real OVN (central, a chassis with OVS's userspace datapath), the API double, the
//! controller (leading, building the topology) and the node's agent (QoS with a private pin
//! root, the fast path when asked, ports plugged into the chassis' `br-int`), with pods as
//! network namespaces attached through our CNI plugin exactly as Multus drives it.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use sidelane_agent::{
    attach::Attacher,
    cni_server,
    dataplane::{fastpath::FastpathDataplane, qos::QosDataplane},
    link,
    metrics::{self, FastpathCollector},
    ovs::{Datapath, OvsBridge},
    pods::KubePods,
    records::Records,
};
use sidelane_agent_common::fastpath::FastpathCounters;
use sidelane_controller::{
    metrics::Metrics,
    run::{self, Options},
};
use sidelane_ovsdb::parse_remotes;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    apiserver::ApiServer,
    netns::NetNs,
    ovn::{Central, Chassis},
    sidelane::PinRoot,
};

/// The rig.
pub struct NodeRig {
    /// OVN central (Northbound, Southbound, northd).
    pub central: Central,
    /// The node.
    pub chassis: Chassis,
    /// The Kubernetes API double.
    pub api: ApiServer,
    /// Runs the controller and the agent.
    pub runtime: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    pins: PinRoot,
    with_fastpath: bool,
    agent: Option<JoinHandle<()>>,
    /// The agent's fast path (while the agent runs with one).
    pub fastpath: Option<Arc<Mutex<FastpathDataplane>>>,
    _leading: watch::Sender<bool>,
}

/// A container ID unique per pod name (the host-end names take its first characters).
pub fn container_id(pod: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in pod.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}c0ffee")
}

/// CNI variables for `command` on `pod`'s net1 in `ns`.
pub fn cni_vars(command: &str, pod: &str, ns: &NetNs) -> BTreeMap<String, String> {
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
    [
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", container_id(pod)),
        ("CNI_NETNS", ns.path().display().to_string()),
        ("CNI_IFNAME", "net1".to_owned()),
        ("CNI_ARGS", args),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl NodeRig {
    /// Starts everything; the agent's fast path is on when `fastpath`.
    ///
    /// # Panics
    /// When a part does not start (a broken rig is a failed test).
    pub fn start(fastpath: bool) -> NodeRig {
        let central = Central::start().expect("OVN central starts");
        let chassis = Chassis::start(&central, "node1").expect("the chassis starts");
        let api = ApiServer::start();
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
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
        let mut rig = NodeRig {
            central,
            chassis,
            api,
            runtime,
            dir: tempfile::tempdir().expect("a temporary directory"),
            pins: PinRoot::new("sidelane-node-rig"),
            with_fastpath: fastpath,
            agent: None,
            fastpath: None,
            _leading: leading,
        };
        rig.start_agent();
        rig
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("kube-ovn-daemon.sock")
    }

    /// (Re)starts the agent: a fresh attacher over the same records, pins and bridge, as a
    /// restarted agent process would have.
    ///
    /// # Panics
    /// When the agent cannot start.
    pub fn start_agent(&mut self) {
        let records = Records::open(self.dir.path().join("records")).expect("records");
        let remote = parse_remotes(&self.chassis.db.unix_remote())
            .expect("remote")
            .remove(0);
        let bridge = self
            .runtime
            .block_on(OvsBridge::connect(
                remote,
                "br-int",
                Datapath::Netdev,
                Duration::from_secs(30),
            ))
            .expect("the agent opens the chassis' Open_vSwitch database");
        let qos = QosDataplane::new(self.pins.path()).expect("the QoS dataplane");
        let client = self.runtime.block_on(async { self.api.client() });
        let mut attacher =
            Attacher::new(KubePods::new(client), qos, records, Duration::from_secs(20))
                .with_host_netns(self.chassis.ns.path())
                .with_ovs(Arc::new(bridge));
        if self.with_fastpath {
            let mut fp = FastpathDataplane::open(self.pins.path()).expect("the fast path");
            fp.sweep(Some(&self.chassis.ns.path())).expect("sweep");
            let fp = Arc::new(Mutex::new(fp));
            attacher = attacher.with_fastpath(Arc::clone(&fp));
            self.fastpath = Some(fp);
        }
        let attacher = Arc::new(attacher);
        let recovered = self.runtime.block_on(attacher.recover());
        recovered.expect("the agent takes back its attachments");
        let _ = std::fs::remove_file(self.socket());
        let socket = self.socket();
        let listener = self
            .runtime
            .block_on(async { cni_server::bind(&socket) })
            .expect("binding");
        self.agent = Some(self.runtime.spawn(cni_server::serve(listener, attacher)));
    }

    /// Stops the agent (what is pinned and attached stays, as when the process exits).
    pub fn stop_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.abort();
        }
        self.fastpath = None;
        // Let the aborted server drop the attacher (and with it the maps' descriptors).
        std::thread::sleep(Duration::from_millis(100));
    }

    /// The NAD's config as Multus passes it to our plugin.
    pub fn config(&self, nad: &str) -> String {
        json!({
            "cniVersion": "0.3.1", "name": nad, "type": "kube-ovn",
            "server_socket": self.socket(), "provider": format!("{nad}.default.ovn"),
        })
        .to_string()
    }

    /// ADD of `pod`'s net1 (the pod already seeded) in `ns` through `nad`: its address.
    ///
    /// # Panics
    /// When the ADD fails.
    pub fn attach(&self, pod: &str, ns: &NetNs, nad: &str) -> String {
        let out = sidelane_cni::run(&cni_vars("ADD", pod, ns), self.config(nad).as_bytes());
        assert_eq!(out.exit_code, 0, "ADD {pod}: {}", out.stdout);
        let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
        let cidr = result["ips"][0]["address"].as_str().expect("an address");
        cidr.split('/').next().unwrap_or_default().to_owned()
    }

    /// DEL of `pod`'s net1.
    ///
    /// # Panics
    /// When the DEL fails.
    pub fn detach(&self, pod: &str, ns: &NetNs, nad: &str) {
        let out = sidelane_cni::run(&cni_vars("DEL", pod, ns), self.config(nad).as_bytes());
        assert_eq!(out.exit_code, 0, "DEL {pod}: {}", out.stdout);
    }

    /// The host end of `pod`'s net1.
    ///
    /// # Panics
    /// Never for the rig's pods.
    pub fn host_end(pod: &str) -> String {
        link::veth_name(&container_id(pod), "net1", 'h').expect("a host-end name")
    }

    /// The device OVS reads for `pod`'s net1 (userspace datapath with the fast path).
    ///
    /// # Panics
    /// Never for the rig's pods.
    pub fn ovs_port(pod: &str) -> String {
        link::veth_name(&container_id(pod), "net1", 'p').expect("a port name")
    }

    /// The fast-path counters of `pod`'s net1.
    ///
    /// # Panics
    /// When the agent runs without a fast path.
    pub fn counters(&self, pod: &str) -> FastpathCounters {
        let fp = self
            .fastpath
            .as_ref()
            .expect("the agent runs with the fast path");
        fp.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters(Some(&self.chassis.ns.path()), &Self::host_end(pod))
            .expect("counters")
    }

    /// What the agent's `/metrics` would answer now.
    ///
    /// # Panics
    /// When the agent runs without a fast path.
    pub fn metrics_text(&self) -> String {
        let fp = self
            .fastpath
            .as_ref()
            .expect("the agent runs with the fast path");
        let collector = FastpathCollector::new(
            Records::open(self.dir.path().join("records")).expect("records"),
            Arc::clone(fp),
            Some(self.chassis.ns.path()),
        );
        metrics::render(&metrics::registry(Some(collector)))
    }

    /// A kernel counter of a device in the node's namespace (`rx_packets`...).
    ///
    /// # Panics
    /// When the counter cannot be read.
    pub fn device_counter(&self, ifname: &str, counter: &str) -> u64 {
        self.chassis
            .ns
            .exec(&[
                "cat",
                &format!("/sys/class/net/{ifname}/statistics/{counter}"),
            ])
            .expect("a device counter")
            .trim()
            .parse()
            .expect("a number")
    }
}

impl Drop for NodeRig {
    fn drop(&mut self) {
        self.stop_agent();
    }
}
