//! The whole ADD and DEL of an OVN-backed attachment on real OVN, as a kubelet drives them:
//! our plugin binary spawned per call, and the agent binary, run as the DaemonSet runs it (in
//! the node's network namespace, with the chart's flags), making the veth pair,
//! putting it on the fast path, plugging it into `br-int` (OVS's userspace datapath), waiting
//! for ovn-controller's `ovn-installed`, and attaching the pod's rate limits (both directions
//! limited). The controller leads and has written each pod's allocation and logical port before
//! the clock starts, as it has by the time a kubelet runs a sandbox.
//!
//! Three phases on one node:
//! - **concurrent**: [`CONCURRENT`] ADDs at once on an empty node (a kubelet starting many
//!   pods), then their DELs at once: the phase the target is about;
//! - **sequential**: `n` ADDs one after the other, each kept, so the last one finds `n - 1`
//!   attachments already on the node; their DELs come last;
//! - **`concurrent_loaded`**: [`CONCURRENT`] ADDs at once beside those `n`, then their DELs.
//!
//! The agent's own step timings (`sidelane_agent_add_step_seconds_total`, read from its
//! `/metrics`) give each step's
//! share of the summed ADD time; `other` is what no step covers (the plugin process, the socket,
//! decoding). `add_step_growth` compares each step's mean over the last fifth of the sequential
//! ADDs with the first fifth: a step that grows with the attachments on the node shows above 1.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use serde_json::json;
use sidelane_agent::attach::{AddStep, StepTotals};

use super::cni::{Sandbox, call, run_in_netns};
use crate::{
    cluster,
    control_plane::free_port,
    netns::NetNs,
    node_rig::{NodeRig, container_id},
    ping::percentile,
    process::Background,
    sidelane::PinRoot,
    usage::CpuByPart,
};

/// ADDs started at once in the concurrent phase.
pub const CONCURRENT: usize = 50;
/// The target for the concurrent phase's ADD p99, ms.
pub const TARGET_ADD_P99_MS: f64 = 500.0;
/// The provider of the seed's `attachnet` NAD.
const PROVIDER: &str = "attachnet.default.ovn";
/// Every pod's rate in both directions, Mbit/s.
const RATE_MBPS: &str = "100";
/// The processes whose CPU time a phase reports.
const PARTS: [&str; 7] = [
    "sidelane-agent",
    "ovs-vswitchd",
    "ovn-controller",
    "ovsdb-server",
    "ovn-northd",
    "kube-apiserver",
    "etcd",
];

/// Latency figures of one verb in one phase, ms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Latency {
    fn of(calls: &[Duration]) -> Latency {
        let ms: Vec<f64> = calls.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let at = |p| round(percentile(&ms, p).unwrap_or(f64::NAN));
        #[expect(clippy::cast_precision_loss, reason = "a few hundred calls")]
        let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
        Latency {
            p50_ms: at(50.0),
            p99_ms: at(99.0),
            max_ms: at(100.0),
            mean_ms: round(mean),
        }
    }
}

/// One phase.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Phase {
    /// ADDs made in this phase.
    pub calls: usize,
    /// Attachments on the node when the phase started.
    pub attachments_before: usize,
    /// From the first ADD's start to the last ADD's end, s.
    pub add_wall_s: f64,
    /// ADD latency.
    pub add: Latency,
    /// DEL latency.
    pub del: Latency,
    /// Each step's share of the summed ADD time, and `other`.
    pub add_step_share: BTreeMap<&'static str, f64>,
    /// Each step's mean time per ADD, ms.
    pub add_step_mean_ms: BTreeMap<&'static str, f64>,
    /// CPU seconds each part of the node spent during the phase's ADDs: the agent, OVS, OVN,
    /// the API server and etcd by process; `this process` is the controller (in the
    /// benchmark's process) and `children` the plugin binaries.
    pub add_cpu_s: BTreeMap<String, f64>,
}

/// The whole-ADD figures in `target/bench/cni.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WholeReport {
    /// [`CONCURRENT`] ADDs at once on an empty node: the target's phase.
    pub concurrent: Phase,
    /// ADDs one after the other, each kept.
    pub sequential: Phase,
    /// [`CONCURRENT`] ADDs at once beside the sequential ones.
    pub concurrent_loaded: Phase,
    /// Per step (and `add` for the whole call): the mean over the first and the last fifth of
    /// the sequential ADDs.
    pub add_step_growth: BTreeMap<&'static str, Growth>,
    /// [`TARGET_ADD_P99_MS`].
    pub target_add_p99_ms: f64,
    /// Whether the concurrent ADD p99 is within the target.
    pub target_met: bool,
}

/// Our plugin and how it is called on the rig's node (from the machine's own namespace, as a
/// runtime calls it: the agent puts host ends in the node's namespace).
pub(crate) struct Caller<'a> {
    plugin: &'a Path,
    config: String,
}

impl<'a> Caller<'a> {
    /// Calls `plugin` with the NAD's `config`.
    pub(crate) fn new(plugin: &'a Path, config: String) -> Caller<'a> {
        Caller { plugin, config }
    }

    /// `command` for `pod` in `netns`; its time.
    pub(crate) fn call(&self, command: &str, netns: &NetNs, pod: &str) -> anyhow::Result<Duration> {
        let sandbox = Sandbox {
            netns,
            pod: pod.to_owned(),
            container_id: container_id(pod),
        };
        call(
            None,
            self.plugin,
            "/usr/lib/cni",
            command,
            &sandbox,
            &self.config,
        )
    }

    /// `command` for every pod at once; each call's time and the wall time.
    fn at_once(
        &self,
        command: &str,
        pods: &[(String, NetNs)],
    ) -> anyhow::Result<(Vec<Duration>, Duration)> {
        let started = Instant::now();
        let results: Vec<anyhow::Result<Duration>> = thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|(pod, netns)| s.spawn(move || self.call(command, netns, pod)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("a {command} thread panicked")))
                })
                .collect()
        });
        let wall = started.elapsed();
        Ok((results.into_iter().collect::<Result<_, _>>()?, wall))
    }
}

/// The agent binary, run as the DaemonSet runs it: in the node's network namespace (no
/// `--host-netns`), with the chart's flags, plugging into the node's OVS.
pub(crate) struct NodeAgent {
    netns: PathBuf,
    metrics_port: u16,
    process: Background,
    state: tempfile::TempDir,
    _pins: PinRoot,
}

impl NodeAgent {
    /// Starts `bin` as `rig`'s first node's agent (the rig's own agent stopped first).
    pub(crate) fn start(rig: &NodeRig, bin: &Path) -> anyhow::Result<NodeAgent> {
        let chassis = rig.chassis();
        let netns = chassis.ns.path();
        rig.api.plane().reach_from(&netns)?;
        let (state, pins) = (
            tempfile::tempdir().context("the agent's state folder")?,
            PinRoot::new("sidelane-bench-whole"),
        );
        let (socket, metrics_port) = (rig.socket_on(0), free_port()?);
        let _ = std::fs::remove_file(&socket);
        let log =
            std::fs::File::create(state.path().join("agent.log")).context("the agent's log")?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket={}", socket.display()))
            .arg(format!("--ovs-db={}", chassis.db.unix_remote()))
            .args([
                "--ovs-datapath=netdev",
                "--fastpath=true",
                "--node-name=node1",
            ])
            .arg(format!("--pin-root={}", pins.path().display()))
            .arg(format!(
                "--state-dir={}",
                state.path().join("attachments").display()
            ))
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .env("KUBECONFIG", rig.api.agent_kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        run_in_netns(&mut cmd, &netns)?;
        let agent = NodeAgent {
            netns,
            metrics_port,
            process: Background::spawn(&mut cmd)?,
            state,
            _pins: pins,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() || agent.metrics().is_err()
        {
            if Instant::now() > deadline {
                bail!(
                    "the agent did not serve within 30 s; see {}",
                    agent.state.path().join("agent.log").display()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// The agent's `/metrics`, fetched from inside the node's namespace.
    fn metrics(&self) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let port = self.metrics_port;
        sidelane_agent::netns::run_in(Some(&self.netns), move || {
            let mut text = String::new();
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: agent\r\n\r\n")?;
            s.read_to_string(&mut text)?;
            Ok::<_, std::io::Error>(text)
        })?
        .context("fetching the agent's /metrics")
    }

    /// Its resident memory now, MiB.
    pub(crate) fn rss_mib(&self) -> Option<f64> {
        crate::usage::rss_mib(self.process.id())
    }

    /// Its ADD step totals so far.
    fn step_totals(&self) -> anyhow::Result<StepTotals> {
        Ok(step_totals_in(&self.metrics()?))
    }
}

/// The ADD step totals in an agent's `/metrics` text.
fn step_totals_in(metrics: &str) -> StepTotals {
    let mut totals = StepTotals::default();
    for step in AddStep::ALL {
        let value = |name: &str| {
            let prefix = format!("{name}{{step=\"{}\"}} ", step.as_str());
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        totals
            .seconds
            .insert(step, value("sidelane_agent_add_step_seconds_total"));
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "a count written as a whole number"
        )]
        let runs = value("sidelane_agent_add_steps_total") as u64;
        totals.runs.insert(step, runs);
    }
    totals
}

/// Creates the pods (both rates limited) and waits until the controller has allocated them all.
pub(crate) fn seed_pods(rig: &NodeRig, names: &[String]) -> anyhow::Result<()> {
    for doc in cluster::networks_of("attachnet.yaml") {
        rig.api.apply(&[doc]);
    }
    let limits = json!({
        format!("{PROVIDER}.kubernetes.io/ingress_rate"): RATE_MBPS,
        format!("{PROVIDER}.kubernetes.io/egress_rate"): RATE_MBPS,
    });
    let annotations = cluster::selecting("default/attachnet", &limits);
    for name in names {
        rig.api
            .seed(cluster::pod(name, &annotations))
            .with_context(|| format!("creating pod {name}"))?;
    }
    let allocated = format!("{PROVIDER}.kubernetes.io/allocated");
    let deadline = Instant::now() + Duration::from_mins(3);
    loop {
        let pods = rig.api.list("v1", "Pod", Some("default"));
        let done = pods
            .iter()
            .filter(|p| p["metadata"]["annotations"][&allocated] == "true")
            .count();
        if done >= names.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the controller allocated {done} of {} pods", names.len());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Shares of the summed ADD time and mean ms per ADD, per step, from `spent` over `adds`.
fn step_figures(
    spent: &StepTotals,
    adds: &[Duration],
) -> (BTreeMap<&'static str, f64>, BTreeMap<&'static str, f64>) {
    let total: f64 = adds.iter().map(Duration::as_secs_f64).sum();
    #[expect(clippy::cast_precision_loss, reason = "a few hundred calls")]
    let calls = adds.len().max(1) as f64;
    let round = |v: f64| (v * 1000.0).round() / 1000.0;
    let (mut share, mut mean) = (BTreeMap::new(), BTreeMap::new());
    let mut covered = 0.0;
    for step in AddStep::ALL {
        let s = spent.seconds.get(&step).copied().unwrap_or(0.0);
        covered += s;
        share.insert(step.as_str(), round(s / total));
        mean.insert(step.as_str(), round(s * 1e3 / calls));
    }
    share.insert("other", round((total - covered) / total));
    mean.insert("other", round((total - covered) * 1e3 / calls));
    (share, mean)
}

/// How one step's mean time moved over the sequential ADDs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Growth {
    /// Mean over the first fifth, ms.
    pub first_fifth_ms: f64,
    /// Mean over the last fifth, ms.
    pub last_fifth_ms: f64,
    /// Last over first (NaN when the first is zero).
    pub ratio: f64,
}

/// Each step's (and the whole ADD's) mean over the first and last fifth of `per_call`.
fn growth(per_call: &[(Duration, StepTotals)]) -> BTreeMap<&'static str, Growth> {
    let fifth = (per_call.len() / 5).max(1);
    let (first, last) = (&per_call[..fifth], &per_call[per_call.len() - fifth..]);
    let mean_ms = |calls: &[(Duration, StepTotals)], f: &dyn Fn(&(Duration, StepTotals)) -> f64| {
        #[expect(clippy::cast_precision_loss, reason = "a few calls")]
        let n = calls.len() as f64;
        calls.iter().map(f).sum::<f64>() * 1e3 / n
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let of = |f: &dyn Fn(&(Duration, StepTotals)) -> f64| {
        let (a, b) = (mean_ms(first, f), mean_ms(last, f));
        Growth {
            first_fifth_ms: round(a),
            last_fifth_ms: round(b),
            ratio: if a > 0.0 { round(b / a) } else { f64::NAN },
        }
    };
    let mut out = BTreeMap::new();
    out.insert("add", of(&|c| c.0.as_secs_f64()));
    for step in AddStep::ALL {
        out.insert(
            step.as_str(),
            of(&|c| c.1.seconds.get(&step).copied().unwrap_or(0.0)),
        );
    }
    out
}

pub(crate) fn netns_for(names: &[String]) -> anyhow::Result<Vec<(String, NetNs)>> {
    names
        .iter()
        .map(|n| Ok((n.clone(), NetNs::new()?)))
        .collect()
}

/// What one phase measured, before it becomes a [`Phase`].
struct Measured {
    adds: Vec<Duration>,
    dels: Vec<Duration>,
    spent: StepTotals,
    before: usize,
    wall: Duration,
    cpu: BTreeMap<String, f64>,
}

impl Measured {
    fn phase(&self) -> Phase {
        let (add_step_share, add_step_mean_ms) = step_figures(&self.spent, &self.adds);
        Phase {
            calls: self.adds.len(),
            attachments_before: self.before,
            add_wall_s: (self.wall.as_secs_f64() * 1000.0).round() / 1000.0,
            add: Latency::of(&self.adds),
            del: Latency::of(&self.dels),
            add_step_share,
            add_step_mean_ms,
            add_cpu_s: self.cpu.clone(),
        }
    }
}

/// [`CONCURRENT`] ADDs at once with `before` attachments on the node, then their DELs at once.
fn burst(
    caller: &Caller<'_>,
    agent: &NodeAgent,
    pods: &[(String, NetNs)],
    before: usize,
) -> anyhow::Result<Measured> {
    eprintln!(
        "whole ADD: {} ADDs at once beside {before} attachments",
        pods.len()
    );
    let (steps, cpu) = (agent.step_totals()?, CpuByPart::now(&PARTS));
    let (adds, wall) = caller.at_once("ADD", pods)?;
    let (spent, cpu) = (
        agent.step_totals()?.since(&steps),
        CpuByPart::now(&PARTS).since(&cpu),
    );
    let (dels, _) = caller.at_once("DEL", pods)?;
    Ok(Measured {
        adds,
        dels,
        spent,
        before,
        wall,
        cpu,
    })
}

/// The phases: [`CONCURRENT`] ADDs at once on an empty node (the target's phase), then `n` one
/// after the other (kept), then [`CONCURRENT`] at once beside those `n`.
///
/// # Errors
/// When a part does not start or a call fails.
pub fn run(plugin: &Path, agent: &Path, n: usize) -> anyhow::Result<WholeReport> {
    let mut rig = NodeRig::start(true);
    // The real agent binary takes the place of the rig's own.
    rig.stop_agent();
    let node = NodeAgent::start(&rig, agent)?;
    let names = |prefix: &str, count: usize| -> Vec<String> {
        (0..count).map(|i| format!("{prefix}{i}")).collect()
    };
    let (seq_names, burst_names, loaded_names) = (
        names("seq", n),
        names("burst", CONCURRENT),
        names("loaded", CONCURRENT),
    );
    seed_pods(
        &rig,
        &[seq_names.clone(), burst_names.clone(), loaded_names.clone()].concat(),
    )?;
    let caller = Caller::new(plugin, rig.config("attachnet"));
    let concurrent = burst(&caller, &node, &netns_for(&burst_names)?, 0)?;

    eprintln!("whole ADD: {n} ADDs one after the other on real OVN");
    let seq = netns_for(&seq_names)?;
    let mut per_call = Vec::with_capacity(n);
    let (started, cpu) = (Instant::now(), CpuByPart::now(&PARTS));
    for (pod, netns) in &seq {
        let before = node.step_totals()?;
        let took = caller.call("ADD", netns, pod)?;
        per_call.push((took, node.step_totals()?.since(&before)));
    }
    let (wall, cpu) = (started.elapsed(), CpuByPart::now(&PARTS).since(&cpu));
    let loaded = burst(&caller, &node, &netns_for(&loaded_names)?, n)?;
    let mut dels = Vec::with_capacity(n);
    for (pod, netns) in &seq {
        dels.push(caller.call("DEL", netns, pod)?);
    }
    let sequential = Measured {
        adds: per_call.iter().map(|c| c.0).collect(),
        dels,
        spent: per_call
            .iter()
            .fold(StepTotals::default(), |acc, c| add_totals(&acc, &c.1)),
        before: 0,
        wall,
        cpu,
    };
    let concurrent = concurrent.phase();
    let target_met = concurrent.add.p99_ms <= TARGET_ADD_P99_MS;
    Ok(WholeReport {
        concurrent,
        sequential: sequential.phase(),
        concurrent_loaded: loaded.phase(),
        add_step_growth: growth(&per_call),
        target_add_p99_ms: TARGET_ADD_P99_MS,
        target_met,
    })
}

/// The sum of two step totals.
fn add_totals(a: &StepTotals, b: &StepTotals) -> StepTotals {
    let mut out = a.clone();
    for (step, s) in &b.seconds {
        *out.seconds.entry(*step).or_default() += s;
    }
    for (step, r) in &b.runs {
        *out.runs.entry(*step).or_default() += r;
    }
    out
}

#[cfg(test)]
#[expect(
    clippy::float_cmp,
    reason = "the figures are rounded to fixed decimals, and compared as such"
)]
mod tests {
    use super::*;

    fn spent(pairs: &[(AddStep, f64)]) -> StepTotals {
        StepTotals {
            seconds: pairs.iter().copied().collect(),
            runs: pairs.iter().map(|(s, _)| (*s, 1)).collect(),
        }
    }

    #[test]
    fn step_shares_and_what_no_step_covers_add_up_to_the_whole() {
        let adds = [Duration::from_millis(100), Duration::from_millis(100)];
        let (share, mean) = step_figures(
            &spent(&[(AddStep::OvnInstalled, 0.1), (AddStep::Links, 0.05)]),
            &adds,
        );
        assert_eq!(share["ovn_installed"], 0.5);
        assert_eq!(share["links"], 0.25);
        assert_eq!(share["other"], 0.25);
        assert_eq!(mean["ovn_installed"], 50.0);
        assert_eq!(share["qos"], 0.0);
    }

    #[test]
    fn step_totals_are_read_from_the_agents_metrics() {
        let text = "# HELP x\n\
            sidelane_agent_add_step_seconds_total{step=\"qos\"} 0.25\n\
            sidelane_agent_add_steps_total{step=\"qos\"} 3\n\
            sidelane_agent_add_steps_total{step=\"links\"} 2\n";
        let totals = step_totals_in(text);
        assert_eq!(totals.seconds[&AddStep::Qos], 0.25);
        assert_eq!(totals.runs[&AddStep::Qos], 3);
        assert_eq!(totals.runs[&AddStep::Links], 2);
        assert_eq!(totals.seconds[&AddStep::Links], 0.0);
    }

    #[test]
    fn growth_compares_the_last_fifth_with_the_first() {
        let calls: Vec<(Duration, StepTotals)> = (1..=10u32)
            .map(|i| {
                (
                    Duration::from_millis(10),
                    spent(&[(AddStep::Links, f64::from(i) / 1000.0)]),
                )
            })
            .collect();
        let g = growth(&calls);
        // Last two (9, 10) over first two (1, 2).
        assert_eq!(g["links"].first_fifth_ms, 1.5);
        assert_eq!(g["links"].last_fifth_ms, 9.5);
        assert_eq!(g["links"].ratio, 6.33);
        assert_eq!(g["add"].ratio, 1.0);
        assert!(g["qos"].ratio.is_nan());
    }
}
