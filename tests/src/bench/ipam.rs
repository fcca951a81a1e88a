//! `cargo xtask bench ipam`: the IPAM core's speed and memory.
//!
//! Core: one /8 pool (10.0.0.0/8, gateway 10.0.0.1); 1,000,000 random allocations, each timed,
//! then 1,000,000 releases. `bytes_per_ip` is the pool's live heap (counted by the benchmark
//! binary's allocator) divided by the addresses it holds at the peak.
//!
//! Burst: the `sidelane-controller` binary (release build, its own process) leads against the
//! API double; 2,000 pods naming the seed's macvlan NAD are created by 32 concurrent clients,
//! and each pod is timed from the start of its create request to the moment a watch sees its
//! `allocated` annotation. Duplicates are counted over every annotated address; the
//! controller's resident memory is read from `/proc` after the burst.

use std::{
    fmt::Write as _,
    fs,
    hint::black_box,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

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
    /// Median creation-to-annotation, ms.
    pub burst_p50_ms: Option<f64>,
    /// 99th percentile creation-to-annotation, ms.
    pub burst_p99_ms: Option<f64>,
    /// Addresses held twice, counted after the runs.
    pub duplicates: u64,
    /// The controller's resident memory after the burst, MiB.
    pub controller_rss_mb: Option<f64>,
    /// The burst end to end through the real Multus, Sidelane beside whereabouts.
    pub real_burst: Vec<super::real_burst::RealBurst>,
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
        burst_pods: 0,
        burst_p50_ms: None,
        burst_p99_ms: None,
        real_burst: Vec::new(),
        duplicates,
        controller_rss_mb: None,
    })
}

/// What the burst measured.
#[derive(Debug)]
pub struct Burst {
    /// Pods created.
    pub pods: u32,
    /// Median creation-to-annotation, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Addresses annotated on more than one pod.
    pub duplicates: u64,
    /// The controller's resident memory after the burst, MiB.
    pub controller_rss_mb: f64,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr().context("its address")?.port())
}

fn ready(port: u16) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200")
}

/// Runs the burst with `n` pods against the controller binary at `controller`.
#[expect(
    clippy::too_many_lines,
    reason = "one measurement, set up, run and read in order"
)]
pub fn burst(n: u32, controller: &Path) -> anyhow::Result<Burst> {
    use std::{collections::HashMap, sync::Arc};

    use futures::StreamExt as _;
    use k8s_openapi::api::core::v1::Pod;
    use kube::{
        Api,
        api::PostParams,
        runtime::{WatchStreamExt as _, watcher},
    };
    use serde_json::json;
    use tokio::sync::Mutex;

    let api = crate::control_plane::SidelaneCluster::start_with(
        crate::control_plane::Options::default(),
    )?;
    // The controller runs as the chart's controller ServiceAccount.
    let kubeconfig = api.controller_kubeconfig().to_owned();
    api.seed(
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "macvlan", "namespace": "default"},
        "spec": {"config": r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0",
            "mode": "bridge", "ipam": {"type": "kube-ovn", "provider": "macvlan.default"}}"#}}),
    )
    .map_err(|e| anyhow::anyhow!("seeding the NAD: {e}"))?;
    api.seed(
        json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "macvlan"},
        "spec": {"protocol": "IPv4", "provider": "macvlan.default", "cidrBlock": "172.17.0.0/16",
                 "gateway": "172.17.0.1", "excludeIps": ["172.17.0.1..172.17.0.10"]}}),
    )
    .map_err(|e| anyhow::anyhow!("seeding the Subnet: {e}"))?;
    let port = free_port()?;
    let mut cmd = std::process::Command::new(controller);
    cmd.args([
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--identity",
        "bench",
        "--lease-namespace",
        crate::control_plane::SIDELANE_NAMESPACE,
    ])
    .env("KUBECONFIG", &kubeconfig)
    .env("RUST_LOG", "warn")
    .stdout(std::process::Stdio::null());
    let mut child = crate::process::Background::spawn(&mut cmd)?;
    let start = Instant::now();
    while !ready(port) {
        if !child.is_running() {
            bail!("sidelane-controller exited before it was ready");
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("sidelane-controller was not ready within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime = tokio::runtime::Runtime::new().context("a tokio runtime")?;
    let client = runtime.block_on(async { api.client() });
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let annotated: Arc<Mutex<HashMap<String, (Instant, String)>>> = Arc::default();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let watch = {
        let pods = pods.clone();
        let annotated = Arc::clone(&annotated);
        runtime.spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(Ok(pod)) = stream.next().await {
                let a = pod.metadata.annotations.unwrap_or_default();
                if a.get("macvlan.default.kubernetes.io/allocated")
                    .map(String::as_str)
                    == Some("true")
                {
                    let name = pod.metadata.name.unwrap_or_default();
                    let ip = a
                        .get("macvlan.default.kubernetes.io/ip_address")
                        .cloned()
                        .unwrap_or_default();
                    annotated
                        .lock()
                        .await
                        .entry(name)
                        .or_insert((Instant::now(), ip));
                }
            }
        })
    };
    runtime.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let mut clients = Vec::new();
        for _ in 0..32 {
            let (pods, created, next) = (pods.clone(), Arc::clone(&created), Arc::clone(&next));
            clients.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        return Ok::<(), anyhow::Error>(());
                    }
                    let name = format!("burst-{i}");
                    let pod: Pod = serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "default",
                            "annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan"}},
                        "spec": {"containers": [{"name": "c", "image": "alpine"}]}
                    }))?;
                    created.lock().await.insert(name.clone(), Instant::now());
                    pods.create(&PostParams::default(), &pod).await?;
                }
            }));
        }
        for c in clients {
            c.await.context("a creating client")??;
        }
        let deadline = Instant::now() + Duration::from_mins(2);
        while annotated.lock().await.len() < n as usize {
            if Instant::now() > deadline {
                bail!(
                    "only {} of {n} pods were annotated within 2 minutes",
                    annotated.lock().await.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })?;
    watch.abort();
    let controller_rss_mb = crate::usage::rss_mib(child.id()).unwrap_or(f64::NAN);
    drop(child);
    let created = runtime.block_on(async { created.lock().await.clone() });
    let annotated = runtime.block_on(async { annotated.lock().await.clone() });
    let mut samples: Vec<f64> = annotated
        .iter()
        .filter_map(|(name, (at, _))| {
            created
                .get(name)
                .map(|c| at.saturating_duration_since(*c).as_secs_f64() * 1e3)
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    let mut ips: Vec<&String> = annotated.values().map(|(_, ip)| ip).collect();
    let total = ips.len();
    ips.sort();
    ips.dedup();
    Ok(Burst {
        pods: n,
        p50_ms: percentile(&samples, 50.0).unwrap_or(f64::NAN),
        p99_ms: percentile(&samples, 99.0).unwrap_or(f64::NAN),
        duplicates: (total - ips.len()) as u64,
        controller_rss_mb,
    })
}

/// The core figures, the burst, and the burst through Multus of `real_n` pods per IPAM, in one
/// report.
pub fn run_all(
    core_n: u32,
    burst_n: u32,
    real_n: usize,
    controller: &Path,
) -> anyhow::Result<IpamReport> {
    let mut report = run(core_n)?;
    report.real_burst = super::real_burst::run(real_n)?;
    let b = burst(burst_n, controller)?;
    report.burst_pods = b.pods;
    report.burst_p50_ms = Some(b.p50_ms);
    report.burst_p99_ms = Some(b.p99_ms);
    report.duplicates += b.duplicates;
    report.controller_rss_mb = Some(b.controller_rss_mb);
    Ok(report)
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
    let _ = writeln!(out, "{:<24} {:>20}", "burst_pods", r.burst_pods);
    let _ = writeln!(out, "{:<24} {:>20}  = 0", "duplicates", r.duplicates);
    let _ = writeln!(
        out,
        "{:<24} {:>20}",
        "controller_rss_mb",
        opt(r.controller_rss_mb)
    );
    out.push_str(&super::real_burst::table(&r.real_burst));
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
