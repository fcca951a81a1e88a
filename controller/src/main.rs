//! `sidelane-controller`: attachment IPAM for the cluster. Thin: arguments, logging, leader
//! election, then the library.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;
use sidelane_controller::{
    leader::{self, LeaseConfig},
    metrics::Metrics,
    run::{self, Options},
};
use tokio::sync::watch;

/// mimalloc: the Northbound reconciler and the watches build and drop many small JSON trees;
/// glibc's per-thread arenas spent a quarter of a 20,000-port reconcile in `malloc` and page
/// faults (`cargo xtask bench ovn` measures with the same allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "Sidelane's controller: addresses and MACs for pods' secondary interfaces")]
struct Args {
    /// Manage only attachments (net1..netN), never the pod's primary interface. Sidelane runs
    /// beside Cilium, Calico or Flannel: this is its only mode.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    non_primary_cni_mode: bool,
    /// Metrics (`/metrics`) and probes (`/healthz`, `/readyz`).
    #[arg(long, default_value = "0.0.0.0:10660")]
    metrics_addr: SocketAddr,
    /// The Lease's namespace [default: the `POD_NAMESPACE` variable, else kube-system].
    #[arg(long)]
    lease_namespace: Option<String>,
    /// The Lease's name.
    #[arg(long, default_value = "sidelane-controller")]
    lease_name: String,
    /// This replica's identity [default: the `POD_NAME` variable, else the host name].
    #[arg(long)]
    identity: Option<String>,
    /// Seconds between garbage collections of allocations whose pod is gone.
    #[arg(long, default_value_t = 60)]
    gc_interval: u64,
    /// Writes to the API in flight at once.
    #[arg(long, default_value_t = 64)]
    write_concurrency: usize,
    /// Lease duration, seconds (renewal deadline and retry period scale with it).
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// The OVN Northbound database (`tcp:<host>:6641`, `ssl:<host>:6641`, `unix:<path>`,
    /// comma-separated for a cluster). Unset: IPAM only, no OVN topology.
    #[arg(long, env = "OVN_NB_DB")]
    ovn_nb_addr: Option<String>,
    /// TLS for `ssl:` Northbound remotes.
    #[command(flatten)]
    tls: sidelane_ovsdb::TlsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    if !args.non_primary_cni_mode {
        bail!(
            "--non-primary-cni-mode=false: Sidelane never manages the primary interface; \
             run it beside the cluster's primary CNI"
        );
    }
    let identity = args
        .identity
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .context("no identity: pass --identity or set POD_NAME")?;
    let namespace = args
        .lease_namespace
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "kube-system".to_owned());
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let metrics = Arc::new(Metrics::new());
    let listener = sidelane_api::probes::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    tokio::spawn(sidelane_api::probes::serve(
        listener,
        Arc::clone(&metrics) as Arc<dyn sidelane_api::probes::Endpoints>,
    ));
    let lease_duration = Duration::from_secs(args.lease_duration.max(1));
    let lease = LeaseConfig {
        lease_duration,
        renew_deadline: lease_duration * 2 / 3,
        retry_period: lease_duration / 7,
        ..LeaseConfig::new(&namespace, &args.lease_name, &identity)
    };
    tracing::info!(identity = %identity, lease = %format!("{namespace}/{}", args.lease_name),
                   metrics = %args.metrics_addr, "starting");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(leader::run(client.clone(), lease, tx));
    let ovn_nb = match args.ovn_nb_addr.as_deref().filter(|a| !a.trim().is_empty()) {
        Some(addr) => {
            let remotes = sidelane_ovsdb::parse_remotes(addr)
                .with_context(|| format!("--ovn-nb-addr {addr:?}"))?;
            let tls = args
                .tls
                .for_remotes(&remotes)
                .with_context(|| format!("--ovn-nb-addr {addr:?}"))?;
            let mut nb = sidelane_ovsdb::Options::new(remotes);
            nb.tls = tls;
            // Against a clustered Northbound database, write to its leader only.
            nb.leader_of = Some(sidelane_controller::nb::NB.to_owned());
            Some(nb)
        }
        None => None,
    };
    let opts = Options {
        ovn_nb,
        gc_interval: Duration::from_secs(args.gc_interval.max(1)),
        write_concurrency: args.write_concurrency,
        instance: identity,
        ..Options::default()
    };
    tokio::select! {
        () = run::lead(client, opts, metrics, rx) => {}
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for a signal")?;
            tracing::info!("stopping");
        }
    }
    Ok(())
}
