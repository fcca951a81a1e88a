//! The leader's NAT work: it follows `VpcNatGateway`, `IptablesEIP`, the SNAT, DNAT and FIP
//! rules and the nodes' labels; resolves them ([`nat::Store::resolve`]) whenever something
//! they depend on changes; writes each object's status where it says something new, a Warning
//! event for each new refusal, and keeps the finalizer `sidelane.io/eip` on an EIP until no
//! rule uses it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::{
    api::core::v1::{Node, ObjectReference},
    jiff::Timestamp,
};
use kube::{
    Api, Resource as _, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::warn;

use super::{Change, Leader, RunError, key_of};
use crate::{
    engine::Event,
    nat::{self, DNAT, EIP, FIP, GATEWAY, SNAT, Verdict},
    status,
};

/// The finalizer an EIP keeps while a rule uses it.
pub(super) const EIP_FINALIZER: &str = "sidelane.io/eip";
/// Nodes, as [`Specs`](crate::seen::Specs) keys them.
pub(super) const NODE: &str = "Node";

/// The NAT kinds and their plurals.
pub(super) const KINDS: [(&str, &str); 5] = [
    (GATEWAY, "vpc-nat-gateways"),
    (EIP, "iptables-eips"),
    (SNAT, "iptables-snat-rules"),
    (DNAT, "iptables-dnat-rules"),
    (FIP, "iptables-fip-rules"),
];

/// `kubeovn.io/v1` `kind`.
pub(super) fn resource(kind: &str) -> ApiResource {
    let plural = KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or("", |(_, p)| *p);
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeovn.io", "v1", kind), plural)
}

/// The leader's NAT state.
#[derive(Default)]
pub(super) struct NatState {
    /// The objects and the nodes.
    pub store: nat::Store,
    /// The last resolution.
    pub resolved: nat::Resolved,
    /// Each object's status as the API server last showed it (or as last written).
    statuses: HashMap<(&'static str, String), Value>,
    /// Each object's reference, for events.
    refs: HashMap<(&'static str, String), ObjectReference>,
    /// The refusal last reported per object.
    reported: HashMap<(&'static str, String), String>,
    /// EIPs being deleted whose finalizer was taken off.
    released: BTreeSet<String>,
    /// Something NAT depends on changed since the last resolution.
    pub dirty: bool,
}

fn spec<T: DeserializeOwned + Default>(obj: &DynamicObject) -> Result<T, String> {
    serde_json::from_value(obj.data.get("spec").cloned().unwrap_or(json!({})))
        .map_err(|e| format!("spec: {e}"))
}

/// An address an object's status shows (an EIP's `ip`, a gateway's `externalIp`).
fn shown_ip(obj: &DynamicObject, field: &str) -> Option<IpAddr> {
    obj.data["status"][field].as_str()?.parse().ok()
}

impl Leader {
    /// The watches of the NAT kinds and of the nodes.
    pub(super) fn nat_watches(&self) -> Vec<BoxStream<'static, Result<Change, watcher::Error>>> {
        let mut out: Vec<BoxStream<'static, Result<Change, watcher::Error>>> = KINDS
            .iter()
            .map(|(kind, _)| {
                let kind: &'static str = kind;
                watcher(
                    Api::<DynamicObject>::all_with(self.client.clone(), &resource(kind)),
                    watcher::Config::default(),
                )
                .default_backoff()
                .map(move |e| e.map(|e| Change::Nat(kind, e)))
                .boxed()
            })
            .collect();
        out.push(
            watcher(
                Api::<Node>::all(self.client.clone()),
                watcher::Config::default(),
            )
            .default_backoff()
            .map(|e| e.map(Change::Node))
            .boxed(),
        );
        out
    }

    /// Lists the NAT objects and the nodes (at start-up, before pods are allocated, so that
    /// the addresses they hold are held first).
    pub(super) async fn load_nat(&mut self) -> Result<(), RunError> {
        let lp = ListParams::default();
        let nodes: Api<Node> = Api::all(self.client.clone());
        for n in nodes.list(&lp).await.map_err(|source| RunError::List {
            what: "Nodes",
            source,
        })? {
            self.node(&n);
        }
        for (kind, _) in KINDS {
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource(kind));
            for o in api
                .list(&lp)
                .await
                .map_err(|source| RunError::List { what: kind, source })?
            {
                self.nat_object(kind, &o);
            }
        }
        self.resolve_nat();
        Ok(())
    }

    /// Takes in a node's labels; whether they changed.
    pub(super) fn node(&mut self, node: &Node) -> bool {
        let labels: BTreeMap<String, String> = node.labels().clone();
        if !self.specs.changed(&key_of(NODE, node), &json!(labels)) {
            return false;
        }
        self.nat.store.nodes.insert(node.name_any(), labels);
        self.nat.dirty = true;
        false
    }

    /// Takes in a NAT object of `kind`; whether it changed.
    pub(super) fn nat_object(&mut self, kind: &'static str, obj: &DynamicObject) -> bool {
        let name = obj.name_any();
        let key = (kind, name.clone());
        match obj.data.get("status") {
            Some(s) => self.nat.statuses.insert(key.clone(), s.clone()),
            None => self.nat.statuses.remove(&key),
        };
        self.nat
            .refs
            .insert(key.clone(), obj.object_ref(&resource(kind)));
        let deleting = obj.metadata.deletion_timestamp.is_some();
        let finalized = obj.finalizers().iter().any(|f| f == EIP_FINALIZER);
        if kind == EIP && !deleting && !finalized {
            let writer = Arc::clone(&self.writer);
            tokio::spawn(async move {
                let api = Api::all_with(writer.client.clone(), &resource(EIP));
                writer
                    .finalizer(&api, EIP, &name, EIP_FINALIZER, true)
                    .await;
            });
        }
        let seen = json!({"spec": obj.data.get("spec"), "deleting": deleting});
        if !self.specs.changed(&key_of(kind, obj), &seen) {
            return false;
        }
        let name = obj.name_any();
        let store = &mut self.nat.store;
        let parsed = match kind {
            GATEWAY => spec(obj).map(|s| {
                if let Some(ip) = shown_ip(obj, "externalIp") {
                    store.previous.insert(format!("{GATEWAY}/{name}"), ip);
                }
                store.gateways.insert(name.clone(), s);
            }),
            EIP => spec(obj).map(|s| {
                if let Some(ip) = shown_ip(obj, "ip") {
                    store.previous.insert(format!("{EIP}/{name}"), ip);
                }
                store.eips.insert(name.clone(), (s, deleting));
            }),
            SNAT => spec(obj).map(|s| {
                store.snats.insert(name.clone(), s);
            }),
            DNAT => spec(obj).map(|s| {
                store.dnats.insert(name.clone(), s);
            }),
            _ => spec(obj).map(|s| {
                store.fips.insert(name.clone(), s);
            }),
        };
        if let Err(e) = parsed {
            warn!(kind, name = %name, error = %e, "a NAT object that does not parse is left out");
            self.nat_gone(kind, &name);
        }
        self.nat.dirty = true;
        false
    }

    /// A NAT object is gone.
    pub(super) fn nat_gone(&mut self, kind: &str, name: &str) {
        let store = &mut self.nat.store;
        match kind {
            GATEWAY => {
                store.gateways.remove(name);
            }
            EIP => {
                store.eips.remove(name);
                self.nat.released.remove(name);
            }
            SNAT => {
                store.snats.remove(name);
            }
            DNAT => {
                store.dnats.remove(name);
            }
            FIP => {
                store.fips.remove(name);
            }
            NODE => {
                store.nodes.remove(name);
            }
            _ => return,
        }
        let key = (kind_static(kind), name.to_owned());
        self.nat.statuses.remove(&key);
        self.nat.refs.remove(&key);
        self.nat.reported.remove(&key);
        self.nat.dirty = true;
    }

    /// Resolves the NAT objects again: addresses held or released, events for new refusals,
    /// statuses written where new, finalizers of free EIPs taken off.
    pub(super) fn resolve_nat(&mut self) {
        self.nat.dirty = false;
        let subnets: Vec<crate::subnet::SubnetConfig> =
            self.engine.ipam().subnets().cloned().collect();
        let mut vpcs: BTreeSet<String> = self.vpcs.keys().cloned().collect();
        vpcs.extend(
            subnets
                .iter()
                .filter(|s| s.is_ovn())
                .map(|s| s.vpc_or_default().to_owned()),
        );
        let world = nat::World {
            subnets: subnets.iter().map(|s| (s.name.as_str(), s)).collect(),
            vpcs,
        };
        let resolved = self.nat.store.resolve(&world, &mut self.engine);
        if resolved.gateways != self.nat.resolved.gateways {
            self.topology_dirty = true;
        }
        self.nat.resolved = resolved;
        self.nat_events();
        self.flush_nat_statuses();
        self.release_free_eips();
    }

    fn nat_events(&mut self) {
        let verdicts = self.nat.resolved.verdicts.clone();
        for (key, verdict) in verdicts {
            let said = match &verdict {
                Verdict::Refused { message, .. } => message.clone(),
                Verdict::Accepted(shown) if !shown.held_for.is_empty() => format!(
                    "IptablesEIP {} is being deleted but {} still use it; it stays until they are gone",
                    key.1,
                    shown.held_for.join(", ")
                ),
                Verdict::Accepted(_) => {
                    self.nat.reported.remove(&key);
                    continue;
                }
            };
            if self.nat.reported.get(&key) == Some(&said) {
                continue;
            }
            self.nat.reported.insert(key.clone(), said.clone());
            let Some(reference) = self.nat.refs.get(&key).cloned() else {
                continue;
            };
            let reason = match (&verdict, key.0) {
                (Verdict::Accepted(_), _) => "EipInUse",
                (_, GATEWAY) => "InvalidVpcNatGateway",
                (_, EIP) => "InvalidIptablesEIP",
                (_, SNAT) => "InvalidIptablesSnatRule",
                (_, DNAT) => "InvalidIptablesDnatRule",
                _ => "InvalidIptablesFIPRule",
            };
            warn!(kind = key.0, name = %key.1, reason, "{said}");
            let writer = Arc::clone(&self.writer);
            let events = vec![Event::warning(reason, said)];
            tokio::spawn(async move { writer.publish(&events, &reference).await });
        }
    }

    /// Every NAT object's status, written where it says something new.
    pub(super) fn flush_nat_statuses(&mut self) {
        let now = Timestamp::now().to_string();
        let verdicts = self.nat.resolved.verdicts.clone();
        for (key, verdict) in verdicts {
            if !self.nat.refs.contains_key(&key) {
                continue;
            }
            let wanted = nat_status(key.0, &self.nat.store, &key.1, &verdict, &now);
            let Some(status) = status::status_change(self.nat.statuses.get(&key), wanted) else {
                continue;
            };
            self.nat.statuses.insert(key.clone(), status.clone());
            let writer = Arc::clone(&self.writer);
            let (kind, name) = key;
            tokio::spawn(async move {
                let api = Api::all_with(writer.client.clone(), &resource(kind));
                writer.status(&api, kind, &name, status).await;
            });
        }
    }

    /// EIPs being deleted that nothing uses any more lose their finalizer.
    fn release_free_eips(&mut self) {
        let free: Vec<String> = self
            .nat
            .store
            .eips
            .iter()
            .filter(|(name, (_, deleting))| {
                *deleting && self.nat.resolved.eip_free(name) && !self.nat.released.contains(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in free {
            self.nat.released.insert(name.clone());
            let writer = Arc::clone(&self.writer);
            tokio::spawn(async move {
                let api = Api::all_with(writer.client.clone(), &resource(EIP));
                writer
                    .finalizer(&api, EIP, &name, EIP_FINALIZER, false)
                    .await;
            });
        }
    }
}

/// The kind's `'static` name.
fn kind_static(kind: &str) -> &'static str {
    KINDS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| *k == kind)
        .unwrap_or(NODE)
}

/// The status an object's verdict shows, as Kube-OVN's fields plus `Validated` and `Ready`.
fn nat_status(kind: &str, store: &nat::Store, name: &str, v: &Verdict, now: &str) -> Value {
    let (ok, reason, message, shown) = match v {
        Verdict::Accepted(s) => (true, "InForce", String::new(), Some(s)),
        Verdict::Refused { message, .. } => (false, "Refused", message.clone(), None),
    };
    let validated = status::condition(
        "Validated",
        ok,
        if ok { "Validated" } else { "InvalidSpec" },
        &message,
        now,
    );
    let ready = status::condition("Ready", ok, reason, &message, now);
    let mut conditions = vec![validated, ready];
    if let Some(s) = shown.filter(|s| !s.held_for.is_empty()) {
        conditions.push(status::condition(
            "Released",
            false,
            "InUse",
            &format!("kept while {} use it", s.held_for.join(", ")),
            now,
        ));
    }
    let s = shown.cloned().unwrap_or_default();
    match kind {
        GATEWAY => {
            let spec = store.gateways.get(name);
            json!({
                "externalIp": s.ip,
                "chassis": s.uses,
                "externalSubnets": if s.external_subnet.is_empty() { vec![] } else { vec![s.external_subnet] },
                "selector": spec.map(|g| g.selector.clone()).unwrap_or_default(),
                "conditions": conditions,
            })
        }
        EIP => json!({
            "ready": ok,
            "ip": s.ip,
            "nat": s.uses.join(","),
            "conditions": conditions,
        }),
        _ => json!({
            "ready": ok,
            "v4ip": s.ip,
            "natGwDp": s.gateway,
            "conditions": conditions,
        }),
    }
}
