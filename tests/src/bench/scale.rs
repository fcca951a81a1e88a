//! `sidelane-bench scale`: how cost grows. Four sweeps, each a section of
//! `target/bench/scale.json` and one or two SVG plots beside it (`target/bench/scale-*.svg`):
//! - **ipam**: the IPAM core's allocation latency against the Subnet's size (/24 to /8) and the
//!   share of its addresses already held (0, 50, 90, 99%), in process: at each point, 2,000
//!   allocations, each released again so the level holds.
//! - **nb**: the Northbound reconciler's time to program a Subnet's worth of ports and the heap
//!   it holds once in sync, against ports (1,000 to 50,000): `bench ovn`'s Sidelane side.
//! - **agent**: the whole ADD (real OVN, the agent binary as the DaemonSet runs it; see
//!   [`super::cni_whole`]) and the agent's resident memory against the attachments already on
//!   the node (10 to 1,000), with what the fast path's eBPF maps hold in memory.
//! - **qos**: how closely Sidelane holds a pod to its rate, 1 to 1,000 Mbit/s (3, 37 and 250
//!   included): TCP over the run and in its first second, and UDP, into the pod.
//!
//! `--quick` runs a reduced set of each (about two minutes; the whole sweep takes about 50).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    hint::black_box,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;
use serde::Serialize;
use sidelane_api::qos::Direction;
use sidelane_controller::ipam::pool::{OwnerId, Pool};

use super::{
    cni_whole::{self, Caller, NodeAgent},
    ovn,
    plot::{Axis, Chart, Series},
    qos::{self, Mode, QosBenchOptions},
};
use crate::{node_rig::NodeRig, ping::percentile};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScaleOptions {
    /// The reduced set.
    pub quick: bool,
}

/// `target/bench/scale.json`.
#[derive(Debug, Serialize)]
pub struct ScaleReport {
    /// IPAM allocation latency against Subnet size and held share.
    pub ipam: Vec<IpamPoint>,
    /// Northbound reconcile time and heap against ports.
    pub nb: Vec<NbPoint>,
    /// ADD latency and agent memory against attachments on the node.
    pub agent: AgentSweep,
    /// QoS accuracy against rate.
    pub qos: Vec<QosPoint>,
    /// The plots written, with the command behind them.
    pub plots: Vec<String>,
}

/// One IPAM point.
#[derive(Debug, Serialize)]
pub struct IpamPoint {
    /// The Subnet's prefix length (IPv4).
    pub prefix_len: u8,
    /// Addresses the pool can hand out.
    pub capacity: u64,
    /// Addresses held when measured.
    pub held: u64,
    /// `held / capacity`.
    pub held_share: f64,
    /// Median allocation, µs.
    pub alloc_p50_us: f64,
    /// 99th percentile allocation, µs.
    pub alloc_p99_us: f64,
}

/// One Northbound point.
#[derive(Debug, Serialize)]
pub struct NbPoint {
    /// Ports programmed.
    pub ports: u32,
    /// Seconds from the wanted topology to its commit seen back.
    pub reconcile_s: f64,
    /// The reconciler's heap once in sync, MiB.
    pub heap_mib: f64,
}

/// The agent sweep.
#[derive(Debug, Serialize)]
pub struct AgentSweep {
    /// One per checkpoint.
    pub points: Vec<AgentPoint>,
    /// What the fast path's maps hold in kernel memory, whatever the attachments: their sizes
    /// are fixed when they are created.
    pub fastpath_maps: Vec<MapCost>,
    /// The most attachments the fast path takes on one node.
    pub fastpath_max_attachments: u32,
}

/// ADD latency and memory with `attachments` on the node.
#[derive(Debug, Serialize)]
pub struct AgentPoint {
    /// Attachments on the node when the window's ADDs ran (the first of them).
    pub attachments: usize,
    /// ADDs in the window.
    pub window: usize,
    /// Median ADD in the window, ms.
    pub add_p50_ms: f64,
    /// 99th percentile ADD in the window, ms.
    pub add_p99_ms: f64,
    /// The agent's resident memory after the window, MiB.
    pub agent_rss_mib: f64,
    /// CPU seconds ovs-vswitchd spent per ADD in the window.
    pub ovs_vswitchd_cpu_ms_per_add: f64,
    /// CPU seconds the agent spent per ADD in the window.
    pub agent_cpu_ms_per_add: f64,
}

/// One eBPF map's kernel memory.
#[derive(Debug, Serialize)]
pub struct MapCost {
    /// The map's name (as the kernel keeps it: 15 characters).
    pub name: String,
    /// Its entries at most.
    pub max_entries: u64,
    /// Kernel memory charged for it, bytes.
    pub bytes: u64,
}

/// One QoS point.
#[derive(Debug, Serialize)]
pub struct QosPoint {
    /// The limit, Mbit/s.
    pub rate_mbps: u64,
    /// TCP payload over the limit, over the run.
    pub tcp_ratio: f64,
    /// TCP payload over the limit, in the first second.
    pub tcp_first_second_ratio: f64,
    /// UDP payload over the limit, over the run (offered at 1.25 times the limit).
    pub udp_ratio: f64,
}

const IPAM_SAMPLES: usize = 2_000;
const HELD_SHARES: [f64; 4] = [0.0, 0.5, 0.9, 0.99];

/// The IPAM sweep.
fn ipam(quick: bool) -> anyhow::Result<Vec<IpamPoint>> {
    let prefixes: &[u8] = if quick {
        &[24, 16]
    } else {
        &[24, 20, 16, 12, 8]
    };
    let mut points = Vec::new();
    for &prefix_len in prefixes {
        let network = format!("10.0.0.0/{prefix_len}")
            .parse()
            .context("a network")?;
        let gateway: IpAddr = "10.0.0.1".parse().context("the gateway")?;
        let mut pool = Pool::new(network, Some(gateway), &[]);
        let capacity = pool.available();
        let mut owner = 0u32;
        for share in HELD_SHARES {
            #[expect(
                clippy::cast_precision_loss,
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a share of at most 2^24 addresses"
            )]
            let target = (capacity as f64 * share) as u64;
            while pool.used() < target {
                pool.allocate(OwnerId(owner)).context("filling the pool")?;
                owner += 1;
            }
            let mut samples = Vec::with_capacity(IPAM_SAMPLES);
            for _ in 0..IPAM_SAMPLES {
                let started = Instant::now();
                let ip = pool.allocate(OwnerId(owner)).context("allocating")?;
                samples.push(started.elapsed().as_secs_f64() * 1e6);
                pool.release(black_box(ip), OwnerId(owner))
                    .context("releasing")?;
            }
            let at = |p| (percentile(&samples, p).unwrap_or(f64::NAN) * 1000.0).round() / 1000.0;
            #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
            let held_share = pool.used() as f64 / capacity as f64;
            points.push(IpamPoint {
                prefix_len,
                capacity,
                held: pool.used(),
                held_share: (held_share * 1000.0).round() / 1000.0,
                alloc_p50_us: at(50.0),
                alloc_p99_us: at(99.0),
            });
            eprintln!(
                "ipam /{prefix_len}: {} held of {capacity}: p50 {:.2} µs, p99 {:.2} µs",
                pool.used(),
                at(50.0),
                at(99.0)
            );
        }
    }
    Ok(points)
}

/// The Northbound sweep.
fn nb(quick: bool) -> anyhow::Result<Vec<NbPoint>> {
    let sizes: &[(u32, u32)] = if quick { &ovn::SIZES[..2] } else { &ovn::SIZES };
    let report = ovn::run(sizes, false)?;
    Ok(report
        .rows
        .iter()
        .map(|r| NbPoint {
            ports: r.lsp_count,
            reconcile_s: r.sidelane_s,
            #[expect(clippy::cast_precision_loss, reason = "heap bytes far below 2^52")]
            heap_mib: (r.reconciler_heap_bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0,
        })
        .collect())
}

/// The agent sweep: ADDs one after the other up to the last checkpoint.
fn agent(quick: bool, plugin: &Path, agent: &Path) -> anyhow::Result<AgentSweep> {
    let checkpoints: &[usize] = if quick {
        &[10, 30, 100]
    } else {
        &[10, 30, 100, 300, 1_000]
    };
    let last = checkpoints.last().copied().unwrap_or(10);
    let mut rig = NodeRig::start(true);
    rig.stop_agent();
    let node = NodeAgent::start(&rig, agent)?;
    let names: Vec<String> = (0..last).map(|i| format!("scale{i}")).collect();
    cni_whole::seed_pods(&rig, &names)?;
    let caller = Caller::new(plugin, rig.config("attachnet"));
    let pods = cni_whole::netns_for(&names)?;
    let (mut points, mut done) = (Vec::new(), 0);
    for &checkpoint in checkpoints {
        // The window: the ten ADDs before the checkpoint (all of them up to the first).
        let start = checkpoint.saturating_sub(10).max(done);
        for (pod, netns) in &pods[done..start] {
            caller.call("ADD", netns, pod)?;
        }
        let cpu = crate::usage::CpuByPart::now(&["ovs-vswitchd", "sidelane-agent"]);
        let mut adds = Vec::new();
        for (pod, netns) in &pods[start..checkpoint] {
            adds.push(caller.call("ADD", netns, pod)?.as_secs_f64() * 1e3);
        }
        let cpu = crate::usage::CpuByPart::now(&["ovs-vswitchd", "sidelane-agent"]).since(&cpu);
        done = checkpoint;
        let at = |p| (percentile(&adds, p).unwrap_or(f64::NAN) * 100.0).round() / 100.0;
        #[expect(clippy::cast_precision_loss, reason = "ten calls")]
        let per_add = |part: &str| {
            (cpu.get(part).copied().unwrap_or(0.0) * 1e3 / adds.len() as f64 * 10.0).round() / 10.0
        };
        let point = AgentPoint {
            attachments: start,
            window: adds.len(),
            add_p50_ms: at(50.0),
            add_p99_ms: at(99.0),
            agent_rss_mib: node.rss_mib().unwrap_or(f64::NAN),
            ovs_vswitchd_cpu_ms_per_add: per_add("ovs-vswitchd"),
            agent_cpu_ms_per_add: per_add("sidelane-agent"),
        };
        eprintln!(
            "agent: {} attachments: ADD p50 {:.1} ms, p99 {:.1} ms, agent RSS {:.1} MiB",
            point.attachments, point.add_p50_ms, point.add_p99_ms, point.agent_rss_mib
        );
        points.push(point);
    }
    let fastpath_maps = fastpath_map_costs()?;
    for (pod, netns) in &pods[..done] {
        caller.call("DEL", netns, pod)?;
    }
    Ok(AgentSweep {
        points,
        fastpath_maps,
        fastpath_max_attachments: sidelane_agent_common::fastpath::MAX_ATTACHMENTS,
    })
}

/// The fast path's maps as the kernel holds them (`bpftool map show`).
fn fastpath_map_costs() -> anyhow::Result<Vec<MapCost>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .context("running bpftool map show")?;
    let maps: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut costs: BTreeMap<String, MapCost> = BTreeMap::new();
    for m in maps {
        let name = m["name"].as_str().unwrap_or_default();
        if !name.starts_with("SL_FP_") {
            continue;
        }
        // Several copies may be loaded (other rigs): one of each name is enough.
        costs.entry(name.to_owned()).or_insert(MapCost {
            name: name.to_owned(),
            max_entries: m["max_entries"].as_u64().unwrap_or(0),
            bytes: m["bytes_memlock"].as_u64().unwrap_or(0),
        });
    }
    Ok(costs.into_values().collect())
}

/// The QoS sweep, into the pod, Sidelane only.
fn qos_sweep(quick: bool) -> anyhow::Result<Vec<QosPoint>> {
    let rates: &[u64] = if quick {
        &[3, 37, 250]
    } else {
        &[1, 3, 10, 37, 100, 250, 500, 1_000]
    };
    let options = QosBenchOptions {
        quick,
        ..QosBenchOptions::default()
    };
    let mut points = Vec::new();
    for &mbps in rates {
        let tcp = qos::run_case(&options, Mode::Sidelane, Direction::Ingress, "tcp", mbps)?;
        let udp = qos::run_case(&options, Mode::Sidelane, Direction::Ingress, "udp", mbps)?;
        let round = |v: f64| (v * 1000.0).round() / 1000.0;
        let point = QosPoint {
            rate_mbps: mbps,
            tcp_ratio: round(tcp.ratio),
            tcp_first_second_ratio: round(tcp.first_second_ratio),
            udp_ratio: round(udp.ratio),
        };
        eprintln!(
            "qos {mbps} Mbit/s: TCP {:.3} (first second {:.3}), UDP {:.3}",
            point.tcp_ratio, point.tcp_first_second_ratio, point.udp_ratio
        );
        points.push(point);
    }
    Ok(points)
}

/// Runs every sweep and writes the plots into `dir`.
///
/// # Errors
/// When a part does not start, a call fails or a plot cannot be written.
pub fn run(options: ScaleOptions, dir: &Path) -> anyhow::Result<ScaleReport> {
    let plugin = crate::process::binary_beside_me("sidelane-cni")?;
    let agent_bin = crate::process::binary_beside_me("sidelane-agent")?;
    let started = Instant::now();
    let ipam = ipam(options.quick)?;
    let qos = qos_sweep(options.quick)?;
    let agent = agent(options.quick, &plugin, &agent_bin)?;
    let nb = nb(options.quick)?;
    let mut report = ScaleReport {
        ipam,
        nb,
        agent,
        qos,
        plots: Vec::new(),
    };
    report.plots = write_plots(&report, dir)?;
    eprintln!("scale: done in {:.0?}", started.elapsed());
    Ok(report)
}

const COMMAND: &str = "cargo xtask bench scale";

fn ipam_chart(r: &ScaleReport) -> Chart {
    let series = |held: f64| Series {
        label: format!("{:.0}% held", held * 100.0),
        points: r
            .ipam
            .iter()
            .filter(|p| (p.held_share - held).abs() < 0.01)
            .map(|p| (f64::from(p.prefix_len), p.alloc_p99_us))
            .collect(),
    };
    Chart {
        title: format!("IPAM allocation p99 by Subnet prefix length ({COMMAND})"),
        x: Axis::linear("prefix length (/24 .. /8)"),
        y: Axis::log("allocation p99, µs"),
        series: HELD_SHARES.iter().map(|h| series(*h)).collect(),
        reference: None,
    }
}

fn nb_chart(r: &ScaleReport) -> Chart {
    let series = |label: &str, f: &dyn Fn(&NbPoint) -> f64| Series {
        label: label.to_owned(),
        points: r.nb.iter().map(|p| (f64::from(p.ports), f(p))).collect(),
    };
    Chart {
        title: format!("Northbound reconcile time and heap by ports ({COMMAND})"),
        x: Axis::log("logical switch ports"),
        y: Axis::log("seconds / MiB"),
        series: vec![
            series("reconcile, s", &|p| p.reconcile_s),
            series("reconciler heap, MiB", &|p| p.heap_mib),
        ],
        reference: None,
    }
}

fn agent_charts(r: &ScaleReport) -> [Chart; 2] {
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let series = |label: &str, f: &dyn Fn(&AgentPoint) -> f64| Series {
        label: label.to_owned(),
        points: r
            .agent
            .points
            .iter()
            .map(|p| (p.attachments.max(1) as f64, f(p)))
            .collect(),
    };
    [
        Chart {
            title: format!("Whole OVN ADD by attachments on the node ({COMMAND})"),
            x: Axis::log("attachments already on the node"),
            y: Axis::log("ms"),
            series: vec![
                series("ADD p50", &|p| p.add_p50_ms),
                series("ADD p99", &|p| p.add_p99_ms),
                series("ovs-vswitchd CPU per ADD", &|p| {
                    p.ovs_vswitchd_cpu_ms_per_add
                }),
                series("agent CPU per ADD", &|p| p.agent_cpu_ms_per_add),
            ],
            reference: None,
        },
        Chart {
            title: format!("Agent resident memory by attachments ({COMMAND})"),
            x: Axis::log("attachments on the node"),
            y: Axis::linear("MiB"),
            series: vec![series("agent RSS", &|p| p.agent_rss_mib)],
            reference: None,
        },
    ]
}

fn qos_chart(r: &ScaleReport) -> Chart {
    #[expect(clippy::cast_precision_loss, reason = "rates are small integers")]
    let series = |label: &str, f: &dyn Fn(&QosPoint) -> f64| Series {
        label: label.to_owned(),
        points: r.qos.iter().map(|p| (p.rate_mbps as f64, f(p))).collect(),
    };
    Chart {
        title: format!("QoS: received payload over the limit, into the pod ({COMMAND})"),
        x: Axis::log("limit, Mbit/s"),
        y: Axis::linear("payload / limit"),
        series: vec![
            series("TCP, whole run", &|p| p.tcp_ratio),
            series("TCP, first second", &|p| p.tcp_first_second_ratio),
            series("UDP, whole run", &|p| p.udp_ratio),
        ],
        reference: Some((1.0, "the limit".to_owned())),
    }
}

/// Every chart of the report, with its file name.
pub fn charts(r: &ScaleReport) -> Vec<(&'static str, Chart)> {
    let [add, memory] = agent_charts(r);
    vec![
        ("scale-ipam.svg", ipam_chart(r)),
        ("scale-nb.svg", nb_chart(r)),
        ("scale-agent-add.svg", add),
        ("scale-agent-memory.svg", memory),
        ("scale-qos.svg", qos_chart(r)),
    ]
}

fn write_plots(r: &ScaleReport, dir: &Path) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut written = Vec::new();
    for (file, chart) in charts(r) {
        let path: PathBuf = dir.join(file);
        chart.write_svg(&path)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// Writes `report` as pretty JSON to `path`.
///
/// # Errors
/// When the file cannot be written.
pub fn write_report(report: &ScaleReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The table printed after the run.
pub fn table(r: &ScaleReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "IPAM: prefix, held share, allocation p50 / p99 µs");
    for p in &r.ipam {
        let _ = writeln!(
            out,
            "  /{:<3} {:>5.1}% {:>9.2} {:>9.2}",
            p.prefix_len,
            p.held_share * 100.0,
            p.alloc_p50_us,
            p.alloc_p99_us
        );
    }
    let _ = writeln!(out, "Northbound: ports, reconcile s, heap MiB");
    for p in &r.nb {
        let _ = writeln!(
            out,
            "  {:>6} {:>8.3} {:>8.1}",
            p.ports, p.reconcile_s, p.heap_mib
        );
    }
    let _ = writeln!(
        out,
        "Agent: attachments, ADD p50 / p99 ms, RSS MiB, CPU ms per ADD (ovs-vswitchd, agent)"
    );
    for p in &r.agent.points {
        let _ = writeln!(
            out,
            "  {:>5} {:>8.1} {:>8.1} {:>7.1} {:>8.1} {:>6.1}",
            p.attachments,
            p.add_p50_ms,
            p.add_p99_ms,
            p.agent_rss_mib,
            p.ovs_vswitchd_cpu_ms_per_add,
            p.agent_cpu_ms_per_add
        );
    }
    let map_bytes: u64 = r.agent.fastpath_maps.iter().map(|m| m.bytes).sum();
    let _ = writeln!(
        out,
        "  fast-path maps: {} maps, {:.1} MiB of kernel memory, up to {} attachments",
        r.agent.fastpath_maps.len(),
        bytes_mib(map_bytes),
        r.agent.fastpath_max_attachments
    );
    let _ = writeln!(
        out,
        "QoS into the pod: Mbit/s, TCP ratio, TCP first second, UDP ratio"
    );
    for p in &r.qos {
        let _ = writeln!(
            out,
            "  {:>5} {:>7.3} {:>7.3} {:>7.3}",
            p.rate_mbps, p.tcp_ratio, p.tcp_first_second_ratio, p.udp_ratio
        );
    }
    for plot in &r.plots {
        let _ = writeln!(out, "plot: {plot}");
    }
    out
}

#[expect(clippy::cast_precision_loss, reason = "bytes far below 2^52")]
fn bytes_mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chart_names_the_command_and_draws_its_points() {
        let report = ScaleReport {
            ipam: vec![IpamPoint {
                prefix_len: 24,
                capacity: 253,
                held: 0,
                held_share: 0.0,
                alloc_p50_us: 0.1,
                alloc_p99_us: 0.3,
            }],
            nb: vec![NbPoint {
                ports: 1_000,
                reconcile_s: 0.09,
                heap_mib: 4.4,
            }],
            agent: AgentSweep {
                points: vec![AgentPoint {
                    attachments: 10,
                    window: 10,
                    add_p50_ms: 20.0,
                    add_p99_ms: 30.0,
                    agent_rss_mib: 25.0,
                    ovs_vswitchd_cpu_ms_per_add: 12.0,
                    agent_cpu_ms_per_add: 4.0,
                }],
                fastpath_maps: Vec::new(),
                fastpath_max_attachments: 4096,
            },
            qos: vec![QosPoint {
                rate_mbps: 37,
                tcp_ratio: 0.95,
                tcp_first_second_ratio: 0.9,
                udp_ratio: 0.98,
            }],
            plots: Vec::new(),
        };
        let charts = charts(&report);
        assert_eq!(charts.len(), 5);
        for (file, chart) in &charts {
            assert!(
                Path::new(file)
                    .extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
            );
            assert!(
                chart.title.contains("cargo xtask bench scale"),
                "{}",
                chart.title
            );
            assert!(
                chart.series.iter().any(|s| !s.points.is_empty()),
                "{file} has no point"
            );
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let written = write_plots(&report, dir.path()).expect("the plots");
        assert_eq!(written.len(), 5);
    }
}
