//! A **kubelet stand-in** for the lab's node2, chaos and most tests (the real node is `real_node`): it plays
//! the part of the kubelet that matters to a network plugin, for one node:
//!
//! - it registers the node's `Node` object under the node's own identity (`system:node:<name>`,
//!   which the `Node` authorizer checks), Ready, with capacity, so that kube-scheduler binds pods
//!   to it;
//! - for every pod bound to the node it makes the pod's network namespace and runs the **real
//!   Multus** thin plugin with the CNI arguments a runtime passes (`K8S_POD_NAMESPACE`,
//!   `K8S_POD_NAME`, `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID`); Multus reads the pod and its
//!   NetworkAttachmentDefinitions from the API server, gives eth0 to the primary network
//!   (Debian's reference `bridge` plugin with `host-local`), delegates every attachment to its
//!   plugin (our `kube-ovn` binary, macvlan calling our IPAM…) and writes
//!   `k8s.v1.cni.cncf.io/network-status`;
//! - it reports the pod Running (or the CNI error as a `FailedCreatePodSandBox` event);
//! - when the pod is deleted it runs CNI DEL through Multus, removes the namespace, and only then
//!   confirms the deletion, as a kubelet does.
//!
//! Plugins run inside the node's network namespace (when the node is one), with the node's run
//! folder bind-mounted on `/run/openvswitch`, where the NADs' `server_socket` points.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::watcher,
};
use serde_json::{Value, json};

use crate::{control_plane::ControlPlane, netns::NetNs, process, tools};

/// Where a node's pods are wired.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// The node's network namespace (`None`: this machine's own).
    pub netns: Option<String>,
    /// Bind-mounted on `/run/openvswitch` while plugins run (the agent's socket folder).
    pub run_dir: Option<PathBuf>,
    /// The CNI plugins: `multus`, `kube-ovn`, the reference plugins.
    pub cni_bin: PathBuf,
    /// The primary network's subnet on this node (host-local hands out eth0 addresses).
    pub pod_cidr: String,
    /// How many pods are set up at once.
    pub parallel: usize,
    /// The node's own folder (Multus' cache and log, host-local's data).
    pub dir: PathBuf,
}

/// A pod this node runs.
#[derive(Debug)]
pub struct Sandbox {
    /// `namespace/name`.
    pub pod: String,
    /// The pod's UID.
    pub uid: String,
    /// The sandbox's container ID (`CNI_CONTAINERID`), from which plugins name host links.
    pub container_id: String,
    /// Its network namespace.
    pub netns: Arc<NetNs>,
    /// Multus' CNI result (eth0's), or the error it printed.
    pub result: Result<Value, String>,
    /// From the pod's creation to the end of CNI ADD (whole seconds: the API's resolution).
    pub ready_after: Duration,
    /// When the last CNI ADD started (the sandbox's turn came).
    pub add_started: Instant,
    /// How many ADDs it took (a failed one is torn down and tried again).
    pub attempts: u32,
    /// When CNI ADD finished.
    pub added_at: Instant,
}

type Sandboxes = Arc<Mutex<HashMap<String, Arc<Sandbox>>>>;

/// How many times a pod's sandbox is set up before the stand-in gives up on it.
const SANDBOX_ATTEMPTS: u32 = 6;

/// The stand-in for one node; stops when dropped (the pods' namespaces go with it).
#[derive(Debug)]
pub struct KubeletStandin {
    name: String,
    sandboxes: Sandboxes,
    runtime: Option<tokio::runtime::Runtime>,
}

impl KubeletStandin {
    /// Registers the node and starts serving the pods bound to it. `multus_kubeconfig` is the
    /// identity Multus runs as (the Multus ServiceAccount, see [`install_multus`]).
    pub fn start(
        plane: &ControlPlane,
        config: NodeConfig,
        multus_kubeconfig: &Path,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.dir)
            .with_context(|| format!("creating {}", config.dir.display()))?;
        let kubeconfig = plane.node_kubeconfig(&config.name)?;
        if let Some(netns) = &config.netns {
            // Multus runs inside the node's namespace, whose loopback is its own.
            plane.reach_from(&Path::new("/run/netns").join(netns))?;
        }
        let multus_conf = multus_config(&config, multus_kubeconfig);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("kubelet-{}", config.name))
            .enable_all()
            .build()
            .context("building the kubelet stand-in's runtime")?;
        let client = runtime.block_on(crate::control_plane::client_from(&kubeconfig))?;
        runtime
            .block_on(register(&client, &config))
            .with_context(|| format!("registering node {}", config.name))?;
        let sandboxes: Sandboxes = Arc::default();
        runtime.spawn(serve(
            client,
            Arc::new(config.clone()),
            Arc::new(multus_conf),
            Arc::clone(&sandboxes),
        ));
        Ok(Self {
            name: config.name,
            sandboxes,
            runtime: Some(runtime),
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The sandbox of pod `namespace/name`, once its CNI ADD has finished.
    pub fn sandbox(&self, namespace: &str, name: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Every sandbox this node holds.
    pub fn sandboxes(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl Drop for KubeletStandin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs Multus' own ServiceAccount and RBAC (its ClusterRole from the pinned module's
/// deployment, so Multus runs with exactly what it is given in production) and returns a
/// kubeconfig for it.
pub fn install_multus(plane: &ControlPlane) -> anyhow::Result<PathBuf> {
    let rbac = crate::control_plane::documents_of_kinds(
        &tools::shared("multus", "multus-daemonset.yml")?,
        crate::control_plane::IDENTITY_KINDS,
    )?;
    plane
        .apply(&rbac)
        .context("installing Multus' ServiceAccount and RBAC")?;
    let namespace = rbac
        .iter()
        .find(|d| d["kind"] == "ServiceAccount")
        .and_then(|d| d["metadata"]["namespace"].as_str())
        .unwrap_or("kube-system")
        .to_owned();
    plane.service_account_kubeconfig(&namespace, "multus")
}

/// Multus' thin-plugin configuration for a node: the primary network as its delegate.
fn multus_config(config: &NodeConfig, kubeconfig: &Path) -> Value {
    json!({
        "cniVersion": "0.3.1",
        "name": "multus-cni-network",
        "type": "multus",
        "kubeconfig": kubeconfig,
        "cniDir": config.dir.join("multus-cache"),
        "binDir": config.cni_bin,
        "logFile": config.dir.join("multus.log"),
        "logLevel": "verbose",
        "delegates": [{
            "cniVersion": "0.3.1",
            "name": "primary",
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": config.pod_cidr,
                "dataDir": config.dir.join("host-local"),
            }
        }]
    })
}

async fn register(client: &kube::Client, config: &NodeConfig) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": config.name, "labels": {
            "kubernetes.io/hostname": config.name,
            "kubernetes.io/os": "linux",
            "sidelane.io/kubelet-standin": "true",
        }},
    }))
    .context("a Node object")?;
    if nodes.get_opt(&config.name).await?.is_none() {
        nodes.create(&PostParams::default(), &node).await?;
    }
    // This machine's processors and memory, as a real kubelet beside it reports them, so the
    // scheduler weighs a stand-in node and a real one alike (a bigger stand-in would draw
    // every pod); room for many pods, which benchmarks bind by the thousand.
    let capacity = json!({
        "cpu": std::thread::available_parallelism().map_or(2, std::num::NonZero::get).to_string(),
        "memory": machine_memory(),
        "pods": "10000",
    });
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "the Sidelane kubelet stand-in is serving",
                        "lastHeartbeatTime": now(), "lastTransitionTime": now()}],
        "addresses": [{"type": "Hostname", "address": config.name}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                     "osImage": "", "containerRuntimeVersion": "sidelane-standin://0",
                     "kubeletVersion": "v1.37.2", "kubeProxyVersion": "",
                     "operatingSystem": "linux", "architecture": "amd64"},
    }});
    nodes
        .patch_status(&config.name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    // Admission taints a new node not-ready; the node lifecycle controller (which needs a
    // real kubelet's heartbeats) is off, so the node lifts it once it reports Ready.
    nodes
        .patch(
            &config.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await?;
    Ok(())
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

async fn serve(
    client: kube::Client,
    config: Arc<NodeConfig>,
    multus: Arc<Value>,
    sandboxes: Sandboxes,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let limit = Arc::new(tokio::sync::Semaphore::new(config.parallel.max(1)));
    let started: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let events = watcher(
        pods,
        watcher::Config::default().fields(&format!("spec.nodeName={}", config.name)),
    );
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let pods = match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let terminating = pod.metadata.deletion_timestamp.is_some();
                vec![(pod, terminating)]
            }
            // Deleted without waiting for the node (grace period 0): tear down all the same.
            Ok(watcher::Event::Delete(pod)) => vec![(pod, true)],
            Ok(_) => Vec::new(),
            Err(error) => {
                tracing::warn!(node = %config.name, %error, "the kubelet stand-in's watch");
                tokio::time::sleep(Duration::from_millis(200)).await;
                Vec::new()
            }
        };
        for (pod, terminating) in pods {
            let (Some(namespace), Some(name), Some(uid)) = (
                pod.metadata.namespace.clone(),
                pod.metadata.name.clone(),
                pod.metadata.uid.clone(),
            ) else {
                continue;
            };
            let key = format!("{namespace}/{name}");
            {
                let mut started = started.lock().unwrap_or_else(PoisonError::into_inner);
                let known = started.get(&key) == Some(&uid);
                if known && !terminating {
                    continue;
                }
                if terminating {
                    if !known {
                        continue;
                    }
                    started.remove(&key);
                } else {
                    started.insert(key.clone(), uid.clone());
                }
            }
            let task = PodTask {
                client: client.clone(),
                config: Arc::clone(&config),
                multus: Arc::clone(&multus),
                sandboxes: Arc::clone(&sandboxes),
                key,
                namespace,
                name,
                uid,
                created: pod
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second()),
            };
            let limit = Arc::clone(&limit);
            tokio::spawn(async move {
                let Ok(_permit) = limit.acquire_owned().await else {
                    return;
                };
                if terminating {
                    task.stop().await;
                } else {
                    task.start().await;
                }
            });
        }
    }
}

struct PodTask {
    client: kube::Client,
    config: Arc<NodeConfig>,
    multus: Arc<Value>,
    sandboxes: Sandboxes,
    key: String,
    namespace: String,
    name: String,
    uid: String,
    created: Option<i64>,
}

impl PodTask {
    /// 64 hex digits, as containerd's sandbox IDs: plugins derive host-side names from a
    /// prefix of it, so it must be as random at the start as a runtime's.
    fn container_id(&self) -> String {
        let hex = self.uid.replace('-', "");
        format!("{hex}{hex}")
    }

    async fn start(self) {
        let began = Instant::now();
        let netns = match NetNs::new() {
            Ok(ns) => Arc::new(ns),
            Err(error) => {
                tracing::error!(pod = %self.key, %error, "making the pod's namespace");
                return;
            }
        };
        // As a kubelet does: a failed sandbox is torn down and tried again, with a backoff.
        let mut attempts = 0;
        let (add_started, result) = loop {
            attempts += 1;
            let add_started = Instant::now();
            let result = self.multus("ADD", &netns).await;
            match &result {
                Err(message) if attempts < SANDBOX_ATTEMPTS => {
                    self.event(message).await;
                    let _ = self.multus("DEL", &netns).await;
                    tokio::time::sleep(Duration::from_millis(500) * attempts).await;
                }
                _ => break (add_started, result),
            }
        };
        // From the pod's creation (whole seconds in the API) or, failing that, from now.
        let ready_after = self
            .created
            .and_then(|c| {
                let since = jiff::Timestamp::now().as_millisecond() - c * 1000;
                u64::try_from(since).ok().map(Duration::from_millis)
            })
            .unwrap_or_else(|| began.elapsed());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        match &result {
            Ok(cni) => {
                let ip = cni["ips"][0]["address"]
                    .as_str()
                    .and_then(|a| a.split('/').next())
                    .unwrap_or_default()
                    .to_owned();
                let status = running_status(&ip, &self.config.name);
                if let Err(error) = pods
                    .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(status))
                    .await
                {
                    tracing::warn!(pod = %self.key, %error, "reporting the pod Running");
                }
            }
            Err(message) => {
                self.event(message).await;
            }
        }
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                self.key.clone(),
                Arc::new(Sandbox {
                    pod: self.key.clone(),
                    uid: self.uid.clone(),
                    container_id: self.container_id(),
                    netns,
                    result,
                    ready_after,
                    add_started,
                    attempts,
                    added_at: Instant::now(),
                }),
            );
    }

    async fn stop(self) {
        let sandbox = self
            .sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        if let Some(sandbox) = &sandbox
            && let Err(error) = self.multus("DEL", &sandbox.netns).await
        {
            tracing::warn!(pod = %self.key, %error, "CNI DEL through Multus");
        }
        drop(sandbox);
        // Confirms the deletion, for this UID only (a successor of the same name is not ours).
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(error) = pods.delete(&self.name, &params).await {
            tracing::debug!(pod = %self.key, %error, "confirming the deletion");
        }
    }

    async fn event(&self, message: &str) {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.client.clone(), &self.namespace);
        let event = json!({
            "metadata": {"generateName": format!("{}.", self.name)},
            "involvedObject": {"kind": "Pod", "namespace": self.namespace, "name": self.name,
                               "uid": self.uid, "apiVersion": "v1"},
            "reason": "FailedCreatePodSandBox", "type": "Warning",
            "message": format!("Failed to create pod sandbox: {message}"),
            "source": {"component": "kubelet", "host": self.config.name},
            "firstTimestamp": now(), "lastTimestamp": now(), "count": 1,
        });
        if let Ok(event) = serde_json::from_value(event)
            && let Err(error) = events.create(&PostParams::default(), &event).await
        {
            tracing::warn!(pod = %self.key, %error, "recording the sandbox failure");
        }
    }

    /// Runs Multus as a runtime runs the network plugin of a pod sandbox.
    async fn multus(&self, command: &str, netns: &NetNs) -> Result<Value, String> {
        let mut cmd = plugin_command(&self.config);
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id())
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.config.cni_bin)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
                     K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                    self.namespace,
                    self.name,
                    self.container_id(),
                    self.uid
                ),
            );
        let stdin = self.multus.to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            process::run(&mut cmd, Some(stdin.as_bytes()), Duration::from_mins(2))
        })
        .await
        .map_err(|e| format!("the CNI task: {e}"))?
        .map_err(|e| format!("{e:#}"))?;
        if !outcome.status.success() {
            return Err(format!(
                "multus {command}: {}{}",
                outcome.stdout.trim(),
                outcome.stderr.trim()
            ));
        }
        if outcome.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&outcome.stdout).map_err(|e| {
            format!(
                "multus {command} printed no CNI result ({e}): {}",
                outcome.stdout
            )
        })
    }
}

/// `multus`, in the node's namespace and with its run folder on `/run/openvswitch` when it has
/// them (a private mount namespace: `ip netns exec` makes one).
fn plugin_command(config: &NodeConfig) -> Command {
    let multus = config.cni_bin.join("multus");
    match (&config.netns, &config.run_dir) {
        (Some(netns), Some(run)) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns, "sh", "-c"])
                .arg(
                    "mkdir -p /run/openvswitch && mount --bind \"$0\" /run/openvswitch && exec \"$@\"",
                )
                .arg(run)
                .arg(multus);
            cmd
        }
        (Some(netns), None) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", netns]).arg(multus);
            cmd
        }
        (None, _) => Command::new(multus),
    }
}

fn running_status(ip: &str, node: &str) -> Value {
    let condition =
        |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now()});
    let mut status = json!({"status": {
        "phase": "Running",
        "startTime": now(),
        "conditions": [condition("PodReadyToStartContainers"), condition("Initialized"),
                       condition("Ready"), condition("ContainersReady"), condition("PodScheduled")],
        "message": format!("network set up by the kubelet stand-in of {node}"),
    }});
    if !ip.is_empty() {
        status["status"]["podIP"] = json!(ip);
        status["status"]["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

/// This machine's memory as a quantity (`MemTotal` of `/proc/meminfo`, in Ki).
fn machine_memory() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next().map(|kib| format!("{kib}Ki")))
        })
        .unwrap_or_else(|| "8Gi".to_owned())
}
