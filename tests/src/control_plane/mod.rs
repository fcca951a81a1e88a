//! A real Kubernetes control plane on loopback: etcd and kube-apiserver (and, where wanted,
//! kube-controller-manager and kube-scheduler), built by `cargo xtask setup` from the pinned Go
//! modules, run from a temporary folder with a real CA and `--authorization-mode=Node,RBAC`.
//!
//! It hands out kubeconfigs: an admin one (`system:masters`) for the test or lab itself, and one
//! per ServiceAccount with a token from the TokenRequest API, so that Sidelane's controller and
//! agents run with exactly the RBAC the Helm chart installs ([`ControlPlane::install_sidelane`]
//! takes it from `helm template`). Their kubeconfigs reach the API server through a proxy whose
//! connections the harness can cut; the harness can also restart kube-apiserver and etcd and
//! compact etcd, so the faults clients must survive are real ones.
//!
//! Each test process starts its own control plane (nextest runs every test in a process of
//! its own); one costs a few seconds and about 400 MB, and is gone when dropped.

mod chart;
mod etcd;
mod objects;
mod pki;
mod proxy;
mod sidelane;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
pub use chart::{
    IDENTITY_KINDS, RBAC_AND_CRD_KINDS, chart_dir, documents, documents_of_kinds,
    network_attachment_definition_crd, rendered, template, whereabouts_crds,
};
pub use etcd::Etcd;
pub use objects::Objects;
pub use pki::{CertFiles, Pki};
pub use proxy::CutProxy;
use serde_json::{Value, json};
pub use sidelane::{AGENT_ACCOUNT, CONTROLLER_ACCOUNT, SidelaneCluster};

use crate::{process, process::Background, tools};

/// The namespace Sidelane is installed into, as the documents install it.
pub const SIDELANE_NAMESPACE: &str = "kube-system";

/// What runs beside etcd and kube-apiserver.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// kube-controller-manager (ServiceAccounts and their tokens in new namespaces, Deployments,
    /// ReplicaSets, StatefulSets, garbage collection, namespace deletion) and kube-scheduler.
    pub controllers: bool,
}

/// A running control plane; everything stops and its folder goes when dropped.
#[derive(Debug)]
pub struct ControlPlane {
    // Dropped last (fields drop in order): the processes are gone before their folder.
    apiserver: Option<Background>,
    controller_manager: Option<Background>,
    scheduler: Option<Background>,
    proxy: CutProxy,
    etcd: Etcd,
    pki: Pki,
    apiserver_port: u16,
    options: Options,
    admin: PathBuf,
    started_in: Duration,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (and the controllers when asked), waits until the API
    /// server is ready, and prints how long that took.
    pub fn start(options: Options) -> anyhow::Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("sidelane-control-plane-")
            .tempdir()
            .context("creating the control plane's folder")?;
        let pki = Pki::create(&dir.path().join("pki"))?;
        let etcd = Etcd::start(dir.path())?;
        let etcd_ready = started.elapsed();
        let apiserver_port = free_port()?;
        let proxy = CutProxy::start(apiserver_port)?;
        let admin_cert = pki.client("admin", "sidelane-admin", &["system:masters"])?;
        let admin = dir.path().join("admin.kubeconfig");
        write_kubeconfig(
            &admin,
            &format!("https://127.0.0.1:{apiserver_port}"),
            &pki.ca,
            &User::Certificate(&admin_cert),
        )?;
        let mut plane = Self {
            apiserver: None,
            controller_manager: None,
            scheduler: None,
            proxy,
            etcd,
            pki,
            apiserver_port,
            options,
            admin,
            started_in: Duration::ZERO,
            dir,
        };
        plane.launch_apiserver()?;
        let apiserver_ready = started.elapsed();
        if options.controllers {
            plane.launch_controllers()?;
            plane.wait_for_default_account("default")?;
        }
        plane.started_in = started.elapsed();
        eprintln!(
            "control plane ready in {:.2} s (etcd {:.2} s, kube-apiserver ready at {:.2} s{}) in {}",
            plane.started_in.as_secs_f64(),
            etcd_ready.as_secs_f64(),
            apiserver_ready.as_secs_f64(),
            if options.controllers {
                ", with kube-controller-manager and kube-scheduler"
            } else {
                ""
            },
            plane.dir.path().display()
        );
        Ok(plane)
    }

    /// How long [`ControlPlane::start`] took, to the API server ready (and controllers started).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The run's folder (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin kubeconfig (`system:masters`), straight to the API server.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// The API server's own URL.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.apiserver_port)
    }

    /// The URL of the proxy in front of the API server (see [`ControlPlane::cut_connections`]).
    pub fn proxied_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.proxy.port())
    }

    /// The CA certificate every client trusts.
    pub fn ca(&self) -> &Path {
        &self.pki.ca
    }

    fn log(&self, name: &str) -> anyhow::Result<(fs::File, PathBuf)> {
        let path = self.dir.path().join(format!("{name}.log"));
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok((file, path))
    }

    fn spawn_logged(&self, name: &str, cmd: &mut Command) -> anyhow::Result<Background> {
        let (log, _) = self.log(name)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating a log file")?)
            .stderr(log);
        Background::spawn(cmd)
    }

    fn launch_apiserver(&mut self) -> anyhow::Result<()> {
        let pki = &self.pki;
        let mut cmd = Command::new(tools::binary("kube-apiserver")?);
        cmd.arg(format!("--etcd-servers={}", self.etcd.url()))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.apiserver_port))
            .arg(format!("--tls-cert-file={}", pki.apiserver.cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.apiserver.key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca.display()))
            // To real kubelets (`kubectl exec`), which trust the same CA.
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client.cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                pki.kubelet_client.key.display()
            ))
            // Real kubelets listen on 127.0.0.1; their node names do not resolve.
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!(
                "--service-account-key-file={}",
                pki.service_account_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.service_account_key.display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg("--api-audiences=https://kubernetes.default.svc.cluster.local")
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            // 127.0.0.1 is not a valid endpoint of the `kubernetes` Service.
            .arg("--endpoint-reconciler-type=none")
            .arg("--authorization-mode=Node,RBAC")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            .arg("--v=1");
        if !self.options.controllers {
            // No kube-controller-manager creates the `default` ServiceAccount of a namespace,
            // without which this admission plugin refuses every pod.
            cmd.arg("--disable-admission-plugins=ServiceAccount");
        }
        let mut process = self.spawn_logged("kube-apiserver", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if self.is_ready() {
                break;
            }
            if !process.is_running() {
                bail!(
                    "kube-apiserver exited while starting; its log: {}",
                    etcd::tail(&self.dir.path().join("kube-apiserver.log"))
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-apiserver was not ready within 90 s; its log: {}",
                    etcd::tail(&self.dir.path().join("kube-apiserver.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.apiserver = Some(process);
        Ok(())
    }

    fn launch_controllers(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let kcm = self.identity_kubeconfig(
            "kube-controller-manager",
            "system:kube-controller-manager",
            &[],
            &url,
        )?;
        let mut cmd = Command::new(tools::binary("kube-controller-manager")?);
        cmd.arg(format!("--kubeconfig={}", kcm.display()))
            .arg(format!("--authentication-kubeconfig={}", kcm.display()))
            .arg(format!("--authorization-kubeconfig={}", kcm.display()))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--leader-elect=false")
            .arg(format!(
                "--service-account-private-key-file={}",
                self.pki.service_account_key.display()
            ))
            .arg(format!("--root-ca-file={}", self.pki.ca.display()))
            .arg("--use-service-account-credentials=true")
            // No cloud, no node IPAM, and no kubelets whose silence would evict pods.
            .arg("--controllers=*,-nodeipam,-nodelifecycle,-bootstrapsigner,-tokencleaner,-persistentvolume-binder,-attachdetach,-ttl-after-finished")
            .arg("--concurrent-deployment-syncs=10")
            .arg("--concurrent-replicaset-syncs=10")
            .arg("--kube-api-qps=500")
            .arg("--kube-api-burst=1000")
            .arg("--v=1");
        self.controller_manager = Some(self.spawn_logged("kube-controller-manager", &mut cmd)?);
        let scheduler =
            self.identity_kubeconfig("kube-scheduler", "system:kube-scheduler", &[], &url)?;
        let mut cmd = Command::new(tools::binary("kube-scheduler")?);
        cmd.arg(format!("--kubeconfig={}", scheduler.display()))
            .arg(format!(
                "--authentication-kubeconfig={}",
                scheduler.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                scheduler.display()
            ))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?))
            .arg("--leader-elect=false")
            .arg("--v=1");
        self.scheduler = Some(self.spawn_logged("kube-scheduler", &mut cmd)?);
        Ok(())
    }

    /// A kubeconfig for a certificate identity (`user`, `groups`) at `server`.
    pub fn identity_kubeconfig(
        &self,
        file: &str,
        user: &str,
        groups: &[&str],
        server: &str,
    ) -> anyhow::Result<PathBuf> {
        let cert = self.pki.client(file, user, groups)?;
        let path = self.dir.path().join(format!("{file}.kubeconfig"));
        write_kubeconfig(&path, server, &self.pki.ca, &User::Certificate(&cert))?;
        Ok(path)
    }

    /// A kubeconfig for node `name` as its kubelet authenticates (`system:node:<name>` in
    /// `system:nodes`: what the Node authorizer grants a kubelet), through the proxy.
    pub fn node_kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        self.identity_kubeconfig(
            &format!("node-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
            &self.proxied_url(),
        )
    }

    /// A kubeconfig for ServiceAccount `namespace/name`, with a token from the TokenRequest API
    /// (as a pod of that ServiceAccount gets), reaching the API server through the proxy.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.kubectl_run(
            &[
                "create",
                "token",
                name,
                "--namespace",
                namespace,
                "--duration=24h",
            ],
            None,
        )?;
        let path = self
            .dir
            .path()
            .join(format!("sa-{namespace}-{name}.kubeconfig"));
        write_kubeconfig(
            &path,
            &self.proxied_url(),
            &self.pki.ca,
            &User::Token(token.trim()),
        )?;
        Ok(path)
    }

    /// `kubectl --kubeconfig <admin>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd =
            Command::new(tools::binary("kubectl").unwrap_or_else(|_| PathBuf::from("kubectl")));
        cmd.arg(format!("--kubeconfig={}", self.admin.display()));
        cmd
    }

    /// Runs kubectl as admin with `args` (and `stdin`); its standard output, or an error with
    /// what it printed.
    pub fn kubectl_run(&self, args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<String> {
        process::run(self.kubectl().args(args), stdin, Duration::from_mins(2))?.checked()
    }

    /// `kubectl exec <pod> -- <command>` in namespace `default`, repeated until its output
    /// satisfies `accept` (a container just restarted, or a sandbox just re-created, answers
    /// `container not found` or the old output for a moment); the last answer in the error if
    /// it never does within `within`.
    pub fn exec_until(
        &self,
        pod: &str,
        command: &[&str],
        within: Duration,
        accept: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(command);
        let deadline = Instant::now() + within;
        loop {
            let answer = self.kubectl_run(&args, None);
            match &answer {
                Ok(out) if accept(out) => return Ok(out.clone()),
                _ if Instant::now() > deadline => {
                    let last = answer.unwrap_or_else(|e| format!("{e:#}"));
                    bail!(
                        "`kubectl exec {pod} -- {}` gave no accepted answer within {within:?}; the last: {last}",
                        command.join(" ")
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(300)),
            }
        }
    }

    /// `kubectl apply --server-side` of these objects, as admin.
    pub fn apply(&self, objects: &[Value]) -> anyhow::Result<String> {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.kubectl_run(
            &[
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=sidelane-harness",
                "-f",
                "-",
            ],
            Some(list.to_string().as_bytes()),
        )
    }

    /// Installs what Sidelane needs before it runs, from `helm template` of the chart: the
    /// `kubeovn.io` CRDs, the ServiceAccounts and RBAC of the controller and the agent (in
    /// [`SIDELANE_NAMESPACE`]); and the NetworkAttachmentDefinition CRD from Multus. Waits until
    /// every CRD is established.
    pub fn install_sidelane(&self) -> anyhow::Result<()> {
        let mut objects = rendered(SIDELANE_NAMESPACE, RBAC_AND_CRD_KINDS)?;
        objects.push(network_attachment_definition_crd()?);
        let (crds, rest): (Vec<Value>, Vec<Value>) = objects
            .into_iter()
            .partition(|o| o["kind"] == "CustomResourceDefinition");
        self.apply(&crds).context("installing the CRDs")?;
        self.apply(&rest)
            .context("installing the chart's ServiceAccounts and RBAC")?;
        self.wait_established(&crds)
    }

    /// Waits (up to a minute) until every CRD of `crds` is established.
    pub fn wait_established(&self, crds: &[Value]) -> anyhow::Result<()> {
        let names: Vec<String> = crds
            .iter()
            .filter_map(|c| c["metadata"]["name"].as_str())
            .map(|n| format!("crd/{n}"))
            .collect();
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(names.iter().map(String::as_str));
        self.kubectl_run(&args, None)
            .context("waiting for the CRDs to be established")?;
        Ok(())
    }

    /// Creates a namespace of its own for a test (`<prefix>-<n>`) and returns its name. With
    /// the controllers running, waits for its `default` ServiceAccount, without which no pod
    /// can be created.
    pub fn namespace(&mut self, prefix: &str) -> anyhow::Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::SeqCst));
        self.kubectl_run(&["create", "namespace", &name], None)?;
        if self.controller_manager.is_some() {
            self.wait_for_default_account(&name)?;
        }
        Ok(name)
    }

    /// Waits until kube-controller-manager has made the `default` ServiceAccount of
    /// `namespace`, without which the ServiceAccount admission plugin refuses its pods.
    fn wait_for_default_account(&mut self, namespace: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_mins(1);
        while self
            .kubectl_run(&["get", "serviceaccount", "default", "-n", namespace], None)
            .is_err()
        {
            let exited = self
                .controller_manager
                .as_mut()
                .is_some_and(|kcm| !kcm.is_running());
            if exited || Instant::now() > deadline {
                bail!(
                    "namespace {namespace} got no default ServiceAccount within a minute; \
                     kube-controller-manager's log: {}",
                    etcd::tail(&self.dir.path().join("kube-controller-manager.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Whether kube-apiserver answers `/readyz` (etcd reachable, every post-start hook done).
    pub fn is_ready(&self) -> bool {
        process::run(
            self.kubectl()
                .args(["get", "--raw=/readyz", "--request-timeout=2s"]),
            None,
            Duration::from_secs(5),
        )
        .is_ok_and(|f| f.status.success())
    }

    /// A `kube::Client` as admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.admin).await
    }

    /// Kills kube-apiserver and starts it again on the same port and etcd; returns once it is
    /// ready again.
    pub fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.apiserver = None;
        self.launch_apiserver()
    }

    /// Kills etcd and starts it again on the same data.
    pub fn restart_etcd(&mut self) -> anyhow::Result<()> {
        self.etcd.restart()
    }

    /// Compacts etcd to its current revision: every watch and list continuation from before is
    /// answered 410 Gone, and clients must list again.
    pub fn compact(&self) -> anyhow::Result<i64> {
        self.etcd.compact()
    }

    /// Makes the proxied URL reachable from inside the network namespace at `netns` (a
    /// simulated node, whose loopback is its own), so ServiceAccount and node kubeconfigs work
    /// there unchanged.
    pub fn reach_from(&self, netns: &Path) -> anyhow::Result<()> {
        self.proxy.listen_in(netns)
    }

    /// Cuts every connection through the proxy (the clients' watches and requests in flight);
    /// returns how many there were.
    pub fn cut_connections(&self) -> usize {
        self.proxy.cut()
    }

    /// Partitions the clients that reach the API server through the proxy (the controller,
    /// the agents, the kubelet stand-ins) from it: every connection is cut and new ones are
    /// closed at once, until [`ControlPlane::reconnect`]. The admin client is not partitioned.
    pub fn disconnect(&self) -> usize {
        self.proxy.refuse(true);
        self.proxy.cut()
    }

    /// Ends [`ControlPlane::disconnect`].
    pub fn reconnect(&self) {
        self.proxy.refuse(false);
    }

    /// Every write the API server has served, by verb and resource (see
    /// [`writes_by_resource`]).
    pub fn writes(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let metrics = self.kubectl_run(&["get", "--raw=/metrics"], None)?;
        Ok(writes_by_resource(&metrics))
    }

    /// The API server's `apiserver_request_total`, summed over the series whose labels contain
    /// every `label="value"` given (e.g. `&["resource=\"pods\""]`).
    pub fn request_count(&self, labels: &[&str]) -> anyhow::Result<u64> {
        let metrics = self.kubectl_run(&["get", "--raw=/metrics"], None)?;
        Ok(request_total(&metrics, labels))
    }
}

/// The write verbs of `apiserver_request_total`.
const WRITE_VERBS: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "APPLY"];

/// Writes counted by `apiserver_request_total`, by `"<verb> <resource>[/<subresource>]"`.
pub fn writes_by_resource(metrics: &str) -> BTreeMap<String, u64> {
    let label = |line: &str, name: &str| -> String {
        line.split(&format!("{name}=\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned()
    };
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let verb = label(line, "verb");
        if !WRITE_VERBS.contains(&verb.as_str()) {
            continue;
        }
        let mut resource = label(line, "resource");
        let subresource = label(line, "subresource");
        if !subresource.is_empty() {
            resource = format!("{resource}/{subresource}");
        }
        *out.entry(format!("{verb} {resource}")).or_default() += request_total(line, &[]);
    }
    out
}

/// Sums `apiserver_request_total` over the series matching `labels`.
pub fn request_total(metrics: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a counter: a non-negative whole number"
            )]
            let count = v as u64;
            count
        })
        .sum()
}

/// A `kube::Client` from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await
            .with_context(|| format!("loading {}", kubeconfig.display()))?;
    kube::Client::try_from(config)
        .with_context(|| format!("building a client from {}", kubeconfig.display()))
}

/// Who a kubeconfig authenticates as.
enum User<'a> {
    Certificate(&'a CertFiles),
    Token(&'a str),
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, user: &User<'_>) -> anyhow::Result<()> {
    let user = match user {
        User::Certificate(files) => json!({
            "client-certificate": files.cert,
            "client-key": files.key,
        }),
        User::Token(token) => json!({"token": token}),
    };
    // JSON is YAML: kubectl, Go clients and kube read it as is.
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sidelane", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "sidelane", "user": user}],
        "contexts": [{"name": "sidelane", "context": {"cluster": "sidelane", "user": "sidelane", "namespace": "default"}}],
        "current-context": "sidelane",
    });
    let mut text = serde_json::to_string_pretty(&config).context("serialising a kubeconfig")?;
    let _ = writeln!(text);
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A TCP port free on 127.0.0.1 right now.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free loopback port")?;
    Ok(listener
        .local_addr()
        .context("reading a loopback port")?
        .port())
}

#[cfg(test)]
mod tests {
    use super::request_total;

    #[test]
    fn request_total_sums_the_matching_series() {
        let metrics = "# HELP apiserver_request_total x\n\
            apiserver_request_total{code=\"200\",resource=\"pods\",verb=\"GET\"} 3\n\
            apiserver_request_total{code=\"201\",resource=\"pods\",verb=\"POST\"} 4\n\
            apiserver_request_total{code=\"200\",resource=\"nodes\",verb=\"GET\"} 5\n";
        assert_eq!(request_total(metrics, &["resource=\"pods\""]), 7);
        assert_eq!(request_total(metrics, &["verb=\"GET\""]), 8);
        assert_eq!(request_total(metrics, &[]), 12);
    }
}
