//! The lab's machinery, brought up once: a real Kubernetes control plane, OVN central, two
//! simulated nodes (OVS, ovn-controller, `sidelane-agent`, a kubelet stand-in running the real
//! Multus) joined by an underlay and a LAN, and two `sidelane-controller` replicas electing a
//! leader. Everything stops, and its folders go, when the rig is dropped.

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sidelane_tests::{
    control_plane::{Options as PlaneOptions, SidelaneCluster},
    kubelet_standin::{self, KubeletStandin, NodeConfig},
    netns::NetNs,
    ovn::{Central, Chassis},
    process::{self, Background},
    sidelane::PinRoot,
    tools,
};

use crate::phases::Phases;

/// The Lease the controller replicas elect their leader through.
const LEASE: (&str, &str) = ("kube-system", "sidelane-controller");

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to start one of the lab's processes again (a restart, as a DaemonSet or a Deployment
/// would do it).
pub struct Spawn {
    bin: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    kubeconfig: PathBuf,
}

impl Spawn {
    /// Starts the process, its output appended to its log.
    pub fn start(&self) -> anyhow::Result<Background> {
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
pub struct Node {
    pub name: String,
    pub chassis: Chassis,
    /// Mounted at `/run/openvswitch` for the CNI plugins of this node: holds the agent socket.
    pub run_dir: PathBuf,
    /// The node's directory (agent log, records).
    pub dir: PathBuf,
    pub metrics_port: u16,
    pub agent: Background,
    pub agent_spawn: Spawn,
    pub pins: PinRoot,
    /// Plays the node's kubelet for the network: runs Multus for the pods bound here.
    pub kubelet: KubeletStandin,
}

impl Node {
    /// The agent's CNI socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("kube-ovn-daemon.sock")
    }

    /// Waits until the agent serves its socket.
    pub fn wait_for_agent(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "{}'s agent did not serve within 30 s; see {}",
                    self.name,
                    self.dir.join("agent.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The agent's `/metrics` as text (empty when it cannot be reached).
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut text = String::new();
        let fetched =
            std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
                s.read_to_string(&mut text)
            });
        if fetched.is_err() {
            text.clear();
        }
        text
    }
}

/// The binaries and plugin folder the nodes run.
struct Binaries {
    agent: PathBuf,
    controller: PathBuf,
    /// `multus`, `kube-ovn` (our CNI binary) and Debian's reference plugins.
    cni_bin: PathBuf,
}

impl Binaries {
    fn gather(dir: &Path) -> anyhow::Result<Self> {
        let cni_bin = dir.join("cni-bin");
        std::fs::create_dir_all(&cni_bin)?;
        std::os::unix::fs::symlink(
            process::binary_beside_me("sidelane-cni")?,
            cni_bin.join("kube-ovn"),
        )?;
        std::os::unix::fs::symlink(tools::binary("multus")?, cni_bin.join("multus"))?;
        for plugin in ["macvlan", "bridge", "host-local", "static", "loopback"] {
            let path = Path::new("/usr/lib/cni").join(plugin);
            if path.exists() {
                std::os::unix::fs::symlink(&path, cni_bin.join(plugin))?;
            }
        }
        Ok(Self {
            agent: process::binary_beside_me("sidelane-agent")?,
            controller: process::binary_beside_me("sidelane-controller")?,
            cni_bin,
        })
    }
}

/// The lab's machinery.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub api: SidelaneCluster,
    pub central: Central,
    pub nodes: Vec<Node>,
    /// The LAN the nodes' `eth0` are bridged on (macvlan attachments' master).
    pub lan: NetNs,
    pub controllers: Vec<(Background, Spawn)>,
    pub phases: Phases,
}

impl Rig {
    /// Brings everything up, phase by phase.
    pub fn start() -> anyhow::Result<Rig> {
        let mut phases = Phases::default();
        let dir = tempfile::Builder::new()
            .prefix("sidelane-lab-")
            .tempdir()
            .context("creating the lab's directory")?;
        let bins = Binaries::gather(dir.path())?;
        let (api, multus) = phases.run(
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
        let central = phases.run(
            "OVN central: Northbound, Southbound, ovn-northd",
            Central::start,
        )?;
        let lan = NetNs::new()?;
        lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lan.exec(&["ip", "link", "set", "br0", "up"])?;
        let nodes = phases.run(
            "two nodes: OVS, ovn-controller, sidelane-agent, a kubelet stand-in running Multus",
            || start_nodes(dir.path(), &api, &central, &lan, &bins, &multus),
        )?;
        let controllers = phases
            .run("two sidelane-controller replicas (leader election)", || {
                start_controllers(dir.path(), &api, &central, &bins)
            })?;
        Ok(Rig {
            dir,
            api,
            central,
            nodes,
            lan,
            controllers,
            phases,
        })
    }

    /// The index of the controller replica holding the Lease.
    pub fn leader(&self) -> Option<usize> {
        leader_of(&self.api)
    }

    /// Runs the `sidelane` command line against the lab as admin.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(process::binary_beside_me("sidelane")?)
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

    /// Whether every lab process still runs.
    pub fn healthy(&mut self) -> bool {
        self.nodes.iter_mut().all(|n| n.agent.is_running())
            && self.controllers.iter_mut().all(|(c, _)| c.is_running())
    }

    /// How to reach the running lab (`--keep`); `pods` says where the kept pods are.
    pub fn how_to_reach(&self, pods: &str) -> String {
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
            cli = process::binary_beside_me("sidelane")
                .map_or_else(|_| "sidelane".to_owned(), |p| p.display().to_string()),
            port1 = self.nodes[0].metrics_port,
            port2 = self.nodes.get(1).map_or(0, |n| n.metrics_port),
            nb = self.central.nb.unix_remote(),
            ns1 = self.nodes[0].chassis.ns.name(),
            ovs1 = self.nodes[0].chassis.db.unix_remote(),
            dir = d.display(),
        )
    }
}

fn leader_of(api: &SidelaneCluster) -> Option<usize> {
    let lease = api.get("coordination.k8s.io/v1", "Lease", LEASE.0, LEASE.1)?;
    lease["spec"]["holderIdentity"]
        .as_str()?
        .strip_prefix("sidelane-controller-")?
        .parse::<usize>()
        .ok()?
        .checked_sub(1)
}

/// Two chassis joined by an underlay, each with its agent and kubelet stand-in, their `eth0`
/// on the LAN.
fn start_nodes(
    dir: &Path,
    api: &SidelaneCluster,
    central: &Central,
    lan: &NetNs,
    bins: &Binaries,
    multus: &Path,
) -> anyhow::Result<Vec<Node>> {
    // As a real node: the kernel datapath where the module is loaded.
    let datapath = sidelane_agent::ovs::Datapath::detect().as_str();
    eprintln!("    OVS datapath: {datapath}");
    let mut chassis = Vec::new();
    for i in 1..=2 {
        chassis.push(Chassis::start_on(
            central,
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
        let port = format!("lan{i}");
        c.ns.veth_to("eth0", lan, &port)?;
        lan.exec(&["ip", "link", "set", &port, "master", "br0", "up"])?;
        nodes.push(start_node(dir, api, c, name, i, bins, multus)?);
    }
    Ok(nodes)
}

fn start_node(
    dir: &Path,
    api: &SidelaneCluster,
    chassis: Chassis,
    name: String,
    index: usize,
    bins: &Binaries,
    multus: &Path,
) -> anyhow::Result<Node> {
    let node_dir = dir.join(&name);
    let run_dir = node_dir.join("run");
    std::fs::create_dir_all(&run_dir)?;
    let pins = PinRoot::new(&format!("sidelane-lab-{name}"));
    let metrics_port = free_port()?;
    let args: Vec<OsString> = vec![
        "--host-netns".into(),
        chassis.ns.path().into(),
        "--socket".into(),
        run_dir.join("kube-ovn-daemon.sock").into(),
        "--pin-root".into(),
        pins.path().into(),
        "--state-dir".into(),
        node_dir.join("records").into(),
        "--ovs-db".into(),
        chassis.db.unix_remote().into(),
        "--ovs-datapath".into(),
        "auto".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}").into(),
    ];
    let agent_spawn = Spawn {
        bin: bins.agent.clone(),
        args,
        log: node_dir.join("agent.log"),
        // The chart's agent ServiceAccount.
        kubeconfig: api.agent_kubeconfig().to_owned(),
    };
    let agent = agent_spawn.start()?;
    let kubelet = KubeletStandin::start(
        api.plane(),
        NodeConfig {
            name: name.clone(),
            netns: Some(chassis.ns.name().to_owned()),
            run_dir: Some(run_dir.clone()),
            cni_bin: bins.cni_bin.clone(),
            pod_cidr: format!("10.244.{}.0/24", index + 1),
            parallel: 4,
            dir: node_dir.join("kubelet"),
        },
        multus,
    )?;
    eprintln!(
        "    {name}: {} (agent log {}, Multus log {})",
        chassis.ns.name(),
        node_dir.join("agent.log").display(),
        node_dir.join("kubelet/multus.log").display()
    );
    let node = Node {
        name,
        chassis,
        run_dir,
        dir: node_dir,
        metrics_port,
        agent,
        agent_spawn,
        pins,
        kubelet,
    };
    node.wait_for_agent()?;
    Ok(node)
}

fn start_controllers(
    dir: &Path,
    api: &SidelaneCluster,
    central: &Central,
    bins: &Binaries,
) -> anyhow::Result<Vec<(Background, Spawn)>> {
    let mut controllers = Vec::new();
    for i in 1..=2 {
        let spawn = Spawn {
            bin: bins.controller.clone(),
            args: vec![
                "--identity".into(),
                format!("sidelane-controller-{i}").into(),
                "--lease-namespace".into(),
                LEASE.0.into(),
                "--ovn-nb-addr".into(),
                central.nb.unix_remote().into(),
                "--metrics-addr".into(),
                format!("127.0.0.1:{}", free_port()?).into(),
                "--gc-interval".into(),
                "10".into(),
            ],
            log: dir.join(format!("controller-{i}.log")),
            // The chart's controller ServiceAccount.
            kubeconfig: api.controller_kubeconfig().to_owned(),
        };
        controllers.push((spawn.start()?, spawn));
    }
    let start = Instant::now();
    while leader_of(api).is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("no controller took the Lease within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "    leader: sidelane-controller-{}",
        leader_of(api).map_or(0, |i| i + 1)
    );
    Ok(controllers)
}
