//! A node for attachments that need no OVN, on a real control plane: a network namespace whose
//! `eth0` (a veth to a wire namespace) is the macvlan master, Sidelane's agent and controller
//! (the workspace's binaries, under the chart's ServiceAccounts), and the kubelet stand-in
//! running the real Multus for the pods the scheduler binds to it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{
    control_plane::{SIDELANE_NAMESPACE, SidelaneCluster},
    kubelet_standin::{self, KubeletStandin, NodeConfig},
    netns::NetNs,
    process::Background,
    sidelane::PinRoot,
    tools,
};

/// The workspace binaries the node runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `sidelane-agent`.
    pub agent: PathBuf,
    /// `sidelane-controller`.
    pub controller: PathBuf,
    /// `sidelane-cni`, installed as `kube-ovn`.
    pub cni: PathBuf,
}

impl Binaries {
    /// The workspace's own builds, beside the running test or program.
    pub fn from_workspace() -> Binaries {
        Binaries {
            agent: crate::process::workspace_binary("sidelane-agent"),
            controller: crate::process::workspace_binary("sidelane-controller"),
            cni: crate::process::workspace_binary("sidelane-cni"),
        }
    }
}

/// The node; everything stops when dropped.
#[derive(Debug)]
pub struct MacvlanNode {
    /// The kubelet stand-in of `node1`.
    pub kubelet: KubeletStandin,
    agent: Background,
    controller: Option<Background>,
    pins: PinRoot,
    _wire: NetNs,
    _netns: NetNs,
    dir: tempfile::TempDir,
}

impl MacvlanNode {
    /// Starts `node1` with Multus' RBAC installed, `parallel` sandboxes set up at once, and
    /// `plugins` (path, name) installed in its CNI folder beside Multus, ours and the reference
    /// plugins.
    pub fn start(
        cluster: &SidelaneCluster,
        binaries: &Binaries,
        parallel: usize,
        plugins: &[(PathBuf, &str)],
    ) -> anyhow::Result<Self> {
        let multus = kubelet_standin::install_multus(cluster.plane())?;
        let dir = tempfile::Builder::new()
            .prefix("sidelane-macvlan-node-")
            .tempdir()
            .context("a folder for the node")?;
        let netns = NetNs::new()?;
        let wire = NetNs::new()?;
        netns.veth_to("eth0", &wire, "up0")?;
        // The wire's end up too: without carrier on eth0, its macvlan children pass nothing.
        wire.exec(&["ip", "link", "set", "up0", "up"])?;
        let run = dir.path().join("run");
        std::fs::create_dir_all(&run).context("the node's run folder")?;
        let pins = PinRoot::new("sidelane-macvlan-node");
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).with_context(|| format!("creating {name}"))
        };
        let mut agent = Command::new(&binaries.agent);
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
            .arg(format!("--host-netns={}", netns.path().display()))
            .args([
                "--ovs-db=none",
                "--fastpath=false",
                "--metrics-addr=127.0.0.1:0",
            ])
            .env("KUBECONFIG", cluster.agent_kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log("agent.log")?);
        let agent = Background::spawn(&mut agent)?;
        let mut controller = Command::new(&binaries.controller);
        controller
            .args([
                "--lease-namespace",
                SIDELANE_NAMESPACE,
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .env("KUBECONFIG", cluster.controller_kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log("controller.log")?);
        let controller = Background::spawn(&mut controller)?;
        let bin = dir.path().join("cni-bin");
        install_plugins(&bin, binaries, plugins)?;
        let kubelet = KubeletStandin::start(
            cluster.plane(),
            NodeConfig {
                name: "node1".to_owned(),
                netns: Some(netns.name().to_owned()),
                run_dir: Some(run),
                cni_bin: bin,
                pod_cidr: "10.244.0.0/16".to_owned(),
                parallel,
                dir: dir.path().join("node1"),
            },
            &multus,
        )?;
        Ok(Self {
            kubelet,
            agent,
            controller: Some(controller),
            pins,
            _wire: wire,
            _netns: netns,
            dir,
        })
    }

    /// The node's folder (the agent's and the controller's logs, Multus' log under `node1/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the node's agent pins its programs and maps.
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }

    /// Stops the controller (its Lease renewals end).
    pub fn stop_controller(&mut self) {
        self.controller = None;
    }

    /// CPU seconds the controller and the agent have used so far.
    pub fn sidelane_cpu_seconds(&self) -> f64 {
        self.controller
            .iter()
            .map(Background::id)
            .chain([self.agent.id()])
            .filter_map(crate::usage::process_cpu_seconds)
            .sum()
    }
}

/// Links the CNI plugins a node runs into `dir`: Multus, ours as `kube-ovn`, the reference
/// plugins, and `extra`.
pub fn install_plugins(
    dir: &Path,
    binaries: &Binaries,
    extra: &[(PathBuf, &str)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut plugins: Vec<(PathBuf, &str)> = vec![
        (tools::binary("multus")?, "multus"),
        (binaries.cni.clone(), "kube-ovn"),
    ];
    for plugin in ["bridge", "host-local", "macvlan", "loopback"] {
        plugins.push((Path::new("/usr/lib/cni").join(plugin), plugin));
    }
    plugins.extend(extra.iter().cloned());
    for (from, name) in plugins {
        std::os::unix::fs::symlink(&from, dir.join(name))
            .with_context(|| format!("installing the CNI plugin {name}"))?;
    }
    Ok(())
}
