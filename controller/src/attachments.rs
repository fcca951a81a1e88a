//! From a pod to the attachments it asks for, and from an allocation to the annotations the
//! agent (ours or Kube-OVN's) reads. Pure.
//!
//! A pod's attachments are its `k8s.v1.cni.cncf.io/networks` entries whose NAD is ours. Each
//! gets an annotation prefix: the provider, or `<provider>.<ifname>` for every attachment of a
//! NAD listed more than once (Kube-OVN #6762). What the user wrote under that prefix is read as
//! Kube-OVN reads it: `ip_address` and `mac_address` (static, until `allocated` is `"true"`,
//! after which they are the allocation itself and are claimed back exactly), `ip_pool`,
//! `logical_switch`, `ip_family`; `ips` and `mac` from the selection element count as static.
//! A problem with one attachment refuses that attachment only: the others are still served.

use std::{collections::BTreeMap, net::IpAddr};

use sidelane_api::{
    annotations::key,
    mac,
    nad::{NadConfig, NadError},
    network_selection::{self, NETWORKS_ANNOTATION},
    qos::QosSpec,
};

use crate::{
    ipam::{Allocated, AttachmentKey, Family, Holder, PodRef, Request},
    subnet::SubnetConfig,
};

/// Multus's annotation for the NAD that gives the pod's eth0.
pub const DEFAULT_NETWORK_ANNOTATION: &str = "v1.multus-cni.io/default-network";

/// What the controller knows of a pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The UID.
    pub uid: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// The StatefulSet that owns it, if one does.
    pub statefulset: Option<String>,
}

impl PodView {
    /// The pod as IPAM knows it.
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }

    /// The StatefulSet ordinal (`web-3` → 3), when a StatefulSet owns the pod.
    pub fn ordinal(&self) -> Option<u32> {
        self.statefulset.as_ref()?;
        self.name.rsplit_once('-')?.1.parse().ok()
    }
}

/// What the controller found for a NAD a pod names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NadLookup {
    /// No such NAD.
    Missing,
    /// It exists but cannot be used.
    Invalid(NadError),
    /// Another plugin's NAD with other IPAM: not ours to serve.
    Foreign,
    /// Ours.
    Ours(NadConfig),
}

/// An `ip_pool` value: addresses, or the names of IPPool resources to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSpec {
    /// Entries of one address, or one per family.
    Entries(Vec<Vec<IpAddr>>),
    /// IPPool names.
    Named(Vec<String>),
}

/// One attachment the pod asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// `namespace/name` of its NAD.
    pub nad: String,
    /// The annotation prefix its allocation is written under.
    pub prefix: String,
    /// What to ask IPAM (`ip_pool` entries filled in when given as addresses).
    pub request: Request,
    /// `ip_pool` given as IPPool names, for the caller to resolve into `request.ip_pool`.
    pub pool_names: Vec<String>,
    /// Whether the pod already carries this allocation (`allocated: "true"`).
    pub already_allocated: bool,
    /// The pod asked for port security on its OVN port (`port_security: "true"`).
    pub port_security: bool,
    /// The security groups its OVN port joins (`security_groups`), sorted.
    pub security_groups: Vec<String>,
}

/// An attachment (or the whole selection) the controller refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// What is refused: an annotation key or `namespace/name` of a NAD.
    pub subject: String,
    /// Why, naming the value.
    pub reason: String,
}

/// Everything a pod asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Asked {
    /// The attachments to allocate.
    pub wanted: Vec<Wanted>,
    /// What cannot be served.
    pub refused: Vec<Refusal>,
    /// Worth an event, not a refusal (a NAD whose `provider` field disagrees).
    pub warnings: Vec<String>,
}

/// Parses a comma list of addresses (an address may carry a `/prefix`, which is dropped).
fn parse_ips(value: &str) -> Result<Vec<IpAddr>, String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let addr = s.split_once('/').map_or(s, |(a, _)| a);
            addr.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address"))
        })
        .collect()
}

/// Parses `ip_pool`: entries split on `;` when present (each `v4` or `v4,v6`), else on `,`
/// with adjacent addresses of different families paired into one dual-stack entry; a value
/// that is not addresses names IPPool resources.
pub fn parse_ip_pool(value: &str) -> PoolSpec {
    let tokens: Vec<&str> = value
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if tokens.iter().any(|t| t.parse::<IpAddr>().is_err()) {
        return PoolSpec::Named(tokens.iter().map(|t| (*t).to_owned()).collect());
    }
    if value.contains(';') {
        return PoolSpec::Entries(
            value
                .split(';')
                .map(|e| parse_ips(e).unwrap_or_default())
                .filter(|e| !e.is_empty())
                .collect(),
        );
    }
    let ips: Vec<IpAddr> = tokens.iter().filter_map(|t| t.parse().ok()).collect();
    let mut entries: Vec<Vec<IpAddr>> = Vec::new();
    let mut i = 0;
    while i < ips.len() {
        match ips.get(i + 1) {
            Some(next) if next.is_ipv4() != ips[i].is_ipv4() => {
                entries.push(vec![ips[i], *next]);
                i += 2;
            }
            _ => {
                entries.push(vec![ips[i]]);
                i += 1;
            }
        }
    }
    PoolSpec::Entries(entries)
}

/// What `pod` asks for, given how its NADs look up.
pub fn asked_by(pod: &PodView, lookup: &dyn Fn(&str, &str) -> NadLookup) -> Asked {
    let mut out = Asked::default();
    let mut selections = Vec::new();
    // Multus's `v1.multus-cni.io/default-network` names the NAD that gives eth0 (the seeds'
    // "macvlan as the main NIC"); it comes first, as Kube-OVN puts it.
    if let Some(value) = pod.annotations.get(DEFAULT_NETWORK_ANNOTATION) {
        match network_selection::parse(value, &pod.namespace) {
            Ok(mut s) if s.len() == 1 => {
                s[0].interface = Some("eth0".to_owned());
                selections.extend(s);
            }
            Ok(_) => out.refused.push(Refusal {
                subject: DEFAULT_NETWORK_ANNOTATION.to_owned(),
                reason: format!("{value:?} must name exactly one NetworkAttachmentDefinition"),
            }),
            Err(e) => out.refused.push(Refusal {
                subject: DEFAULT_NETWORK_ANNOTATION.to_owned(),
                reason: e
                    .to_string()
                    .replace(NETWORKS_ANNOTATION, DEFAULT_NETWORK_ANNOTATION),
            }),
        }
    }
    let defaults = selections.len();
    if let Some(value) = pod.annotations.get(NETWORKS_ANNOTATION) {
        match network_selection::parse(value, &pod.namespace) {
            Ok(s) => selections.extend(s),
            Err(e) => {
                out.refused.push(Refusal {
                    subject: NETWORKS_ANNOTATION.to_owned(),
                    reason: e.to_string(),
                });
                return out;
            }
        }
    }
    for (i, sel) in selections.iter().enumerate() {
        // Multus numbers the attachments of the networks annotation from net1.
        let position = i + 1 - defaults.min(i + 1);
        let nad = format!("{}/{}", sel.namespace, sel.name);
        let config = match lookup(&sel.namespace, &sel.name) {
            NadLookup::Ours(c) => c,
            NadLookup::Foreign => continue,
            NadLookup::Missing => {
                out.refused.push(Refusal {
                    subject: nad.clone(),
                    reason: format!("NetworkAttachmentDefinition {nad} not found"),
                });
                continue;
            }
            NadLookup::Invalid(e) => {
                out.refused.push(Refusal {
                    subject: nad.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        if let Some(w) = config.provider_mismatch() {
            out.warnings
                .push(format!("NetworkAttachmentDefinition {nad}: {w}"));
        }
        let ifname = sel.interface_or_default(position.max(1));
        let listed = selections
            .iter()
            .filter(|s| s.name == sel.name && s.namespace == sel.namespace)
            .count();
        let first_of_nad = selections
            .iter()
            .position(|s| s.name == sel.name && s.namespace == sel.namespace)
            == Some(i);
        let prefix = if listed > 1 {
            format!("{}.{ifname}", config.provider)
        } else {
            config.provider.clone()
        };
        match wanted(pod, sel, &config, &nad, &prefix, &ifname, first_of_nad) {
            Ok(w) => out.wanted.push(w),
            Err(r) => out.refused.push(r),
        }
    }
    out
}

fn wanted(
    pod: &PodView,
    sel: &network_selection::NetworkSelection,
    config: &NadConfig,
    nad: &str,
    prefix: &str,
    ifname: &str,
    first_of_nad: bool,
) -> Result<Wanted, Refusal> {
    // The user's keys under the prefix; the first attachment of a NAD listed twice also reads
    // the plain provider's keys.
    let get = |field: &str| -> Option<(String, &str)> {
        let k = key(prefix, field);
        if let Some(v) = pod.annotations.get(&k) {
            return Some((k, v.trim()));
        }
        if first_of_nad && prefix != config.provider {
            let k = key(&config.provider, field);
            return pod.annotations.get(&k).map(|v| (k, v.trim()));
        }
        None
    };
    let refuse = |subject: String, reason: String| Refusal { subject, reason };
    // A malformed rate is refused before anything is allocated (as Kube-OVN's webhook does),
    // not left for the CNI ADD to fail on.
    QosSpec::from_annotations(&pod.annotations, prefix)
        .map_err(|e| refuse(nad.to_owned(), e.to_string()))?;
    let already_allocated = pod
        .annotations
        .get(&key(prefix, "allocated"))
        .is_some_and(|v| v == "true");
    let mut static_ips = Vec::new();
    if !sel.ips.is_empty() && !already_allocated {
        static_ips = parse_ips(&sel.ips.join(",")).map_err(|e| {
            refuse(
                NETWORKS_ANNOTATION.to_owned(),
                format!("{nad}: ips {:?}: {e}", sel.ips),
            )
        })?;
    } else if let Some((k, v)) = get("ip_address").filter(|(_, v)| !v.is_empty()) {
        static_ips = parse_ips(v)
            .map_err(|e| refuse(k.clone(), format!("{v:?} is not a valid {k}: {e}")))?;
    }
    let mac_text = if already_allocated {
        get("mac_address").map(|(k, v)| (k, v.to_owned()))
    } else {
        sel.mac
            .clone()
            .map(|m| (NETWORKS_ANNOTATION.to_owned(), m))
            .or_else(|| get("mac_address").map(|(k, v)| (k, v.to_owned())))
    };
    let mac = match mac_text.filter(|(_, v)| !v.is_empty()) {
        Some((k, v)) => Some(mac::parse(&v).ok_or_else(|| {
            refuse(
                k.clone(),
                format!("{v:?} is not a valid {k}: expected six hex octets"),
            )
        })?),
        None => None,
    };
    let (ip_pool, pool_names) = match get("ip_pool").filter(|(_, v)| !v.is_empty()) {
        Some((_, v)) if !already_allocated => match parse_ip_pool(v) {
            PoolSpec::Entries(e) => (e, Vec::new()),
            PoolSpec::Named(n) => (Vec::new(), n),
        },
        _ => (Vec::new(), Vec::new()),
    };
    // Kube-OVN's values, exactly (it compares them as written).
    let family = match get("ip_family") {
        None | Some((_, "")) => None,
        Some((_, "ipv4")) => Some(Family::V4),
        Some((_, "ipv6")) => Some(Family::V6),
        Some((k, v)) => {
            return Err(refuse(
                k.clone(),
                format!("{v:?} is not a valid {k}: expected ipv4 or ipv6"),
            ));
        }
    };
    let holder = match &pod.statefulset {
        Some(_) => Holder::StatefulSetSlot {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
        },
        None => Holder::Pod {
            uid: pod.uid.clone(),
        },
    };
    Ok(Wanted {
        nad: nad.to_owned(),
        prefix: prefix.to_owned(),
        request: Request {
            key: AttachmentKey {
                holder,
                provider: config.provider.clone(),
                ifname: ifname.to_owned(),
            },
            pod: pod.pod_ref(),
            logical_switch: get("logical_switch")
                .map(|(_, v)| v.to_owned())
                .filter(|v| !v.is_empty()),
            static_ips,
            ip_pool,
            ordinal: pod.ordinal(),
            family,
            mac,
        },
        pool_names,
        already_allocated,
        port_security: get("port_security").is_some_and(|(_, v)| v == "true"),
        security_groups: sidelane_api::security_group::membership(&pod.annotations, prefix),
    })
}

/// The annotations that carry `alloc` under `prefix`, as Kube-OVN writes them.
pub fn annotations_for(
    prefix: &str,
    alloc: &Allocated,
    subnet: &SubnetConfig,
) -> BTreeMap<String, String> {
    let join = |items: Vec<String>| items.join(",");
    let mut out = BTreeMap::new();
    out.insert(
        key(prefix, "ip_address"),
        join(alloc.ips.iter().map(ToString::to_string).collect()),
    );
    out.insert(
        key(prefix, "cidr"),
        join(
            alloc
                .ips
                .iter()
                .filter_map(|ip| subnet.cidr_of(*ip))
                .map(|c| c.to_string())
                .collect(),
        ),
    );
    out.insert(
        key(prefix, "gateway"),
        join(
            alloc
                .ips
                .iter()
                .filter_map(|ip| subnet.gateway_of(*ip))
                .map(|g| g.to_string())
                .collect(),
        ),
    );
    if let Some(mac) = alloc.mac {
        out.insert(key(prefix, "mac_address"), mac::format(mac));
    }
    out.insert(key(prefix, "logical_switch"), alloc.subnet.clone());
    out.insert(key(prefix, "allocated"), "true".to_owned());
    out
}

#[cfg(test)]
mod tests;
