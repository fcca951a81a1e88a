//! Nodes of real OVN (central, and per node a chassis with OVS's userspace datapath, joined by
//! an underlay when there are two), the API double, the controller (leading, building the
//! topology) and each node's agent (QoS with a private pin root, the fast path when asked,
//! ports plugged into the node's `br-int`), with pods as network namespaces attached through
//! our CNI plugin exactly as Multus drives it.
//!
//! Methods without a node index act on the first node.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use sidelane_agent::{
    api_server::KubePods,
    attach::Attacher,
    cni_server,
    dataplane::{fastpath::FastpathDataplane, qos::QosDataplane},
    link,
    metrics::{self, AttachmentCollector},
    ovs::{Datapath, OvsBridge},
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
    control_plane::SidelaneCluster,
    netns::NetNs,
    ovn::{Central, Chassis},
    sidelane::PinRoot,
};

/// One node: its chassis and its agent.
pub struct Node {
    /// The chassis (OVS, ovn-controller) in the node's namespace.
    pub chassis: Chassis,
    dir: tempfile::TempDir,
    pins: PinRoot,
    agent: Option<JoinHandle<()>>,
    /// The agent's followers: of the security groups and the Vpcs' routing (with the fast
    /// path) and of its pods' annotations (rates and groups changed live).
    followers: Vec<JoinHandle<()>>,
    /// The agent's fast path (while the agent runs with one).
    pub fastpath: Option<Arc<Mutex<FastpathDataplane>>>,
}

/// The rig.
pub struct NodeRig {
    /// OVN central (Northbound, Southbound, northd).
    pub central: Central,
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The Kubernetes API double.
    pub api: SidelaneCluster,
    /// Runs the controller and the agents.
    pub runtime: tokio::runtime::Runtime,
    with_fastpath: bool,
    _leading: watch::Sender<bool>,
    /// The underlay's bridge namespace (three nodes).
    _underlay: Option<NetNs>,
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
    /// One node; its agent's fast path is on when `fastpath`.
    ///
    /// # Panics
    /// When a part does not start (a broken rig is a failed test).
    pub fn start(fastpath: bool) -> NodeRig {
        NodeRig::start_nodes(1, fastpath)
    }

    /// `count` nodes (one to three; two are joined by a veth, three by a bridge).
    ///
    /// # Panics
    /// When a part does not start, or for more than three nodes.
    pub fn start_nodes(count: usize, fastpath: bool) -> NodeRig {
        assert!((1..=3).contains(&count), "the rig has one to three nodes");
        let central = Central::start().expect("OVN central starts");
        let mut chassis = Vec::new();
        for i in 0..count {
            let encap = if count == 1 {
                "127.0.0.1".to_owned()
            } else {
                format!("192.168.100.{}", i + 1)
            };
            chassis.push(
                Chassis::start_with(&central, &format!("node{}", i + 1), &encap)
                    .expect("the chassis starts"),
            );
        }
        let mut hub = None;
        if count == 2 {
            Chassis::connect(&chassis[0], &chassis[1]).expect("the underlay");
        } else if count == 3 {
            let ns = NetNs::new().expect("the underlay's namespace");
            Chassis::join_hub(&ns, &chassis.iter().collect::<Vec<_>>()).expect("the underlay");
            hub = Some(ns);
        }
        let api = SidelaneCluster::start();
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let (leading, rx) = watch::channel(true);
        let opts = Options {
            instance: "test".to_owned(),
            ovn_nb: Some(sidelane_ovsdb::Options::new(
                parse_remotes(&central.nb.unix_remote()).expect("remote"),
            )),
            ..Options::default()
        };
        let client = runtime.block_on(api.controller_client());
        runtime.spawn(run::lead(client, opts, Arc::new(Metrics::new()), rx));
        let mut rig = NodeRig {
            central,
            nodes: chassis
                .into_iter()
                .map(|chassis| Node {
                    chassis,
                    dir: tempfile::tempdir().expect("a temporary directory"),
                    pins: PinRoot::new("sidelane-node-rig"),
                    agent: None,
                    followers: Vec::new(),
                    fastpath: None,
                })
                .collect(),
            api,
            runtime,
            with_fastpath: fastpath,
            _leading: leading,
            _underlay: hub,
        };
        for i in 0..count {
            rig.start_agent_on(i);
        }
        rig
    }

    /// Node `node`'s pin root (the agent's `--pin-root`).
    pub fn pins_on(&self, node: usize) -> &std::path::Path {
        self.nodes[node].pins.path()
    }

    /// The first node's chassis.
    pub fn chassis(&self) -> &Chassis {
        &self.nodes[0].chassis
    }

    /// The first node's fast path.
    ///
    /// # Panics
    /// When its agent runs without one.
    pub fn fastpath(&self) -> &Arc<Mutex<FastpathDataplane>> {
        self.nodes[0]
            .fastpath
            .as_ref()
            .expect("the agent runs with the fast path")
    }

    /// Node `node`'s agent socket.
    pub fn socket_on(&self, node: usize) -> PathBuf {
        self.nodes[node].dir.path().join("kube-ovn-daemon.sock")
    }

    /// (Re)starts the first node's agent.
    pub fn start_agent(&mut self) {
        self.start_agent_on(0);
    }

    /// (Re)starts node `node`'s agent: a fresh attacher over the same records, pins and
    /// bridge, as a restarted agent process would have.
    ///
    /// # Panics
    /// When the agent cannot start.
    pub fn start_agent_on(&mut self, node: usize) {
        let socket = self.socket_on(node);
        let with_fastpath = self.with_fastpath;
        let n = &mut self.nodes[node];
        let records = Records::open(n.dir.path().join("records")).expect("records");
        let remote = parse_remotes(&n.chassis.db.unix_remote())
            .expect("remote")
            .remove(0);
        let bridge = self
            .runtime
            .block_on(OvsBridge::connect(
                remote,
                None,
                "br-int",
                Datapath::Netdev,
                Duration::from_secs(30),
            ))
            .expect("the agent opens the chassis' Open_vSwitch database");
        let qos = QosDataplane::new(n.pins.path()).expect("the QoS dataplane");
        let client = self.runtime.block_on(self.api.agent_client());
        let mut attacher = Attacher::new(
            KubePods::new(client.clone()),
            qos,
            records,
            Duration::from_secs(20),
        )
        .with_host_netns(n.chassis.ns.path())
        .with_ovs(Arc::new(bridge));
        if with_fastpath {
            let mut fp = FastpathDataplane::open(n.pins.path()).expect("the fast path");
            fp.sweep(Some(&n.chassis.ns.path())).expect("sweep");
            let fp = Arc::new(Mutex::new(fp));
            attacher = attacher.with_fastpath(Arc::clone(&fp));
            n.followers.push(
                self.runtime
                    .spawn(sidelane_agent::security_groups::follow_forever(
                        client.clone(),
                        Arc::clone(&fp) as Arc<dyn sidelane_agent::dataplane::ports::FastpathPorts>,
                    )),
            );
            n.followers
                .push(self.runtime.spawn(sidelane_agent::routes::follow_forever(
                    client.clone(),
                    Arc::clone(&fp) as Arc<dyn sidelane_agent::dataplane::ports::FastpathPorts>,
                )));
            n.fastpath = Some(fp);
        }
        let attacher = Arc::new(attacher);
        self.runtime
            .block_on(attacher.recover())
            .expect("the agent takes back its attachments");
        n.followers
            .push(self.runtime.spawn(sidelane_agent::follow::follow_forever(
                Arc::clone(&attacher),
                client,
                Some(n.chassis.name.clone()),
            )));
        let _ = std::fs::remove_file(&socket);
        let listener = self
            .runtime
            .block_on(async { cni_server::bind(&socket) })
            .expect("binding");
        n.agent = Some(self.runtime.spawn(cni_server::serve(listener, attacher)));
    }

    /// Makes node `node` a gateway node as its agent does with `--external-nic <nic>`: the
    /// default external network mapped to `br-external` holding `nic`, and its Node labelled.
    ///
    /// # Panics
    /// When the chassis' database refuses.
    pub fn provide_external_on(&self, node: usize, nic: &str) {
        let n = &self.nodes[node];
        let remote = parse_remotes(&n.chassis.db.unix_remote())
            .expect("remote")
            .remove(0);
        self.runtime
            .block_on(async {
                let bridge = OvsBridge::connect(
                    remote,
                    None,
                    "br-int",
                    Datapath::Netdev,
                    Duration::from_secs(30),
                )
                .await?;
                bridge
                    .provide_external("ovn-vpc-external-network", "br-external", nic)
                    .await
            })
            .expect("the node carries the external network");
        self.runtime
            .block_on(async {
                let client = self.api.agent_client().await;
                sidelane_agent::gateway_node::announce(
                    client,
                    &n.chassis.name,
                    "ovn-vpc-external-network",
                )
                .await
            })
            .expect("the agent labels its Node");
    }

    /// Stops the first node's agent (what is pinned and attached stays, as when the process
    /// exits).
    pub fn stop_agent(&mut self) {
        self.stop_agent_on(0);
    }

    /// Stops node `node`'s agent.
    pub fn stop_agent_on(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if let Some(agent) = n.agent.take() {
            agent.abort();
        }
        for follower in n.followers.drain(..) {
            follower.abort();
        }
        n.fastpath = None;
        // Let the aborted server drop the attacher (and with it the maps' descriptors).
        std::thread::sleep(Duration::from_millis(100));
    }

    /// The NAD's config as Multus passes it to our plugin on node `node`.
    pub fn config_on(&self, node: usize, nad: &str) -> String {
        json!({
            "cniVersion": "0.3.1", "name": nad, "type": "kube-ovn",
            "server_socket": self.socket_on(node), "provider": format!("{nad}.default.ovn"),
        })
        .to_string()
    }

    /// The NAD's config on the first node.
    pub fn config(&self, nad: &str) -> String {
        self.config_on(0, nad)
    }

    /// ADD of `pod`'s net1 on the first node; returns its address.
    pub fn attach(&self, pod: &str, ns: &NetNs, nad: &str) -> String {
        self.attach_on(0, pod, ns, nad)
    }

    /// ADD of `pod`'s net1 (the pod already seeded) in `ns` through `nad` on node `node`.
    ///
    /// # Panics
    /// When the ADD fails.
    pub fn attach_on(&self, node: usize, pod: &str, ns: &NetNs, nad: &str) -> String {
        self.attach_all_on(node, pod, ns, nad).swap_remove(0)
    }

    /// [`Self::attach_on`], returning every address (IPv4 first on a dual-stack Subnet).
    ///
    /// # Panics
    /// When the ADD fails or returns no address.
    pub fn attach_all_on(&self, node: usize, pod: &str, ns: &NetNs, nad: &str) -> Vec<String> {
        let out = sidelane_cni::run(
            &cni_vars("ADD", pod, ns),
            self.config_on(node, nad).as_bytes(),
        );
        assert_eq!(out.exit_code, 0, "ADD {pod}: {}", out.stdout);
        let result: Value = serde_json::from_str(&out.stdout).expect("a JSON result");
        let ips: Vec<String> = result["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|ip| ip["address"].as_str())
            .map(|cidr| cidr.split('/').next().unwrap_or_default().to_owned())
            .collect();
        assert!(
            !ips.is_empty(),
            "ADD {pod} returned no address: {}",
            out.stdout
        );
        ips
    }

    /// DEL of `pod`'s net1 on the first node.
    ///
    /// # Panics
    /// When the DEL fails.
    pub fn detach(&self, pod: &str, ns: &NetNs, nad: &str) {
        let out = sidelane_cni::run(&cni_vars("DEL", pod, ns), self.config(nad).as_bytes());
        assert_eq!(out.exit_code, 0, "DEL {pod}: {}", out.stdout);
    }

    /// Asserts that TCP from `from` (the pod `sender`, on the first node) to `addr` in `to`,
    /// whose pod has an ingress limit of `mbps`, is held to it (0.7 to 1.05 times, over 3 s) and
    /// took the fast path.
    ///
    /// # Panics
    /// When it is not.
    pub fn assert_limited_flow_on_the_fast_path(
        &self,
        sender: &str,
        from: &NetNs,
        to: &NetNs,
        addr: &str,
        mbps: f64,
    ) {
        let before = self.counters(sender);
        let report = crate::iperf::measure(
            to,
            addr,
            from,
            &crate::iperf::IperfSpec::tcp(Duration::from_secs(3)),
        )
        .expect("TCP into the limited pod");
        let measured = report.receiver_bps / 1e6;
        assert!(
            (mbps * 0.7..=mbps * 1.05).contains(&measured),
            "held to {mbps} Mbit/s: {measured:.1}"
        );
        let after = self.counters(sender);
        assert!(
            after.hits > before.hits + 100,
            "the limited flow took the fast path: {before:?} -> {after:?}"
        );
    }

    /// Asserts that pod `sender` (in `from`, on the first node) reaches `addr` in `to` on
    /// another node through OVS: 20 pings answered once each, TCP flowing, and no frame on the
    /// fast path. Returns the sender's counters.
    ///
    /// # Panics
    /// When it does not.
    pub fn assert_reached_across_nodes(
        &self,
        sender: &str,
        from: &NetNs,
        to: &NetNs,
        addr: &str,
    ) -> FastpathCounters {
        let out = crate::ping::replies(from, addr, 20).expect("ping across nodes");
        assert!(
            out.contains("20 received") && !out.contains("DUP!"),
            "{out}"
        );
        let report = crate::iperf::measure(
            to,
            addr,
            from,
            &crate::iperf::IperfSpec::tcp(Duration::from_secs(1)),
        )
        .expect("TCP across nodes");
        assert!(report.receiver_bps > 1e6, "{}", report.receiver_bps);
        let counters = self.counters_on(0, sender);
        assert_eq!(
            counters.hits, 0,
            "a remote pod is never fast-pathed: {counters:?}"
        );
        counters
    }

    /// The host end of `pod`'s net1.
    ///
    /// # Panics
    /// Never for the rig's pods.
    pub fn host_end(pod: &str) -> String {
        link::veth_name(&container_id(pod), "net1", link::VethEnd::Host).expect("a host-end name")
    }

    /// The device OVS reads for `pod`'s net1 (userspace datapath with the fast path).
    ///
    /// # Panics
    /// Never for the rig's pods.
    pub fn ovs_port(pod: &str) -> String {
        link::veth_name(&container_id(pod), "net1", link::VethEnd::OvsPort).expect("a port name")
    }

    /// The fast-path counters of `pod`'s net1 on the first node.
    pub fn counters(&self, pod: &str) -> FastpathCounters {
        self.counters_on(0, pod)
    }

    /// The fast-path counters of `pod`'s net1 on node `node`.
    ///
    /// # Panics
    /// When that agent runs without a fast path.
    pub fn counters_on(&self, node: usize, pod: &str) -> FastpathCounters {
        let n = &self.nodes[node];
        let fp = n
            .fastpath
            .as_ref()
            .expect("the agent runs with the fast path");
        fp.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .counters(Some(&n.chassis.ns.path()), &Self::host_end(pod))
            .expect("counters")
    }

    /// What the first node's agent `/metrics` would answer now.
    ///
    /// # Panics
    /// When the agent runs without a fast path.
    pub fn metrics_text(&self) -> String {
        let n = &self.nodes[0];
        let fp = n
            .fastpath
            .as_ref()
            .expect("the agent runs with the fast path");
        let collector = AttachmentCollector::new(
            Records::open(n.dir.path().join("records")).expect("records"),
            Some(n.chassis.ns.path()),
        )
        .with_fastpath(Arc::clone(fp));
        metrics::render(&metrics::registry(Some(collector)))
    }

    /// A kernel counter of a device in the first node's namespace (`rx_packets`...).
    ///
    /// # Panics
    /// When the counter cannot be read.
    pub fn device_counter(&self, ifname: &str, counter: &str) -> u64 {
        self.chassis()
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
        for i in 0..self.nodes.len() {
            self.stop_agent_on(i);
        }
    }
}
