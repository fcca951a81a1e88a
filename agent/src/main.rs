//! `sidelane-agent`: the node agent. Serves the CNI socket and enforces rate limits with the
//! eBPF dataplane. Thin: arguments, logging, then the library.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use sidelane_agent::{
    api_server::KubePods,
    attach::{Attacher, DEFAULT_ALLOCATION_TIMEOUT},
    cni_server,
    dataplane::fastpath::FastpathDataplane,
    dataplane::qos::QosDataplane,
    metrics::{self, AttachmentCollector},
    ovs::{DEFAULT_INSTALL_TIMEOUT, Datapath, OvsBridge},
    records::{DEFAULT_STATE_DIR, Records},
};
use sidelane_api::daemon::DEFAULT_SERVER_SOCKET;
use sidelane_ovsdb::Remote;

#[derive(Debug, Parser)]
#[command(about = "Sidelane's node agent (needs root: namespaces, eBPF)")]
struct Args {
    /// The CNI socket (NADs name it in `server_socket`).
    #[arg(long, default_value = DEFAULT_SERVER_SOCKET)]
    socket: PathBuf,
    /// Where the eBPF programs and maps are pinned.
    #[arg(long, default_value = "/sys/fs/bpf/sidelane")]
    pin_root: PathBuf,
    /// Where the agent records the attachments it made (a tmpfs, so a reboot starts clean).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// The namespace that holds the node's side of pod interfaces (veth host ends, OVS), when
    /// it is not the agent's own: a node simulated in a namespace, as the lab runs them.
    #[arg(long)]
    host_netns: Option<PathBuf>,
    /// How long an ADD waits for the controller's allocation, in seconds.
    #[arg(long, default_value_t = DEFAULT_ALLOCATION_TIMEOUT.as_secs())]
    allocation_timeout: u64,
    /// The node's Open_vSwitch database (`unix:<path>`, `tcp:<host>:<port>` or
    /// `ssl:<host>:<port>`), where OVN-backed attachments are plugged into the integration
    /// bridge. `none`: do not plug (a node without OVS serves IPAM-only attachments, and
    /// OVN-backed ones without OVN).
    #[arg(long, default_value = "unix:/run/openvswitch/db.sock")]
    ovs_db: String,
    /// TLS for an `ssl:` Open_vSwitch database.
    #[command(flatten)]
    tls: sidelane_ovsdb::TlsArgs,
    /// The integration bridge.
    #[arg(long, default_value = "br-int")]
    ovs_bridge: String,
    /// The bridge's datapath when the agent creates it: `auto` (`system` where the
    /// openvswitch kernel module is loaded, else `netdev`), `system` or `netdev`. With
    /// `netdev`, veth ends get TX checksum offload off.
    #[arg(long, default_value = "auto")]
    ovs_datapath: Datapath,
    /// Same-node traffic between pods of one logical switch takes the eBPF fast path (a Subnet
    /// can opt out with the annotation `sidelane.io/fastpath: "false"`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fastpath: bool,
    /// Metrics (`/metrics`: fast-path and QoS counters per attachment), `/attachments` (the same
    /// state as JSON, for the `sidelane` command line) and `/healthz`.
    #[arg(long, default_value = "0.0.0.0:10665")]
    metrics_addr: std::net::SocketAddr,
    /// A directory whose files CNI calls may name as the pod's network namespace (repeat the
    /// flag for several; `/proc` stands for `/proc/<pid>/ns/net`). Anything else, and the
    /// node's own namespace, is refused.
    #[arg(long = "netns-dir", default_values_t = sidelane_agent::netns::DEFAULT_NETNS_DIRS.map(String::from))]
    netns_dirs: Vec<String>,
    /// How long an ADD waits for ovn-controller to bind the port, in seconds.
    #[arg(long, default_value_t = DEFAULT_INSTALL_TIMEOUT.as_secs())]
    ovn_install_timeout: u64,
    /// This node's name (the DaemonSet passes `spec.nodeName`): the agent follows the rate
    /// annotations of the pods bound here. Unset: of every pod it attached.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// This node's NIC on the external network of NAT gateways (docs/nat.md): set on gateway
    /// nodes, it is put in `--external-bridge`, mapped in `ovn-bridge-mappings` to
    /// `--external-network`. Unset: this node carries no gateway traffic.
    #[arg(long, env = "SIDELANE_EXTERNAL_NIC")]
    external_nic: Option<String>,
    /// The external network's name: the external Subnet's (Kube-OVN's convention).
    #[arg(long, default_value = "ovn-vpc-external-network")]
    external_network: String,
    /// The provider bridge of the external network.
    #[arg(long, default_value = "br-external")]
    external_bridge: String,
}

/// How often the agent removes the fast-path entries and QoS programs of vanished interfaces.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let dataplane = open_qos(&args.pin_root)?;
    let records = Records::open(&args.state_dir).with_context(|| {
        format!(
            "opening the attachment records under {}",
            args.state_dir.display()
        )
    })?;
    let pods = KubePods::new(client.clone());
    pods.warm().await;
    let mut attacher = Attacher::new(
        pods,
        dataplane,
        records,
        Duration::from_secs(args.allocation_timeout),
    );
    if let Some(netns) = args.host_netns.clone() {
        attacher = attacher.with_host_netns(netns);
    }
    attacher = attacher.with_netns_policy(sidelane_agent::netns::NetnsPolicy::new(
        args.netns_dirs.iter().map(PathBuf::from).collect(),
    ));
    let mut collector = AttachmentCollector::new(
        Records::open(&args.state_dir).context("opening the records for metrics")?,
        args.host_netns.clone(),
    )
    .with_qos(QosDataplane::new(&args.pin_root).with_context(|| {
        format!(
            "opening the QoS dataplane under {} for metrics",
            args.pin_root.display()
        )
    })?);
    if args.fastpath {
        let mut fastpath = FastpathDataplane::open(&args.pin_root)
            .with_context(|| format!("loading the fast path under {}", args.pin_root.display()))?;
        fastpath
            .sweep(args.host_netns.as_deref())
            .context("sweeping fast-path entries of vanished interfaces")?;
        let fastpath = Arc::new(std::sync::Mutex::new(fastpath));
        attacher = attacher.with_fastpath(Arc::clone(&fastpath));
        // Pairs of pods in security groups take the fast path only as the groups allow.
        tokio::spawn(sidelane_agent::security_groups::follow_forever(
            client.clone(),
            Arc::clone(&fastpath) as Arc<dyn sidelane_agent::dataplane::ports::FastpathPorts>,
        ));
        // Pods of two Subnets of one Vpc are routed on the fast path where the Vpc allows it.
        tokio::spawn(sidelane_agent::routes::follow_forever(
            client.clone(),
            Arc::clone(&fastpath) as Arc<dyn sidelane_agent::dataplane::ports::FastpathPorts>,
        ));
        collector = collector.with_fastpath(fastpath);
    }
    let registry =
        Arc::new(metrics::registry(Some(collector)).with_add_times(&attacher.add_times()));
    let listener = sidelane_api::probes::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_addr))?;
    tokio::spawn(sidelane_api::probes::serve(listener, registry));
    if let Some(bridge) = connect_ovs(&args).await? {
        attacher = attacher.with_ovs(Arc::new(bridge));
        if args.external_nic.is_some() {
            announce_gateway(&args, client.clone()).await?;
        }
    }
    let attacher = Arc::new(attacher);
    recover(&attacher).await?;
    // A rate changed on a running pod is applied at once.
    tokio::spawn(sidelane_agent::follow::follow_forever(
        Arc::clone(&attacher),
        client,
        args.node_name.clone(),
    ));
    // Entries and programs of interfaces that vanished without a DEL go soon after.
    let sweeper = Arc::clone(&attacher);
    tokio::spawn(async move { sweep_forever(&sweeper).await });
    let listener = cni_server::bind(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), "serving CNI requests");
    tokio::select! {
        () = cni_server::serve(listener, attacher) => {}
        signal = tokio::signal::ctrl_c() => {
            signal.context("waiting for a signal")?;
            tracing::info!("stopping; limits stay pinned and in force");
        }
    }
    Ok(())
}

/// Opens the QoS dataplane and takes back what a previous agent pinned.
fn open_qos(pin_root: &std::path::Path) -> anyhow::Result<QosDataplane> {
    let dataplane = QosDataplane::new(pin_root)
        .with_context(|| format!("opening the QoS dataplane under {}", pin_root.display()))?;
    let adopted = dataplane
        .adopt()
        .context("adopting pinned QoS attachments")?;
    tracing::info!(
        kept = adopted.kept.len(),
        removed = adopted.removed.len(),
        "adopted QoS attachments"
    );
    for failed in &adopted.failed {
        tracing::warn!(attachment = %failed, "removing a QoS attachment whose interface is gone; the next sweep tries again");
    }
    Ok(dataplane)
}

/// Takes back the recorded attachments (a restarted agent) and says what it found.
async fn recover<P, Q>(attacher: &Attacher<P, Q>) -> anyhow::Result<()>
where
    P: sidelane_agent::pods::PodSource + sidelane_agent::subnets::SubnetSource,
    Q: sidelane_agent::attach::QosPort,
{
    let recovered = attacher
        .recover()
        .await
        .context("taking back the recorded attachments")?;
    tracing::info!(
        kept = recovered.kept.len(),
        removed = recovered.removed.len(),
        unreadable = recovered.unreadable.len(),
        "took back recorded attachments"
    );
    for bad in &recovered.unreadable {
        tracing::warn!(record = %bad, "an attachment record cannot be read; left in place");
    }
    Ok(())
}

/// The node's `br-int`, unless `--ovs-db none`.
async fn connect_ovs(args: &Args) -> anyhow::Result<Option<OvsBridge>> {
    if args.ovs_db == "none" {
        tracing::warn!("--ovs-db none: OVN-backed attachments are not plugged into OVS");
        return Ok(None);
    }
    let remote: Remote = args
        .ovs_db
        .parse()
        .with_context(|| format!("--ovs-db {:?}", args.ovs_db))?;
    let tls = args
        .tls
        .for_remotes(std::slice::from_ref(&remote))
        .with_context(|| format!("--ovs-db {:?}", args.ovs_db))?;
    let bridge = OvsBridge::connect(
        remote,
        tls,
        &args.ovs_bridge,
        args.ovs_datapath,
        Duration::from_secs(args.ovn_install_timeout),
    )
    .await
    .with_context(|| format!("opening the Open_vSwitch database at {}", args.ovs_db))?;
    if let Some(nic) = &args.external_nic {
        bridge
            .provide_external(&args.external_network, &args.external_bridge, nic)
            .await
            .with_context(|| format!("--external-nic {nic:?}"))?;
    }
    Ok(Some(bridge))
}

/// Labels this node as carrying the external network, so NAT gateways may use it.
async fn announce_gateway(args: &Args, client: kube::Client) -> anyhow::Result<()> {
    let Some(node) = &args.node_name else {
        tracing::warn!(
            "--external-nic without --node-name: NAT gateways cannot pick this node (its Node is not labelled)"
        );
        return Ok(());
    };
    sidelane_agent::gateway_node::announce(client, node, &args.external_network)
        .await
        .with_context(|| format!("labelling Node {node} as a gateway node"))
}

/// Every [`SWEEP_INTERVAL`], the fast-path entries and QoS programs of vanished interfaces go.
async fn sweep_forever<P, Q>(attacher: &Attacher<P, Q>)
where
    P: sidelane_agent::pods::PodSource + sidelane_agent::subnets::SubnetSource,
    Q: sidelane_agent::attach::QosPort,
{
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        attacher.sweep_vanished().await;
    }
}
