//! The one-machine lab behind `cargo xtask lab`: the whole system as plain processes from a
//! temporary directory, the seeds' YAML applied unchanged, and a report a person can read.
//!
//! - A real Kubernetes control plane on loopback: etcd, kube-apiserver (`Node,RBAC`),
//!   kube-controller-manager and kube-scheduler, with Sidelane's CRDs and RBAC from `helm
//!   template` of the chart; the controllers and agents run under the chart's ServiceAccounts.
//! - OVN central (Northbound, Southbound, northd) and two simulated nodes, each a network
//!   namespace with its own OVS (`system` datapath where the kernel module exists, else
//!   `netdev`), ovn-controller and `sidelane-agent`; the nodes are joined by an underlay for
//!   OVN's tunnels and by a LAN (a bridge) that macvlan attachments use as `eth0`.
//! - Two `sidelane-controller` replicas electing a leader through a Lease.
//! - The seeds' YAML is applied with `kubectl apply --validate=strict`; Deployments become pods
//!   through kube-controller-manager, and kube-scheduler binds every pod to a node. Each node's
//!   kubelet stand-in (no container runtime runs pods here yet) makes the pod's network namespace
//!   and runs the real Multus thin plugin: eth0 from the primary network (Debian's `bridge` and
//!   `host-local`, standing in for Cilium, Calico or Flannel), net1..netN delegated to our
//!   `kube-ovn` binary and Debian's `macvlan` with the NAD's configuration unchanged (the node's
//!   agent socket is mounted at the seeds' `/run/openvswitch`), `network-status` written by
//!   Multus and checked against the pod's interfaces.
//!
//! The seeds' examples reuse names (`samplepod`, the `macvlan` Subnet), so scenarios run one
//! after another, each cleaned up before the next.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use sidelane_api::network_selection;

use crate::{
    cluster,
    control_plane::{Options as PlaneOptions, SidelaneCluster},
    iperf::{self, IperfSpec},
    kubelet_standin::{self, KubeletStandin, NodeConfig},
    netns::NetNs,
    ovn::{Central, Chassis},
    process::Background,
    sidelane::PinRoot,
};

/// How the lab runs.
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Leave everything running after the report, until Ctrl-C.
    pub keep: bool,
}

/// Set by the Ctrl-C handler; checked between steps.
pub static STOP: AtomicBool = AtomicBool::new(false);

fn check_stop() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start one of the lab's processes again (a restart, as a DaemonSet or a Deployment
/// would do it).
struct Spawn {
    bin: PathBuf,
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
    kubeconfig: PathBuf,
}

impl Spawn {
    fn start(&self) -> anyhow::Result<Background> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone()?)
            .stderr(log);
        Background::spawn(&mut cmd)
    }
}

/// One simulated node.
struct LabNode {
    name: String,
    chassis: Chassis,
    /// Mounted at `/run/openvswitch` for the CNI plugins of this node: holds the agent socket.
    run_dir: PathBuf,
    /// The node's directory (agent log, records).
    node_dir: PathBuf,
    metrics_port: u16,
    agent: Background,
    agent_spawn: Spawn,
    pins: PinRoot,
    /// Plays the node's kubelet for the network: runs Multus for the pods bound here.
    kubelet: KubeletStandin,
}

/// One pod of the lab.
struct LabPod {
    name: String,
    node: usize,
    ns: Arc<NetNs>,
    /// Whether eth0 is the primary CNI's (not one of our networks).
    primary_standin: bool,
    annotations: BTreeMap<String, String>,
    attachments: Vec<Attachment>,
}

/// One attachment made.
#[derive(Clone, Debug)]
struct Attachment {
    nad: String,
    ifname: String,
    ips: Vec<String>,
    /// The logical switch (the Subnet) the controller chose.
    switch: String,
    /// `ovn` or the plugin name.
    plugin: String,
    provider: String,
}

/// Whether one of the pod's routes annotations (`<provider>.kubernetes.io/routes`) covers `ip`.
fn routes_to(pod: &LabPod, ip: &str) -> bool {
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    pod.annotations
        .iter()
        .filter(|(k, _)| k.ends_with(".kubernetes.io/routes"))
        .filter_map(|(_, v)| serde_json::from_str::<Vec<Value>>(v).ok())
        .flatten()
        .filter_map(|r| r["dst"].as_str()?.parse::<ipnet::IpNet>().ok())
        .any(|net| net.contains(&ip))
}

/// A check and whether it held.
#[derive(Clone, Debug)]
struct Check {
    scenario: String,
    what: String,
    ok: bool,
    detail: String,
}

/// A scenario: seed files applied together, and pods of our own beside them.
struct Scenario {
    name: &'static str,
    files: &'static [&'static str],
    extra: fn() -> Vec<Value>,
}

fn no_extra() -> Vec<Value> {
    Vec::new()
}

/// Beside the seeds: the non-primary mode document's QoS example on a pod of the `attachnet`
/// network, a second pod on the document's Vpc, and a second Subnet of that Vpc (with its own
/// NAD) whose pod routes to the first Subnet through the Vpc's router, as Kube-OVN users write it
/// with the routes annotation.
fn qos_and_vpc_pods() -> Vec<Value> {
    vec![
        cluster::ovn_nad("kube-ovn-vpc-network-b"),
        cluster::ovn_subnet(
            "subnet-secondary-b",
            "kube-ovn-vpc-network-b",
            "10.101.0.0/16",
            "vpc-secondary",
        ),
        cluster::pod(
            "vpc-peer-b",
            &json!({
                "k8s.v1.cni.cncf.io/networks": "default/kube-ovn-vpc-network-b",
                "kube-ovn-vpc-network-b.default.ovn.kubernetes.io/routes":
                    r#"[{"dst":"10.100.0.0/16","gw":"10.101.0.1"}]"#,
            }),
        ),
        // The QoS pod's peer on its node and network: the rates are measured between them.
        cluster::pod(
            "qos-peer",
            &json!({"k8s.v1.cni.cncf.io/networks": "default/attachnet"}),
        ),
        cluster::pod(
            "qos-pod",
            &json!({
                "k8s.v1.cni.cncf.io/networks": "default/attachnet",
                "ovn.kubernetes.io/ingress_rate": "1000",
                "ovn.kubernetes.io/egress_rate": "1000",
            }),
        ),
        cluster::pod(
            "vpc-peer",
            &json!({
                "k8s.v1.cni.cncf.io/networks": "default/kube-ovn-vpc-network",
                "kube-ovn-vpc-network.default.ovn.kubernetes.io/routes":
                    r#"[{"dst":"10.101.0.0/16","gw":"10.100.0.1"}]"#,
            }),
        ),
    ]
}

const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "OVN attachments: attachnet (custom routes), a Vpc of its own, QoS",
        files: &["attachnet.yaml", "non-primary-vpc.yaml"],
        extra: qos_and_vpc_pods,
    },
    Scenario {
        name: "OVN attachment on an `ovn` Subnet named by logical_switch",
        files: &["attachnet-ovn-subnet.yaml"],
        extra: no_extra,
    },
    Scenario {
        name: "macvlan with Kube-OVN IPAM: static IP, ip_pool, default-route",
        files: &["macvlan-ipam.yaml"],
        extra: no_extra,
    },
    Scenario {
        name: "multi-NIC IPAM (short network names)",
        files: &["multi-nic-ipam.yaml"],
        extra: no_extra,
    },
    Scenario {
        name: "macvlan on an `ovn` Subnet named by logical_switch",
        files: &["macvlan-ovn-subnet.yaml"],
        extra: no_extra,
    },
];

pub mod chaos;

/// The lab.
pub struct Lab {
    dir: tempfile::TempDir,
    api: SidelaneCluster,
    central: Central,
    nodes: Vec<LabNode>,
    lan: NetNs,
    controllers: Vec<(Background, Spawn)>,
    phases: Vec<(String, Duration)>,
    checks: Vec<Check>,
    report: String,
    /// The pods of the scenario left running (`--keep`).
    kept: Vec<LabPod>,
}

fn phase<T>(
    phases: &mut Vec<(String, Duration)>,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    check_stop()?;
    eprintln!("==> {name}");
    let start = Instant::now();
    let out = f().with_context(|| format!("lab phase: {name}"))?;
    let took = start.elapsed();
    eprintln!("    done in {:.1} s", took.as_secs_f64());
    phases.push((name.to_owned(), took));
    Ok(out)
}

impl Lab {
    /// Brings everything up: the API, OVN, the nodes with their agents, the controllers.
    #[expect(clippy::too_many_lines, reason = "the bring-up, phase by phase")]
    pub fn start() -> anyhow::Result<Lab> {
        let mut phases = Vec::new();
        let dir = tempfile::Builder::new()
            .prefix("sidelane-lab-")
            .tempdir()
            .context("creating the lab's directory")?;
        let agent_bin = crate::process::binary_beside_me("sidelane-agent")?;
        let controller_bin = crate::process::binary_beside_me("sidelane-controller")?;
        let cni_bin = dir.path().join("cni-bin");
        std::fs::create_dir_all(&cni_bin)?;
        std::os::unix::fs::symlink(
            crate::process::binary_beside_me("sidelane-cni")?,
            cni_bin.join("kube-ovn"),
        )?;
        std::os::unix::fs::symlink(crate::tools::binary("multus")?, cni_bin.join("multus"))?;
        for plugin in ["macvlan", "bridge", "host-local", "static", "loopback"] {
            let path = Path::new("/usr/lib/cni").join(plugin);
            if path.exists() {
                std::os::unix::fs::symlink(&path, cni_bin.join(plugin))?;
            }
        }
        let (api, multus) = phase(
            &mut phases,
            "Kubernetes: etcd, kube-apiserver (Node,RBAC), kube-controller-manager, kube-scheduler; \
             Sidelane's CRDs and RBAC from helm template; Multus' RBAC",
            || {
                let api = SidelaneCluster::start_with(PlaneOptions { controllers: true })?;
                let multus = kubelet_standin::install_multus(api.plane())?;
                eprintln!(
                    "    serving {} (KUBECONFIG={})",
                    api.plane().url(),
                    api.plane().admin_kubeconfig().display()
                );
                Ok((api, multus))
            },
        )?;
        let central = phase(
            &mut phases,
            "OVN central: Northbound, Southbound, ovn-northd",
            Central::start,
        )?;
        let lan = NetNs::new()?;
        lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lan.exec(&["ip", "link", "set", "br0", "up"])?;
        let nodes = phase(
            &mut phases,
            "two nodes: OVS, ovn-controller, sidelane-agent, a kubelet stand-in running Multus",
            || {
                let mut chassis = Vec::new();
                // As a real node: the kernel datapath where the module is loaded.
                let datapath = sidelane_agent::ovs::Datapath::detect().as_str();
                eprintln!("    OVS datapath: {datapath}");
                for i in 1..=2 {
                    chassis.push(Chassis::start_on(
                        &central,
                        &format!("node{i}"),
                        &format!("192.168.100.{i}"),
                        datapath,
                    )?);
                }
                Chassis::connect(&chassis[0], &chassis[1])?;
                let mut nodes = Vec::new();
                for (i, c) in chassis.into_iter().enumerate() {
                    let name = format!("node{}", i + 1);
                    // The node's LAN port, the master of its macvlan attachments.
                    c.ns.veth_to("eth0", &lan, &format!("lan{i}"))?;
                    lan.exec(&[
                        "ip",
                        "link",
                        "set",
                        &format!("lan{i}"),
                        "master",
                        "br0",
                        "up",
                    ])?;
                    let node_dir = dir.path().join(&name);
                    let run_dir = node_dir.join("run");
                    std::fs::create_dir_all(&run_dir)?;
                    let pins = PinRoot::new(&format!("sidelane-lab-{name}"));
                    let metrics_port = free_port()?;
                    let agent_args: Vec<std::ffi::OsString> = vec![
                        "--host-netns".into(),
                        c.ns.path().into(),
                        "--socket".into(),
                        run_dir.join("kube-ovn-daemon.sock").into(),
                        "--pin-root".into(),
                        pins.path().into(),
                        "--state-dir".into(),
                        node_dir.join("records").into(),
                        "--ovs-db".into(),
                        c.db.unix_remote().into(),
                        "--ovs-datapath".into(),
                        "auto".into(),
                        "--metrics-addr".into(),
                        format!("127.0.0.1:{metrics_port}").into(),
                    ];
                    let spawn = Spawn {
                        bin: agent_bin.clone(),
                        args: agent_args,
                        log: node_dir.join("agent.log"),
                        // The chart's agent ServiceAccount.
                        kubeconfig: api.agent_kubeconfig().to_owned(),
                    };
                    let agent = spawn.start()?;
                    let socket = run_dir.join("kube-ovn-daemon.sock");
                    let start = Instant::now();
                    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                        if start.elapsed() > Duration::from_secs(30) {
                            bail!(
                                "{name}'s agent did not listen within 30 s; see {}",
                                node_dir.join("agent.log").display()
                            );
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    let kubelet = KubeletStandin::start(
                        api.plane(),
                        NodeConfig {
                            name: name.clone(),
                            netns: Some(c.ns.name().to_owned()),
                            run_dir: Some(run_dir.clone()),
                            cni_bin: cni_bin.clone(),
                            pod_cidr: format!("10.244.{}.0/24", i + 1),
                            parallel: 4,
                            dir: node_dir.join("kubelet"),
                        },
                        &multus,
                    )?;
                    eprintln!(
                        "    {name}: {} (agent log {}, Multus log {})",
                        c.ns.name(),
                        node_dir.join("agent.log").display(),
                        node_dir.join("kubelet/multus.log").display()
                    );
                    nodes.push(LabNode {
                        name,
                        chassis: c,
                        run_dir,
                        node_dir,
                        metrics_port,
                        agent,
                        agent_spawn: spawn,
                        pins,
                        kubelet,
                    });
                }
                Ok(nodes)
            },
        )?;
        let controllers = phase(
            &mut phases,
            "two sidelane-controller replicas (leader election)",
            || {
                let mut v = Vec::new();
                for i in 1..=2 {
                    let spawn = Spawn {
                        bin: controller_bin.clone(),
                        args: vec![
                            "--identity".into(),
                            format!("sidelane-controller-{i}").into(),
                            "--lease-namespace".into(),
                            "kube-system".into(),
                            "--ovn-nb-addr".into(),
                            central.nb.unix_remote().into(),
                            "--metrics-addr".into(),
                            format!("127.0.0.1:{}", free_port()?).into(),
                            "--gc-interval".into(),
                            "10".into(),
                        ],
                        log: dir.path().join(format!("controller-{i}.log")),
                        // The chart's controller ServiceAccount.
                        kubeconfig: api.controller_kubeconfig().to_owned(),
                    };
                    v.push((spawn.start()?, spawn));
                }
                let start = Instant::now();
                while api
                    .get(
                        "coordination.k8s.io/v1",
                        "Lease",
                        "kube-system",
                        "sidelane-controller",
                    )
                    .is_none()
                {
                    if start.elapsed() > Duration::from_secs(30) {
                        bail!("no controller took the Lease within 30 s");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let lease = api.get(
                    "coordination.k8s.io/v1",
                    "Lease",
                    "kube-system",
                    "sidelane-controller",
                );
                eprintln!(
                    "    leader: {}",
                    lease
                        .as_ref()
                        .and_then(|l| l["spec"]["holderIdentity"].as_str())
                        .unwrap_or("?")
                );
                Ok(v)
            },
        )?;
        Ok(Lab {
            dir,
            api,
            central,
            nodes,
            lan,
            controllers,
            phases,
            checks: Vec::new(),
            report: String::new(),
            kept: Vec::new(),
        })
    }

    fn check(&mut self, scenario: &str, what: String, ok: bool, detail: String) {
        if !ok {
            eprintln!("    FAILED: {what}: {detail}");
        }
        self.checks.push(Check {
            scenario: scenario.to_owned(),
            what,
            ok,
            detail,
        });
    }

    fn nad_config(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let nad = self
            .api
            .get(
                "k8s.cni.cncf.io/v1",
                "NetworkAttachmentDefinition",
                namespace,
                name,
            )
            .with_context(|| format!("NAD {namespace}/{name} not found"))?;
        let mut cfg: Value =
            serde_json::from_str(nad["spec"]["config"].as_str().unwrap_or("{}"))
                .with_context(|| format!("NAD {namespace}/{name}: config is not JSON"))?;
        if cfg.get("name").is_none() {
            cfg["name"] = json!(name);
        }
        Ok(cfg.to_string())
    }

    /// Waits until the scheduler has bound pod `name` and its node's kubelet stand-in has set it
    /// up through Multus; `(node, sandbox)`.
    fn sandbox_of(&self, name: &str) -> anyhow::Result<(usize, Arc<kubelet_standin::Sandbox>)> {
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            check_stop()?;
            let bound = self
                .api
                .get("v1", "Pod", "default", name)
                .and_then(|p| p["spec"]["nodeName"].as_str().map(str::to_owned));
            if let Some(node) =
                bound.and_then(|bound| self.nodes.iter().position(|n| n.name == bound))
                && let Some(sandbox) = self.nodes[node].kubelet.sandbox("default", name)
            {
                return Ok((node, sandbox));
            }
            if Instant::now() > deadline {
                bail!("pod {name} was not bound and set up through Multus within 2 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pod as its node set it up: every attachment its network selection asks for, checked
    /// against what Multus reported in `network-status` and what the pod's namespace holds.
    fn start_pod(&mut self, scenario: &str, name: &str) -> anyhow::Result<LabPod> {
        let (node, sandbox) = self.sandbox_of(name)?;
        if let Err(error) = &sandbox.result {
            self.check(
                scenario,
                format!("{name} set up through Multus"),
                false,
                error.clone(),
            );
        }
        // Multus writes network-status right after the ADD.
        let deadline = Instant::now() + Duration::from_secs(20);
        let obj = loop {
            let obj = self
                .api
                .get("v1", "Pod", "default", name)
                .context("the pod")?;
            if obj["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"].is_string()
                || sandbox.result.is_err()
                || Instant::now() > deadline
            {
                break obj;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let annotations: BTreeMap<String, String> = obj["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let network_status: Vec<Value> = annotations
            .get("k8s.v1.cni.cncf.io/network-status")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
        self.check(
            scenario,
            format!("{name} has Multus' network-status"),
            !network_status.is_empty(),
            format!("{} interfaces", network_status.len()),
        );
        // `v1.multus-cni.io/default-network` names the pod's eth0: then ours is the primary.
        let default_net = annotations
            .get("v1.multus-cni.io/default-network")
            .and_then(|v| network_selection::parse(v, "default").ok())
            .and_then(|mut v| (!v.is_empty()).then(|| v.remove(0)));
        let mut pod = LabPod {
            name: name.to_owned(),
            node,
            ns: Arc::clone(&sandbox.netns),
            primary_standin: default_net.is_none(),
            annotations,
            attachments: Vec::new(),
        };
        let selection = pod
            .annotations
            .get("k8s.v1.cni.cncf.io/networks")
            .cloned()
            .unwrap_or_default();
        let mut wanted: Vec<(network_selection::NetworkSelection, String)> = default_net
            .into_iter()
            .map(|s| (s, "eth0".to_owned()))
            .collect();
        wanted.extend(
            network_selection::parse(&selection, "default")?
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let ifname = s.interface_or_default(i + 1);
                    (s, ifname)
                }),
        );
        for (sel, ifname) in wanted {
            let attachment = self.attachment(&pod, &sel, &ifname, &network_status)?;
            self.check(
                scenario,
                format!("{name} {ifname} attached ({})", sel.name),
                !attachment.ips.is_empty(),
                attachment.ips.join(", "),
            );
            pod.attachments.push(attachment);
        }
        self.check_network_status(scenario, &pod, &network_status);
        Ok(pod)
    }

    /// One attachment as Multus reported it, with what the controller annotated.
    fn attachment(
        &self,
        pod: &LabPod,
        sel: &network_selection::NetworkSelection,
        ifname: &str,
        network_status: &[Value],
    ) -> anyhow::Result<Attachment> {
        let config = self.nad_config(&sel.namespace, &sel.name)?;
        let cfg: Value = serde_json::from_str(&config)?;
        let plugin = cfg["type"].as_str().unwrap_or_default().to_owned();
        let ovn = plugin == "kube-ovn";
        let provider = if ovn {
            format!("{}.{}.ovn", sel.name, sel.namespace)
        } else {
            format!("{}.{}", sel.name, sel.namespace)
        };
        let ips: Vec<String> = network_status
            .iter()
            .find(|e| e["interface"] == ifname)
            .and_then(|e| e["ips"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|ip| ip.as_str().map(str::to_owned))
            .collect();
        let switch = pod
            .annotations
            .get(&format!("{provider}.kubernetes.io/logical_switch"))
            .cloned()
            .unwrap_or_default();
        Ok(Attachment {
            nad: sel.name.clone(),
            ifname: ifname.to_owned(),
            ips,
            switch,
            plugin: if ovn { "ovn".to_owned() } else { plugin },
            provider,
        })
    }

    /// Every interface Multus reported is in the pod with the addresses reported.
    fn check_network_status(&mut self, scenario: &str, pod: &LabPod, network_status: &[Value]) {
        let mut shown = Vec::new();
        for entry in network_status {
            let ifname = entry["interface"].as_str().unwrap_or_default();
            let mut reported: Vec<String> = entry["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|ip| ip.as_str().map(str::to_owned))
                .collect();
            reported.sort();
            let mut present: Vec<String> = pod
                .ns
                .exec(&["ip", "-j", "addr", "show", "dev", ifname])
                .ok()
                .and_then(|out| serde_json::from_str::<Value>(&out).ok())
                .map(|v| {
                    v[0]["addr_info"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|a| a["scope"] == "global")
                        .filter_map(|a| a["local"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            present.sort();
            shown.push(format!(
                "{ifname} {} ({})",
                reported.join(","),
                entry["name"].as_str().unwrap_or_default()
            ));
            self.check(
                scenario,
                format!("{} network-status matches {ifname}", pod.name),
                !reported.is_empty() && reported == present,
                format!("reported {reported:?}, in the pod {present:?}"),
            );
        }
        let _ = writeln!(
            self.report,
            "   network-status {}: {}",
            pod.name,
            shown.join("; ")
        );
    }

    /// Deletes the pod and waits until its node has run DEL through Multus and confirmed.
    fn stop_pod(&self, pod: &LabPod) {
        let _ = self
            .api
            .delete_gracefully("v1", "Pod", "default", &pod.name);
        let deadline = Instant::now() + Duration::from_mins(1);
        while self.api.get("v1", "Pod", "default", &pod.name).is_some() {
            if Instant::now() > deadline {
                eprintln!("    {} was not torn down within a minute", pod.name);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn delete_object(&self, doc: &Value) {
        let text = |pointer: &str| {
            doc.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        let namespace = doc
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if let Err(error) = self.api.delete_gracefully(
            text("/apiVersion"),
            text("/kind"),
            namespace,
            text("/metadata/name"),
        ) {
            eprintln!("    {error:#}");
        }
    }

    fn ping(from: &NetNs, to: &str) -> bool {
        from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", to])
            .is_ok()
    }

    fn ping_eventually(from: &NetNs, to: &str, within: Duration) -> bool {
        let start = Instant::now();
        loop {
            if Self::ping(from, to) {
                return true;
            }
            if start.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn fastpath_hits(&self, node: usize) -> BTreeMap<String, u64> {
        use std::io::{Read as _, Write as _};
        let port = self.nodes[node].metrics_port;
        let mut out = BTreeMap::new();
        let mut text = String::new();
        let fetched = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
            s.read_to_string(&mut text)
        });
        if fetched.is_err() {
            return out;
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("sidelane_agent_fastpath_hits_total{"))
        {
            let pod = line
                .split("pod=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            let v: u64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            *out.entry(pod.to_owned()).or_default() += v;
        }
        out
    }

    /// Runs the `sidelane` command line against the lab (the API double and an agent).
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(crate::process::binary_beside_me("sidelane")?)
            .args(args)
            .env("KUBECONFIG", self.api.plane().admin_kubeconfig())
            .output()
            .context("running sidelane")?;
        if !out.status.success() {
            bail!(
                "sidelane {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// What the `sidelane` command line shows of the scenario: the Subnets and their usage, the
    /// first pod's attachments, and each QoS pod's interface with its limits and counters.
    fn cli_views(&mut self, sc: &Scenario, docs: &[Value], lab_pods: &[LabPod]) {
        let indent = |text: &str| -> String {
            text.lines().fold(String::new(), |mut acc, l| {
                let _ = writeln!(acc, "     {l}");
                acc
            })
        };
        match self.cli(&["subnets"]) {
            Ok(text) => {
                let _ = write!(self.report, "   $ sidelane subnets\n{}", indent(&text));
                for doc in docs.iter().filter(|d| d["kind"] == "Subnet") {
                    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                    let listed = text
                        .lines()
                        .any(|l| l.split_whitespace().next() == Some(name));
                    self.check(
                        sc.name,
                        format!("sidelane subnets lists {name}"),
                        listed,
                        String::new(),
                    );
                }
            }
            Err(e) => self.check(
                sc.name,
                "sidelane subnets".to_owned(),
                false,
                format!("{e:#}"),
            ),
        }
        if let Some(first) = lab_pods.first() {
            let target = format!("default/{}", first.name);
            match self.cli(&["pod", &target]) {
                Ok(text) => {
                    let _ = write!(self.report, "   $ sidelane pod {target}\n{}", indent(&text));
                    let shown = first
                        .attachments
                        .iter()
                        .all(|a| a.ips.iter().all(|ip| text.contains(&format!("{ip}/"))));
                    self.check(
                        sc.name,
                        format!("sidelane pod {target} shows its addresses"),
                        shown,
                        String::new(),
                    );
                }
                Err(e) => self.check(
                    sc.name,
                    format!("sidelane pod {target}"),
                    false,
                    format!("{e:#}"),
                ),
            }
        }
        for pod in lab_pods {
            let Some(a) = pod.attachments.first() else {
                continue;
            };
            let Some(rate) = ["ingress_rate", "egress_rate"].iter().find_map(|k| {
                pod.annotations
                    .get(&format!("{}.kubernetes.io/{k}", a.provider))
                    .or_else(|| pod.annotations.get(&format!("ovn.kubernetes.io/{k}")))
            }) else {
                continue;
            };
            let target = format!("default/{}", pod.name);
            let agent = format!("127.0.0.1:{}", self.nodes[pod.node].metrics_port);
            match self.cli(&["interfaces", &target, &a.ifname, "--agent", &agent]) {
                Ok(text) => {
                    let _ = write!(
                        self.report,
                        "   $ sidelane interfaces {target} {} --agent {agent}\n{}",
                        a.ifname,
                        indent(&text)
                    );
                    self.check(
                        sc.name,
                        format!(
                            "sidelane interfaces shows {}'s limit of {rate} Mbit/s",
                            pod.name
                        ),
                        text.contains(&format!("{rate} Mbit/s")),
                        String::new(),
                    );
                }
                Err(e) => self.check(
                    sc.name,
                    format!("sidelane interfaces {target}"),
                    false,
                    format!("{e:#}"),
                ),
            }
        }
    }

    /// Runs one scenario: apply, attach, check, clean up (unless `keep_up`).
    #[expect(
        clippy::too_many_lines,
        reason = "one scenario, step by step, as the report reads"
    )]
    fn scenario(&mut self, sc: &Scenario, keep_up: bool) -> anyhow::Result<()> {
        let mut docs: Vec<Value> = sc.files.iter().flat_map(|f| cluster::example(f)).collect();
        docs.extend((sc.extra)());
        let start = Instant::now();
        let _ = writeln!(
            self.report,
            "\n## {}\n   files: {}",
            sc.name,
            sc.files.join(", ")
        );
        // The seeds' files verbatim, with validation on; then the lab's own objects.
        for file in sc.files {
            let path = cluster::example_path(file);
            self.api
                .plane()
                .kubectl_run(
                    &[
                        "apply",
                        "--validate=strict",
                        "-f",
                        &path.display().to_string(),
                    ],
                    None,
                )
                .with_context(|| format!("kubectl apply -f {}", path.display()))?;
        }
        let extra = (sc.extra)();
        if !extra.is_empty() {
            self.api.apply(&extra);
        }
        let names = self
            .api
            .wait_for_pods("default", cluster::pods_made_by(&docs));
        let mut lab_pods = Vec::new();
        for name in &names {
            check_stop()?;
            let pod = self.start_pod(sc.name, name)?;
            eprintln!("    {name} on node{}", pod.node + 1);
            lab_pods.push(pod);
        }
        // What the seeds promise of each attachment.
        for pod in &lab_pods {
            for a in &pod.attachments {
                let key = |k: &str| {
                    pod.annotations
                        .get(&format!("{}.kubernetes.io/{k}", a.provider))
                        .cloned()
                };
                if let Some(static_ip) = key("ip_address") {
                    let ok = a
                        .ips
                        .iter()
                        .any(|ip| static_ip.split(',').any(|s| s.trim() == ip));
                    self.check(
                        sc.name,
                        format!(
                            "{} {} has its static address {static_ip}",
                            pod.name, a.ifname
                        ),
                        ok,
                        a.ips.join(", "),
                    );
                }
                if let Some(pool) = key("ip_pool") {
                    let ok = a
                        .ips
                        .iter()
                        .any(|ip| pool.split([',', ';']).any(|s| s.trim() == ip));
                    self.check(
                        sc.name,
                        format!("{} {} took an address of its ip_pool", pod.name, a.ifname),
                        ok,
                        format!("{} in {pool}", a.ips.join(", ")),
                    );
                }
                if let Some(ls) = key("logical_switch") {
                    self.check(
                        sc.name,
                        format!(
                            "{} {} is on the logical switch it names ({ls})",
                            pod.name, a.ifname
                        ),
                        a.switch == ls,
                        a.switch.clone(),
                    );
                }
                let routes = pod.ns.exec(&["ip", "route"]).unwrap_or_default();
                if let Some(r) = key("routes") {
                    let wanted: Vec<Value> = serde_json::from_str(&r).unwrap_or_default();
                    for route in wanted {
                        let gw = route["gw"].as_str().unwrap_or_default();
                        let dst = route["dst"].as_str().unwrap_or("default");
                        let ok = routes.lines().any(|l| {
                            l.contains(&format!("via {gw}"))
                                && (dst == "default" && l.starts_with("default")
                                    || l.starts_with(dst.split('/').next().unwrap_or(dst))
                                    || dst
                                        .parse::<ipnet::IpNet>()
                                        .is_ok_and(|n| l.starts_with(&n.trunc().to_string())))
                        });
                        self.check(
                            sc.name,
                            format!("{} has the custom route {dst} via {gw}", pod.name),
                            ok,
                            routes.lines().collect::<Vec<_>>().join("; "),
                        );
                    }
                }
            }
            let selection = pod
                .annotations
                .get("k8s.v1.cni.cncf.io/networks")
                .cloned()
                .unwrap_or_default();
            if let Ok(sels) = network_selection::parse(&selection, "default") {
                for (i, sel) in sels.iter().enumerate() {
                    for gw in &sel.default_route {
                        let ifname = sel.interface_or_default(i + 1);
                        let routes = pod.ns.exec(&["ip", "route"]).unwrap_or_default();
                        let ok = routes
                            .lines()
                            .any(|l| l.starts_with(&format!("default via {gw} dev {ifname}")));
                        self.check(
                            sc.name,
                            format!(
                                "{}'s default route is via {gw} on {ifname} (default-route)",
                                pod.name
                            ),
                            ok,
                            routes.lines().collect::<Vec<_>>().join("; "),
                        );
                    }
                }
            }
        }
        // The ping matrix over secondary networks.
        let mut endpoints: Vec<(String, usize, String, String, String, usize)> = Vec::new();
        for (pi, pod) in lab_pods.iter().enumerate() {
            for a in &pod.attachments {
                for ip in &a.ips {
                    endpoints.push((
                        pod.name.clone(),
                        pod.node,
                        a.nad.clone(),
                        a.switch.clone(),
                        ip.clone(),
                        pi,
                    ));
                }
            }
        }
        let vpc_of = |api: &SidelaneCluster, switch: &str| {
            api.get("kubeovn.io/v1", "Subnet", "", switch)
                .and_then(|s| s["spec"]["vpc"].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        let _ = writeln!(self.report, "   pods:");
        for pod in &lab_pods {
            let mut ifs: Vec<String> = Vec::new();
            if pod.primary_standin {
                ifs.push("eth0 (primary CNI)".to_owned());
            }
            ifs.extend(pod.attachments.iter().map(|a| {
                format!(
                    "{} {} ({}{})",
                    a.ifname,
                    a.ips.join(","),
                    a.nad,
                    if a.switch.is_empty() {
                        String::new()
                    } else {
                        format!(" on {}", a.switch)
                    }
                )
            }));
            let _ = writeln!(
                self.report,
                "     {:<30} node{}  {}",
                pod.name,
                pod.node + 1,
                ifs.join("  ")
            );
        }
        for c in self
            .checks
            .iter()
            .filter(|c| c.scenario == sc.name && !c.what.contains(" attached ("))
        {
            let _ = writeln!(
                self.report,
                "   {}  {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.what
            );
        }
        // The ping matrix: row pings column.
        let mut cells = vec![vec![' '; endpoints.len()]; endpoints.len()];
        for (ai, a) in endpoints.iter().enumerate() {
            for (bi, b) in endpoints.iter().enumerate() {
                if a.5 == b.5 {
                    cells[ai][bi] = '-';
                    continue;
                }
                let same_switch = a.3 == b.3 && !a.3.is_empty();
                let (expect, why) = if same_switch || (a.2 == b.2 && a.3.is_empty()) {
                    (
                        Some(true),
                        if a.1 == b.1 {
                            "same switch, same node"
                        } else {
                            "same switch, across nodes"
                        },
                    )
                } else if !a.3.is_empty()
                    && !b.3.is_empty()
                    && vpc_of(&self.api, &a.3) != vpc_of(&self.api, &b.3)
                {
                    (Some(false), "different VPCs, forbidden")
                } else if !a.3.is_empty()
                    && vpc_of(&self.api, &a.3) == vpc_of(&self.api, &b.3)
                    && routes_to(&lab_pods[a.5], &b.4)
                    && routes_to(&lab_pods[b.5], &a.4)
                {
                    (Some(true), "across Subnets of a Vpc, routed")
                } else {
                    (None, "")
                };
                let Some(expect) = expect else { continue };
                let from = &lab_pods[a.5].ns;
                let reached = if expect {
                    Self::ping_eventually(from, &b.4, Duration::from_secs(10))
                } else {
                    Self::ping(from, &b.4)
                };
                cells[ai][bi] = match (expect, reached) {
                    (true, true) => 'o',
                    (true, false) => 'X',
                    (false, false) => '.',
                    (false, true) => '!',
                };
                self.check(
                    sc.name,
                    format!("ping {} -> {} ({why})", a.0, b.0),
                    reached == expect,
                    format!("{} -> {}", a.4, b.4),
                );
            }
        }
        if endpoints.len() > 1 {
            let _ = writeln!(
                self.report,
                "   ping matrix over the secondary networks (row pings column; o reached, . not reached as \
                 required: another VPC; X or ! wrong; blank not expected either way):"
            );
            let labels: Vec<String> = endpoints
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{:>2} {} {} node{}", i + 1, a.0, a.4, a.1 + 1))
                .collect();
            let width = labels.iter().map(String::len).max().unwrap_or(0) + 2;
            let mut header = String::new();
            for i in 0..endpoints.len() {
                let _ = write!(header, "{:>3}", i + 1);
            }
            let _ = writeln!(self.report, "     {:<width$}{header}", "");
            for (label, row_cells) in labels.iter().zip(&cells) {
                let mut row = String::new();
                for c in row_cells {
                    let _ = write!(row, "{c:>3}");
                }
                let _ = writeln!(self.report, "     {label:<width$}{row}");
            }
        }
        // QoS pods: measured against configured, both directions, against a pod of the same
        // network on the same node.
        for (pi, pod) in lab_pods.iter().enumerate() {
            let Some(a) = pod.attachments.first() else {
                continue;
            };
            let Some(target) = a.ips.first().cloned() else {
                continue;
            };
            let peer = lab_pods.iter().enumerate().find(|(i, p)| {
                *i != pi && p.node == pod.node && p.attachments.iter().any(|x| x.nad == a.nad)
            });
            let Some((_, peer)) = peer else { continue };
            let Some(peer_ip) = peer
                .attachments
                .iter()
                .find(|x| x.nad == a.nad)
                .and_then(|x| x.ips.first())
                .cloned()
            else {
                continue;
            };
            for (key, into_pod) in [("ingress_rate", true), ("egress_rate", false)] {
                let Some(rate) = pod
                    .annotations
                    .get(&format!("{}.kubernetes.io/{key}", a.provider))
                    .or_else(|| pod.annotations.get(&format!("ovn.kubernetes.io/{key}")))
                    .and_then(|r| r.parse::<f64>().ok())
                else {
                    continue;
                };
                let (server, server_ip, client) = if into_pod {
                    (&pod.ns, &target, &peer.ns)
                } else {
                    (&peer.ns, &peer_ip, &pod.ns)
                };
                match iperf::measure(
                    server,
                    server_ip,
                    client,
                    &IperfSpec::tcp(Duration::from_secs(4)),
                ) {
                    Ok(r) => {
                        // The steady state: the first second spends the bucket's burst.
                        let mbps =
                            r.receiver_rate_between(1.0, 4.0).unwrap_or(r.receiver_bps) / 1e6;
                        let ok = mbps <= rate * 1.05 && mbps >= rate * 0.5;
                        let _ = writeln!(
                            self.report,
                            "   QoS: {} {key} {rate} Mbit/s ({}), measured {mbps:.0} Mbit/s (TCP, seconds 1-4) with {}",
                            pod.name,
                            if into_pod {
                                "into the pod"
                            } else {
                                "out of the pod"
                            },
                            peer.name
                        );
                        self.check(
                            sc.name,
                            format!("{} held to its {key} of {rate} Mbit/s", pod.name),
                            ok,
                            format!("{mbps:.0} Mbit/s"),
                        );
                    }
                    Err(e) => self.check(
                        sc.name,
                        format!("{} {key} measured", pod.name),
                        false,
                        format!("{e:#}"),
                    ),
                }
            }
        }
        // Fast-path counters.
        let hits: BTreeMap<String, u64> = (0..self.nodes.len())
            .flat_map(|n| self.fastpath_hits(n))
            .collect();
        let names: BTreeSet<&String> = lab_pods.iter().map(|p| &p.name).collect();
        let shown: Vec<String> = hits
            .iter()
            .filter(|(p, _)| names.contains(p))
            .map(|(p, h)| format!("{p} {h}"))
            .collect();
        if !shown.is_empty() {
            let _ = writeln!(self.report, "   fast-path hits: {}", shown.join(", "));
        }
        let same_node_ovn = endpoints.iter().any(|a| {
            endpoints.iter().any(|b| {
                a.5 != b.5
                    && a.1 == b.1
                    && a.3 == b.3
                    && !a.3.is_empty()
                    && lab_pods[a.5].attachments.iter().any(|x| x.plugin == "ovn")
            })
        });
        if same_node_ovn {
            let total: u64 = hits
                .iter()
                .filter(|(p, _)| names.contains(p))
                .map(|(_, h)| h)
                .sum();
            self.check(
                sc.name,
                "same-node traffic of one switch took the fast path".to_owned(),
                total > 0,
                format!("{total} hits"),
            );
        }
        self.cli_views(sc, &docs, &lab_pods);
        if keep_up {
            self.phases
                .push((format!("scenario: {}", sc.name), start.elapsed()));
            self.kept = lab_pods;
            return Ok(());
        }
        // Clean up for the next scenario as a user would: the Deployments' pods go before their
        // ReplicaSets (foreground), each torn down by its node through Multus.
        for file in sc.files {
            let path = cluster::example_path(file);
            if let Err(error) = self.api.plane().kubectl_run(
                &[
                    "delete",
                    "--cascade=foreground",
                    "--wait=true",
                    "--timeout=100s",
                    "-f",
                    &path.display().to_string(),
                ],
                None,
            ) {
                eprintln!("    {error:#}");
            }
        }
        for doc in extra.iter().rev() {
            self.delete_object(doc);
        }
        for pod in &lab_pods {
            self.stop_pod(pod);
        }
        // The controller releases what the pods held before the next scenario reuses names.
        let start_wait = Instant::now();
        while !self.api.list("kubeovn.io/v1", "IP", None).is_empty()
            && start_wait.elapsed() < Duration::from_secs(20)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        self.phases
            .push((format!("scenario: {}", sc.name), start.elapsed()));
        Ok(())
    }

    /// Runs every scenario and prints the report; `Ok(true)` when every check held.
    ///
    /// With `keep`, the first (richest) scenario runs last and stays up for the user to explore.
    pub fn run_scenarios(&mut self, keep: bool) -> anyhow::Result<bool> {
        let mut order: Vec<&Scenario> = SCENARIOS.iter().collect();
        if keep {
            order.rotate_left(1);
        }
        let last = order.len() - 1;
        for (i, sc) in order.into_iter().enumerate() {
            let name = format!("scenario: {}", sc.name);
            check_stop()?;
            eprintln!("==> {name}");
            let start = Instant::now();
            self.scenario(sc, keep && i == last)
                .with_context(|| name.clone())?;
            eprintln!("    done in {:.1} s", start.elapsed().as_secs_f64());
        }
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.ok).collect();
        let mut out = String::new();
        let _ = writeln!(out, "\n# Sidelane lab report\n");
        let _ = writeln!(
            out,
            "Kubernetes: kube-apiserver {} (etcd, kube-controller-manager, kube-scheduler; Node,RBAC); \
             each node's pods set up by its kubelet stand-in through the real Multus",
            self.api.plane().url()
        );
        let _ = writeln!(out, "OVN central: {}", self.central.nb.unix_remote());
        for n in &self.nodes {
            let _ = writeln!(
                out,
                "{}: namespace {}, OVS {} ({} datapath), agent metrics http://127.0.0.1:{}/metrics",
                n.name,
                n.chassis.ns.name(),
                n.chassis.db.unix_remote(),
                n.chassis.datapath,
                n.metrics_port
            );
        }
        out.push_str(&self.report);
        let _ = writeln!(out, "\n## Phases");
        for (name, took) in &self.phases {
            let _ = writeln!(out, "   {:>6.1} s  {name}", took.as_secs_f64());
        }
        let _ = writeln!(
            out,
            "\n## Result: {} checks, {} failed",
            self.checks.len(),
            failed.len()
        );
        for c in &failed {
            let _ = writeln!(out, "   FAILED [{}] {}: {}", c.scenario, c.what, c.detail);
        }
        print!("{out}");
        Ok(failed.is_empty())
    }

    /// How to reach the running lab (`--keep`).
    pub fn how_to_reach(&self) -> String {
        let d = self.dir.path();
        format!(
            "The lab keeps running (Ctrl-C tears it down). From another shell:\n  \
             export KUBECONFIG={kubeconfig}\n  \
             {cli} subnets\n  \
             {cli} pod default/qos-pod\n  \
             {cli} interfaces --agent 127.0.0.1:{port1}    (node1; node2: 127.0.0.1:{port2})\n  \
             ovn-nbctl --db={nb} show\n  \
             ip netns exec {ns1} ovs-vsctl --db={ovs1} show\n  \
             pods are network namespaces: {pods}\n  \
             logs: {dir}/node1/agent.log, {dir}/controller-1.log\n",
            kubeconfig = self.api.plane().admin_kubeconfig().display(),
            cli = crate::process::binary_beside_me("sidelane")
                .map_or_else(|_| "sidelane".to_owned(), |p| p.display().to_string()),
            port1 = self.nodes[0].metrics_port,
            port2 = self.nodes.get(1).map_or(0, |n| n.metrics_port),
            nb = self.central.nb.unix_remote(),
            ns1 = self.nodes[0].chassis.ns.name(),
            ovs1 = self.nodes[0].chassis.db.unix_remote(),
            pods = self
                .kept
                .iter()
                .map(|p| format!("{} = ip netns exec {}", p.name, p.ns.name()))
                .collect::<Vec<_>>()
                .join("; "),
            dir = d.display(),
        )
    }

    /// Whether every lab process still runs.
    pub fn healthy(&mut self) -> bool {
        self.nodes.iter_mut().all(|n| n.agent.is_running())
            && self.controllers.iter_mut().all(|(c, _)| c.is_running())
    }

    /// The lab's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The LAN namespace (kept for the report).
    pub fn lan(&self) -> &NetNs {
        &self.lan
    }
}
