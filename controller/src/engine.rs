//! The controller's decisions, pure: given what the cluster says (Subnets, NADs, IPPools,
//! StatefulSets, pods), what to write back (pod annotations, IP resources, events, Subnet
//! status). The Kubernetes layer feeds it events and carries out its outcomes; everything here
//! is tested without an API server.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use sidelane_api::{
    mac,
    nad::{self, NadConfig, NadError},
};

use crate::{
    attachments::{self, NadLookup, PodView},
    ipam::{AllocError, Allocated, AttachmentKey, Holder, Ipam, PodRef, Released, Usage},
    ovn,
    subnet::{SubnetConfig, SubnetError, SubnetInput},
};

/// An event to record on an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `Warning` or `Normal`.
    pub warning: bool,
    /// CamelCase reason (`AcquireAddressFailed`).
    pub reason: &'static str,
    /// What happened, naming the value.
    pub message: String,
}

impl Event {
    pub(crate) fn warning(reason: &'static str, message: String) -> Event {
        Event {
            warning: true,
            reason,
            message,
        }
    }
}

/// An IP resource (`ips.kubeovn.io`), one per attachment, named as Kube-OVN names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRecord {
    /// `<pod>.<namespace>.<provider>` (`.<ifname>` added for a NAD attached twice).
    pub name: String,
    /// The pod's name.
    pub pod_name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's UID (ours, in an annotation: Kube-OVN's IP has no UID).
    pub pod_uid: String,
    /// The Subnet.
    pub subnet: String,
    /// The addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The MAC, when the Subnet gives one.
    pub mac: Option<String>,
    /// The provider.
    pub provider: String,
    /// The interface in the pod.
    pub ifname: String,
    /// `StatefulSet` for a StatefulSet slot, empty otherwise.
    pub pod_type: String,
}

impl IpRecord {
    /// The attachment this record belongs to.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            holder: if self.pod_type == "StatefulSet" {
                Holder::StatefulSetSlot {
                    namespace: self.namespace.clone(),
                    pod: self.pod_name.clone(),
                }
            } else {
                Holder::Pod {
                    uid: self.pod_uid.clone(),
                }
            },
            provider: self.provider.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// The pod it serves.
    pub fn pod(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.pod_name.clone(),
            uid: self.pod_uid.clone(),
        }
    }
}

/// Kube-OVN's IP resource name for an attachment: `<pod>.<namespace>.<provider>`, with the
/// interface added for a NAD attached more than once (its prefix then ends in `.<ifname>`).
pub fn ip_name(pod: &str, namespace: &str, prefix: &str) -> String {
    format!("{pod}.{namespace}.{prefix}")
}

/// What to do for one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodOutcome {
    /// Annotations to set on the pod in one patch (empty: nothing to write).
    pub annotations: BTreeMap<String, String>,
    /// Annotations to remove from the pod, in the same patch.
    pub cleared: Vec<String>,
    /// IP resources to create or update.
    pub upsert_ips: Vec<IpRecord>,
    /// IP resources to delete (by name).
    pub delete_ips: Vec<String>,
    /// Events for the pod.
    pub events: Vec<Event>,
    /// Subnets whose usage changed.
    pub touched_subnets: BTreeSet<String>,
    /// Attachments that got a new allocation (not a rewrite of one already held).
    pub new_allocations: u32,
}

/// What to do for one Subnet.
#[derive(Clone, Debug, PartialEq)]
pub enum SubnetOutcome {
    /// Valid: the spec as Kube-OVN writes it back, and its usage.
    Valid {
        /// `spec.cidrBlock`, `spec.gateway`, `spec.excludeIps`, `spec.protocol`, `spec.provider`
        /// after defaulting.
        formatted: FormattedSpec,
        /// Allocations that no longer fit, with their IP resource names (to delete; their
        /// pods get events and a new allocation when next reconciled).
        displaced: Vec<(String, Released)>,
    },
    /// Refused: why (`Validated=False`); allocations in it stay as they are.
    Invalid(SubnetError),
}

/// The defaulted spec fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormattedSpec {
    /// `cidrBlock`.
    pub cidr_block: String,
    /// `gateway`.
    pub gateway: String,
    /// `excludeIps`.
    pub exclude_ips: Vec<String>,
    /// `protocol`.
    pub protocol: String,
    /// `provider`.
    pub provider: String,
}

/// The controller's state and decisions.
#[derive(Default)]
pub struct Engine {
    ipam: Ipam,
    nads: HashMap<(String, String), Result<Option<NadConfig>, NadError>>,
    ip_pools: HashMap<String, Vec<Vec<IpAddr>>>,
    /// StatefulSets and their replica counts.
    statefulsets: HashMap<(String, String), u32>,
    /// IP resource name of each attachment, to delete the right one on release.
    ip_names: HashMap<AttachmentKey, String>,
    /// Attachments whose pod asked for port security (`port_security: "true"`).
    secured: BTreeSet<AttachmentKey>,
    /// The security groups of each attachment that joins any.
    groups: BTreeMap<AttachmentKey, Vec<String>>,
}

impl Engine {
    /// An empty engine.
    pub fn new() -> Engine {
        Engine::default()
    }

    /// The IPAM state.
    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    /// The OVN topology for the Subnets and the OVN attachments held now (ports named as
    /// their IP resources are), isolated as `isolation` says.
    pub fn topology(
        &self,
        vpcs: &BTreeMap<String, ovn::VpcInput>,
        isolation: &ovn::Isolation,
    ) -> ovn::Topology {
        let ports = self.ipam.attachments().filter_map(|(key, pod, alloc)| {
            if matches!(key.holder, Holder::Nat { .. }) {
                return None;
            }
            Some(ovn::PortInput {
                port_security: self.secured.contains(key),
                security_groups: self.groups.get(key).cloned().unwrap_or_default(),
                name: self.port_name(key, pod),
                subnet: alloc.subnet.clone(),
                mac: alloc.mac?,
                ips: alloc.ips.clone(),
                pod: format!("{}/{}", pod.namespace, pod.name),
                provider: key.provider.clone(),
            })
        });
        ovn::build(self.ipam.subnets(), vpcs, ports, isolation)
    }

    /// Every OVN-backed attachment held now: its pod, its annotation prefix and its port name.
    pub fn ports(&self) -> impl Iterator<Item = (&PodRef, &str, String)> {
        self.ipam
            .attachments()
            .filter(|(k, _, alloc)| alloc.mac.is_some() && !matches!(k.holder, Holder::Nat { .. }))
            .map(|(key, pod, _)| (pod, key.provider.as_str(), self.port_name(key, pod)))
    }

    /// The security groups each attachment of pod `uid` joins, by provider.
    pub fn groups_of(&self, uid: &str) -> Vec<(&str, &[String])> {
        self.ipam
            .attachments()
            .filter(|(_, pod, _)| pod.uid == uid)
            .filter_map(|(key, _, _)| {
                self.groups
                    .get(key)
                    .map(|g| (key.provider.as_str(), g.as_slice()))
            })
            .collect()
    }

    /// The pods (with the attachment's provider) whose OVN port joins security group `group`.
    pub fn members_of<'e>(&'e self, group: &'e str) -> impl Iterator<Item = (&'e PodRef, &'e str)> {
        self.ipam
            .attachments()
            .filter(move |(key, _, _)| {
                self.groups
                    .get(*key)
                    .is_some_and(|g| g.iter().any(|n| n == group))
            })
            .map(|(key, pod, _)| (pod, key.provider.as_str()))
    }

    /// The port of an attachment, named as its IP resource is.
    fn port_name(&self, key: &AttachmentKey, pod: &PodRef) -> String {
        self.ip_names
            .get(key)
            .cloned()
            .unwrap_or_else(|| ip_name(&pod.name, &pod.namespace, &key.provider))
    }

    /// A NAD was added or changed: its `spec.config` (`None`: the spec has no config).
    pub fn set_nad(&mut self, namespace: &str, name: &str, config: Option<&str>) -> Vec<Event> {
        let parsed = nad::parse(namespace, name, config.unwrap_or(""));
        let mut events = Vec::new();
        match &parsed {
            Err(e) => events.push(Event::warning(
                "InvalidNetworkAttachmentDefinition",
                e.to_string(),
            )),
            Ok(Some(c)) => {
                if let Some(w) = c.provider_mismatch() {
                    events.push(Event::warning("ProviderMismatch", w));
                }
            }
            Ok(None) => {}
        }
        self.nads
            .insert((namespace.to_owned(), name.to_owned()), parsed);
        events
    }

    /// A NAD was deleted.
    pub fn remove_nad(&mut self, namespace: &str, name: &str) {
        self.nads.remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// An IPPool was added or changed: its addresses (one entry each).
    pub fn set_ip_pool(&mut self, name: &str, entries: Vec<Vec<IpAddr>>) {
        self.ip_pools.insert(name.to_owned(), entries);
    }

    /// A StatefulSet was added, changed (`Some(replicas)`) or deleted (`None`).
    pub fn set_statefulset(&mut self, namespace: &str, name: &str, replicas: Option<u32>) {
        let key = (namespace.to_owned(), name.to_owned());
        match replicas {
            Some(r) => {
                self.statefulsets.insert(key, r);
            }
            None => {
                self.statefulsets.remove(&key);
            }
        }
    }

    /// A Subnet was added or changed.
    pub fn set_subnet(&mut self, input: &SubnetInput) -> SubnetOutcome {
        let config = match SubnetConfig::from_input(input) {
            Ok(c) => c,
            Err(e) => return SubnetOutcome::Invalid(e),
        };
        if let Some(other) = self.ipam.subnets().find(|o| config.conflicts_with(o)) {
            return SubnetOutcome::Invalid(SubnetError::Overlap {
                subnet: config.name.clone(),
                cidr: config.cidr_block(),
                other: other.name.clone(),
                other_cidr: other.cidr_block(),
            });
        }
        let formatted = FormattedSpec {
            cidr_block: config.cidr_block(),
            gateway: config.gateway(),
            exclude_ips: config.exclude_ips(),
            protocol: config.protocol.to_string(),
            provider: config.provider.clone(),
        };
        let displaced = self
            .ipam
            .set_subnet(config)
            .into_iter()
            .map(|r| {
                let name = self.ip_names.remove(&r.key).unwrap_or_default();
                (name, r)
            })
            .collect();
        SubnetOutcome::Valid {
            formatted,
            displaced,
        }
    }

    /// A Subnet was deleted: the IP resources of its allocations.
    pub fn remove_subnet(&mut self, name: &str) -> Vec<(String, Released)> {
        self.ipam
            .remove_subnet(name)
            .into_iter()
            .map(|r| (self.ip_names.remove(&r.key).unwrap_or_default(), r))
            .collect()
    }

    /// Usage of a Subnet, for its status.
    pub fn usage(&self, subnet: &str) -> Option<Usage> {
        self.ipam.usage(subnet)
    }

    /// The names of the IP resources the engine holds.
    pub fn held_ip_names(&self) -> std::collections::HashSet<String> {
        self.ip_names.values().cloned().collect()
    }

    /// Takes back an allocation an IP resource records (after a restart, before anything is
    /// allocated). A conflict (the cluster already records the address for someone else) is
    /// returned as an event for the pod.
    pub fn restore_ip(&mut self, record: &IpRecord) -> Result<(), Event> {
        let mac = match record.mac.as_deref() {
            Some(m) if !m.is_empty() => Some(mac::parse(m).ok_or_else(|| {
                Event::warning(
                    "RestoreAddressFailed",
                    format!("IP {}: macAddress {m:?} is not a MAC", record.name),
                )
            })?),
            _ => None,
        };
        let held = Allocated {
            subnet: record.subnet.clone(),
            ips: record.ips.clone(),
            mac,
        };
        let key = record.key();
        self.ipam.restore(&key, &record.pod(), &held).map_err(|e| {
            Event::warning("RestoreAddressFailed", format!("IP {}: {e}", record.name))
        })?;
        self.ip_names.insert(key, record.name.clone());
        Ok(())
    }

    /// Takes back an address an IP resource Sidelane did not write holds for a live pod
    /// (`record.pod_uid` is that pod's): the address is its pod's while the pod lives, and is
    /// never handed to another. The resource itself is not Sidelane's to write or delete; the
    /// pod's own attachment of the same provider takes it over.
    pub fn restore_foreign_ip(&mut self, record: &IpRecord) -> Result<(), Event> {
        let taken_over = self.ipam.attachments().any(|(k, p, _)| {
            p.uid == record.pod_uid
                && k.provider == record.provider
                && !matches!(k.holder, Holder::Foreign { .. })
        });
        if taken_over {
            return Ok(());
        }
        let held = Allocated {
            subnet: record.subnet.clone(),
            ips: record.ips.clone(),
            mac: None,
        };
        let key = AttachmentKey {
            holder: Holder::Foreign {
                ip: record.name.clone(),
            },
            provider: record.provider.clone(),
            ifname: String::new(),
        };
        self.ipam
            .restore(&key, &record.pod(), &held)
            .map_err(|e| Event::warning("RestoreAddressFailed", format!("IP {}: {e}", record.name)))
    }

    /// Releases what IP resources Sidelane did not write hold for the pod `uid` on `provider`,
    /// for the pod's own attachment to take over.
    fn take_over_foreign(&mut self, uid: &str, provider: &str) {
        let foreign: Vec<AttachmentKey> = self
            .ipam
            .attachments()
            .filter(|(k, p, _)| {
                matches!(k.holder, Holder::Foreign { .. }) && p.uid == uid && k.provider == provider
            })
            .map(|(k, _, _)| k.clone())
            .collect();
        for key in foreign {
            self.ipam.release(&key);
        }
    }

    fn lookup(&self, namespace: &str, name: &str) -> NadLookup {
        match self.nads.get(&(namespace.to_owned(), name.to_owned())) {
            None => NadLookup::Missing,
            Some(Err(e)) => NadLookup::Invalid(e.clone()),
            Some(Ok(None)) => NadLookup::Foreign,
            Some(Ok(Some(c))) => NadLookup::Ours(c.clone()),
        }
    }

    /// A pod was added or changed: allocate what it asks for, release what it no longer
    /// asks for.
    pub fn on_pod(&mut self, pod: &PodView) -> PodOutcome {
        let mut out = PodOutcome::default();
        let plan = attachments::asked_by(pod, &|ns, name| self.lookup(ns, name));
        for w in plan.warnings {
            out.events.push(Event::warning("ProviderMismatch", w));
        }
        for r in plan.refused {
            out.events.push(Event::warning(
                "AcquireAddressFailed",
                format!("{}: {}", r.subject, r.reason),
            ));
        }
        let mut wanted_keys = BTreeSet::new();
        for mut w in plan.wanted {
            wanted_keys.insert(w.request.key.clone());
            self.take_over_foreign(&pod.uid, &w.request.key.provider);
            if !w.pool_names.is_empty() {
                let mut entries = Vec::new();
                for name in &w.pool_names {
                    match self.ip_pools.get(name) {
                        Some(e) => entries.extend(e.iter().cloned()),
                        None => out.events.push(Event::warning(
                            "AcquireAddressFailed",
                            format!("{}: ip_pool {name:?} names no IPPool", w.prefix),
                        )),
                    }
                }
                w.request.ip_pool = entries;
            }
            if w.port_security {
                self.secured.insert(w.request.key.clone());
            } else {
                self.secured.remove(&w.request.key);
            }
            if w.security_groups.is_empty() {
                self.groups.remove(&w.request.key);
            } else {
                self.groups
                    .insert(w.request.key.clone(), w.security_groups.clone());
            }
            let before = self.ipam.get(&w.request.key).cloned();
            match self.ipam.allocate(&w.request) {
                Ok(alloc) => {
                    if before.as_ref() != Some(&alloc) {
                        out.touched_subnets.insert(alloc.subnet.clone());
                        out.new_allocations += 1;
                    }
                    let name = ip_name(&pod.name, &pod.namespace, &w.prefix);
                    self.ip_names.insert(w.request.key.clone(), name.clone());
                    let Some(subnet) = self.ipam.subnet(&alloc.subnet) else {
                        continue;
                    };
                    let annotations = attachments::annotations_for(&w.prefix, &alloc, subnet);
                    let unchanged = annotations
                        .iter()
                        .all(|(k, v)| pod.annotations.get(k) == Some(v));
                    if !unchanged {
                        out.annotations.extend(annotations);
                    }
                    if before.as_ref() != Some(&alloc) || !unchanged {
                        out.upsert_ips.push(IpRecord {
                            name,
                            pod_name: pod.name.clone(),
                            namespace: pod.namespace.clone(),
                            pod_uid: pod.uid.clone(),
                            subnet: alloc.subnet.clone(),
                            ips: alloc.ips.clone(),
                            mac: alloc.mac.map(mac::format),
                            provider: w.request.key.provider.clone(),
                            ifname: w.request.key.ifname.clone(),
                            pod_type: if pod.statefulset.is_some() {
                                "StatefulSet".to_owned()
                            } else {
                                String::new()
                            },
                        });
                    }
                }
                Err(e) => {
                    let reason = if w.already_allocated {
                        "AddressConflict"
                    } else {
                        "AcquireAddressFailed"
                    };
                    out.events.push(Event::warning(
                        reason,
                        format!("{} ({}): {e}", w.nad, w.request.key.ifname),
                    ));
                    if let AllocError::Exhausted { subnet, .. } = &e {
                        out.touched_subnets.insert(subnet.clone());
                    }
                }
            }
        }
        self.release_beyond_plan(&pod.uid, &wanted_keys, &mut out);
        out
    }

    /// Networks removed from the selection: releases what the pod `uid` holds beyond
    /// `wanted` (not what an IP resource of someone else's holds for it).
    fn release_beyond_plan(
        &mut self,
        uid: &str,
        wanted: &BTreeSet<AttachmentKey>,
        out: &mut PodOutcome,
    ) {
        let stale: Vec<AttachmentKey> = self
            .ipam
            .attachments()
            .filter(|(k, p, _)| {
                p.uid == uid && !wanted.contains(*k) && !matches!(k.holder, Holder::Foreign { .. })
            })
            .map(|(k, _, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(alloc) = self.ipam.release(&key) {
                out.touched_subnets.insert(alloc.subnet);
            }
            if let Some(name) = self.ip_names.remove(&key) {
                out.delete_ips.push(name);
            }
        }
    }

    /// A pod is gone (deleted, or finished for good). Its allocations are released, except a
    /// StatefulSet slot whose StatefulSet still keeps the ordinal. Returns the IP resources to
    /// delete and the Subnets touched.
    pub fn on_pod_gone(&mut self, pod: &PodView) -> PodOutcome {
        let keep_slots = pod.statefulset.as_ref().is_some_and(|sts| {
            self.statefulsets
                .get(&(pod.namespace.clone(), sts.clone()))
                .is_some_and(|&replicas| pod.ordinal().is_some_and(|n| n < replicas))
        });
        let mut out = PodOutcome::default();
        for (key, alloc) in self.ipam.release_pod(&pod.uid, !keep_slots) {
            out.touched_subnets.insert(alloc.subnet);
            if let Some(name) = self.ip_names.remove(&key) {
                out.delete_ips.push(name);
            }
        }
        out
    }

    /// Garbage collection: releases every allocation whose pod is not in `live_pods` (UIDs)
    /// and whose StatefulSet slot is not kept. Returns the IP resources to delete.
    pub fn collect_garbage(&mut self, live_pods: &BTreeSet<String>) -> PodOutcome {
        let ipam = &self.ipam;
        self.secured.retain(|k| ipam.get(k).is_some());
        self.groups.retain(|k, _| ipam.get(k).is_some());
        let gone: Vec<(AttachmentKey, PodRef)> = self
            .ipam
            .attachments()
            .filter(|(k, p, _)| {
                !live_pods.contains(&p.uid) && !matches!(k.holder, Holder::Nat { .. })
            })
            .map(|(k, p, _)| (k.clone(), p.clone()))
            .collect();
        let mut out = PodOutcome::default();
        for (key, pod) in gone {
            if let Holder::StatefulSetSlot {
                namespace,
                pod: pod_name,
            } = &key.holder
            {
                let kept = self.statefulsets.iter().any(|((ns, sts), &replicas)| {
                    ns == namespace
                        && pod_name
                            .strip_prefix(sts.as_str())
                            .and_then(|r| r.strip_prefix('-'))
                            .and_then(|n| n.parse::<u32>().ok())
                            .is_some_and(|n| n < replicas)
                });
                if kept {
                    continue;
                }
            }
            let _ = pod;
            if let Some(alloc) = self.ipam.release(&key) {
                out.touched_subnets.insert(alloc.subnet);
            }
            if let Some(name) = self.ip_names.remove(&key) {
                out.delete_ips.push(name);
            }
        }
        out
    }
}

impl crate::nat::Addresses for Engine {
    fn hold(&mut self, holder: &str, subnet: &str, ip: Option<IpAddr>) -> Result<IpAddr, String> {
        let key = nat_key(holder);
        let pod = PodRef {
            namespace: String::new(),
            name: holder.to_owned(),
            uid: format!("nat:{holder}"),
        };
        self.ipam
            .hold(&key, &pod, subnet, ip)
            .map_err(|e| e.to_string())
    }

    fn release_others(&mut self, keep: &BTreeSet<String>) {
        let gone: Vec<AttachmentKey> = self
            .ipam
            .attachments()
            .filter(
                |(k, _, _)| matches!(&k.holder, Holder::Nat { object } if !keep.contains(object)),
            )
            .map(|(k, _, _)| k.clone())
            .collect();
        for key in gone {
            self.ipam.release(&key);
        }
    }
}

/// The IPAM key of a NAT object's address.
fn nat_key(holder: &str) -> AttachmentKey {
    AttachmentKey {
        holder: Holder::Nat {
            object: holder.to_owned(),
        },
        provider: "nat".to_owned(),
        ifname: String::new(),
    }
}

#[cfg(test)]
mod tests;
