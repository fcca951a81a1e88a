//! `sidelane-bench cni`: how long a CNI ADD and DEL take, Sidelane against Debian's reference
//! `bridge` plugin with `host-local` IPAM, in one run.
//!
//! Every case attaches `n` pods, one at a time, each to a fresh network namespace made before the
//! clock starts. Each call forks the plugin binary exactly as a runtime does (environment, config
//! on stdin), from inside a "node" namespace, and is timed from spawn to exit.
//! - `sidelane-ovn-without-ovs`: our plugin as `kube-ovn` with the seed's `attachnet` NAD; the
//!   agent (in this process, pods read by watch) creates net1 as allocated, but plugs nothing
//!   into OVS and waits for no ovn-controller: the part of ADD that is the agent's own.
//! - `sidelane-ipam-macvlan`: Debian's `macvlan` with `"ipam": {"type": "kube-ovn"}` (the seed's
//!   NAD), so the time includes macvlan's own work and its call to our IPAM plugin.
//! - `ref-bridge-host-local`: Debian's `bridge` with `host-local` IPAM on a subnet of its own.
//!
//! - `whole`: the whole ADD and DEL of an OVN-backed attachment on real OVN, 50 at once on an
//!   empty node, one after the other, and 50 at once beside those, with each step's share
//!   ([`super::cni_whole`]).
//!
//! Writes `target/bench/cni.json`:
//! `{"cases": [{"plugin", "n", "add_ms_p50", "add_ms_p99", "del_ms_p50"}], "whole": {...}}`.

use std::{
    fmt::Write as _,
    fs,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::{Value, json};
use sidelane_agent::{
    api_server::KubePods, attach::Attacher, cni_server, dataplane::qos::QosDataplane,
    records::Records,
};

use super::cni_whole::{self, WholeReport};
use crate::{
    cluster, control_plane::SidelaneCluster, netns::NetNs, ping::percentile,
    process::binary_beside_me, sidelane::PinRoot,
};

/// One plugin's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Case {
    /// `sidelane-ovn`, `sidelane-ipam-macvlan` or `ref-bridge-host-local`.
    pub plugin: &'static str,
    /// Attachments made.
    pub n: usize,
    /// Median ADD, ms.
    pub add_ms_p50: f64,
    /// 99th percentile ADD, ms.
    pub add_ms_p99: f64,
    /// Median DEL, ms.
    pub del_ms_p50: f64,
}

/// `target/bench/cni.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CniReport {
    /// One per plugin.
    pub cases: Vec<Case>,
    /// The whole OVN-backed ADD and DEL on real OVN.
    pub whole: Option<WholeReport>,
}

/// One pod's sandbox as the runtime names it to a plugin.
pub(crate) struct Sandbox<'a> {
    /// The pod's network namespace.
    pub netns: &'a NetNs,
    /// The pod's name (namespace `default`).
    pub pod: String,
    /// The runtime's container ID.
    pub container_id: String,
}

impl<'a> Sandbox<'a> {
    /// Pod `p<i>` of the reference cases: its container ID is unique within the first eight
    /// characters, which name the host end of a veth.
    fn numbered(netns: &'a NetNs, i: usize) -> Sandbox<'a> {
        Sandbox {
            netns,
            pod: format!("p{i}"),
            container_id: format!("{i:0>8}feedc0de"),
        }
    }
}

/// Makes `cmd` run in the network namespace at `netns` (entered between fork and exec).
pub(crate) fn run_in_netns(cmd: &mut Command, netns: &Path) -> anyhow::Result<()> {
    let ns = fs::File::open(netns)
        .with_context(|| format!("opening the namespace {}", netns.display()))?;
    // SAFETY: setns is async-signal-safe; the closure touches only the fd it owns.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// Runs `plugin` with the CNI environment, inside `node` when given (the reference plugins make
/// their host ends in the namespace they run in); returns the elapsed time. Without a node the
/// plugin is spawned as a runtime spawns it (no fork of this large process, which a `setns`
/// before exec needs).
pub(crate) fn call(
    node: Option<&NetNs>,
    plugin: &Path,
    cni_path: &str,
    command: &str,
    sandbox: &Sandbox<'_>,
    config: &str,
) -> anyhow::Result<Duration> {
    let (pod, pod_name) = (sandbox.netns, sandbox.pod.as_str());
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &sandbox.container_id)
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", cni_path)
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name}"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(node) = node {
        run_in_netns(&mut cmd, &node.path())?;
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", plugin.display()))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("the plugin's stdin")?;
        stdin
            .write_all(config.as_bytes())
            .context("writing the config")?;
    }
    let out = child.wait_with_output().context("waiting for the plugin")?;
    let elapsed = started.elapsed();
    if !out.status.success() {
        bail!(
            "{} {command} for {pod_name} failed: {} {}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(elapsed)
}

fn ms(d: &[Duration], p: f64) -> f64 {
    let v: Vec<f64> = d.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    (percentile(&v, p).unwrap_or(f64::NAN) * 1000.0).round() / 1000.0
}

/// Pods `p0`.. with allocations for both Sidelane attachments.
fn seed_pods(api: &SidelaneCluster, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let (a, b) = (i / 200, i % 200 + 10);
        api.seed(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("p{i}"), "namespace": "default", "annotations": {
                "attachnet.default.ovn.kubernetes.io/allocated": "true",
                "attachnet.default.ovn.kubernetes.io/ip_address": format!("172.17.{a}.{b}"),
                "attachnet.default.ovn.kubernetes.io/cidr": "172.17.0.0/16",
                "attachnet.default.ovn.kubernetes.io/gateway": "172.17.0.1",
                "attachnet.default.ovn.kubernetes.io/mac_address":
                    format!("00:00:00:00:{a:02x}:{b:02x}"),
                "macvlan.default.kubernetes.io/allocated": "true",
                "macvlan.default.kubernetes.io/ip_address": format!("172.18.{a}.{b}"),
                "macvlan.default.kubernetes.io/cidr": "172.18.0.0/16"
            }},
            "spec": {"containers": [{"name": "c", "image": "alpine"}], "nodeName": "node1"}
        }))
        .context("seeding pods")?;
    }
    Ok(())
}

/// Runs the benchmark with `n` attachments per plugin.
///
/// # Errors
/// When a part does not start or a call fails.
pub fn run(n: usize) -> anyhow::Result<CniReport> {
    let ours = binary_beside_me("sidelane-cni")?;
    let agent = binary_beside_me("sidelane-agent")?;
    let cases = reference_cases(&ours, n)?;
    let whole = cni_whole::run(&ours, &agent, n)?;
    eprint!("{}", whole_table(&whole));
    Ok(CniReport {
        cases,
        whole: Some(whole),
    })
}

/// The rows of the plugins timed without OVS (each in its own control plane, ended before the
/// whole-ADD rig starts).
fn reference_cases(ours: &Path, n: usize) -> anyhow::Result<Vec<Case>> {
    let plugins = tempfile::tempdir().context("a plugin directory")?;
    std::os::unix::fs::symlink(ours, plugins.path().join("kube-ovn"))
        .context("installing kube-ovn")?;
    let cni_path = format!("{}:/usr/lib/cni", plugins.path().display());

    let node = NetNs::new()?;
    node.exec(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ])?;
    node.exec(&["ip", "link", "set", "eth0", "up"])?;

    let api = SidelaneCluster::start_with(crate::control_plane::Options::default())?;
    for (name, provider, cidr) in [
        ("attachnet", "attachnet.default.ovn", "172.17.0.0/16"),
        ("macvlan", "macvlan.default", "172.18.0.0/16"),
    ] {
        api.seed(cluster::subnet(name, provider, cidr, None))
            .map_err(|e| anyhow::anyhow!("seeding Subnet {name}: {e}"))?;
    }
    seed_pods(&api, n)?;
    let dir = tempfile::tempdir().context("a socket directory")?;
    let socket = dir.path().join("kube-ovn-daemon.sock");
    let pins = PinRoot::new("sidelane-bench-cni");
    let runtime = tokio::runtime::Runtime::new().context("a tokio runtime")?;
    let client = runtime.block_on(api.agent_client());
    let listener = runtime.block_on(async { cni_server::bind(&socket) })?;
    let attacher = Attacher::new(
        KubePods::new(client),
        QosDataplane::new(pins.path())?,
        Records::open(dir.path().join("records"))?,
        Duration::from_secs(30),
    )
    .with_host_netns(node.path());
    runtime.spawn(cni_server::serve(listener, Arc::new(attacher)));

    let host_local_dir = tempfile::tempdir().context("host-local's data directory")?;
    let configs: [(&'static str, PathBuf, Value); 3] = [
        (
            "sidelane-ovn-without-ovs",
            ours.to_path_buf(),
            json!({"cniVersion": "0.3.0", "name": "attachnet", "type": "kube-ovn",
                   "server_socket": socket, "provider": "attachnet.default.ovn"}),
        ),
        (
            "sidelane-ipam-macvlan",
            PathBuf::from("/usr/lib/cni/macvlan"),
            json!({"cniVersion": "0.3.0", "name": "macvlan", "type": "macvlan",
                   "master": "eth0", "mode": "bridge",
                   "ipam": {"type": "kube-ovn", "server_socket": socket,
                            "provider": "macvlan.default"}}),
        ),
        (
            "ref-bridge-host-local",
            PathBuf::from("/usr/lib/cni/bridge"),
            json!({"cniVersion": "0.3.0", "name": "refbr", "type": "bridge", "bridge": "slbr0",
                   "ipam": {"type": "host-local", "subnet": "172.19.0.0/16",
                            "dataDir": host_local_dir.path()}}),
        ),
    ];
    let mut cases = Vec::new();
    for (name, plugin, config) in configs {
        let config = config.to_string();
        let pods: Vec<NetNs> = (0..n).map(|_| NetNs::new()).collect::<Result<_, _>>()?;
        let (mut adds, mut dels) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for command in ["ADD", "DEL"] {
            let times = if command == "ADD" {
                &mut adds
            } else {
                &mut dels
            };
            for (i, pod) in pods.iter().enumerate() {
                let sandbox = Sandbox::numbered(pod, i);
                times.push(call(
                    Some(&node),
                    &plugin,
                    &cni_path,
                    command,
                    &sandbox,
                    &config,
                )?);
            }
        }
        let case = Case {
            plugin: name,
            n,
            add_ms_p50: ms(&adds, 50.0),
            add_ms_p99: ms(&adds, 99.0),
            del_ms_p50: ms(&dels, 50.0),
        };
        eprintln!("{}", row(&case));
        cases.push(case);
    }
    Ok(cases)
}

fn row(c: &Case) -> String {
    format!(
        "{:<24} {:>5} {:>11.2} {:>11.2} {:>11.2}",
        c.plugin, c.n, c.add_ms_p50, c.add_ms_p99, c.del_ms_p50
    )
}

/// The whole-ADD phases as a table.
fn whole_table(w: &WholeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nwhole OVN ADD on real OVN  {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "calls", "ADD p50", "ADD p99", "ADD max", "DEL p50", "DEL p99"
    );
    for (name, p) in [
        ("concurrent, empty node", &w.concurrent),
        ("sequential", &w.sequential),
        ("concurrent beside those", &w.concurrent_loaded),
    ] {
        let _ = writeln!(
            out,
            "{name:<26} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            p.calls, p.add.p50_ms, p.add.p99_ms, p.add.max_ms, p.del.p50_ms, p.del.p99_ms
        );
        let shares: Vec<String> = p
            .add_step_share
            .iter()
            .map(|(step, share)| format!("{step} {:.0}%", share * 100.0))
            .collect();
        let _ = writeln!(out, "  step shares: {}", shares.join(", "));
        let cpu: Vec<String> = p
            .add_cpu_s
            .iter()
            .map(|(part, s)| format!("{part} {s:.2}"))
            .collect();
        let _ = writeln!(out, "  CPU s during the ADDs: {}", cpu.join(", "));
    }
    let growth: Vec<String> = w
        .add_step_growth
        .iter()
        .map(|(step, g)| format!("{step} {:.1}->{:.1} ms", g.first_fifth_ms, g.last_fifth_ms))
        .collect();
    let _ = writeln!(
        out,
        "one after the other, first fifth -> last fifth: {}",
        growth.join(", ")
    );
    let _ = writeln!(
        out,
        "target: concurrent ADD p99 <= {} ms: {}",
        w.target_add_p99_ms,
        if w.target_met { "met" } else { "NOT met" }
    );
    out
}

/// The table printed after the run.
pub fn table(report: &CniReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>5} {:>11} {:>11} {:>11}",
        "plugin", "n", "ADD p50 ms", "ADD p99 ms", "DEL p50 ms"
    );
    for c in &report.cases {
        let _ = writeln!(out, "{}", row(c));
    }
    if let Some(w) = &report.whole {
        out.push_str(&whole_table(w));
    }
    out
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_report(report: &CniReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_report_has_the_agreed_shape() {
        let report = CniReport {
            whole: None,
            cases: vec![Case {
                plugin: "sidelane-ovn",
                n: 200,
                add_ms_p50: 5.5,
                add_ms_p99: 9.0,
                del_ms_p50: 3.0,
            }],
        };
        assert_eq!(
            serde_json::to_value(&report).expect("serialises"),
            json!({"cases": [{"plugin": "sidelane-ovn", "n": 200, "add_ms_p50": 5.5,
                              "add_ms_p99": 9.0, "del_ms_p50": 3.0}],
                   "whole": null})
        );
    }
}
