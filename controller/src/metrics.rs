//! The controller's metrics (Prometheus text format) and probes, on one HTTP port:
//! `/metrics`, `/healthz` (the process serves), `/readyz` (a follower, or a leader that has
//! loaded the cluster and taken back every recorded allocation).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry},
};
use sidelane_api::probes::Endpoints;
use tracing::warn;

/// Labels of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The event reason (`AcquireAddressFailed`, `AddressConflict`...).
    pub reason: String,
}

/// Labels of a Subnet gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubnetLabels {
    /// The Subnet.
    pub subnet: String,
    /// `ipv4` or `ipv6`.
    pub family: String,
}

/// Labels of a transaction count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `failed`.
    pub result: &'static str,
}

/// Labels of the Northbound reconciler's time.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `plan` (reading the replica and diffing), `commit` (the transaction's round trip) or
    /// `updates` (waiting for and applying the monitor's updates of a commit).
    pub phase: &'static str,
}

/// Labels of a row count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `insert`, `update` or `delete`.
    pub op: &'static str,
}

/// Everything the controller exports.
pub struct Metrics {
    registry: Registry,
    /// Allocations written to pods.
    pub allocations: Counter,
    /// Releases.
    pub releases: Counter,
    /// Refused attachments, by reason.
    pub refusals: Family<ReasonLabels, Counter>,
    /// Addresses in use per Subnet and family.
    pub subnet_used: Family<SubnetLabels, Gauge>,
    /// Addresses still available per Subnet and family.
    pub subnet_available: Family<SubnetLabels, Gauge>,
    /// Seconds from a pod event to its writes being done.
    pub reconcile_seconds: Histogram,
    /// Whether this replica leads (1) or follows (0).
    pub leader: Gauge,
    /// Northbound transactions, by result (`ok`, `failed`).
    pub nb_transactions: Family<ResultLabels, Counter>,
    /// Northbound rows inserted, updated and deleted, by operation.
    pub nb_rows: Family<OpLabels, Counter>,
    /// Rows Sidelane wants whose name is held by a row it does not own.
    pub nb_conflicts: Gauge,
    /// Whether the Northbound database holds the wanted topology (1) or not yet (0).
    pub nb_in_sync: Gauge,
    /// Seconds the Northbound reconciler spent, by phase.
    pub nb_seconds: Family<PhaseLabels, Counter<f64, AtomicU64>>,
    /// Addresses held for live pods by IP resources Sidelane did not write.
    pub foreign_ips: Gauge,
    /// Rows of Sidelane's nothing wants, left in place because they hold another owner's rows.
    pub nb_kept: Gauge,
    /// API writes that failed and were tried again.
    pub write_retries: Counter,
    /// Objects found gone when a watch re-listed (deleted while it was away).
    pub gone_while_away: Counter,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sidelane_controller");
        let r = &mut registry;
        Metrics {
            allocations: registered(r, "allocations", "Attachment allocations written to pods"),
            releases: registered(r, "releases", "Attachment allocations released"),
            refusals: registered(r, "refusals", "Attachments refused, by reason"),
            subnet_used: registered(
                r,
                "subnet_used_ips",
                "Addresses in use per subnet and family",
            ),
            subnet_available: registered(
                r,
                "subnet_available_ips",
                "Addresses still available per subnet and family",
            ),
            reconcile_seconds: with(
                r,
                "reconcile_seconds",
                "Time from a pod event to its writes being done",
                Histogram::new([
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
            ),
            leader: registered(r, "leader", "1 when this replica leads"),
            nb_transactions: registered(
                r,
                "nb_transactions",
                "OVN Northbound transactions, by result",
            ),
            nb_rows: registered(
                r,
                "nb_rows",
                "OVN Northbound rows inserted, updated and deleted",
            ),
            nb_conflicts: registered(
                r,
                "nb_conflicts",
                "Wanted OVN rows whose name is held by a row Sidelane does not own",
            ),
            nb_in_sync: registered(
                r,
                "nb_in_sync",
                "Whether the OVN Northbound database holds the wanted topology",
            ),
            nb_seconds: registered(
                r,
                "nb_seconds",
                "Seconds the OVN Northbound reconciler spent, by phase (plan, commit, updates)",
            ),
            foreign_ips: registered(
                r,
                "foreign_ips",
                "Addresses held for live pods by IP resources Sidelane did not write",
            ),
            nb_kept: registered(
                r,
                "nb_kept",
                "OVN rows Sidelane no longer wants, left in place because they hold rows of another owner",
            ),
            write_retries: registered(
                r,
                "write_retries",
                "API writes that failed and were tried again",
            ),
            gone_while_away: registered(
                r,
                "gone_while_away",
                "Objects found deleted when a watch re-listed after losing its place",
            ),
            ready: AtomicBool::new(false),
            registry,
        }
    }

    /// Adds `seconds` to the Northbound reconciler's `phase`.
    pub fn nb_spent(&self, phase: &'static str, seconds: f64) {
        self.nb_seconds
            .get_or_create(&PhaseLabels { phase })
            .inc_by(seconds);
    }

    /// Seconds the Northbound reconciler has spent in `phase` so far.
    pub fn nb_spent_in(&self, phase: &'static str) -> f64 {
        self.nb_seconds.get_or_create(&PhaseLabels { phase }).get()
    }

    /// Marks the replica ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            warn!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Registers `metric` under `name` and returns it (the registry keeps a handle to the same
/// values).
fn with<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// A default metric of its kind, registered.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    with(registry, name, help, M::default())
}

impl Endpoints for Metrics {
    fn answer(&self, path: &str) -> Option<(u16, String)> {
        match path {
            "/metrics" => Some((200, self.render())),
            "/readyz" if self.is_ready() => Some((200, "ok\n".to_owned())),
            "/readyz" => Some((503, "loading the cluster\n".to_owned())),
            _ => None,
        }
    }
}
