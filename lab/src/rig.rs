//! The lab's machinery, brought up once: a real Kubernetes control plane, OVN central, two
//! nodes (each a network namespace with OVS, ovn-controller and `sidelane-agent`) joined by an
//! underlay and a LAN, and two `sidelane-controller` replicas electing a leader. node1 is a
//! real node: a kubelet with containerd and runc runs its pods' containers, in a mount
//! namespace of the node's own where the agent runs as the DaemonSet does (the chart's flags
//! and paths). node2 keeps the kubelet stand-in (a pod is a network namespace set up through
//! the real Multus). Everything stops, and its folders go, when the rig is dropped.

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sidelane_tests::{
    control_plane::{Options as PlaneOptions, Pki, SidelaneCluster},
    kubelet_standin::{self, KubeletStandin, NodeConfig},
    netns::NetNs,
    ovn::{Central, Chassis},
    process::{self, Background},
    real_node::{NodeSpec, RealNode},
    sidelane::PinRoot,
    tools,
};

use crate::{outside::OutsideWorld, phases::Phases};

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

/// Who runs a node's pods.
pub enum Kubelet {
    /// A real kubelet with containerd and runc: the pods run containers.
    Real(RealNode),
    /// The kubelet stand-in: a pod is a network namespace set up through the real Multus.
    Standin(KubeletStandin),
}

/// One node.
pub struct Node {
    pub name: String,
    pub chassis: Chassis,
    /// The node's `/run/openvswitch` (for the CNI plugins and the agent): holds the agent's
    /// socket.
    pub run_dir: PathBuf,
    /// The node's directory (agent log, records).
    pub dir: PathBuf,
    /// The agent's attachment records (its `--state-dir`).
    pub records: PathBuf,
    /// Where the agent serves `/metrics` and `/interfaces`, reachable from this machine.
    pub metrics_addr: String,
    pub agent: Background,
    pub agent_spawn: Spawn,
    /// Runs the pods bound here (dropped before the pins, which a real node mounts).
    pub kubelet: Kubelet,
    pub pins: PinRoot,
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
        let fetched = std::net::TcpStream::connect(self.metrics_addr.as_str()).and_then(|mut s| {
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
    /// How the controllers reach the Northbound database: its `ssl:` remote and their TLS
    /// files.
    pub nb_tls: NbTls,
    pub nodes: Vec<Node>,
    /// The LAN the nodes' `eth0` are bridged on (macvlan attachments' master).
    pub lan: NetNs,
    /// The outside world behind the nodes' external network (`eth1`).
    pub outside: OutsideWorld,
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
        let lan = NetNs::new()?;
        lan.exec(&["ip", "link", "add", "br0", "type", "bridge"])?;
        lan.exec(&["ip", "link", "set", "br0", "up"])?;
        let (central, nb_tls) = phases.run(
            "OVN central: Northbound and Southbound on TLS (as with the chart's \
             networking.ENABLE_SSL; the Southbound on the nodes' LAN), ovn-northd",
            || start_central(dir.path(), &lan),
        )?;
        let outside = OutsideWorld::start()?;
        let nodes = phases.run(
            "two nodes: OVS, ovn-controller (to the Southbound over TLS), sidelane-agent (both \
             gateway nodes: eth1 on the external network to the outside world's router); node1 \
             a real kubelet with containerd and runc, node2 a kubelet stand-in running Multus",
            || {
                start_nodes(
                    dir.path(),
                    &api,
                    &central,
                    &nb_tls,
                    (&lan, &outside),
                    &bins,
                    &multus,
                )
            },
        )?;
        let controllers = phases
            .run("two sidelane-controller replicas (leader election)", || {
                start_controllers(dir.path(), &api, &nb_tls, &bins)
            })?;
        Ok(Rig {
            dir,
            api,
            central,
            nb_tls,
            nodes,
            lan,
            outside,
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
             {cli} interfaces --agent {agent1}    (node1; node2: {agent2})\n  \
             ovn-nbctl --db={nb} show\n  \
             ip netns exec {ns1} ovs-vsctl --db={ovs1} show\n  \
             node1's pods run containers: kubectl exec <pod> -- ip addr show\n  \
             every pod's network namespace: {pods}\n  \
             logs: {dir}/node1/agent.log, {dir}/controller-1.log\n",
            kubeconfig = self.api.plane().admin_kubeconfig().display(),
            cli = process::binary_beside_me("sidelane")
                .map_or_else(|_| "sidelane".to_owned(), |p| p.display().to_string()),
            agent1 = self.nodes[0].metrics_addr,
            agent2 = self.nodes.get(1).map_or("", |n| n.metrics_addr.as_str()),
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

/// Two chassis joined by an underlay, their `eth0` on the LAN: node1 a real node, node2 with
/// the kubelet stand-in; each with its agent.
fn start_nodes(
    dir: &Path,
    api: &SidelaneCluster,
    central: &Central,
    tls: &NbTls,
    (lan, outside): (&NetNs, &OutsideWorld),
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
        // ovn-controller reaches the Southbound over TLS on the LAN, with its own certificate.
        c.ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("192.168.201.{}/24", i + 1),
            "dev",
            "eth0",
        ])?;
        c.ns.exec(&["ip", "link", "set", "eth0", "up"])?;
        // Its NIC on the external network (NAT gateways' way out).
        outside.join(&c.ns, i)?;
        let cert = tls
            .pki
            .client(&format!("ovn-controller-{name}"), &name, &[])?;
        c.use_southbound_tls(&tls.sb_remote, &cert.key, &cert.cert, &tls.ca)?;
        let node_dir = dir.join(&name);
        let run_dir = node_dir.join("run");
        std::fs::create_dir_all(&run_dir)?;
        let node = if i == 0 {
            start_real_node(api, c, name, node_dir, bins)?
        } else {
            start_standin_node(api, c, name, node_dir, i, bins, multus)?
        };
        node.wait_for_agent()?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// A real node on `chassis`: kubelet, containerd and runc in a mount namespace of the node's
/// own, where the DaemonSet's hostPaths are at the chart's paths (`/run/openvswitch` with the
/// node's OVS database socket, `/run/sidelane`, `/sys/fs/bpf/sidelane`), and the agent with
/// the chart's flags, in the node's network namespace (`hostNetwork`).
fn start_real_node(
    api: &SidelaneCluster,
    chassis: Chassis,
    name: String,
    node_dir: PathBuf,
    bins: &Binaries,
) -> anyhow::Result<Node> {
    let run_dir = node_dir.join("run");
    let run_sidelane = node_dir.join("run-sidelane");
    std::fs::create_dir_all(&run_sidelane)?;
    let db = chassis.db.unix_remote();
    std::os::unix::fs::symlink(db.trim_start_matches("unix:"), run_dir.join("db.sock"))
        .context("the node's OVS database at /run/openvswitch/db.sock")?;
    let pins = PinRoot::new(&format!("sidelane-lab-{name}"));
    std::fs::create_dir_all(pins.path())
        .with_context(|| format!("creating {}", pins.path().display()))?;
    let netns = chassis.ns.path();
    let real = RealNode::start_with(
        api.plane(),
        &NodeSpec {
            netns: Some(&netns),
            run_dir: Some(&run_dir),
            pod_cidr: "10.244.1.0/24",
            ..NodeSpec::new(&name, &bins.cni_bin)
        },
    )?;
    real.mount_in_node(pins.path(), "/sys/fs/bpf/sidelane")?;
    real.mount_in_node(&run_sidelane, "/run/sidelane")?;
    let metrics_port = free_port()?;
    let mut args = real.enter_args();
    args.push(bins.agent.clone().into());
    // deploy/helm/sidelane/templates/agent.yaml's arguments, with the chart's values.
    args.extend(
        [
            "--socket=/run/openvswitch/kube-ovn-daemon.sock".to_owned(),
            "--ovs-db=unix:/run/openvswitch/db.sock".to_owned(),
            "--ovs-datapath=auto".to_owned(),
            "--fastpath=true".to_owned(),
            "--pin-root=/sys/fs/bpf/sidelane".to_owned(),
            "--state-dir=/run/sidelane/attachments".to_owned(),
            format!("--metrics-addr=0.0.0.0:{metrics_port}"),
            // The chart's NODE_NAME, and agent.externalNic=eth1.
            format!("--node-name={name}"),
            "--external-nic=eth1".to_owned(),
        ]
        .map(OsString::from),
    );
    let agent_spawn = Spawn {
        bin: PathBuf::from("nsenter"),
        args,
        log: node_dir.join("agent.log"),
        kubeconfig: api.agent_kubeconfig().to_owned(),
    };
    let agent = agent_spawn.start()?;
    eprintln!(
        "    {name}: a real node in {} (kubelet and containerd in {}, agent log {})",
        chassis.ns.name(),
        real.dir().display(),
        node_dir.join("agent.log").display()
    );
    Ok(Node {
        metrics_addr: format!("{}:{metrics_port}", real.ip()),
        name,
        chassis,
        run_dir,
        records: run_sidelane.join("attachments"),
        dir: node_dir,
        agent,
        agent_spawn,
        kubelet: Kubelet::Real(real),
        pins,
    })
}

/// A node on `chassis` whose pods the kubelet stand-in sets up, its agent on this machine's
/// mounts (`--host-netns`), the plugins seeing `run_dir` at `/run/openvswitch`.
fn start_standin_node(
    api: &SidelaneCluster,
    chassis: Chassis,
    name: String,
    node_dir: PathBuf,
    index: usize,
    bins: &Binaries,
    multus: &Path,
) -> anyhow::Result<Node> {
    let run_dir = node_dir.join("run");
    let pins = PinRoot::new(&format!("sidelane-lab-{name}"));
    let metrics_port = free_port()?;
    let records = node_dir.join("records");
    let args: Vec<OsString> = vec![
        "--host-netns".into(),
        chassis.ns.path().into(),
        "--socket".into(),
        run_dir.join("kube-ovn-daemon.sock").into(),
        "--pin-root".into(),
        pins.path().into(),
        "--state-dir".into(),
        records.clone().into(),
        "--ovs-db".into(),
        chassis.db.unix_remote().into(),
        "--ovs-datapath".into(),
        "auto".into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics_port}").into(),
        "--node-name".into(),
        name.clone().into(),
        "--external-nic".into(),
        "eth1".into(),
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
        "    {name}: {} with the kubelet stand-in (agent log {}, Multus log {})",
        chassis.ns.name(),
        node_dir.join("agent.log").display(),
        node_dir.join("kubelet/multus.log").display()
    );
    Ok(Node {
        name,
        chassis,
        run_dir,
        dir: node_dir,
        records,
        metrics_addr: format!("127.0.0.1:{metrics_port}"),
        agent,
        agent_spawn,
        kubelet: Kubelet::Standin(kubelet),
        pins,
    })
}

/// The Northbound database's `ssl:` remote and the controllers' TLS files (the chart's
/// `kube-ovn-tls` Secret, made here by a CA of the lab's own).
pub struct NbTls {
    pub remote: String,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub ca: PathBuf,
    /// The Southbound's `ssl:` remote on the nodes' LAN.
    pub sb_remote: String,
    /// The lab's OVN CA, which signs each chassis' client certificate.
    pub pki: Pki,
}

/// Central's address on the nodes' LAN (a veth from this namespace into the LAN's bridge).
const CENTRAL_LAN_IP: &str = "192.168.201.254";

/// OVN central, its Northbound database also listening on `pssl:` with a certificate of the
/// lab's CA (ovn-northd stays on the Unix socket, as in the chart), and its Southbound on
/// `pssl:` on the nodes' LAN, where each chassis' ovn-controller reaches it.
fn start_central(dir: &Path, lan: &NetNs) -> anyhow::Result<(Central, NbTls)> {
    let mut central = Central::start()?;
    let pki = Pki::create(&dir.join("ovn-pki"))?;
    let remote = central.nb.serve_tls(&pki)?;
    let client = pki.client("sidelane-controller", "sidelane-controller", &[])?;
    eprintln!("    Northbound on {remote} (CA {})", pki.ca.display());
    // The host's end stays in this namespace; deleting the LAN's namespace deletes both ends.
    let host_end = format!("sl-sb-{}", std::process::id() % 100_000);
    let address = format!("{CENTRAL_LAN_IP}/24");
    for args in [
        &[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "central",
            "netns",
            lan.name(),
        ][..],
        &["ip", "addr", "add", &address, "dev", &host_end],
        &["ip", "link", "set", &host_end, "up"],
    ] {
        process::command(args)
            .and_then(|mut c| process::run(&mut c, None, Duration::from_secs(10)))
            .and_then(process::Finished::checked)
            .with_context(|| format!("joining central to the nodes' LAN: {}", args.join(" ")))?;
    }
    lan.exec(&["ip", "link", "set", "central", "master", "br0", "up"])?;
    let serving = pki.server("sb-server", "ovsdb-server", &[])?;
    let sb_remote =
        central
            .sb
            .serve_tls_at(CENTRAL_LAN_IP, &serving.key, &serving.cert, &pki.ca)?;
    eprintln!("    Southbound on {sb_remote}");
    Ok((
        central,
        NbTls {
            remote,
            key: client.key,
            cert: client.cert,
            ca: pki.ca.clone(),
            sb_remote,
            pki,
        },
    ))
}

fn start_controllers(
    dir: &Path,
    api: &SidelaneCluster,
    nb: &NbTls,
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
                nb.remote.clone().into(),
                "--ovsdb-private-key".into(),
                nb.key.clone().into(),
                "--ovsdb-certificate".into(),
                nb.cert.clone().into(),
                "--ovsdb-ca-cert".into(),
                nb.ca.clone().into(),
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
