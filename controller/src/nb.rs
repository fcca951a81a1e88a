//! The Northbound reconciler, the thin shell around [`crate::ovn`]: keeps a replica of the
//! tables Sidelane writes (one `monitor_cond`), and whenever the wanted topology or the
//! database changes, plans and commits the difference as one transaction. Level-based: a row
//! deleted by hand comes back, a stale owned row goes, and after the server restarts the
//! client's resync snapshot replaces the replica and the same loop converges.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use sidelane_ovsdb::{Client, MonitorEvent, MonitorRequest, Replica};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    metrics::{Metrics, OpLabels, ResultLabels},
    ovn::{Observed, Topology, plan, plan::TABLES},
};

/// The Northbound database's name.
pub const NB: &str = "OVN_Northbound";

/// The columns Sidelane reads of each table it writes.
fn columns(table: &str) -> Vec<String> {
    let c: &[&str] = match table {
        "Logical_Router" => &["name", "ports", "static_routes", "external_ids"],
        "Logical_Router_Port" => &["name", "mac", "networks", "external_ids"],
        "Logical_Router_Static_Route" => &["ip_prefix", "nexthop", "policy", "external_ids"],
        "Logical_Switch" => &["name", "ports", "other_config", "external_ids"],
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

/// Keeps the Northbound database at the wanted topology until `desired`'s sender is dropped.
#[expect(
    clippy::too_many_lines,
    reason = "one loop: wait, plan, commit, catch up"
)]
pub async fn reconcile(
    client: Client,
    mut desired: watch::Receiver<Arc<Topology>>,
    metrics: Arc<Metrics>,
) {
    let schema = loop {
        match client.schema(NB).await {
            Ok(s) => break s,
            Err(e) => {
                warn!(error = %e, "reading the Northbound schema; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut replica = Replica::new(schema);
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
    let mut monitor = client.monitor(NB, &requests);
    let mut synced = false;
    let mut backoff = Duration::from_millis(100);
    let mut conflicts: Vec<String> = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            event = monitor.recv() => {
                let Some(event) = event else { return };
                synced |= take(&mut replica, event);
            }
            changed = desired.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        // Let a burst of changes settle into one transaction.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while let Some(event) = monitor.try_recv() {
            synced |= take(&mut replica, event);
        }
        if !synced {
            continue;
        }
        let want = Arc::clone(&desired.borrow_and_update());
        let p = plan(&want, &Observed::from_replica(&replica));
        report(
            &mut conflicts,
            &p.conflicts,
            &metrics.nb_conflicts,
            "an OVN row Sidelane wants is held by another owner; left alone",
        );
        report(
            &mut kept,
            &p.kept,
            &metrics.nb_kept,
            "an OVN row Sidelane no longer wants holds another owner's rows; left in place until they are gone",
        );
        if p.ops.is_empty() {
            metrics.nb_in_sync.set(1);
            continue;
        }
        metrics.nb_in_sync.set(0);
        match client.transact(NB, &p.ops).await {
            Ok(_) => {
                metrics
                    .nb_transactions
                    .get_or_create(&ResultLabels { result: "ok" })
                    .inc();
                for (op, n) in [
                    ("insert", p.inserted),
                    ("update", p.updated),
                    ("delete", p.deleted),
                ] {
                    metrics
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
                backoff = Duration::from_millis(100);
                // The server sends the transaction's updates before its reply; wait for them
                // (briefly, if they are not queued yet) so the next plan starts from them.
                let mut got = false;
                while let Some(event) = monitor.try_recv() {
                    synced |= take(&mut replica, event);
                    got = true;
                }
                if !got
                    && let Ok(Some(event)) =
                        tokio::time::timeout(Duration::from_secs(2), monitor.recv()).await
                {
                    synced |= take(&mut replica, event);
                }
            }
            Err(e) => {
                metrics
                    .nb_transactions
                    .get_or_create(&ResultLabels { result: "failed" })
                    .inc();
                warn!(error = %e, retry_in = ?backoff, "reconciling the OVN Northbound database");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        // Look again soon even if nothing else changes (a failure, or more to do).
        desired.mark_changed();
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
            replica.reset(&s);
            debug!("took a Northbound snapshot");
            true
        }
        MonitorEvent::Update(u) => {
            replica.apply(&u);
            false
        }
    }
}
