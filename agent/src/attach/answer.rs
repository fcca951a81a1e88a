//! What an attachment looks like as allocated: the answer to the runtime, the pod end's plan,
//! and the checks on a request before anything is done.

use std::{net::IpAddr, path::PathBuf};

use ipnet::IpNet;
use sidelane_api::{
    allocation::{self, Allocation},
    daemon::{CniRequest, CniResponse, Protocol, ResponseIp},
    network_selection,
};

use super::AttachError;
use crate::{
    dataplane::qos::{Placement, QosTarget},
    link::{self, PodInterfacePlan},
    pods::Annotations,
};

/// The fields every request must carry, and an interface name Linux accepts.
pub(crate) fn check_request(req: &CniRequest) -> Result<(), AttachError> {
    for (field, value) in [
        ("pod_name", &req.pod_name),
        ("pod_namespace", &req.pod_namespace),
        ("if_name", &req.if_name),
        ("net_ns", &req.net_ns),
    ] {
        if value.is_empty() {
            return Err(AttachError::BadRequest {
                field,
                value: value.clone(),
                reason: "required",
            });
        }
    }
    if req.if_name.len() > 15 || req.if_name.contains(['/', ' ']) {
        return Err(AttachError::BadRequest {
            field: "if_name",
            value: req.if_name.clone(),
            reason: "not a valid interface name (1 to 15 bytes, no '/' or spaces)",
        });
    }
    Ok(())
}

/// `default-route` in the pod's network selection: the attachment carries the pod's default
/// route through those gateways (one per family), as `default_route: "true"` with the subnet's
/// gateway does.
pub(crate) fn apply_selection_default_route(
    req: &CniRequest,
    provider: &str,
    annotations: &Annotations,
    alloc: &mut Allocation,
) -> Result<(), AttachError> {
    let Some(value) = annotations.get(network_selection::NETWORKS_ANNOTATION) else {
        return Ok(());
    };
    let selection_err = |reason: String| AttachError::Selection {
        pod: req.pod_key(),
        reason,
    };
    let selections = network_selection::parse(value, &req.pod_namespace)
        .map_err(|e| selection_err(e.to_string()))?;
    for gw in network_selection::default_route_of(&selections, provider, &req.if_name) {
        let gw: IpAddr = gw.parse().map_err(|_| {
            selection_err(format!(
                "{}: default-route {gw:?} is not an IP address",
                network_selection::NETWORKS_ANNOTATION
            ))
        })?;
        let ip = alloc
            .ips
            .iter_mut()
            .find(|ip| ip.address.is_ipv4() == gw.is_ipv4())
            .ok_or_else(|| {
                selection_err(format!(
                    "{}: default-route {gw} has no allocated address of its family on {}",
                    network_selection::NETWORKS_ANNOTATION,
                    req.if_name
                ))
            })?;
        ip.gateway = Some(gw);
        alloc.default_route = true;
    }
    Ok(())
}

/// The interface the calling plugin created inside the pod.
pub(crate) fn pod_device(req: &CniRequest) -> QosTarget {
    QosTarget {
        netns: Some(PathBuf::from(&req.net_ns)),
        ifname: req.if_name.clone(),
        placement: Placement::PodDevice,
    }
}

/// Kube-OVN's IPAM-only answer: the addresses (with a gateway only on eth0), the NAD's routes
/// and the annotation's routes; no MAC, no interface work.
pub fn ipam_response(req: &CniRequest, alloc: &Allocation) -> CniResponse {
    let mut routes = req.routes.clone();
    routes.extend(alloc.routes.iter().cloned());
    CniResponse {
        ips: response_ips(req, alloc),
        routes,
        nicname: req.if_name.clone(),
        dns: req.dns.clone(),
        ..CniResponse::default()
    }
}

/// The addresses, with a gateway only where the pod's default route goes (eth0, or
/// `default_route: "true"`), as Kube-OVN answers.
pub(crate) fn response_ips(req: &CniRequest, alloc: &Allocation) -> Vec<ResponseIp> {
    alloc
        .ips
        .iter()
        .map(|ip| ResponseIp {
            protocol: if ip.address.is_ipv4() {
                Protocol::IPv4
            } else {
                Protocol::IPv6
            },
            ip: ip.address.to_string(),
            cidr: ip.subnet.to_string(),
            gateway: match ip.gateway {
                Some(gw) if req.if_name == "eth0" || alloc.default_route => gw.to_string(),
                _ => String::new(),
            },
        })
        .collect()
}

/// The pod end of an OVN-backed attachment: the allocated MAC and addresses, the NAD's and the
/// annotation's routes (route-replace: one without `dst` replaces the default route), and a
/// default route through the subnet's gateway only when `default_route` asks for it.
pub fn ovn_plan(
    req: &CniRequest,
    alloc: &Allocation,
    mac: Option<&str>,
    mtu: u32,
) -> Result<PodInterfacePlan, AttachError> {
    let route_err = |field, value: &str, reason| AttachError::Route {
        pod: req.pod_key(),
        ifname: req.if_name.clone(),
        field,
        value: value.to_owned(),
        reason,
    };
    let mut routes = Vec::new();
    if alloc.default_route {
        for ip in &alloc.ips {
            if let Some(gw) = ip.gateway {
                routes.push((default_dst(gw), Some(gw)));
            }
        }
    }
    for r in req.routes.iter().chain(&alloc.routes) {
        let gw: Option<IpAddr> = if r.gateway.is_empty() {
            None
        } else {
            Some(
                r.gateway
                    .parse()
                    .map_err(|_| route_err("gw", &r.gateway, "not an IP address"))?,
            )
        };
        let dst: IpNet = if r.destination.is_empty() {
            default_dst(
                gw.unwrap_or(
                    alloc
                        .ips
                        .first()
                        .map_or(IpAddr::from([0, 0, 0, 0]), |i| i.address),
                ),
            )
        } else {
            r.destination
                .parse()
                .map_err(|_| route_err("dst", &r.destination, "not a CIDR block"))?
        };
        routes.push((dst, gw));
    }
    let mac = mac
        .map(link::parse_mac)
        .transpose()
        .map_err(|source| AttachError::Link {
            pod: req.pod_key(),
            ifname: req.if_name.clone(),
            source: Box::new(source),
        })?;
    Ok(PodInterfacePlan {
        ifname: req.if_name.clone(),
        mac,
        mtu: Some(mtu),
        addresses: alloc
            .ips
            .iter()
            .map(allocation::AllocatedIp::with_prefix)
            .collect(),
        routes,
    })
}

fn default_dst(family_of: IpAddr) -> IpNet {
    let any = if family_of.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    };
    // A zero prefix is valid for either family.
    IpNet::new(any, 0).unwrap_or(IpNet::from(any))
}
