//! The Northbound reconciler, the thin shell around [`crate::ovn`]: keeps a replica of the
//! tables Sidelane writes (one `monitor_cond`), and whenever the wanted topology or the
//! database changes, plans and commits the difference as one transaction. Level-based: a row
//! deleted by hand comes back, a stale owned row goes, and after the server restarts the
//! client's resync snapshot replaces the replica and the same loop converges.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use sidelane_ovsdb::{Client, Monitor, MonitorEvent, MonitorRequest, Replica};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    metrics::{Metrics, OpLabels, ResultLabels},
    ovn::{Observed, Plan, TABLES, Topology, diff},
};

/// The Northbound database's name.
pub const NB: &str = "OVN_Northbound";

/// The columns Sidelane reads of each table it writes.
fn columns(table: &str) -> Vec<String> {
    let c: &[&str] = match table {
        "Logical_Router" => &[
            "name",
            "ports",
            "static_routes",
            "nat",
            "load_balancer",
            "external_ids",
        ],
        "Logical_Router_Port" => &["name", "mac", "networks", "gateway_chassis", "external_ids"],
        "NAT" => &["type", "external_ip", "logical_ip", "external_ids"],
        "Load_Balancer" => &["name", "protocol", "vips", "external_ids"],
        "Gateway_Chassis" => &["name", "chassis_name", "priority"],
        "Logical_Router_Static_Route" => &["ip_prefix", "nexthop", "policy", "external_ids"],
        "Logical_Switch" => &["name", "ports", "other_config", "external_ids", "acls"],
        "Port_Group" => &["name", "ports", "acls", "external_ids"],
        "Address_Set" => &["name", "addresses", "external_ids"],
        "ACL" => &["direction", "priority", "match", "action", "external_ids"],
        _ => &[
            "name",
            "type",
            "addresses",
            "port_security",
            "options",
            "external_ids",
        ],
    };
    c.iter().map(|s| (*s).to_owned()).collect()
}

/// What the Northbound reconciler tells the leader after each pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbView {
    /// Switch ports of other owners, by name, described (see [`Observed::held_ports`]).
    pub held_ports: BTreeMap<String, String>,
    /// Switches Sidelane no longer wants, left in place because they hold another owner's
    /// rows: by name, what they hold.
    pub kept_switches: BTreeMap<String, String>,
    /// Every switch the database holds, by name.
    pub switches: BTreeSet<String>,
}

/// [`NbView`], shared.
pub type HeldPorts = Arc<NbView>;

/// Keeps the Northbound database at the wanted topology until `desired`'s sender is dropped;
/// publishes the switch ports other owners hold on `held`.
pub async fn reconcile(
    client: Client,
    mut desired: watch::Receiver<Arc<Topology>>,
    held: watch::Sender<HeldPorts>,
    metrics: Arc<Metrics>,
) {
    let mut nb = Reconciler::start(client, held, metrics).await;
    let mut last_pass: Option<Instant> = None;
    // Passes in a row that committed something: the first confirming pass after a commit goes
    // at once (the commit already waited for its updates).
    let mut again = 0_u32;
    loop {
        if again != 1 {
            tokio::select! {
                event = nb.monitor.recv() => {
                    let Some(event) = event else { return };
                    nb.take(event);
                }
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            // A change soon after a pass waits out the rest of `SETTLE`, so a burst of changes
            // becomes one transaction; the first change after a quiet spell goes at once.
            if let Some(wait) = last_pass.and_then(|t| SETTLE.checked_sub(t.elapsed())) {
                tokio::time::sleep(wait).await;
            }
        }
        nb.catch_up();
        if !nb.synced {
            again = 0;
            continue;
        }
        let want = Arc::clone(&desired.borrow_and_update());
        let pass = nb.pass(&want).await;
        last_pass = Some(Instant::now());
        if pass == Pass::Again {
            again += 1;
            // Look again even if nothing else changes (a failure, or more to do).
            desired.mark_changed();
        } else {
            again = 0;
        }
    }
}

/// The shortest time between two passes under a burst of changes.
const SETTLE: Duration = Duration::from_millis(10);

/// What a pass left to do.
#[derive(PartialEq, Eq)]
enum Pass {
    /// The database is as wanted.
    InSync,
    /// A transaction was committed or failed: plan again.
    Again,
}

/// The reconciler's state between passes.
struct Reconciler {
    client: Client,
    replica: Replica,
    monitor: Monitor,
    /// A snapshot made the replica whole.
    synced: bool,
    backoff: Duration,
    metrics: Arc<Metrics>,
    /// What was last reported, so each is said once.
    conflicts: Vec<String>,
    kept: Vec<String>,
    held: watch::Sender<HeldPorts>,
}

impl Reconciler {
    /// Reads the schema (retrying until the server answers) and starts the monitor.
    async fn start(
        client: Client,
        held: watch::Sender<HeldPorts>,
        metrics: Arc<Metrics>,
    ) -> Reconciler {
        let schema = loop {
            match client.schema(NB).await {
                Ok(s) => break s,
                Err(e) => {
                    warn!(error = %e, "reading the Northbound schema; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let requests: BTreeMap<String, MonitorRequest> = TABLES
            .iter()
            .map(|t| {
                (
                    (*t).to_owned(),
                    MonitorRequest {
                        columns: Some(columns(t)),
                        conditions: Vec::new(),
                    },
                )
            })
            .collect();
        let monitor = client.monitor(NB, &requests);
        Reconciler {
            client,
            replica: Replica::new(schema),
            monitor,
            synced: false,
            backoff: Duration::from_millis(100),
            metrics,
            conflicts: Vec::new(),
            kept: Vec::new(),
            held,
        }
    }

    /// Applies a monitor event.
    fn take(&mut self, event: MonitorEvent) {
        self.synced |= take(&mut self.replica, event);
    }

    /// Applies every monitor event already queued; whether there was one.
    fn catch_up(&mut self) -> bool {
        let mut got = false;
        while let Some(event) = self.monitor.try_recv() {
            self.take(event);
            got = true;
        }
        got
    }

    /// Plans against the replica, reports what is held by others, and commits the difference.
    async fn pass(&mut self, want: &Topology) -> Pass {
        let planning = Instant::now();
        let observed = Observed::from_replica(&self.replica);
        let p = diff(want, &observed);
        let view = NbView {
            held_ports: observed.held_ports(),
            kept_switches: p.kept_switches.clone(),
            switches: observed.switches.keys().cloned().collect(),
        };
        self.held.send_if_modified(|old| {
            if **old == view {
                false
            } else {
                *old = Arc::new(view);
                true
            }
        });
        report(
            &mut self.conflicts,
            &p.conflicts,
            &self.metrics.nb_conflicts,
            "an OVN row Sidelane wants is held by another owner; left alone",
        );
        report(
            &mut self.kept,
            &p.kept,
            &self.metrics.nb_kept,
            "an OVN row Sidelane no longer wants holds another owner's rows; left in place until they are gone",
        );
        self.metrics
            .nb_spent("plan", planning.elapsed().as_secs_f64());
        if p.ops.is_empty() {
            self.metrics.nb_in_sync.set(1);
            return Pass::InSync;
        }
        self.metrics.nb_in_sync.set(0);
        self.commit(&p).await;
        Pass::Again
    }

    /// Commits `p` as one transaction; after a failure, waits out the backoff.
    async fn commit(&mut self, p: &Plan) {
        let committing = Instant::now();
        let result = self.client.transact(NB, &p.ops).await;
        self.metrics
            .nb_spent("commit", committing.elapsed().as_secs_f64());
        match result {
            Ok(_) => {
                self.count("ok");
                for (op, n) in [
                    ("insert", p.inserted),
                    ("update", p.updated),
                    ("delete", p.deleted),
                ] {
                    self.metrics
                        .nb_rows
                        .get_or_create(&OpLabels { op })
                        .inc_by(n as u64);
                }
                info!(
                    inserted = p.inserted,
                    updated = p.updated,
                    deleted = p.deleted,
                    operations = p.ops.len(),
                    "reconciled the OVN Northbound database"
                );
                self.backoff = Duration::from_millis(100);
                // The server sends the transaction's updates before its reply; wait for them
                // (briefly, if they are not queued yet) so the next plan starts from them.
                let updating = Instant::now();
                if !self.catch_up()
                    && let Ok(Some(event)) =
                        tokio::time::timeout(Duration::from_secs(2), self.monitor.recv()).await
                {
                    self.take(event);
                }
                self.metrics
                    .nb_spent("updates", updating.elapsed().as_secs_f64());
            }
            Err(e) => {
                self.count("failed");
                warn!(error = %e, retry_in = ?self.backoff, "reconciling the OVN Northbound database");
                tokio::time::sleep(self.backoff).await;
                self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .nb_transactions
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// Logs each row of `now` and sets `gauge` to their number, when they differ from `before`
/// (which becomes `now`): said once, not on every reconcile.
fn report(
    before: &mut Vec<String>,
    now: &[String],
    gauge: &prometheus_client::metrics::gauge::Gauge,
    what: &str,
) {
    if before.as_slice() == now {
        return;
    }
    for row in now {
        warn!(row = %row, "{what}");
    }
    *before = now.to_vec();
    gauge.set(i64::try_from(now.len()).unwrap_or(i64::MAX));
}

/// Applies a monitor event; `true` once a snapshot made the replica whole.
fn take(replica: &mut Replica, event: MonitorEvent) -> bool {
    match event {
        MonitorEvent::Snapshot(s) => {
            replica.reset(s);
            debug!("took a Northbound snapshot");
            true
        }
        MonitorEvent::Update(u) => {
            replica.apply(u);
            false
        }
    }
}
