//! A **real node**: kubelet 1.37 and containerd 2.3 (with Debian's runc) run the pods bound to
//! it, from the images `cargo xtask setup` builds. Everything lives in a folder of the node's
//! own: containerd's root, state and socket, the kubelet's root and pod logs, and a CNI
//! configuration directory of the node's own (never the machine's `/etc/cni/net.d`), whose one
//! network is the real Multus thin plugin with the reference bridge plugin as its primary
//! delegate, as a cluster with a primary CNI and Multus is set up.
//!
//! What this machine needs (see `xtask/go/README.md`): `failCgroupV1: false` (the kernel mounts
//! cgroup v1) and containerd's `restrict_oom_score_adj` (lowering `oom_score_adj` is refused even
//! to root). The API server reaches the kubelet with its kubelet client certificate, which the
//! kubelet trusts through the cluster's CA, so `kubectl exec` and `kubectl logs` work.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::json;

use crate::{
    control_plane::ControlPlane,
    kubelet_standin,
    process::{self, Background},
    registry::Registry,
    tools,
};

/// What a real node is made of.
#[derive(Clone, Debug)]
pub struct NodeSpec<'a> {
    /// The node's name (its `Node` object).
    pub name: &'a str,
    /// The CNI plugins: `multus`, the reference plugins, ours (`kube-ovn`).
    pub cni_bin: &'a Path,
    /// The network namespace containerd and the kubelet run in (a chassis, where the node's
    /// `br-int` is); `None`: this machine's. Only its network namespace is entered (unless
    /// `run_dir` gives the node mounts of its own).
    pub netns: Option<&'a Path>,
    /// The folder the node sees at `/run/openvswitch` (where the NADs' `server_socket` and
    /// the agent's socket are, as the DaemonSet's hostPath): when given, the node gets a mount
    /// namespace of its own, which containerd, the kubelet, the CNI plugins, the pods and
    /// whatever [`RealNode::command`] starts (the agent) share, as on a machine of its own.
    /// Its pods' network namespaces are then mounted there, not in this machine's `/run/netns`.
    pub run_dir: Option<&'a Path>,
    /// The primary network's subnet (host-local's range for eth0).
    pub pod_cidr: &'a str,
}

impl<'a> NodeSpec<'a> {
    /// A node named `name` on this machine's network and mounts, eth0 from `10.251.0.0/24`.
    pub fn new(name: &'a str, cni_bin: &'a Path) -> Self {
        NodeSpec {
            name,
            cni_bin,
            netns: None,
            run_dir: None,
            pod_cidr: "10.251.0.0/24",
        }
    }
}

/// One real node; stopped and cleaned up when dropped (its pods' containers included).
pub struct RealNode {
    name: String,
    /// The node's address: on an interface of its own (a kubelet refuses a loopback
    /// node IP, and the API server reaches the kubelet there).
    ip: String,
    /// The network namespace containerd and the kubelet run in (`None`: the machine's).
    netns: Option<PathBuf>,
    /// The node's mount namespace (bound to a file in its folder), when it has its own.
    mounts: Option<PathBuf>,
    dir: tempfile::TempDir,
    kubelet: Option<Background>,
    containerd: Option<Background>,
    /// The CNI plugins' folder.
    cni_bin: PathBuf,
    /// Serves the seeds' image names to containerd.
    registry: Registry,
}

impl RealNode {
    /// Starts containerd and a kubelet registered as node `name`, with the CNI plugins in
    /// `cni_bin` (`multus`, the reference plugins, ours), and waits until the node is Ready.
    pub fn start(plane: &ControlPlane, name: &str, cni_bin: &Path) -> anyhow::Result<Self> {
        RealNode::start_with(plane, &NodeSpec::new(name, cni_bin))
    }

    /// As [`RealNode::start`], with containerd (so the CNI plugins, and the pods' host ends)
    /// in the network namespace `netns` (a chassis: the node's `br-int` is there); only its
    /// network namespace is entered, so the pods' namespaces it mounts are the machine's to
    /// see. The API server is made reachable from there for Multus.
    pub fn start_in(
        plane: &ControlPlane,
        name: &str,
        cni_bin: &Path,
        netns: Option<&Path>,
    ) -> anyhow::Result<Self> {
        RealNode::start_with(
            plane,
            &NodeSpec {
                netns,
                ..NodeSpec::new(name, cni_bin)
            },
        )
    }

    /// Starts the node `spec` describes and waits until it is Ready.
    pub fn start_with(plane: &ControlPlane, spec: &NodeSpec<'_>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sidelane-real-node-{}-", spec.name))
            .tempdir()
            .context("a folder for the node")?;
        let ip = give_address(spec.name, spec.netns)?;
        let mounts = spec
            .run_dir
            .map(|run_dir| own_mounts(dir.path(), run_dir))
            .transpose()?;
        let mut node = RealNode {
            name: spec.name.to_owned(),
            ip,
            netns: spec.netns.map(Path::to_owned),
            mounts,
            dir,
            kubelet: None,
            containerd: None,
            cni_bin: spec.cni_bin.to_owned(),
            registry: Registry::start(spec.netns)?,
        };
        let multus = kubelet_standin::install_multus(plane)?;
        if let Some(ns) = spec.netns {
            plane.reach_from(ns)?;
        }
        node.registry.write_hosts(&node.path("certs.d"))?;
        node.write_cni_config(spec.cni_bin, &multus, spec.pod_cidr)?;
        node.start_containerd()?;
        node.import_images()?;
        node.start_kubelet(plane)?;
        node.wait_ready(plane)?;
        Ok(node)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's address (the kubelet's, and a `hostNetwork` pod's such as the agent's),
    /// reachable from this machine.
    pub fn ip(&self) -> &str {
        &self.ip
    }

    /// Mounts `source` on `target` in the node's own mount namespace (a DaemonSet's hostPath
    /// seen at the path the chart names); the target folder is made when missing.
    pub fn mount_in_node(&self, source: &Path, target: &str) -> anyhow::Result<()> {
        let mounts = self
            .mounts
            .as_ref()
            .with_context(|| format!("node {} has no mounts of its own", self.name))?;
        bind_in(mounts, source, target).with_context(|| format!("in node {}", self.name))
    }

    /// The node's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn socket(&self) -> PathBuf {
        self.path("containerd/containerd.sock")
    }

    fn write_cni_config(
        &self,
        cni_bin: &Path,
        multus_kubeconfig: &Path,
        pod_cidr: &str,
    ) -> anyhow::Result<()> {
        let conf_dir = self.path("net.d");
        fs::create_dir_all(&conf_dir).context("the node's CNI configuration directory")?;
        let config = json!({
            "cniVersion": "0.3.1",
            "name": "multus-cni-network",
            "type": "multus",
            "kubeconfig": multus_kubeconfig,
            "cniDir": self.path("multus-cache"),
            "binDir": cni_bin,
            "logFile": self.path("multus.log"),
            "logLevel": "verbose",
            "delegates": [{
                "cniVersion": "0.3.1",
                "name": "primary",
                "type": "bridge",
                "bridge": format!("cni-{}", self.name).chars().take(15).collect::<String>(),
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "subnet": pod_cidr,
                    "dataDir": self.path("host-local"),
                }
            }]
        });
        fs::write(
            conf_dir.join("00-multus.conf"),
            serde_json::to_vec_pretty(&config)?,
        )
        .context("writing the node's CNI configuration")
    }

    fn start_containerd(&mut self) -> anyhow::Result<()> {
        let cni_bin = &self.cni_bin;
        let root = self.path("containerd");
        fs::create_dir_all(&root).context("containerd's folder")?;
        let config = format!(
            r#"version = 3
root = "{root}/root"
state = "{root}/state"

[grpc]
  address = "{socket}"

[plugins."io.containerd.cri.v1.runtime"]
  # Lowering oom_score_adj is refused here, even to root; the kubelet asks -998 for sandboxes.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{conf_dir}"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"
  # The seeds' images (docker.io) come from the node's registry (see `registry`).
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{certs_d}"
"#,
            root = root.display(),
            socket = self.socket().display(),
            cni_bin = cni_bin.display(),
            conf_dir = self.path("net.d").display(),
            pause = tools::image("pause")?,
            certs_d = self.path("certs.d").display(),
        );
        let config_path = root.join("config.toml");
        fs::write(&config_path, config).context("writing containerd's configuration")?;
        let containerd = tools::binary("containerd")?;
        // The runc shim is found on PATH, beside containerd.
        let bin_dir = containerd.parent().map(Path::to_owned).unwrap_or_default();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = append(&self.path("containerd.log"))?;
        // A containerd killed before leaves its socket behind.
        let _ = fs::remove_file(self.socket());
        let mut cmd = self.command(&containerd);
        cmd.arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("duplicating a log file")?)
            .stderr(log);
        self.containerd = Some(Background::spawn(&mut cmd)?);
        wait_for(Duration::from_secs(20), "containerd's socket", || {
            self.socket().exists()
        })
    }

    fn ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(tools::binary("ctr")?);
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args);
        process::run(&mut cmd, None, Duration::from_mins(1))?.checked()
    }

    fn import_images(&self) -> anyhow::Result<()> {
        for (reference, tarball) in tools::images()? {
            let path = tarball.display().to_string();
            self.ctr(&["images", "import", &path])
                .with_context(|| format!("importing {reference}"))?;
        }
        Ok(())
    }

    fn start_kubelet(&mut self, plane: &ControlPlane) -> anyhow::Result<()> {
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This kernel mounts cgroup v1, which kubelets since 1.35 refuse by default.
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": format!("unix://{}", self.socket().display()),
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": false},
                "x509": {"clientCAFile": plane.ca()},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "address": self.ip,
            "port": free_port()?,
            "healthzPort": 0,
            "readOnlyPort": 0,
            "podLogsDir": self.path("pods"),
            "failSwapOn": false,
            "resolvConf": "",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "localStorageCapacityIsolation": false,
            "evictionHard": {
                "nodefs.available": "1%", "imagefs.available": "1%",
                "memory.available": "1Mi", "nodefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": false,
        });
        let config_path = self.path("kubelet.json");
        fs::write(&config_path, serde_json::to_vec_pretty(&config)?)
            .context("writing the kubelet's configuration")?;
        let log = append(&self.path("kubelet.log"))?;
        // Beside containerd: the kubelet proxies `kubectl exec` to containerd's streaming
        // server on the loopback of the namespace they share.
        let mut cmd = self.command(&tools::binary("kubelet")?);
        cmd.arg(format!("--config={}", config_path.display()))
            .arg(format!(
                "--kubeconfig={}",
                plane.node_kubeconfig(&self.name)?.display()
            ))
            .arg(format!("--root-dir={}", self.path("kubelet").display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={}", self.ip))
            .arg("--v=1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().context("duplicating a log file")?)
            .stderr(log);
        self.kubelet = Some(Background::spawn(&mut cmd)?);
        Ok(())
    }

    fn wait_ready(&mut self, plane: &ControlPlane) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = plane
                .kubectl_run(
                    &[
                        "get",
                        "node",
                        &self.name,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ],
                    None,
                )
                .unwrap_or_default();
            if out.trim() == "True" {
                return self.lift_not_ready_taint(plane);
            }
            if self.kubelet.as_mut().is_some_and(|k| !k.is_running()) {
                bail!("the kubelet exited; its log: {}", self.tail("kubelet.log"));
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} was not Ready within 90 s; the kubelet's log: {}",
                    self.name,
                    self.tail("kubelet.log")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `program` as the node runs it: in the node's network namespace and, when it has them,
    /// its own mounts.
    pub fn command(&self, program: &Path) -> Command {
        let enter = self.enter_args();
        if enter.is_empty() {
            return Command::new(program);
        }
        let mut cmd = Command::new("nsenter");
        cmd.args(enter).arg(program);
        cmd
    }

    /// `nsenter`'s arguments entering the node's network namespace and, when it has them, its
    /// own mounts (empty: the node is this machine's).
    pub fn enter_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if let Some(ns) = &self.netns {
            args.push(format!("--net={}", ns.display()).into());
        }
        if let Some(mounts) = &self.mounts {
            args.push(format!("--mount={}", mounts.display()).into());
        }
        args
    }

    /// The running sandbox of pod `namespace/name`: its ID (the plugins' `CNI_CONTAINERID`)
    /// and its pause process (whose `/proc/<pid>/ns/net` is the pod's network namespace).
    pub fn sandbox_of(&self, namespace: &str, name: &str) -> anyhow::Result<Option<(String, u32)>> {
        let ours = self.ctr(&[
            "containers",
            "ls",
            "--quiet",
            // One filter, its terms joined by commas (separate filters are alternatives).
            &format!(
                "labels.\"io.kubernetes.pod.name\"=={name},\
                 labels.\"io.kubernetes.pod.namespace\"=={namespace}"
            ),
        ])?;
        let ours: Vec<&str> = ours.lines().map(str::trim).collect();
        Ok(self
            .sandboxes()?
            .into_iter()
            .find(|(id, _)| ours.contains(&id.as_str())))
    }

    /// Lifts the `node.kubernetes.io/not-ready` taint admission puts on a new node, as the node
    /// lifecycle controller does once the node is Ready: that controller is off here (the
    /// kubelet stand-ins send no heartbeats it would accept), and the scheduler would send the
    /// node nothing while the taint stays.
    fn lift_not_ready_taint(&self, plane: &ControlPlane) -> anyhow::Result<()> {
        let taints = plane.kubectl_run(
            &[
                "get",
                "node",
                &self.name,
                "-o",
                "jsonpath={.spec.taints[*].key}",
            ],
            None,
        )?;
        if !taints.contains("node.kubernetes.io/not-ready") {
            return Ok(());
        }
        plane
            .kubectl_run(
                &[
                    "taint",
                    "node",
                    &self.name,
                    "node.kubernetes.io/not-ready:NoSchedule-",
                ],
                None,
            )
            .map(drop)
            .with_context(|| format!("lifting node {}'s not-ready taint", self.name))
    }

    /// The process of each running pod sandbox (its pause container), by sandbox ID.
    pub fn sandboxes(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let pause = tools::image("pause")?;
        let containers = self.ctr(&["containers", "ls"])?;
        let sandbox_ids: Vec<&str> = containers
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(1) == Some(pause.as_str()))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let tasks = self.ctr(&["tasks", "ls"])?;
        Ok(tasks
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                let (id, pid, status) = (words.next()?, words.next()?, words.next()?);
                (sandbox_ids.contains(&id) && status == "RUNNING")
                    .then(|| Some((id.to_owned(), pid.parse().ok()?)))
                    .flatten()
            })
            .collect())
    }

    /// Kills the kubelet (as a crash does) and starts it again; waits until the new one is
    /// up: it has renewed its node's Lease (a kubelet starting while the runtime is away exits,
    /// which systemd would answer with another start; here the caller waits instead).
    pub fn restart_kubelet(&mut self, plane: &ControlPlane) -> anyhow::Result<()> {
        let name = self.name.clone();
        let renewed = || {
            plane
                .kubectl_run(
                    &[
                        "get",
                        "lease",
                        "-n",
                        "kube-node-lease",
                        &name,
                        "-o",
                        "jsonpath={.spec.renewTime}",
                    ],
                    None,
                )
                .unwrap_or_default()
        };
        let before = renewed();
        drop(self.kubelet.take());
        self.start_kubelet(plane)?;
        let deadline = Instant::now() + Duration::from_mins(1);
        while renewed() == before {
            if self.kubelet.as_mut().is_some_and(|k| !k.is_running()) {
                bail!(
                    "the restarted kubelet exited; its log: {}",
                    self.tail("kubelet.log")
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the restarted kubelet did not renew its Lease within a minute; its log: {}",
                    self.tail("kubelet.log")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.wait_ready(plane)
    }

    /// Kills containerd (as a crash does; the pods' shims and containers stay) and starts it
    /// again.
    pub fn restart_containerd(&mut self) -> anyhow::Result<()> {
        drop(self.containerd.take());
        self.start_containerd()
    }

    /// Kills the pause process of the node's one sandbox, as a crash would, and waits until the
    /// kubelet has made a new one; the new sandbox's ID.
    pub fn remake_sandbox(&self) -> anyhow::Result<String> {
        let sandboxes = self.sandboxes()?;
        let [(old, pid)] = sandboxes.as_slice() else {
            bail!("expected one sandbox on {}, found {sandboxes:?}", self.name);
        };
        process::run(
            Command::new("kill").args(["-KILL", &pid.to_string()]),
            None,
            Duration::from_secs(10),
        )?
        .checked()
        .with_context(|| format!("killing the pause process {pid}"))?;
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            if let [(new, _)] = self.sandboxes()?.as_slice()
                && new != old
            {
                return Ok(new.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "the kubelet made no new sandbox within 2 min; its log: {}",
                    self.tail("kubelet.log")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The addresses host-local holds for the primary network now.
    pub fn primary_leases(&self) -> Vec<String> {
        let dir = self.path("host-local/primary");
        let mut leases: Vec<String> = fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default();
        leases.sort();
        leases
    }

    /// The last lines of one of the node's logs.
    pub fn tail(&self, log: &str) -> String {
        let text = fs::read_to_string(self.path(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        drop(self.kubelet.take());
        // The pods' containers outlive the kubelet: kill them while containerd still answers.
        if let Ok(tasks) = self.ctr(&["tasks", "ls", "--quiet"]) {
            for id in tasks.lines().map(str::trim).filter(|t| !t.is_empty()) {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            }
        }
        drop(self.containerd.take());
        // The shims (and their mounts) belong to this node's containerd by their -address.
        let socket = self.socket().display().to_string();
        let _ = Command::new("pkill").args(["-f", &socket]).status();
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            ours.sort_unstable_by(|a, b| b.cmp(a));
            for m in ours {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
        if let Some(mounts) = &self.mounts {
            // The namespace (and every mount in it) goes with its last process and this bind.
            let _ = Command::new("umount").arg(mounts).status();
        }
        let peer = format!("rp{}", &link_name(&self.name)[2..]);
        for link in [format!("cni-{}", self.name), link_name(&self.name), peer] {
            // Deleting one end of the pair deletes the other: quiet about the one gone.
            let _ = Command::new("ip")
                .args(["link", "del", &link])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The node's own interface (one end of a veth pair).
fn link_name(node: &str) -> String {
    let mut name = format!("rn-{node}");
    name.truncate(15);
    name
}

/// `path`, opened for appending.
fn append(path: &Path) -> anyhow::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Gives the node a mount namespace of its own, bound to `<dir>/mounts`, in which `run_dir` is
/// `/run/openvswitch`; the file's path.
fn own_mounts(dir: &Path, run_dir: &Path) -> anyhow::Result<PathBuf> {
    let file = dir.join("mounts");
    fs::write(&file, b"").context("a file to bind the node's mount namespace to")?;
    process::run(
        Command::new("unshare")
            .arg(format!("--mount={}", file.display()))
            .args(["--propagation", "private", "true"]),
        None,
        Duration::from_secs(10),
    )?
    .checked()
    .context("making the node's mount namespace")?;
    bind_in(&file, run_dir, "/run/openvswitch")?;
    Ok(file)
}

/// Bind-mounts `source` on `target` (made when missing) in the mount namespace bound to
/// `mounts`.
fn bind_in(mounts: &Path, source: &Path, target: &str) -> anyhow::Result<()> {
    process::run(
        Command::new("nsenter")
            .arg(format!("--mount={}", mounts.display()))
            .args(["sh", "-c", "mkdir -p \"$1\" && mount --bind \"$0\" \"$1\""])
            .arg(source)
            .arg(target),
        None,
        Duration::from_secs(10),
    )?
    .checked()
    .map(drop)
    .with_context(|| format!("mounting {} on {target}", source.display()))
}

/// Gives node `name` an address of its own, which the API server reaches (a kubelet refuses a
/// loopback node IP; this kernel has no dummy interfaces): one end of a veth pair, the other
/// in the machine's namespace. In the node's namespace `netns`, the pair is a /31 link.
fn give_address(name: &str, netns: Option<&Path>) -> anyhow::Result<String> {
    let mut h: u32 = std::process::id();
    for b in name.bytes() {
        h = h.wrapping_mul(31).wrapping_add(u32::from(b));
    }
    // An even address and the next: unlikely to be another running test's.
    let (third, fourth) = ((h >> 8) % 256, (h % 127) * 2);
    let (host_ip, node_ip) = (
        format!("10.252.{third}.{fourth}"),
        format!("10.252.{third}.{}", fourth + 1),
    );
    let link = link_name(name);
    let peer = format!("rp{}", &link[2..]);
    // Left by a node of this name that was killed.
    let _ = Command::new("ip")
        .args(["link", "del", &peer])
        .stderr(std::process::Stdio::null())
        .status();
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        process::run(Command::new("ip").args(args), None, Duration::from_secs(10))?
            .checked()
            .map(drop)
            .with_context(|| format!("giving node {name} its address {node_ip}"))
    };
    ip(&["link", "add", &link, "type", "veth", "peer", "name", &peer])?;
    ip(&["link", "set", &peer, "up"])?;
    let Some(ns) = netns else {
        ip(&["addr", "add", &format!("{node_ip}/32"), "dev", &link])?;
        ip(&["link", "set", &link, "up"])?;
        return Ok(node_ip);
    };
    let ns_name = ns
        .file_name()
        .and_then(|n| n.to_str())
        .context("a named network namespace")?;
    let node_cidr = format!("{node_ip}/31");
    ip(&["link", "set", &link, "netns", ns_name])?;
    ip(&["addr", "add", &format!("{host_ip}/31"), "dev", &peer])?;
    ip(&["-n", ns_name, "addr", "add", &node_cidr, "dev", &link])?;
    ip(&["-n", ns_name, "link", "set", &link, "up"])?;
    Ok(node_ip)
}

fn wait_for(within: Duration, what: &str, mut check: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("{what} did not appear within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr().context("its address")?.port())
}
