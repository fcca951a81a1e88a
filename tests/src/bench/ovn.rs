//! `cargo xtask bench ovn`: programming OVN's Northbound database.
//!
//! Two fresh Northbound ovsdb-servers (OVN's schema, no northd, so only the database's work is
//! measured), the same topology on each: `switches` logical switches on one router, then
//! `lsp_count` attachment ports spread evenly ("MAC IP" addresses, port security, the pod in
//! external_ids).
//!
//! - Sidelane: the controller's Northbound reconciler (`sidelane_controller::nb`) with the
//!   switches in place is handed the topology with every port; timed from then until it
//!   reports the database in sync (every port committed and seen back through its monitor).
//! - ovn-nbctl: one `ovn-nbctl lsp-add … -- lsp-set-addresses … -- lsp-set-port-security …
//!   -- set … external_ids` call per port, as a script or an operator would; the switches are
//!   created beforehand, untimed.
//! - the fair peers, on the same rows: ovn-nbctl carrying every command in as few invocations
//!   as the command line allows (2,000 ports each), and OVS's own Python IDL (Debian's
//!   `python3-openvswitch`, what `OpenStack` Neutron uses) committing every port in one
//!   transaction (`ovn_idl.py`); `speedup_vs_best_peer` is the better of the two over Sidelane.
//! - `resync_after_restart_s`: Sidelane's server is killed and restarted; timed from the
//!   restart until the reconciler has reconnected, taken a fresh snapshot and found it in sync.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::Serialize;
use sidelane_controller::{
    metrics::Metrics,
    nb,
    ovn::{self, PortInput, Topology},
    subnet::{SubnetConfig, SubnetInput},
};
use sidelane_ovsdb::parse_remotes;
use tokio::sync::watch;

use super::memory::live_bytes;
use crate::{ovn::DbServer, process};

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

/// `target/bench/ovn.json`: one row per size, from one run.
#[derive(Debug, Serialize)]
pub struct OvnReport {
    /// Each size, smallest first.
    pub rows: Vec<OvnRow>,
    /// One ovn-nbctl process per port, at the first size of at most `PER_PORT_MAX` ports (the
    /// old, unfair anchor; it takes minutes beyond).
    pub per_port_nbctl: Option<PerPortNbctl>,
    /// The smallest `speedup_vs_best_peer` over the rows: the headline.
    pub min_speedup_vs_best_peer: f64,
    /// `resync_after_restart_s` at the largest size.
    pub resync_at_largest_s: f64,
}

/// One size of the sweep.
#[derive(Debug, Serialize)]
pub struct OvnRow {
    /// Attachment ports created.
    pub lsp_count: u32,
    /// Switches they are spread over.
    pub switches: u32,
    /// Sidelane's time to commit them and see them back, seconds.
    pub sidelane_s: f64,
    /// Of which planning (reading the replica, diffing), seconds.
    pub plan_s: f64,
    /// Of which the transaction's round trip, seconds.
    pub commit_s: f64,
    /// Of which waiting for and applying the monitor's updates, seconds.
    pub updates_s: f64,
    /// ovn-nbctl with every command in as few invocations as the command line allows
    /// (`NBCTL_BATCH` ports each), seconds.
    pub ovn_nbctl_batched_s: f64,
    /// OVS's Python IDL, one transaction, seconds.
    pub python_idl_s: f64,
    /// The best fair peer's time over Sidelane's.
    pub speedup_vs_best_peer: f64,
    /// Ports per second, Sidelane.
    pub lsp_per_s: f64,
    /// From a Northbound server restart to in sync again, seconds.
    pub resync_after_restart_s: f64,
    /// Heap the reconciler holds once in sync (replica, wanted topology, client), bytes.
    pub reconciler_heap_bytes: u64,
}

/// The old anchor: one ovn-nbctl process per port.
#[derive(Debug, Serialize)]
pub struct PerPortNbctl {
    /// Ports created.
    pub lsp_count: u32,
    /// Seconds.
    pub ovn_nbctl_s: f64,
    /// `ovn_nbctl_s` over Sidelane's time on the same rows.
    pub speedup: f64,
}

fn subnets(switches: u32) -> anyhow::Result<Vec<SubnetConfig>> {
    (0..switches)
        .map(|i| {
            SubnetConfig::from_input(&SubnetInput {
                name: format!("bench{i}"),
                cidr_block: format!("10.{}.{}.0/22", 100 + i / 60, (i % 60) * 4),
                provider: "bench.default.ovn".to_owned(),
                ..SubnetInput::default()
            })
            .with_context(|| format!("subnet bench{i}"))
        })
        .collect()
}

fn ports(subnets: &[SubnetConfig], count: u32) -> Vec<PortInput> {
    let n = u32::try_from(subnets.len()).unwrap_or(1).max(1);
    (0..count)
        .map(|i| {
            let s = &subnets[(i % n) as usize];
            let base = match s.cidrs[0].addr() {
                IpAddr::V4(a) => u32::from(a),
                IpAddr::V6(_) => 0,
            };
            let ip = Ipv4Addr::from(base + 2 + i / n);
            let b = i.to_be_bytes();
            PortInput {
                name: format!("pod{i}.default.bench.default.ovn"),
                subnet: s.name.clone(),
                mac: [0x0a, 0x58, b[0], b[1], b[2], b[3]],
                ips: vec![IpAddr::V4(ip)],
                pod: format!("default/pod{i}"),
                provider: "bench.default.ovn".to_owned(),
                // The heavier row (as the benchmark has always written it).
                port_security: true,
                security_groups: Vec::new(),
            }
        })
        .collect()
}

async fn until_in_sync(metrics: &Metrics, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while metrics.nb_in_sync.get() != 1 {
        if start.elapsed() > timeout {
            bail!("the reconciler was not in sync within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

fn count_ports(server: &DbServer, dir: &Path) -> anyhow::Result<usize> {
    let mut cmd = Command::new("ovn-nbctl");
    cmd.arg(format!("--db={}", server.unix_remote()))
        .args(["--bare", "--columns=name", "list", "Logical_Switch_Port"])
        .env("OVN_RUNDIR", dir);
    let out = process::run(&mut cmd, None, Duration::from_mins(1))?.checked()?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
}

/// Fails unless `server` holds `expected` switch ports after `who` wrote them.
fn expect_ports(server: &DbServer, dir: &Path, expected: usize, who: &str) -> anyhow::Result<()> {
    let found = count_ports(server, dir)?;
    if found != expected {
        bail!("{who} created {found} ports, expected {expected}");
    }
    Ok(())
}

/// Sidelane's figures at one size.
struct SidelaneRun {
    took: f64,
    plan: f64,
    commit: f64,
    updates: f64,
    resync: f64,
    heap: u64,
}

/// Runs Sidelane's reconciler: `base` first (untimed), then `full`, then a server restart.
/// `topology_bytes` is the heap `full` holds (it is counted, a clone of it is not).
fn sidelane(
    base: Topology,
    full: Topology,
    expected: usize,
    topology_bytes: usize,
) -> anyhow::Result<SidelaneRun> {
    let entry = live_bytes();
    let dir = tempfile::tempdir().context("a directory for the Northbound database")?;
    let mut server = DbServer::create(dir.path(), "nb", NB_SCHEMA)?;
    let runtime = tokio::runtime::Runtime::new().context("a runtime")?;
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = watch::channel(Arc::new(base));
    let options = sidelane_ovsdb::Options::new(parse_remotes(&server.unix_remote())?);
    let client = runtime.block_on(async { sidelane_ovsdb::Client::start(options) });
    let task = runtime.spawn(nb::reconcile(
        client,
        rx,
        watch::channel(nb::HeldPorts::default()).0,
        Arc::clone(&metrics),
    ));
    runtime.block_on(until_in_sync(&metrics, Duration::from_mins(1)))?;
    let spent = |phase| metrics.nb_spent_in(phase);
    let (plan0, commit0, updates0) = (spent("plan"), spent("commit"), spent("updates"));
    // The switches and router are in place; now every port at once.
    metrics.nb_in_sync.set(0);
    let start = Instant::now();
    tx.send_replace(Arc::new(full));
    runtime.block_on(until_in_sync(&metrics, Duration::from_mins(10)))?;
    let took = start.elapsed().as_secs_f64();
    let heap = (live_bytes().saturating_sub(entry) + topology_bytes) as u64;
    expect_ports(&server, dir.path(), expected, "Sidelane")?;
    let (plan, commit, updates) = (
        spent("plan") - plan0,
        spent("commit") - commit0,
        spent("updates") - updates0,
    );
    // Restart the server; time until the reconciler is back in sync.
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    metrics.nb_in_sync.set(0);
    let restart = Instant::now();
    server.start()?;
    runtime.block_on(until_in_sync(&metrics, Duration::from_mins(5)))?;
    let resync = restart.elapsed().as_secs_f64();
    task.abort();
    Ok(SidelaneRun {
        took,
        plan,
        commit,
        updates,
        resync,
        heap,
    })
}

/// Ports per batched ovn-nbctl invocation: the command line stays under the kernel's limit.
const NBCTL_BATCH: usize = 2_000;

/// "MAC IP" of a port.
fn address(p: &PortInput) -> String {
    let ip = p.ips.first().map(ToString::to_string).unwrap_or_default();
    let mac = p
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    format!("{mac} {ip}")
}

/// A fresh Northbound server with the switches (untimed).
fn with_switches(dir: &Path, switches: &[SubnetConfig]) -> anyhow::Result<DbServer> {
    let server = DbServer::create(dir, "nb", NB_SCHEMA)?;
    let mut setup = Vec::new();
    for s in switches {
        setup.extend(["--".to_owned(), "ls-add".to_owned(), s.name.clone()]);
    }
    nbctl_run(&server, dir, &setup[1..])?;
    Ok(server)
}

fn nbctl_run(server: &DbServer, dir: &Path, args: &[String]) -> anyhow::Result<()> {
    let mut cmd = Command::new("ovn-nbctl");
    cmd.arg(format!("--db={}", server.unix_remote()))
        .args(args)
        .env("OVN_RUNDIR", dir);
    process::run(&mut cmd, None, Duration::from_mins(5))?
        .checked()
        .map(drop)
}

/// One port's ovn-nbctl commands (`--` between them).
fn port_commands(p: &PortInput) -> Vec<String> {
    let address = address(p);
    vec![
        "lsp-add".into(),
        p.subnet.clone(),
        p.name.clone(),
        "--".into(),
        "lsp-set-addresses".into(),
        p.name.clone(),
        address.clone(),
        "--".into(),
        "lsp-set-port-security".into(),
        p.name.clone(),
        address,
        "--".into(),
        "set".into(),
        "Logical_Switch_Port".into(),
        p.name.clone(),
        format!("external_ids:pod={}", p.pod),
    ]
}

/// ovn-nbctl carrying every command in as few invocations as possible; seconds.
fn nbctl_batched(switches: &[SubnetConfig], ports: &[PortInput]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir().context("a directory for the Northbound database")?;
    let server = with_switches(dir.path(), switches)?;
    let start = Instant::now();
    for chunk in ports.chunks(NBCTL_BATCH) {
        let mut args = Vec::new();
        for p in chunk {
            if !args.is_empty() {
                args.push("--".to_owned());
            }
            args.extend(port_commands(p));
        }
        nbctl_run(&server, dir.path(), &args).context("batched ovn-nbctl")?;
    }
    let took = start.elapsed().as_secs_f64();
    expect_ports(&server, dir.path(), ports.len(), "batched ovn-nbctl")?;
    Ok(took)
}

/// OVS's Python IDL (`ovn_idl.py` beside this file), one transaction; seconds as it reports
/// them (its initial sync untimed).
fn python_idl(switches: &[SubnetConfig], ports: &[PortInput]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir().context("a directory for the Northbound database")?;
    let server = with_switches(dir.path(), switches)?;
    let rows: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            serde_json::json!({"switch": p.subnet, "name": p.name, "address": address(p), "pod": p.pod})
        })
        .collect();
    let list = dir.path().join("ports.json");
    fs::write(&list, serde_json::to_string(&rows)?).context("writing the ports")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bench/ovn_idl.py");
    // Debian's interpreter: python3-openvswitch is installed for it.
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script)
        .arg(NB_SCHEMA)
        .arg(server.unix_remote())
        .arg(&list);
    let out = process::run(&mut cmd, None, Duration::from_mins(10))?.checked()?;
    let took: f64 = out
        .trim()
        .parse()
        .with_context(|| format!("the Python IDL's time: {out:?}"))?;
    expect_ports(&server, dir.path(), ports.len(), "the Python IDL")?;
    Ok(took)
}

/// One ovn-nbctl call per port; seconds.
fn nbctl(switches: &[SubnetConfig], ports: &[PortInput]) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir().context("a directory for the Northbound database")?;
    let server = with_switches(dir.path(), switches)?;
    let start = Instant::now();
    for p in ports {
        nbctl_run(&server, dir.path(), &port_commands(p))
            .with_context(|| format!("ovn-nbctl creating {}", p.name))?;
    }
    let took = start.elapsed().as_secs_f64();
    expect_ports(&server, dir.path(), ports.len(), "ovn-nbctl")?;
    Ok(took)
}

/// Each side runs this many times at each size and keeps its best: the machines are shared.
const REPEATS: usize = 3;

/// Beyond this many ports batched ovn-nbctl runs once (it takes minutes there, and is far
/// behind the Python IDL).
const NBCTL_REPEAT_MAX: u32 = 5_000;

/// The shortest of `n` runs of `f`, seconds.
fn best_of(n: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..n {
        best = best.min(f()?);
    }
    Ok(best)
}

/// The sweep's sizes: (ports, switches), a hundred ports per switch.
pub const SIZES: [(u32, u32); 4] = [(1_000, 10), (5_000, 50), (20_000, 200), (50_000, 500)];

/// The largest size at which one ovn-nbctl process per port is timed.
const PER_PORT_MAX: u32 = 1_000;

/// Runs Sidelane and (when `peers`) the fair peers at each size, and one ovn-nbctl process per
/// port at the first size of at most `PER_PORT_MAX` ports. Without the peers their figures are
/// `null` in the report: a look at Sidelane alone, not a comparison.
pub fn run(sizes: &[(u32, u32)], peers: bool) -> anyhow::Result<OvnReport> {
    let mut rows = Vec::new();
    let mut per_port = None;
    for &(lsp_count, switches) in sizes {
        let subnets = subnets(switches)?;
        let ports = ports(&subnets, lsp_count);
        let row = row(&subnets, &ports, peers)?;
        eprintln!("{}", row_line(&row));
        if peers && per_port.is_none() && lsp_count <= PER_PORT_MAX {
            eprintln!("ovn-nbctl: {lsp_count} calls...");
            let ovn_nbctl_s = nbctl(&subnets, &ports)?;
            per_port = Some(PerPortNbctl {
                lsp_count,
                ovn_nbctl_s,
                speedup: ovn_nbctl_s / row.sidelane_s,
            });
        }
        rows.push(row);
    }
    Ok(OvnReport {
        min_speedup_vs_best_peer: rows
            .iter()
            .map(|r| r.speedup_vs_best_peer)
            .fold(f64::INFINITY, f64::min),
        resync_at_largest_s: rows.last().map_or(0.0, |r| r.resync_after_restart_s),
        rows,
        per_port_nbctl: per_port,
    })
}

/// One size: Sidelane, batched ovn-nbctl and the Python IDL on the same rows.
fn row(subnets: &[SubnetConfig], ports: &[PortInput], peers: bool) -> anyhow::Result<OvnRow> {
    let lsp_count = u32::try_from(ports.len()).context("the number of ports")?;
    let switches = u32::try_from(subnets.len()).context("the number of switches")?;
    let none = ovn::Isolation::default();
    let base = ovn::build(subnets, &BTreeMap::new(), std::iter::empty(), &none);
    let heap_before = live_bytes();
    let full = ovn::build(subnets, &BTreeMap::new(), ports.iter().cloned(), &none);
    let topology_bytes = live_bytes().saturating_sub(heap_before);
    // Each switch also has its router's port.
    let expected = ports.len() + subnets.len();
    eprintln!("sidelane: {lsp_count} ports over {switches} switches...");
    let s = (1..=REPEATS)
        .map(|_| sidelane(base.clone(), full.clone(), expected, topology_bytes))
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .min_by(|a, b| a.took.total_cmp(&b.took))
        .context("no Sidelane run")?;
    let (ovn_nbctl_batched_s, python_idl_s) = if peers {
        eprintln!("ovn-nbctl, batched...");
        let nbctl_runs = if lsp_count <= NBCTL_REPEAT_MAX {
            REPEATS
        } else {
            1
        };
        let batched = best_of(nbctl_runs, || nbctl_batched(subnets, ports))?;
        eprintln!("the Python IDL, one transaction...");
        (batched, best_of(REPEATS, || python_idl(subnets, ports))?)
    } else {
        (f64::NAN, f64::NAN)
    };
    Ok(OvnRow {
        lsp_count,
        switches,
        sidelane_s: s.took,
        plan_s: s.plan,
        commit_s: s.commit,
        updates_s: s.updates,
        ovn_nbctl_batched_s,
        python_idl_s,
        speedup_vs_best_peer: ovn_nbctl_batched_s.min(python_idl_s) / s.took,
        lsp_per_s: f64::from(lsp_count) / s.took,
        resync_after_restart_s: s.resync,
        reconciler_heap_bytes: s.heap,
    })
}

/// Writes the JSON report.
pub fn write_report(report: &OvnReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}

fn row_line(r: &OvnRow) -> String {
    format!(
        "{:>7} {:>8} {:>9.3} {:>7.3} {:>8.3} {:>9.3} {:>9.3} {:>9.3} {:>8.2} {:>8.3} {:>9.1}",
        r.lsp_count,
        r.switches,
        r.sidelane_s,
        r.plan_s,
        r.commit_s,
        r.updates_s,
        r.ovn_nbctl_batched_s,
        r.python_idl_s,
        r.speedup_vs_best_peer,
        r.resync_after_restart_s,
        // KiB then MiB: exact in f64 at any heap this benchmark makes.
        f64::from(u32::try_from(r.reconciler_heap_bytes / 1024).unwrap_or(u32::MAX)) / 1024.0,
    )
}

/// The table printed after the run.
pub fn table(r: &OvnReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>7} {:>8} {:>9} {:>7} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "ports",
        "switches",
        "sidelane",
        "plan",
        "commit",
        "updates",
        "nbctl-b",
        "py-idl",
        "vs-best",
        "resync",
        "heap-MiB"
    );
    for row in &r.rows {
        let _ = writeln!(out, "{}", row_line(row));
    }
    if r.min_speedup_vs_best_peer.is_finite() {
        let _ = writeln!(
            out,
            "\nheadline: {:.2}x the best fair peer at every size (target >= 2)",
            r.min_speedup_vs_best_peer
        );
    } else {
        let _ = writeln!(out, "\nthe peers were not run: no comparison");
    }
    let _ = writeln!(
        out,
        "resync after a restart at the largest size: {:.3} s (target < 5 s at 50,000 ports)",
        r.resync_at_largest_s
    );
    if let Some(p) = &r.per_port_nbctl {
        let _ = writeln!(
            out,
            "one ovn-nbctl per port, {} ports: {:.1} s, {:.0}x Sidelane",
            p.lsp_count, p.ovn_nbctl_s, p.speedup
        );
    }
    out
}
