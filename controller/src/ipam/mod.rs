//! Attachment IPAM, pure: no I/O, no clock. The controller feeds it Subnets and attachment
//! requests (and, after a restart, what the cluster already records) and writes out what it
//! decides.
//!
//! - An allocation belongs to an [`AttachmentKey`]: the holder (a pod by UID, or a StatefulSet's
//!   pod slot, which outlives the pod), the provider and the interface — never a pod name alone.
//! - Subnet choice: the pod's `logical_switch` wins; otherwise the Subnets whose provider is the
//!   attachment's, restricted by `namespaces`, in name order; a static address picks the Subnet
//!   that contains it; a full Subnet passes to the next.
//! - Addresses: static, from an `ip_pool` (a StatefulSet pod takes entry N), or the lowest
//!   never-used free one per family (see [`pool`]); dual stack gives one per family and rolls
//!   back the first when the second fails; `ip_family` picks one.
//! - MACs (OVN Subnets only, as Kube-OVN): the requested one, or one derived from the key,
//!   locally administered and unique in the Subnet.

pub mod pool;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::BuildHasher as _,
    net::IpAddr,
};

use foldhash::{fast::RandomState, quality::FixedState};
use thiserror::Error;

use self::pool::{OwnerId, Pool, PoolError};
use crate::subnet::SubnetConfig;

/// Who an allocation belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Holder {
    /// A pod, by UID.
    Pod {
        /// `metadata.uid`.
        uid: String,
    },
    /// A StatefulSet's pod slot (`<namespace>/<pod name>`), kept while the StatefulSet keeps
    /// the ordinal, across the pod's re-creations.
    StatefulSetSlot {
        /// The namespace.
        namespace: String,
        /// The pod's name (`web-0`).
        pod: String,
    },
    /// An IP resource Sidelane did not write (Kube-OVN's, or one restored from a backup),
    /// holding its address for its pod while that pod lives. Never written or deleted by
    /// Sidelane; the pod's own attachment of the same provider takes it over.
    Foreign {
        /// The IP resource's name.
        ip: String,
    },
    /// A NAT object (`IptablesEIP/<name>`, `VpcNatGateway/<name>`, its `lanIp`): an address
    /// no pod may take. Released only when the NAT objects no longer want it.
    Nat {
        /// `<kind>/<name>[/<what>]`.
        object: String,
    },
}

/// One attachment's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentKey {
    /// Its holder.
    pub holder: Holder,
    /// Its provider (`<nad>.<ns>` or `<nad>.<ns>.ovn`).
    pub provider: String,
    /// The interface in the pod (`net1`).
    pub ifname: String,
}

/// The pod an attachment serves now.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PodRef {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The UID.
    pub uid: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What an attachment asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Its identity.
    pub key: AttachmentKey,
    /// The pod it serves.
    pub pod: PodRef,
    /// `<provider>.kubernetes.io/logical_switch`.
    pub logical_switch: Option<String>,
    /// Static addresses (`ip_address`, or `ips` in the selection).
    pub static_ips: Vec<IpAddr>,
    /// `ip_pool` entries (each one address, or one per family).
    pub ip_pool: Vec<Vec<IpAddr>>,
    /// The pod's StatefulSet ordinal, when it has one (it takes `ip_pool` entry N).
    pub ordinal: Option<u32>,
    /// `ip_family`: one family of a dual-stack Subnet.
    pub family: Option<Family>,
    /// A requested MAC (`mac_address`, or `mac` in the selection).
    pub mac: Option<[u8; 6]>,
}

/// An attachment's allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocated {
    /// The Subnet.
    pub subnet: String,
    /// The addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The MAC (OVN Subnets only).
    pub mac: Option<[u8; 6]>,
}

/// Why an attachment got no allocation; the message names the value and the reason.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AllocError {
    /// No Subnet has the provider.
    #[error("provider {provider} is not bound to any subnet")]
    NoSubnet {
        /// The provider.
        provider: String,
    },
    /// Subnets have the provider but none serves the pod's namespace.
    #[error("provider {provider} is not bound to any subnet that serves namespace {namespace}")]
    NamespaceNotServed {
        /// The provider.
        provider: String,
        /// The pod's namespace.
        namespace: String,
    },
    /// `logical_switch` names no Subnet.
    #[error("logical_switch {0} names no subnet")]
    UnknownSubnet(String),
    /// A static or pool address is not in the Subnet.
    #[error("{ip} is not in subnet {subnet} ({cidrs})")]
    OutOfRange {
        /// The address.
        ip: IpAddr,
        /// The Subnet.
        subnet: String,
        /// Its CIDR block.
        cidrs: String,
    },
    /// A static or pool address is the gateway.
    #[error("{ip} is the gateway of subnet {subnet}")]
    Gateway {
        /// The address.
        ip: IpAddr,
        /// The Subnet.
        subnet: String,
    },
    /// Another attachment holds the address.
    #[error("{ip} in subnet {subnet} is already held by {holder}")]
    Conflict {
        /// The address.
        ip: IpAddr,
        /// The Subnet.
        subnet: String,
        /// Who holds it.
        holder: String,
    },
    /// Every address is taken.
    #[error("subnet {subnet} has no available {family} address")]
    Exhausted {
        /// The Subnet.
        subnet: String,
        /// The family.
        family: Family,
    },
    /// Every `ip_pool` entry is held by others.
    #[error("every ip_pool entry is held by another pod ({entries} entries)")]
    PoolExhausted {
        /// How many entries.
        entries: usize,
    },
    /// A StatefulSet pod's ordinal has no `ip_pool` entry.
    #[error("ip_pool has {entries} entries; StatefulSet ordinal {ordinal} has none")]
    NoPoolEntry {
        /// How many entries.
        entries: usize,
        /// The ordinal.
        ordinal: u32,
    },
    /// The Subnet lacks the requested family.
    #[error("subnet {subnet} has no {family} range")]
    NoFamily {
        /// The Subnet.
        subnet: String,
        /// The family.
        family: Family,
    },
    /// Another attachment has the MAC.
    #[error("mac {mac} in subnet {subnet} is already held by {holder}")]
    MacConflict {
        /// The MAC.
        mac: String,
        /// The Subnet.
        subnet: String,
        /// Who has it.
        holder: String,
    },
}

/// Used and available addresses of a Subnet, per family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Whether the Subnet has an IPv4 range.
    pub has_v4: bool,
    /// Whether the Subnet has an IPv6 range.
    pub has_v6: bool,
    /// The IPv4 addresses held, as Kube-OVN writes `v4usingIPrange`.
    pub v4_using_range: String,
    /// The IPv4 addresses free, as Kube-OVN writes `v4availableIPrange`.
    pub v4_available_range: String,
    /// The IPv6 addresses held (`v6usingIPrange`).
    pub v6_using_range: String,
    /// The IPv6 addresses free (`v6availableIPrange`).
    pub v6_available_range: String,
    /// IPv4 addresses held.
    pub v4_used: u64,
    /// IPv4 addresses random allocation can still hand out.
    pub v4_available: u64,
    /// IPv6 addresses held.
    pub v6_used: u64,
    /// IPv6 addresses random allocation can still hand out.
    pub v6_available: u64,
}

struct SubnetState {
    config: SubnetConfig,
    v4: Option<Pool>,
    v6: Option<Pool>,
    macs: HashMap<[u8; 6], OwnerId, RandomState>,
}

impl SubnetState {
    fn new(config: SubnetConfig) -> SubnetState {
        let pool_of = |v4: bool| {
            config
                .cidrs
                .iter()
                .find(|c| c.addr().is_ipv4() == v4)
                .map(|&cidr| Pool::new(cidr, config.gateway_of(cidr.addr()), &config.exclude))
        };
        SubnetState {
            v4: pool_of(true),
            v6: pool_of(false),
            macs: HashMap::default(),
            config,
        }
    }

    fn pool(&mut self, family: Family) -> Option<&mut Pool> {
        match family {
            Family::V4 => self.v4.as_mut(),
            Family::V6 => self.v6.as_mut(),
        }
    }

    fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        if self.v4.is_some() {
            out.push(Family::V4);
        }
        if self.v6.is_some() {
            out.push(Family::V6);
        }
        out
    }

    /// OVN Subnets give every port a MAC; IPAM-only ones do not (as Kube-OVN).
    fn allocates_macs(&self) -> bool {
        self.config.is_ovn()
    }
}

struct OwnerRecord {
    key: AttachmentKey,
    pod: PodRef,
    held: Allocated,
}

/// An allocation given up, and whose it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// The attachment.
    pub key: AttachmentKey,
    /// The pod it last served.
    pub pod: PodRef,
    /// What it held.
    pub held: Allocated,
}

impl From<OwnerRecord> for Released {
    fn from(r: OwnerRecord) -> Released {
        Released {
            key: r.key,
            pod: r.pod,
            held: r.held,
        }
    }
}

/// The cluster's attachment IPAM.
#[derive(Default)]
pub struct Ipam {
    subnets: BTreeMap<String, SubnetState>,
    owners: Vec<Option<OwnerRecord>>,
    free_ids: Vec<u32>,
    by_key: HashMap<AttachmentKey, OwnerId, RandomState>,
}

impl Ipam {
    /// An empty IPAM.
    pub fn new() -> Ipam {
        Ipam::default()
    }

    /// Adds or replaces a Subnet. On replacement every allocation in it is claimed again in
    /// the new ranges; those that no longer fit are released and returned.
    pub fn set_subnet(&mut self, config: SubnetConfig) -> Vec<Released> {
        let name = config.name.clone();
        if self.subnets.get(&name).is_some_and(|s| s.config == config) {
            // Unchanged: keep the pools as they are (their released-address queue included).
            return Vec::new();
        }
        let mut state = SubnetState::new(config);
        let mut displaced = Vec::new();
        if self.subnets.contains_key(&name) {
            let holders: Vec<OwnerId> = self
                .by_key
                .values()
                .copied()
                .filter(|id| self.record(*id).is_some_and(|r| r.held.subnet == name))
                .collect();
            for id in holders {
                let Some(record) = self.record(id) else {
                    continue;
                };
                let held = record.held.clone();
                let fits = held.ips.iter().all(|&ip| {
                    state
                        .pool(Family::of(ip))
                        .is_some_and(|p| p.claim(ip, id).is_ok())
                });
                if fits {
                    if let Some(mac) = held.mac {
                        state.macs.insert(mac, id);
                    }
                } else {
                    for &ip in &held.ips {
                        if let Some(p) = state.pool(Family::of(ip)) {
                            let _ = p.release(ip, id);
                        }
                    }
                    if let Some(r) = self.remove_owner(id) {
                        displaced.push(Released::from(r));
                    }
                }
            }
        }
        self.subnets.insert(name, state);
        displaced
    }

    /// Removes a Subnet; its allocations are released and returned.
    pub fn remove_subnet(&mut self, name: &str) -> Vec<Released> {
        if self.subnets.remove(name).is_none() {
            return Vec::new();
        }
        let ids: Vec<OwnerId> = self
            .by_key
            .values()
            .copied()
            .filter(|id| self.record(*id).is_some_and(|r| r.held.subnet == name))
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove_owner(id))
            .map(Released::from)
            .collect()
    }

    /// The Subnet's configuration.
    pub fn subnet(&self, name: &str) -> Option<&SubnetConfig> {
        self.subnets.get(name).map(|s| &s.config)
    }

    /// Every Subnet's configuration.
    pub fn subnets(&self) -> impl Iterator<Item = &SubnetConfig> {
        self.subnets.values().map(|s| &s.config)
    }

    /// Every Subnet's name.
    pub fn subnet_names(&self) -> impl Iterator<Item = &str> {
        self.subnets.keys().map(String::as_str)
    }

    /// Used and available addresses of `subnet`.
    pub fn usage(&self, subnet: &str) -> Option<Usage> {
        let s = self.subnets.get(subnet)?;
        Some(Usage {
            has_v4: s.v4.is_some(),
            has_v6: s.v6.is_some(),
            v4_using_range: s.v4.as_ref().map(Pool::using_ranges).unwrap_or_default(),
            v4_available_range: s
                .v4
                .as_ref()
                .map(Pool::available_ranges)
                .unwrap_or_default(),
            v6_using_range: s.v6.as_ref().map(Pool::using_ranges).unwrap_or_default(),
            v6_available_range: s
                .v6
                .as_ref()
                .map(Pool::available_ranges)
                .unwrap_or_default(),
            v4_used: s.v4.as_ref().map_or(0, Pool::used),
            v4_available: s.v4.as_ref().map_or(0, Pool::available),
            v6_used: s.v6.as_ref().map_or(0, Pool::used),
            v6_available: s.v6.as_ref().map_or(0, Pool::available),
        })
    }

    /// What `key` holds.
    pub fn get(&self, key: &AttachmentKey) -> Option<&Allocated> {
        self.by_key
            .get(key)
            .and_then(|id| self.record(*id))
            .map(|r| &r.held)
    }

    /// The pod holding `ip` in `subnet`.
    pub fn holder_of(&self, subnet: &str, ip: IpAddr) -> Option<(&AttachmentKey, &PodRef)> {
        let s = self.subnets.get(subnet)?;
        let pool = match Family::of(ip) {
            Family::V4 => s.v4.as_ref(),
            Family::V6 => s.v6.as_ref(),
        }?;
        let record = self.record(pool.holder(ip)?)?;
        Some((&record.key, &record.pod))
    }

    /// Every attachment and its allocation.
    pub fn attachments(&self) -> impl Iterator<Item = (&AttachmentKey, &PodRef, &Allocated)> {
        self.owners
            .iter()
            .flatten()
            .map(|r| (&r.key, &r.pod, &r.held))
    }

    fn record(&self, id: OwnerId) -> Option<&OwnerRecord> {
        self.owners.get(id.0 as usize).and_then(Option::as_ref)
    }

    fn remove_owner(&mut self, id: OwnerId) -> Option<OwnerRecord> {
        let record = self.owners.get_mut(id.0 as usize)?.take()?;
        self.by_key.remove(&record.key);
        self.free_ids.push(id.0);
        if let Some(state) = self.subnets.get_mut(&record.held.subnet) {
            for &ip in &record.held.ips {
                if let Some(p) = state.pool(Family::of(ip)) {
                    let _ = p.release(ip, id);
                }
            }
            if let Some(mac) = record.held.mac
                && state.macs.get(&mac) == Some(&id)
            {
                state.macs.remove(&mac);
            }
        }
        Some(record)
    }

    fn new_owner(&mut self, key: &AttachmentKey, pod: &PodRef, subnet: &str) -> OwnerId {
        let record = OwnerRecord {
            key: key.clone(),
            pod: pod.clone(),
            held: Allocated {
                subnet: subnet.to_owned(),
                ips: Vec::new(),
                mac: None,
            },
        };
        let id = if let Some(i) = self.free_ids.pop() {
            self.owners[i as usize] = Some(record);
            OwnerId(i)
        } else {
            self.owners.push(Some(record));
            OwnerId(u32::try_from(self.owners.len() - 1).unwrap_or(u32::MAX))
        };
        self.by_key.insert(key.clone(), id);
        id
    }

    fn holder_name(&self, id: OwnerId) -> String {
        self.record(id).map_or_else(
            || "(unknown)".to_owned(),
            |r| match &r.key.holder {
                Holder::Foreign { ip } => {
                    format!("pod {} (IP resource {ip}, not written by Sidelane)", r.pod)
                }
                Holder::Nat { object } => object.clone(),
                _ => format!("pod {}", r.pod),
            },
        )
    }

    /// Releases what `key` holds.
    pub fn release(&mut self, key: &AttachmentKey) -> Option<Allocated> {
        let id = *self.by_key.get(key)?;
        self.remove_owner(id).map(|r| r.held)
    }

    /// Releases every attachment the pod with `uid` holds as [`Holder::Pod`], and every
    /// StatefulSet slot it is the current pod of when `with_slots` (the StatefulSet dropped
    /// the ordinal). A slot taken over by a newer pod is never released by an older one.
    pub fn release_pod(&mut self, uid: &str, with_slots: bool) -> Vec<(AttachmentKey, Allocated)> {
        let ids: Vec<OwnerId> = self
            .owners
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let r = r.as_ref()?;
                let mine = match &r.key.holder {
                    Holder::Pod { uid: u } => u == uid,
                    Holder::StatefulSetSlot { .. } => with_slots && r.pod.uid == uid,
                    Holder::Foreign { .. } => r.pod.uid == uid,
                    Holder::Nat { .. } => false,
                };
                mine.then(|| OwnerId(u32::try_from(i).unwrap_or(u32::MAX)))
            })
            .collect();
        ids.into_iter()
            .filter_map(|id| self.remove_owner(id))
            .map(|r| (r.key, r.held))
            .collect()
    }

    /// Takes back an allocation the cluster records (an IP resource, the pod's annotations):
    /// exactly these addresses and MAC, or an error naming the conflict. Used before any new
    /// allocation after a restart.
    pub fn restore(
        &mut self,
        key: &AttachmentKey,
        pod: &PodRef,
        held: &Allocated,
    ) -> Result<(), AllocError> {
        if let Some(current) = self.get(key) {
            if current == held {
                self.set_pod(key, pod);
                return Ok(());
            }
            self.release(key);
        }
        if !self.subnets.contains_key(&held.subnet) {
            return Err(AllocError::UnknownSubnet(held.subnet.clone()));
        }
        let id = self.new_owner(key, pod, &held.subnet);
        let result = self
            .claim_all(id, &held.subnet, &held.ips, true)
            .and_then(|()| match held.mac {
                Some(mac) => self.claim_mac(id, &held.subnet, mac),
                None => Ok(()),
            });
        if result.is_err() {
            self.remove_owner(id);
        }
        result
    }

    /// Holds one address of `subnet` for a holder that is not a pod (a NAT object): `ip`, or
    /// the next free IPv4 address (else IPv6); no MAC. What `key` holds already is kept when
    /// it still answers.
    ///
    /// # Errors
    /// The Subnet is unknown or full, or `ip` is outside it or held by another.
    pub fn hold(
        &mut self,
        key: &AttachmentKey,
        pod: &PodRef,
        subnet: &str,
        ip: Option<IpAddr>,
    ) -> Result<IpAddr, AllocError> {
        if let Some(current) = self.get(key)
            && current.subnet == subnet
            && let Some(&have) = current.ips.first()
            && ip.is_none_or(|want| want == have)
        {
            return Ok(have);
        }
        self.release(key);
        let Some(state) = self.subnets.get(subnet) else {
            return Err(AllocError::UnknownSubnet(subnet.to_owned()));
        };
        let family = state.families().first().copied().unwrap_or(Family::V4);
        let id = self.new_owner(key, pod, subnet);
        let result = match ip {
            Some(ip) => self.claim_all(id, subnet, &[ip], false).map(|()| ip),
            None => self
                .subnets
                .get_mut(subnet)
                .and_then(|s| s.pool(family))
                .ok_or_else(|| AllocError::UnknownSubnet(subnet.to_owned()))
                .and_then(|pool| {
                    pool.allocate(id).map_err(|_| AllocError::Exhausted {
                        subnet: subnet.to_owned(),
                        family,
                    })
                })
                .inspect(|&ip| self.push_ip(id, ip)),
        };
        if result.is_err() {
            self.remove_owner(id);
        }
        result
    }

    fn set_pod(&mut self, key: &AttachmentKey, pod: &PodRef) {
        if let Some(&id) = self.by_key.get(key)
            && let Some(Some(r)) = self.owners.get_mut(id.0 as usize)
        {
            r.pod = pod.clone();
        }
    }

    /// Allocates for `req`, or returns what it already holds when that still satisfies it.
    pub fn allocate(&mut self, req: &Request) -> Result<Allocated, AllocError> {
        let candidates = self.candidates(req)?;
        if let Some(current) = self.get(&req.key).cloned() {
            if candidates.contains(&current.subnet) && self.satisfies(req, &current) {
                self.set_pod(&req.key, &req.pod);
                return Ok(current);
            }
            self.release(&req.key);
        }
        let mut last_err = None;
        for subnet in &candidates {
            match self.allocate_in(req, subnet) {
                Ok(done) => return Ok(done),
                // A full Subnet passes to the next; anything else is the answer.
                Err(e @ AllocError::Exhausted { .. }) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| AllocError::NoSubnet {
            provider: req.key.provider.clone(),
        }))
    }

    /// The Subnets that may serve `req`, in order of preference.
    fn candidates(&self, req: &Request) -> Result<Vec<String>, AllocError> {
        if let Some(ls) = &req.logical_switch {
            return match self.subnets.get(ls) {
                Some(s) if s.config.serves(&req.pod.namespace) => Ok(vec![ls.clone()]),
                Some(_) => Err(AllocError::NamespaceNotServed {
                    provider: req.key.provider.clone(),
                    namespace: req.pod.namespace.clone(),
                }),
                None => Err(AllocError::UnknownSubnet(ls.clone())),
            };
        }
        let base = strip_interface(&req.key.provider, &req.key.ifname);
        let with_provider: Vec<&SubnetState> = self
            .subnets
            .values()
            .filter(|s| s.config.provider == base)
            .collect();
        if with_provider.is_empty() {
            return Err(AllocError::NoSubnet {
                provider: req.key.provider.clone(),
            });
        }
        let mut serving: Vec<String> = with_provider
            .iter()
            .filter(|s| s.config.serves(&req.pod.namespace))
            .map(|s| s.config.name.clone())
            .collect();
        if serving.is_empty() {
            return Err(AllocError::NamespaceNotServed {
                provider: req.key.provider.clone(),
                namespace: req.pod.namespace.clone(),
            });
        }
        // A static address picks the Subnet that contains it.
        if let Some(ip) = req.static_ips.first() {
            serving.sort_by_key(|name| {
                !self.subnets[name]
                    .config
                    .cidrs
                    .iter()
                    .any(|c| c.contains(ip))
            });
        }
        Ok(serving)
    }

    fn satisfies(&self, req: &Request, held: &Allocated) -> bool {
        let statics_ok = req.static_ips.is_empty()
            || (req.static_ips.len() == held.ips.len()
                && req.static_ips.iter().all(|ip| held.ips.contains(ip)));
        let pool_ok = req.ip_pool.is_empty()
            || match req.ordinal {
                Some(n) => req
                    .ip_pool
                    .get(n as usize)
                    .is_some_and(|e| sorted(e) == sorted(&held.ips)),
                None => req.ip_pool.iter().any(|e| sorted(e) == sorted(&held.ips)),
            };
        let family_ok = req
            .family
            .is_none_or(|f| held.ips.iter().all(|ip| Family::of(*ip) == f));
        let mac_ok = req.mac.is_none() || req.mac == held.mac;
        let subnet_macs = self
            .subnets
            .get(&held.subnet)
            .is_some_and(|s| s.allocates_macs() == held.mac.is_some());
        statics_ok && pool_ok && family_ok && mac_ok && subnet_macs
    }

    fn allocate_in(&mut self, req: &Request, subnet: &str) -> Result<Allocated, AllocError> {
        let families = {
            let state = &self.subnets[subnet];
            match req.family {
                Some(f) if state.families().contains(&f) => vec![f],
                Some(f) => {
                    return Err(AllocError::NoFamily {
                        subnet: subnet.to_owned(),
                        family: f,
                    });
                }
                None => state.families(),
            }
        };
        let id = self.new_owner(&req.key, &req.pod, subnet);
        let result = self.fill(id, req, subnet, &families);
        match result {
            Ok(()) => Ok(self.record(id).map_or_else(
                || Allocated {
                    subnet: subnet.to_owned(),
                    ips: Vec::new(),
                    mac: None,
                },
                |r| r.held.clone(),
            )),
            Err(e) => {
                self.remove_owner(id);
                Err(e)
            }
        }
    }

    fn fill(
        &mut self,
        id: OwnerId,
        req: &Request,
        subnet: &str,
        families: &[Family],
    ) -> Result<(), AllocError> {
        if !req.static_ips.is_empty() {
            self.claim_all(id, subnet, &req.static_ips, false)?;
        } else if !req.ip_pool.is_empty() {
            self.claim_from_pool(id, req, subnet)?;
        } else {
            for &family in families {
                let state = self
                    .subnets
                    .get_mut(subnet)
                    .ok_or_else(|| AllocError::UnknownSubnet(subnet.to_owned()))?;
                let pool = state.pool(family).ok_or_else(|| AllocError::NoFamily {
                    subnet: subnet.to_owned(),
                    family,
                })?;
                let ip = pool.allocate(id).map_err(|_| AllocError::Exhausted {
                    subnet: subnet.to_owned(),
                    family,
                })?;
                self.push_ip(id, ip);
            }
        }
        let wants_mac = self
            .subnets
            .get(subnet)
            .is_some_and(SubnetState::allocates_macs);
        if wants_mac {
            match req.mac {
                Some(mac) => self.claim_mac(id, subnet, mac)?,
                None => self.generate_mac(id, subnet, &req.key),
            }
        }
        Ok(())
    }

    fn push_ip(&mut self, id: OwnerId, ip: IpAddr) {
        if let Some(Some(r)) = self.owners.get_mut(id.0 as usize) {
            r.held.ips.push(ip);
            r.held.ips.sort_by_key(IpAddr::is_ipv6);
        }
    }

    fn claim_all(
        &mut self,
        id: OwnerId,
        subnet: &str,
        ips: &[IpAddr],
        restoring: bool,
    ) -> Result<(), AllocError> {
        for &ip in ips {
            let cidrs = self.subnets[subnet].config.cidr_block();
            let state = self
                .subnets
                .get_mut(subnet)
                .ok_or_else(|| AllocError::UnknownSubnet(subnet.to_owned()))?;
            let Some(pool) = state.pool(Family::of(ip)) else {
                return Err(AllocError::OutOfRange {
                    ip,
                    subnet: subnet.to_owned(),
                    cidrs,
                });
            };
            match pool.claim(ip, id) {
                Ok(()) => self.push_ip(id, ip),
                Err(PoolError::OutOfRange { .. } | PoolError::Exhausted { .. }) => {
                    return Err(AllocError::OutOfRange {
                        ip,
                        subnet: subnet.to_owned(),
                        cidrs,
                    });
                }
                // A restored allocation on the gateway (set before the gateway moved) is
                // refused like a conflict.
                Err(PoolError::Gateway { .. }) => {
                    let _ = restoring;
                    return Err(AllocError::Gateway {
                        ip,
                        subnet: subnet.to_owned(),
                    });
                }
                Err(PoolError::Conflict { holder, .. }) => {
                    return Err(AllocError::Conflict {
                        ip,
                        subnet: subnet.to_owned(),
                        holder: self.holder_name(holder),
                    });
                }
            }
        }
        Ok(())
    }

    fn claim_from_pool(
        &mut self,
        id: OwnerId,
        req: &Request,
        subnet: &str,
    ) -> Result<(), AllocError> {
        let entries = req.ip_pool.len();
        if let Some(ordinal) = req.ordinal {
            let entry = req
                .ip_pool
                .get(ordinal as usize)
                .ok_or(AllocError::NoPoolEntry { entries, ordinal })?;
            return self.claim_all(id, subnet, entry, false);
        }
        for entry in &req.ip_pool {
            let free = entry.iter().all(|&ip| self.holder_of(subnet, ip).is_none());
            if free {
                return self.claim_all(id, subnet, entry, false);
            }
        }
        Err(AllocError::PoolExhausted { entries })
    }

    fn claim_mac(&mut self, id: OwnerId, subnet: &str, mac: [u8; 6]) -> Result<(), AllocError> {
        let holder = self
            .subnets
            .get(subnet)
            .and_then(|s| s.macs.get(&mac).copied());
        match holder {
            Some(h) if h != id => Err(AllocError::MacConflict {
                mac: sidelane_api::mac::format(mac),
                subnet: subnet.to_owned(),
                holder: self.holder_name(h),
            }),
            _ => {
                if let Some(s) = self.subnets.get_mut(subnet) {
                    s.macs.insert(mac, id);
                }
                if let Some(Some(r)) = self.owners.get_mut(id.0 as usize) {
                    r.held.mac = Some(mac);
                }
                Ok(())
            }
        }
    }

    /// A MAC derived from the key (stable for the attachment), locally administered unicast,
    /// unique in the Subnet.
    fn generate_mac(&mut self, id: OwnerId, subnet: &str, key: &AttachmentKey) {
        for attempt in 0u64.. {
            let h = FixedState::with_seed(attempt).hash_one(key).to_be_bytes();
            let mac = [(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]];
            let taken = self
                .subnets
                .get(subnet)
                .is_some_and(|s| s.macs.contains_key(&mac));
            if !taken && self.claim_mac(id, subnet, mac).is_ok() {
                return;
            }
        }
    }
}

/// The provider without a trailing `.<ifname>` (the same NAD attached twice).
fn strip_interface<'a>(provider: &'a str, ifname: &str) -> &'a str {
    provider
        .strip_suffix(ifname)
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(provider)
}

fn sorted(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut v = ips.to_vec();
    v.sort();
    v
}

#[cfg(test)]
mod tests;
