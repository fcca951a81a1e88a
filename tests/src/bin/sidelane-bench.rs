//! `sidelane-bench`: Sidelane's benchmarks, run by `cargo xtask bench <name>` (as root).
//!
//! `sidelane-bench <name> [--quick]` writes `target/bench/<name>.json` and prints a table;
//! `scale` also draws its plots beside the JSON.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use sidelane_tests::{
    bandwidth_plugin::KUBERNETES_DEFAULT_BURST_BITS,
    bench::{self, qos},
    privilege,
};

#[derive(Debug, Parser)]
#[command(about = "Sidelane's benchmarks (need root: they build namespaces and load eBPF)")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Rate-limit accuracy, first-second overshoot, latency under load and per-packet cost of
    /// Sidelane's QoS programs, against the reference CNI `bandwidth` plugin.
    Qos(QosArgs),
    /// CNI ADD and DEL latency: Sidelane (OVN-backed and IPAM under macvlan) against the
    /// reference bridge plugin with host-local IPAM.
    Cni(CniArgs),
    /// The IPAM core: allocations per second, latency and heap bytes per address in a /8.
    Ipam(IpamArgs),
    /// OVN Northbound programming: Sidelane's reconciler against batched ovn-nbctl and OVS's
    /// Python IDL, from 1,000 to 50,000 ports.
    Ovn(OvnArgs),
    /// The same-node fast path against a bare veth pair and against OVS.
    Fastpath(FastpathArgs),
    /// NAT gateways: SNAT and DNAT against no NAT and against Kube-OVN's gateway pod.
    Nat(NatArgs),
    /// How cost grows: IPAM latency by Subnet size and held share, Northbound time and heap by
    /// ports, the whole ADD and the agent's memory by attachments on the node, QoS accuracy by
    /// rate; JSON and SVG plots.
    Scale(ScaleArgs),
}

#[derive(Debug, Args)]
struct ScaleArgs {
    /// A reduced set of each sweep (about two minutes).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/scale.json]; the plots
    /// go beside it.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct NatArgs {
    /// 3 rounds of 2 s instead of 5 of 5 s.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/nat.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FastpathArgs {
    /// 2 s runs and 100 pings instead of 10 s and 1,000 (about a minute).
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/fastpath.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct OvnArgs {
    /// 1,000 and 5,000 ports instead of the whole sweep (1,000, 5,000, 20,000 and 50,000).
    #[arg(long)]
    quick: bool,
    /// Only this many ports (a hundred per switch), to look at one size.
    #[arg(long, conflicts_with = "quick")]
    ports: Option<u32>,
    /// Sidelane alone, without the peers (their figures are null): to look at where its time
    /// goes, not to compare.
    #[arg(long)]
    sidelane_only: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/ovn.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IpamArgs {
    /// 100,000 addresses, 200 pods and 200 pods per IPAM through Multus, instead of 1,000,000,
    /// 2,000 and 1,000.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/ipam.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Counts live heap bytes for the IPAM benchmark's `bytes_per_ip`.
#[global_allocator]
static ALLOC: bench::memory::Counting = bench::memory::Counting;

#[derive(Debug, Args)]
struct CniArgs {
    /// 20 attachments per plugin instead of 200.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/cni.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct QosArgs {
    /// A reduced set (100 Mbit/s, 3 s runs) that finishes in under a minute.
    #[arg(long)]
    quick: bool,
    /// Where to write the JSON report [default: <workspace>/target/bench/qos.json].
    #[arg(long)]
    output: Option<PathBuf>,
    /// The burst, in bits, given to the `bandwidth` plugin. The default is what containerd and
    /// CRI-O pass for the `kubernetes.io/*-bandwidth` annotations (math.MaxUint32).
    #[arg(long, default_value_t = KUBERNETES_DEFAULT_BURST_BITS)]
    plugin_burst_bits: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    privilege::check().context("sidelane-bench")?;
    match cli.bench {
        Bench::Qos(args) => run_qos(&args),
        Bench::Cni(args) => run_cni(&args),
        Bench::Ipam(args) => run_ipam(&args),
        Bench::Ovn(args) => run_ovn(&args),
        Bench::Fastpath(args) => run_fastpath(&args),
        Bench::Nat(args) => run_nat(&args),
        Bench::Scale(args) => run_scale(&args),
    }
}

fn run_scale(args: &ScaleArgs) -> anyhow::Result<()> {
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("scale"));
    let dir = path
        .parent()
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
    let report = bench::scale::run(bench::scale::ScaleOptions { quick: args.quick }, &dir)?;
    bench::scale::write_report(&report, &path)?;
    print!("{}", bench::scale::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_ipam(args: &IpamArgs) -> anyhow::Result<()> {
    let controller = std::env::current_exe()
        .context("finding the benchmark's own path")?
        .with_file_name("sidelane-controller");
    let report = bench::ipam::run_all(
        if args.quick { 100_000 } else { 1_000_000 },
        if args.quick { 200 } else { 2000 },
        if args.quick { 200 } else { 1000 },
        &controller,
    )?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("ipam"));
    bench::ipam::write_report(&report, &path)?;
    print!("{}", bench::ipam::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_cni(args: &CniArgs) -> anyhow::Result<()> {
    let report = bench::cni::run(if args.quick { 20 } else { 200 })?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("cni"));
    bench::cni::write_report(&report, &path)?;
    print!("{}", bench::cni::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_qos(args: &QosArgs) -> anyhow::Result<()> {
    let report = qos::run(&qos::QosBenchOptions {
        quick: args.quick,
        plugin_burst_bits: args.plugin_burst_bits,
    })?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("qos"));
    qos::write_report(&report, &path)?;
    print!("{}", qos::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_ovn(args: &OvnArgs) -> anyhow::Result<()> {
    let sizes = &bench::ovn::SIZES;
    let peers = !args.sidelane_only;
    let report = if args.quick {
        bench::ovn::run(&sizes[..2], peers)?
    } else if let Some(ports) = args.ports {
        bench::ovn::run(&[(ports, (ports / 100).max(1))], peers)?
    } else {
        bench::ovn::run(sizes, peers)?
    };
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("ovn"));
    bench::ovn::write_report(&report, &path)?;
    print!("{}", bench::ovn::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_nat(args: &NatArgs) -> anyhow::Result<()> {
    let report = bench::nat::run(args.quick)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("nat"));
    bench::nat::write_report(&report, &path)?;
    print!("{}", bench::nat::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}

fn run_fastpath(args: &FastpathArgs) -> anyhow::Result<()> {
    let report = bench::fastpath::run(args.quick)?;
    let path = args
        .output
        .clone()
        .unwrap_or_else(|| bench::default_report_path("fastpath"));
    bench::fastpath::write_report(&report, &path)?;
    print!("{}", bench::fastpath::table(&report));
    println!("\nreport: {}", path.display());
    Ok(())
}
