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

use crate::{ovn::DbServer, process};

const NB_SCHEMA: &str = "/usr/share/ovn/ovn-nb.ovsschema";

/// `target/bench/ovn.json`.
#[derive(Debug, Serialize)]
pub struct OvnReport {
    /// Attachment ports created.
    pub lsp_count: u32,
    /// Switches they are spread over.
    pub switches: u32,
    /// Sidelane's time to commit them, seconds.
    pub sidelane_s: f64,
    /// One ovn-nbctl call per port, seconds.
    pub ovn_nbctl_s: f64,
    /// ovn-nbctl with every command in as few invocations as the command line allows
    /// (`NBCTL_BATCH` ports each), seconds.
    pub ovn_nbctl_batched_s: f64,
    /// OVS's Python IDL, one transaction, seconds.
    pub python_idl_s: f64,
    /// The best fair peer's time over Sidelane's.
    pub speedup_vs_best_peer: f64,
    /// `ovn_nbctl_s / sidelane_s`.
    pub speedup: f64,
    /// Ports per second, Sidelane.
    pub lsp_per_s: f64,
    /// From a Northbound server restart to in sync again, seconds.
    pub resync_after_restart_s: f64,
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

/// Sidelane's figures: (seconds to commit the ports, seconds to resync after a restart).
fn sidelane(base: Topology, full: Topology, expected: usize) -> anyhow::Result<(f64, f64)> {
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
    // The switches and router are in place; now every port at once.
    metrics.nb_in_sync.set(0);
    let start = Instant::now();
    tx.send_replace(Arc::new(full));
    runtime.block_on(until_in_sync(&metrics, Duration::from_mins(5)))?;
    let took = start.elapsed().as_secs_f64();
    let found = count_ports(&server, dir.path())?;
    if found != expected {
        bail!("Sidelane committed {found} switch ports, expected {expected}");
    }
    // Restart the server; time until the reconciler is back in sync.
    server.kill();
    std::thread::sleep(Duration::from_millis(500));
    metrics.nb_in_sync.set(0);
    let restart = Instant::now();
    server.start()?;
    runtime.block_on(until_in_sync(&metrics, Duration::from_mins(2)))?;
    let resync = restart.elapsed().as_secs_f64();
    task.abort();
    Ok((took, resync))
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
    let found = count_ports(&server, dir.path())?;
    if found != ports.len() {
        bail!(
            "batched ovn-nbctl created {found} ports, expected {}",
            ports.len()
        );
    }
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
    let found = count_ports(&server, dir.path())?;
    if found != ports.len() {
        bail!(
            "the Python IDL created {found} ports, expected {}",
            ports.len()
        );
    }
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
    let found = count_ports(&server, dir.path())?;
    if found != ports.len() {
        bail!("ovn-nbctl created {found} ports, expected {}", ports.len());
    }
    Ok(took)
}

/// Runs both sides with `lsp_count` ports over `switches` switches.
pub fn run(lsp_count: u32, switches: u32) -> anyhow::Result<OvnReport> {
    let subnets = subnets(switches)?;
    let ports = ports(&subnets, lsp_count);
    let base = ovn::build(
        &subnets,
        &BTreeMap::new(),
        std::iter::empty(),
        &ovn::Isolation::default(),
    );
    let full = ovn::build(
        &subnets,
        &BTreeMap::new(),
        ports.clone(),
        &ovn::Isolation::default(),
    );
    // Each switch also has its router's port.
    let expected = ports.len() + subnets.len();
    eprintln!("sidelane: {lsp_count} ports over {switches} switches...");
    let (sidelane_s, resync_after_restart_s) = sidelane(base, full, expected)?;
    eprintln!("ovn-nbctl: {lsp_count} calls...");
    let ovn_nbctl_s = nbctl(&subnets, &ports)?;
    eprintln!("ovn-nbctl, batched...");
    let ovn_nbctl_batched_s = nbctl_batched(&subnets, &ports)?;
    eprintln!("the Python IDL, one transaction...");
    let python_idl_s = python_idl(&subnets, &ports)?;
    Ok(OvnReport {
        lsp_count,
        switches,
        sidelane_s,
        ovn_nbctl_s,
        ovn_nbctl_batched_s,
        python_idl_s,
        speedup_vs_best_peer: ovn_nbctl_batched_s.min(python_idl_s) / sidelane_s,
        speedup: ovn_nbctl_s / sidelane_s,
        lsp_per_s: f64::from(lsp_count) / sidelane_s,
        resync_after_restart_s,
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

/// The table printed after the run.
pub fn table(r: &OvnReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<24} {:>14}  target", "figure", "value");
    let _ = writeln!(out, "{:<24} {:>14}", "lsp_count", r.lsp_count);
    let _ = writeln!(out, "{:<24} {:>14}", "switches", r.switches);
    let _ = writeln!(out, "{:<24} {:>14.3}", "sidelane_s", r.sidelane_s);
    let _ = writeln!(out, "{:<24} {:>14.3}", "ovn_nbctl_s", r.ovn_nbctl_s);
    let _ = writeln!(
        out,
        "{:<24} {:>14.3}",
        "ovn_nbctl_batched_s", r.ovn_nbctl_batched_s
    );
    let _ = writeln!(out, "{:<24} {:>14.3}", "python_idl_s", r.python_idl_s);
    let _ = writeln!(out, "{:<24} {:>14.1}  >= 20", "speedup", r.speedup);
    let _ = writeln!(
        out,
        "{:<24} {:>14.2}  >= 2",
        "speedup_vs_best_peer", r.speedup_vs_best_peer
    );
    let _ = writeln!(out, "{:<24} {:>14.0}  >= 2,000", "lsp_per_s", r.lsp_per_s);
    let _ = writeln!(
        out,
        "{:<24} {:>14.3}",
        "resync_after_restart_s", r.resync_after_restart_s
    );
    out
}
