//! The agent's metrics (Prometheus text format) and attachment state (JSON) on one HTTP port:
//! `/metrics`, `/attachments` and `/healthz`.
//!
//! Per attachment (labels `namespace`, `pod`, `interface` in the pod, `host_interface`: the host
//! end of an OVN-backed veth, empty for an IPAM-only interface), read from the per-CPU maps at
//! each scrape:
//! - the fast path (OVN-backed attachments, when it runs): `sidelane_agent_fastpath_hits_total`,
//!   `..._hit_bytes_total`, `..._misses_total` (handed to OVS), `..._spoofed_total` (for a
//!   local pod but not from the sender's own MAC and address: never fast-pathed) and
//!   `..._isolated_total` (between pods in security groups whose traffic OVN does not pass
//!   whole: handed to OVS, whose ACLs decide), `..._routed_total` (of the hits, frames routed
//!   between Subnets of a Vpc) and `..._expired_total` (routed frames whose TTL would expire:
//!   handed to OVS, whose router answers);
//! - QoS (attachments with a limit), with a `direction` label (`ingress`: into the pod):
//!   `sidelane_agent_qos_limit_bits_per_second` (0: unlimited, counted only),
//!   `..._passed_packets_total`, `..._passed_bytes_total`, `..._dropped_packets_total`,
//!   `..._dropped_bytes_total` (IP bytes).
//!
//! Where ADDs spend their time: `sidelane_agent_add_step_seconds_total{step}` and
//! `sidelane_agent_add_steps_total{step}` (steps `allocation`, `record`, `links`, `fastpath`,
//! `ovs_port`, `ovn_installed`, `qos`), and `sidelane_agent_add_duration_seconds`.
//!
//! `/attachments` answers the same state as JSON: what the `sidelane` command line shows.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use sidelane_agent_common::fastpath::FastpathCounters;
use sidelane_api::{probes::Endpoints, qos::Direction};
use tracing::warn;

use crate::{
    dataplane::{
        fastpath::FastpathDataplane,
        qos::{AttachmentStatus, DirectionStatus, Placement, QosDataplane, QosTarget},
    },
    records::{AttachmentKind, AttachmentRecord, Records},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachmentLabels {
    namespace: String,
    pod: String,
    interface: String,
    host_interface: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    namespace: String,
    pod: String,
    interface: String,
    host_interface: String,
    direction: String,
}

/// The fast path's counters of one attachment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FastpathView {
    /// Frames forwarded on the fast path.
    pub hits: u64,
    /// Their bytes.
    pub hit_bytes: u64,
    /// Frames handed to OVS.
    pub misses: u64,
    /// Frames whose source MAC or IP was not the sender's own.
    pub spoofed: u64,
    /// Frames to or from a pod in a security group that OVN does not pass whole.
    #[serde(default)]
    pub isolated: u64,
    /// Of the hits, frames routed between Subnets of a Vpc.
    #[serde(default)]
    pub routed: u64,
    /// Routed frames whose TTL or hop limit would expire (handed to OVS).
    #[serde(default)]
    pub expired: u64,
}

/// One direction of an attachment's QoS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosDirectionView {
    /// The configured rate in Mbit/s (0: unlimited, counted only).
    pub rate_mbps: u64,
    /// `police`, `edt` or `unlimited`.
    pub mode: String,
    /// The effective burst (police) or horizon (EDT) in bytes.
    pub burst_bytes: u64,
    /// Packets passed.
    pub passed_packets: u64,
    /// IP bytes passed.
    pub passed_bytes: u64,
    /// Packets dropped by the limit.
    pub dropped_packets: u64,
    /// IP bytes dropped by the limit.
    pub dropped_bytes: u64,
}

impl From<&DirectionStatus> for QosDirectionView {
    fn from(d: &DirectionStatus) -> QosDirectionView {
        QosDirectionView {
            rate_mbps: d.limit.rate_mbps,
            mode: d.mode.as_str().to_owned(),
            burst_bytes: d.burst_bytes,
            passed_packets: d.passed_packets,
            passed_bytes: d.passed_bytes,
            dropped_packets: d.dropped_packets,
            dropped_bytes: d.dropped_bytes,
        }
    }
}

/// An attachment's QoS, both directions named from the pod's side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QosView {
    /// Traffic into the pod.
    pub ingress: QosDirectionView,
    /// Traffic out of the pod.
    pub egress: QosDirectionView,
}

impl From<&AttachmentStatus> for QosView {
    fn from(s: &AttachmentStatus) -> QosView {
        QosView {
            ingress: (&s.ingress).into(),
            egress: (&s.egress).into(),
        }
    }
}

/// One attachment as `/attachments` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The interface inside the pod.
    pub interface: String,
    /// The provider.
    pub provider: String,
    /// The runtime's container ID.
    pub container_id: String,
    /// `ovn` (a veth plugged into OVS) or `ipam` (another plugin's interface).
    pub kind: String,
    /// The host end of an OVN-backed veth; empty for IPAM-only.
    pub host_interface: String,
    /// The fast path's counters, when it runs and the attachment is OVN-backed.
    pub fastpath: Option<FastpathView>,
    /// The QoS limits and counters, when the attachment has programs attached.
    pub qos: Option<QosView>,
}

/// Reads the state of every recorded attachment: fast-path counters (when the fast path runs)
/// and QoS limits and counters.
pub struct AttachmentCollector {
    records: Records,
    fastpath: Option<Arc<Mutex<FastpathDataplane>>>,
    qos: Option<QosDataplane>,
    host_netns: Option<PathBuf>,
}

impl std::fmt::Debug for AttachmentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentCollector")
            .field("records", &self.records.dir())
            .field("fastpath", &self.fastpath.is_some())
            .field("qos", &self.qos.is_some())
            .finish_non_exhaustive()
    }
}

impl AttachmentCollector {
    /// A collector over these records; the pods' host ends live in `host_netns` (`None`: the
    /// agent's own namespace).
    pub fn new(records: Records, host_netns: Option<PathBuf>) -> AttachmentCollector {
        AttachmentCollector {
            records,
            fastpath: None,
            qos: None,
            host_netns,
        }
    }

    /// Also reads the fast path's counters.
    #[must_use]
    pub fn with_fastpath(mut self, fastpath: Arc<Mutex<FastpathDataplane>>) -> AttachmentCollector {
        self.fastpath = Some(fastpath);
        self
    }

    /// Also reads the QoS programs' limits and counters.
    #[must_use]
    pub fn with_qos(mut self, qos: QosDataplane) -> AttachmentCollector {
        self.qos = Some(qos);
        self
    }

    /// The state of every recorded attachment now, sorted by pod and interface.
    pub fn snapshot(&self) -> Vec<AttachmentView> {
        let Ok(listing) = self.records.list() else {
            return Vec::new();
        };
        let mut views: Vec<AttachmentView> = listing.records.iter().map(|r| self.view(r)).collect();
        views.sort_by(|a, b| {
            (&a.namespace, &a.pod, &a.interface).cmp(&(&b.namespace, &b.pod, &b.interface))
        });
        views
    }

    fn view(&self, r: &AttachmentRecord) -> AttachmentView {
        let (kind, host_interface, target) = match &r.kind {
            AttachmentKind::Ovn { host_ifname } => (
                "ovn",
                host_ifname.clone(),
                QosTarget {
                    netns: self.host_netns.clone(),
                    ifname: host_ifname.clone(),
                    placement: Placement::HostPeer,
                },
            ),
            AttachmentKind::Ipam => (
                "ipam",
                String::new(),
                QosTarget {
                    netns: Some(r.netns.clone()),
                    ifname: r.ifname.clone(),
                    placement: Placement::PodDevice,
                },
            ),
        };
        let fastpath = match (&self.fastpath, &r.kind) {
            (Some(fp), AttachmentKind::Ovn { host_ifname }) => fp
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .counters(self.host_netns.as_deref(), host_ifname)
                .ok()
                .map(|c: FastpathCounters| FastpathView {
                    hits: c.hits,
                    hit_bytes: c.hit_bytes,
                    misses: c.misses,
                    spoofed: c.spoofed,
                    isolated: c.isolated,
                    routed: c.routed,
                    expired: c.expired,
                }),
            _ => None,
        };
        // No programs attached (no limit was ever set) reads as an error: no QoS to show.
        let qos = self
            .qos
            .as_ref()
            .and_then(|q| q.status(&target).ok())
            .map(|s| QosView::from(&s));
        AttachmentView {
            namespace: r.pod_namespace.clone(),
            pod: r.pod_name.clone(),
            interface: r.ifname.clone(),
            provider: r.provider.clone(),
            container_id: r.container_id.clone(),
            kind: kind.to_owned(),
            host_interface,
            fastpath,
            qos,
        }
    }
}

fn labels(v: &AttachmentView) -> AttachmentLabels {
    AttachmentLabels {
        namespace: v.namespace.clone(),
        pod: v.pod.clone(),
        interface: v.interface.clone(),
        host_interface: v.host_interface.clone(),
    }
}

fn direction_labels(v: &AttachmentView, d: Direction) -> DirectionLabels {
    DirectionLabels {
        namespace: v.namespace.clone(),
        pod: v.pod.clone(),
        interface: v.interface.clone(),
        host_interface: v.host_interface.clone(),
        direction: d.as_str().to_owned(),
    }
}

/// The fast path's counter families, one series per attachment on it.
fn encode_fastpath(
    encoder: &mut DescriptorEncoder<'_>,
    views: &[AttachmentView],
) -> Result<(), std::fmt::Error> {
    type Field = fn(&FastpathView) -> u64;
    let families: [(&str, &str, Field); 7] = [
        ("fastpath_hits", "Frames forwarded on the fast path", |c| {
            c.hits
        }),
        (
            "fastpath_hit_bytes",
            "Bytes forwarded on the fast path",
            |c| c.hit_bytes,
        ),
        ("fastpath_misses", "Frames handed to OVS", |c| c.misses),
        (
            "fastpath_spoofed",
            "Frames for a local pod whose source MAC or IP was not the sender's own (never fast-pathed)",
            |c| c.spoofed,
        ),
        (
            "fastpath_isolated",
            "Frames to or from a pod in a security group whose traffic OVN does not pass whole (handed to OVS)",
            |c| c.isolated,
        ),
        (
            "fastpath_routed",
            "Of the frames forwarded on the fast path, those routed between Subnets of a Vpc",
            |c| c.routed,
        ),
        (
            "fastpath_expired",
            "Routed frames whose TTL or hop limit would expire (handed to OVS, whose router answers)",
            |c| c.expired,
        ),
    ];
    for (name, help, field) in families {
        let probe = ConstCounter::new(0u64);
        let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
        for v in views {
            if let Some(c) = &v.fastpath {
                ConstCounter::new(field(c)).encode(family.encode_family(&labels(v))?)?;
            }
        }
    }
    Ok(())
}

impl Collector for AttachmentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        type QosField = fn(&QosDirectionView) -> u64;
        let views = self.snapshot();
        if self.fastpath.is_some() {
            encode_fastpath(&mut encoder, &views)?;
        }
        if self.qos.is_some() {
            let probe = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "qos_limit_bits_per_second",
                "The configured rate limit (0: unlimited, counted only)",
                None,
                probe.metric_type(),
            )?;
            for v in &views {
                let Some(q) = &v.qos else { continue };
                for (d, dv) in [
                    (Direction::Ingress, &q.ingress),
                    (Direction::Egress, &q.egress),
                ] {
                    let bps =
                        i64::try_from(dv.rate_mbps.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
                    ConstGauge::new(bps).encode(family.encode_family(&direction_labels(v, d))?)?;
                }
            }
            let families: [(&str, &str, QosField); 4] = [
                (
                    "qos_passed_packets",
                    "Packets passed by the rate limit",
                    |d| d.passed_packets,
                ),
                (
                    "qos_passed_bytes",
                    "IP bytes passed by the rate limit",
                    |d| d.passed_bytes,
                ),
                (
                    "qos_dropped_packets",
                    "Packets dropped by the rate limit",
                    |d| d.dropped_packets,
                ),
                (
                    "qos_dropped_bytes",
                    "IP bytes dropped by the rate limit",
                    |d| d.dropped_bytes,
                ),
            ];
            for (name, help, field) in families {
                let probe = ConstCounter::new(0u64);
                let mut family =
                    encoder.encode_descriptor(name, help, None, probe.metric_type())?;
                for v in &views {
                    let Some(q) = &v.qos else { continue };
                    for (d, dv) in [
                        (Direction::Ingress, &q.ingress),
                        (Direction::Egress, &q.egress),
                    ] {
                        ConstCounter::new(field(dv))
                            .encode(family.encode_family(&direction_labels(v, d))?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The agent's registry and the collector behind it (shared with `/attachments`).
pub struct AgentMetrics {
    registry: Registry,
    attachments: Option<Arc<AttachmentCollector>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

/// Forwards to a shared collector.
#[derive(Debug)]
struct SharedCollector(Arc<AttachmentCollector>);

impl Collector for SharedCollector {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }
}

/// The agent's registry over `collector`.
pub fn registry(collector: Option<AttachmentCollector>) -> AgentMetrics {
    let mut registry = Registry::with_prefix("sidelane_agent");
    let attachments = collector.map(Arc::new);
    if let Some(c) = &attachments {
        registry.register_collector(Box::new(SharedCollector(Arc::clone(c))));
    }
    AgentMetrics {
        registry,
        attachments,
    }
}

impl AgentMetrics {
    /// Also exposes where ADDs spend their time.
    #[must_use]
    pub fn with_add_times(mut self, times: &crate::attach::AddTimes) -> AgentMetrics {
        times.register(&mut self.registry);
        self
    }
}

/// The text exposition of the agent's metrics.
pub fn render(metrics: &AgentMetrics) -> String {
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &metrics.registry) {
        warn!(error = %e, "encoding metrics");
    }
    out
}

/// The `/attachments` document: every recorded attachment's state as JSON.
pub fn attachments_json(metrics: &AgentMetrics) -> String {
    let views = metrics
        .attachments
        .as_ref()
        .map(|c| c.snapshot())
        .unwrap_or_default();
    serde_json::to_string_pretty(&views).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

impl Endpoints for AgentMetrics {
    fn answer(&self, path: &str) -> Option<(u16, String)> {
        match path {
            "/metrics" => Some((200, render(self))),
            "/attachments" => Some((200, attachments_json(self))),
            _ => None,
        }
    }
}
