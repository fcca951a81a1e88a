//! `cargo xtask bench ipam`: the IPAM core's speed and memory.
//!
//! Core: one /8 pool (10.0.0.0/8, gateway 10.0.0.1); 1,000,000 random allocations, each timed,
//! then 1,000,000 releases. `bytes_per_ip` is the pool's live heap (counted by the benchmark
//! binary's allocator) divided by the addresses it holds at the peak.
//!
//! The burst figures (2,000 annotated pods against the API double, creation to annotation) need
//! the controller's reconcile loop; until it lands they are `null` in the report and the table
//! says so.

use std::{fmt::Write as _, fs, hint::black_box, net::IpAddr, path::Path, time::Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use sidelane_controller::ipam::pool::{OwnerId, Pool};

use super::memory::live_bytes;
use crate::ping::percentile;

/// `target/bench/ipam.json`.
#[derive(Debug, Serialize)]
pub struct IpamReport {
    /// Allocations per second (1,000,000 in a /8).
    pub core_allocs_per_s: f64,
    /// 99th percentile of one allocation, µs.
    pub core_p99_us: f64,
    /// Releases per second.
    pub core_releases_per_s: f64,
    /// Pool heap bytes per held address at 1,000,000 held.
    pub bytes_per_ip: f64,
    /// Pods in the burst.
    pub burst_pods: u32,
    /// Median creation-to-annotation, ms (`null` until the controller lands).
    pub burst_p50_ms: Option<f64>,
    /// 99th percentile creation-to-annotation, ms.
    pub burst_p99_ms: Option<f64>,
    /// Addresses held twice, counted after the runs.
    pub duplicates: u64,
    /// The controller's resident memory after the burst, MiB.
    pub controller_rss_mb: Option<f64>,
}

/// Runs the core figures over `n` addresses.
pub fn run(n: u32) -> anyhow::Result<IpamReport> {
    let network = "10.0.0.0/8".parse().context("the /8")?;
    let gateway: IpAddr = "10.0.0.1".parse().context("the gateway")?;
    let before = live_bytes();
    let mut pool = Pool::new(network, Some(gateway), &[]);
    let mut samples = Vec::with_capacity(n as usize);
    let mut held = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let ip = pool.allocate(OwnerId(i)).context("allocating")?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        held.push(black_box(ip));
    }
    let alloc_s = start.elapsed().as_secs_f64();
    // The samples and the held list are the benchmark's, not the pool's.
    let pool_bytes = live_bytes()
        .saturating_sub(before)
        .saturating_sub(samples.capacity() * size_of::<f64>())
        .saturating_sub(held.capacity() * size_of::<IpAddr>());
    let mut sorted = held.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let duplicates = (held.len() - sorted.len()) as u64;
    if pool.used() != u64::from(n) {
        bail!("the pool holds {} addresses, not {n}", pool.used());
    }
    let start = Instant::now();
    for (i, ip) in held.iter().enumerate() {
        let owner = OwnerId(u32::try_from(i).context("owner")?);
        pool.release(*ip, owner).context("releasing")?;
    }
    let release_s = start.elapsed().as_secs_f64();
    samples.sort_by(f64::total_cmp);
    Ok(IpamReport {
        core_allocs_per_s: f64::from(n) / alloc_s,
        core_p99_us: percentile(&samples, 99.0).unwrap_or(f64::NAN),
        core_releases_per_s: f64::from(n) / release_s,
        #[expect(clippy::cast_precision_loss, reason = "heap bytes far below 2^52")]
        bytes_per_ip: pool_bytes as f64 / f64::from(n),
        burst_pods: 2000,
        burst_p50_ms: None,
        burst_p99_ms: None,
        duplicates,
        controller_rss_mb: None,
    })
}

/// The table printed after a run.
pub fn table(r: &IpamReport) -> String {
    let mut out = String::new();
    let opt =
        |v: Option<f64>| v.map_or_else(|| "not yet (controller)".to_owned(), |v| format!("{v:.1}"));
    let _ = writeln!(out, "{:<24} {:>20}  target", "figure", "value");
    let _ = writeln!(
        out,
        "{:<24} {:>20.0}  >= 1,000,000",
        "core_allocs_per_s", r.core_allocs_per_s
    );
    let _ = writeln!(out, "{:<24} {:>20.3}", "core_p99_us", r.core_p99_us);
    let _ = writeln!(
        out,
        "{:<24} {:>20.0}",
        "core_releases_per_s", r.core_releases_per_s
    );
    let _ = writeln!(
        out,
        "{:<24} {:>20.1}  <= 64",
        "bytes_per_ip", r.bytes_per_ip
    );
    let _ = writeln!(
        out,
        "{:<24} {:>20}  <= 2,000",
        "burst_p99_ms",
        opt(r.burst_p99_ms)
    );
    let _ = writeln!(out, "{:<24} {:>20}", "burst_p50_ms", opt(r.burst_p50_ms));
    let _ = writeln!(out, "{:<24} {:>20}  = 0", "duplicates", r.duplicates);
    out
}

/// Writes `report` as pretty JSON to `path`.
pub fn write_report(report: &IpamReport, path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
