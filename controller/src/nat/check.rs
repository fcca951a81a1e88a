//! Checks each NAT object in dependency order (gateways, EIPs, then FIP, SNAT and DNAT
//! rules), holding addresses as it goes; a refusal names the field and value.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use sidelane_api::{annotations::EXTERNAL_NETWORK_LABEL, crd::VpcNatGatewaySpec};

use super::{
    Addresses, DEFAULT_EXTERNAL_SUBNET, DNAT, EIP, FIP, GATEWAY, Resolved, SNAT, Shown, Store,
    Verdict, World,
};
use crate::{
    ovn::{Dnat, GatewayInput},
    subnet::SubnetConfig,
};

/// An accepted EIP.
struct Eip {
    ip: IpAddr,
    gateway: String,
    deleting: bool,
    /// The rules using it, as `<kind>/<name>`.
    users: Vec<String>,
    /// Kinds using it (`fip`, `snat`, `dnat`).
    uses: BTreeSet<&'static str>,
}

pub(super) struct Resolver<'a> {
    store: &'a Store,
    world: &'a World<'a>,
    addresses: &'a mut dyn Addresses,
    held: BTreeSet<String>,
    gateways: BTreeMap<String, GatewayInput>,
    eips: BTreeMap<String, Eip>,
    verdicts: BTreeMap<(&'static str, String), Verdict>,
    /// DNAT (EIP, protocol, port) → the rule holding it.
    forwarded: BTreeMap<(IpAddr, String, u16), String>,
}

fn refuse(field: &str, message: String) -> Verdict {
    Verdict::Refused {
        field: format!("spec.{field}"),
        message,
    }
}

impl<'a> Resolver<'a> {
    pub(super) fn new(
        store: &'a Store,
        world: &'a World<'a>,
        addresses: &'a mut dyn Addresses,
    ) -> Resolver<'a> {
        Resolver {
            store,
            world,
            addresses,
            held: BTreeSet::new(),
            gateways: BTreeMap::new(),
            eips: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            forwarded: BTreeMap::new(),
        }
    }

    fn hold(&mut self, holder: String, subnet: &str, ip: Option<IpAddr>) -> Result<IpAddr, String> {
        let previous = self.store.previous.get(&holder).copied();
        let got = match (ip, previous) {
            (None, Some(p)) => self
                .addresses
                .hold(&holder, subnet, Some(p))
                .or_else(|_| self.addresses.hold(&holder, subnet, None))?,
            _ => self.addresses.hold(&holder, subnet, ip)?,
        };
        self.held.insert(holder);
        Ok(got)
    }

    pub(super) fn gateways(&mut self) {
        let store = self.store;
        for (name, spec) in &store.gateways {
            let verdict = match self.gateway(name, spec) {
                Ok(g) => {
                    let shown = Shown {
                        ip: g.external_ip.to_string(),
                        gateway: name.clone(),
                        uses: g.chassis.clone(),
                        external_subnet: g.external_subnet.clone(),
                        held_for: Vec::new(),
                    };
                    self.gateways.insert(name.clone(), g);
                    Verdict::Accepted(shown)
                }
                Err(v) => v,
            };
            self.verdicts.insert((GATEWAY, name.clone()), verdict);
        }
    }

    fn lan_subnet(&self, spec: &VpcNatGatewaySpec) -> Result<&'a SubnetConfig, Verdict> {
        let world = self.world;
        if spec.vpc.is_empty() {
            return Err(refuse("vpc", "spec.vpc is empty".to_owned()));
        }
        if !world.vpcs.contains(&spec.vpc) {
            return Err(refuse(
                "vpc",
                format!("spec.vpc {:?} names no Vpc", spec.vpc),
            ));
        }
        if let Some((other, _)) = self.gateways.iter().find(|(_, g)| g.vpc == spec.vpc) {
            return Err(refuse(
                "vpc",
                format!(
                    "spec.vpc {:?} already has the VpcNatGateway {other:?}; a Vpc has one",
                    spec.vpc
                ),
            ));
        }
        let Some(&lan) = world.subnets.get(spec.subnet.as_str()) else {
            return Err(refuse(
                "subnet",
                format!("spec.subnet {:?} names no Subnet", spec.subnet),
            ));
        };
        if !lan.is_ovn() || lan.vpc_or_default() != spec.vpc {
            return Err(refuse(
                "subnet",
                format!(
                    "spec.subnet {:?} is not an OVN Subnet of Vpc {:?} (its Vpc: {:?})",
                    spec.subnet,
                    spec.vpc,
                    lan.vpc_or_default()
                ),
            ));
        }
        Ok(lan)
    }

    fn gateway(&mut self, name: &str, spec: &VpcNatGatewaySpec) -> Result<GatewayInput, Verdict> {
        let lan = self.lan_subnet(spec)?;
        let lan_ip = lan_ip(spec, lan)?;
        let external = self.external_subnet(spec)?;
        let chassis = self.chassis(spec, &external.name)?;
        let routes = routes(spec)?;
        let lan_holder = format!("{GATEWAY}/{name}/lanIp");
        self.hold(lan_holder, &lan.name, Some(lan_ip.addr()))
            .map_err(|e| refuse("lanIp", format!("spec.lanIp {}: {e}", lan_ip.addr())))?;
        let external_ip = self
            .hold(format!("{GATEWAY}/{name}"), &external.name, None)
            .map_err(|e| {
                refuse(
                    "externalSubnets",
                    format!(
                        "no address for the gateway port in {:?}: {e}",
                        external.name
                    ),
                )
            })?;
        Ok(GatewayInput {
            name: name.to_owned(),
            vpc: spec.vpc.clone(),
            subnet: lan.name.clone(),
            lan_ip,
            external_subnet: external.name.clone(),
            external_cidr: external.cidrs[0],
            external_gateway: external.gateways[0],
            external_ip,
            chassis,
            snat: BTreeSet::new(),
            fip: BTreeSet::new(),
            dnat: BTreeSet::new(),
            routes,
            internal_cidrs: self
                .world
                .subnets
                .values()
                .filter(|s| s.is_ovn() && s.vpc_or_default() == spec.vpc)
                .flat_map(|s| s.cidrs.iter().copied())
                .collect(),
        })
    }

    fn external_subnet(&self, spec: &VpcNatGatewaySpec) -> Result<&'a SubnetConfig, Verdict> {
        let name = spec
            .external_subnets
            .first()
            .map_or(DEFAULT_EXTERNAL_SUBNET, String::as_str);
        let Some(&s) = self.world.subnets.get(name) else {
            return Err(refuse(
                "externalSubnets",
                format!("the external Subnet {name:?} does not exist"),
            ));
        };
        if s.is_ovn() || !s.cidrs.first().is_some_and(|c| c.addr().is_ipv4()) {
            return Err(refuse(
                "externalSubnets",
                format!(
                    "the external Subnet {name:?} must be an IPv4 Subnet of the external network's provider (not OVN)"
                ),
            ));
        }
        Ok(s)
    }

    /// The nodes that carry `network` (their agent labelled them) and that `selector`
    /// matches (every `key: value` term), by name.
    fn chassis(&self, spec: &VpcNatGatewaySpec, network: &str) -> Result<Vec<String>, Verdict> {
        let mut terms = Vec::new();
        for t in &spec.selector {
            let Some((k, v)) = t.split_once(':').or_else(|| t.split_once('=')) else {
                return Err(refuse(
                    "selector",
                    format!("spec.selector term {t:?} is not \"key: value\""),
                ));
            };
            terms.push((k.trim(), v.trim()));
        }
        let chassis: Vec<String> = self
            .store
            .nodes
            .iter()
            .filter(|(_, labels)| {
                labels
                    .get(EXTERNAL_NETWORK_LABEL)
                    .is_some_and(|n| n == network)
                    && terms
                        .iter()
                        .all(|(k, v)| labels.get(*k).is_some_and(|l| l == v))
            })
            .map(|(n, _)| n.clone())
            .collect();
        if chassis.is_empty() {
            return Err(refuse(
                "selector",
                format!(
                    "no node carrying the external network {network:?} (label \
                     {EXTERNAL_NETWORK_LABEL}, set by the agent's --external-nic) matches \
                     spec.selector {:?}; the gateway waits for one",
                    spec.selector
                ),
            ));
        }
        Ok(chassis)
    }

    pub(super) fn eips(&mut self) {
        let store = self.store;
        for (name, (spec, deleting)) in &store.eips {
            let verdict = match self.eip(name, spec, *deleting) {
                Ok(()) => continue,
                Err(v) => v,
            };
            self.verdicts.insert((EIP, name.clone()), verdict);
        }
    }

    fn eip(
        &mut self,
        name: &str,
        spec: &sidelane_api::crd::IptablesEipSpec,
        deleting: bool,
    ) -> Result<(), Verdict> {
        let Some(g) = self.gateways.get(&spec.nat_gw_dp) else {
            return Err(refuse(
                "natGwDp",
                format!(
                    "spec.natGwDp {:?} names no VpcNatGateway in force",
                    spec.nat_gw_dp
                ),
            ));
        };
        let (subnet, cidr) = (g.external_subnet.clone(), g.external_cidr);
        if !spec.external_subnet.is_empty() && spec.external_subnet != subnet {
            return Err(refuse(
                "externalSubnet",
                format!(
                    "spec.externalSubnet {:?} is not the external Subnet of VpcNatGateway {:?} ({subnet:?})",
                    spec.external_subnet, spec.nat_gw_dp
                ),
            ));
        }
        if !spec.v6_ip.is_empty() {
            return Err(refuse(
                "v6ip",
                format!("spec.v6ip {:?}: IPv6 EIPs are not supported", spec.v6_ip),
            ));
        }
        let wanted = if spec.v4_ip.is_empty() {
            None
        } else {
            let ip: IpAddr = spec.v4_ip.parse().map_err(|_| {
                refuse(
                    "v4ip",
                    format!("spec.v4ip {:?} is not an IPv4 address", spec.v4_ip),
                )
            })?;
            if !ip.is_ipv4() || !cidr.contains(&ip) {
                return Err(refuse(
                    "v4ip",
                    format!("spec.v4ip {ip} is outside the external Subnet {subnet:?} ({cidr})"),
                ));
            }
            Some(ip)
        };
        let ip = self
            .hold(format!("{EIP}/{name}"), &subnet, wanted)
            .map_err(|e| refuse("v4ip", format!("spec.v4ip: {e}")))?;
        self.eips.insert(
            name.to_owned(),
            Eip {
                ip,
                gateway: spec.nat_gw_dp.clone(),
                deleting,
                users: Vec::new(),
                uses: BTreeSet::new(),
            },
        );
        Ok(())
    }

    /// The EIP `name` for a rule of `kind` (`fip` wants it alone): its address and gateway.
    fn use_eip(
        &mut self,
        rule: &str,
        kind: &'static str,
        name: &str,
    ) -> Result<(IpAddr, String), Verdict> {
        let Some(e) = self.eips.get_mut(name) else {
            return Err(refuse(
                "eip",
                format!("spec.eip {name:?} names no IptablesEIP in force"),
            ));
        };
        let alone = kind == "fip" || e.uses.contains("fip");
        if alone && let Some(other) = e.users.first() {
            return Err(refuse(
                "eip",
                format!(
                    "spec.eip {name:?} is used by {other}; an EIP of a FIP serves that FIP alone"
                ),
            ));
        }
        e.uses.insert(kind);
        e.users.push(rule.to_owned());
        Ok((e.ip, e.gateway.clone()))
    }

    pub(super) fn rules(&mut self) {
        let store = self.store;
        for (name, spec) in &store.fips {
            let v = self.fip(name, &spec.eip, &spec.internal_ip);
            self.verdicts.insert((FIP, name.clone()), v);
        }
        for (name, spec) in &store.snats {
            let v = self.snat(name, &spec.eip, &spec.internal_cidr);
            self.verdicts.insert((SNAT, name.clone()), v);
        }
        for (name, spec) in &store.dnats {
            let v = self.dnat(name, spec);
            self.verdicts.insert((DNAT, name.clone()), v);
        }
    }

    fn accepted(ip: IpAddr, gateway: String) -> Verdict {
        Verdict::Accepted(Shown {
            ip: ip.to_string(),
            gateway,
            ..Shown::default()
        })
    }

    fn fip(&mut self, name: &str, eip: &str, internal: &str) -> Verdict {
        let Ok(internal_ip) = internal.parse::<IpAddr>() else {
            return refuse(
                "internalIp",
                format!("spec.internalIp {internal:?} is not an IP address"),
            );
        };
        if let Err(v) = self.in_vpc_of(eip, "internalIp", internal_ip) {
            return v;
        }
        match self.use_eip(&format!("{FIP}/{name}"), "fip", eip) {
            Ok((ip, gw)) => {
                if let Some(g) = self.gateways.get_mut(&gw) {
                    g.fip.insert((internal_ip, ip));
                }
                Self::accepted(ip, gw)
            }
            Err(v) => v,
        }
    }

    fn snat(&mut self, name: &str, eip: &str, cidr: &str) -> Verdict {
        let parsed = cidr
            .parse::<IpNet>()
            .ok()
            .or_else(|| cidr.parse::<IpAddr>().ok().map(IpNet::from));
        let Some(net) = parsed.filter(|n| n.addr().is_ipv4()) else {
            return refuse(
                "internalCIDR",
                format!("spec.internalCIDR {cidr:?} is not an IPv4 CIDR or address"),
            );
        };
        match self.use_eip(&format!("{SNAT}/{name}"), "snat", eip) {
            Ok((ip, gw)) => {
                if let Some(g) = self.gateways.get_mut(&gw) {
                    g.snat.insert((net.trunc(), ip));
                }
                Self::accepted(ip, gw)
            }
            Err(v) => v,
        }
    }

    fn dnat(&mut self, name: &str, spec: &sidelane_api::crd::IptablesDnatRuleSpec) -> Verdict {
        let protocol = spec.protocol.to_ascii_lowercase();
        if protocol != "tcp" && protocol != "udp" {
            return refuse(
                "protocol",
                format!("spec.protocol {:?} is neither tcp nor udp", spec.protocol),
            );
        }
        let Some(external_port) = port(&spec.external_port) else {
            return refuse(
                "externalPort",
                format!(
                    "spec.externalPort {:?} is not a port (1-65535)",
                    spec.external_port
                ),
            );
        };
        let Some(internal_port) = port(&spec.internal_port) else {
            return refuse(
                "internalPort",
                format!(
                    "spec.internalPort {:?} is not a port (1-65535)",
                    spec.internal_port
                ),
            );
        };
        let Ok(internal_ip) = spec.internal_ip.parse::<IpAddr>() else {
            return refuse(
                "internalIp",
                format!(
                    "spec.internalIp {:?} is not an IP address",
                    spec.internal_ip
                ),
            );
        };
        if let Err(v) = self.in_vpc_of(&spec.eip, "internalIp", internal_ip) {
            return v;
        }
        if let Some(ip) = self.eips.get(&spec.eip).map(|e| e.ip)
            && let Some(other) = self.forwarded.get(&(ip, protocol.clone(), external_port))
        {
            return refuse(
                "externalPort",
                format!("{protocol} {ip}:{external_port} is already forwarded by {DNAT} {other:?}"),
            );
        }
        match self.use_eip(&format!("{DNAT}/{name}"), "dnat", &spec.eip) {
            Ok((ip, gw)) => {
                self.forwarded
                    .insert((ip, protocol.clone(), external_port), name.to_owned());
                if let Some(g) = self.gateways.get_mut(&gw) {
                    g.dnat.insert(Dnat {
                        eip: ip,
                        protocol,
                        external_port,
                        internal_ip,
                        internal_port,
                    });
                }
                Self::accepted(ip, gw)
            }
            Err(v) => v,
        }
    }

    /// `ip` lies in an OVN Subnet of the Vpc of `eip`'s gateway (when that EIP is in force;
    /// otherwise the EIP's own refusal comes next).
    fn in_vpc_of(&self, eip: &str, field: &str, ip: IpAddr) -> Result<(), Verdict> {
        let Some(vpc) = self
            .eips
            .get(eip)
            .and_then(|e| self.gateways.get(&e.gateway))
            .map(|g| g.vpc.as_str())
        else {
            return Ok(());
        };
        let inside = self.world.subnets.values().any(|s| {
            s.is_ovn() && s.vpc_or_default() == vpc && s.cidrs.iter().any(|c| c.contains(&ip))
        });
        if inside {
            Ok(())
        } else {
            Err(refuse(
                field,
                format!("spec.{field} {ip} is in no Subnet of Vpc {vpc:?}"),
            ))
        }
    }

    pub(super) fn finish(mut self) -> Resolved {
        for (name, e) in std::mem::take(&mut self.eips) {
            let holder = format!("{EIP}/{name}");
            if e.deleting && e.users.is_empty() {
                self.held.remove(&holder);
                continue;
            }
            let shown = Shown {
                ip: e.ip.to_string(),
                gateway: e.gateway,
                uses: e.uses.iter().map(|u| (*u).to_owned()).collect(),
                external_subnet: String::new(),
                held_for: if e.deleting { e.users } else { Vec::new() },
            };
            self.verdicts.insert((EIP, name), Verdict::Accepted(shown));
        }
        self.addresses.release_others(&self.held);
        Resolved {
            gateways: self.gateways.into_values().collect(),
            verdicts: self.verdicts,
        }
    }
}

/// `lanIp`, checked to lie inside the LAN Subnet and not be its gateway.
fn lan_ip(spec: &VpcNatGatewaySpec, lan: &SubnetConfig) -> Result<IpNet, Verdict> {
    let Ok(ip) = spec.lan_ip.parse::<IpAddr>() else {
        return Err(refuse(
            "lanIp",
            format!("spec.lanIp {:?} is not an IP address", spec.lan_ip),
        ));
    };
    let Some(cidr) = lan.cidrs.iter().find(|c| c.contains(&ip)) else {
        return Err(refuse(
            "lanIp",
            format!(
                "spec.lanIp {ip} is outside Subnet {:?} ({})",
                lan.name,
                lan.cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ));
    };
    if lan.gateways.contains(&ip) || ip == cidr.network() || ip == cidr.broadcast() {
        return Err(refuse(
            "lanIp",
            format!(
                "spec.lanIp {ip} is the gateway, network or broadcast address of Subnet {:?}",
                lan.name
            ),
        ));
    }
    IpNet::new(ip, cidr.prefix_len()).map_err(|e| refuse("lanIp", format!("spec.lanIp {ip}: {e}")))
}

/// `routes`: each `{cidr, nextHopIP}`.
fn routes(spec: &VpcNatGatewaySpec) -> Result<BTreeSet<(IpNet, IpAddr)>, Verdict> {
    let mut out = BTreeSet::new();
    for r in &spec.routes {
        let cidr = r["cidr"].as_str().and_then(|c| c.parse::<IpNet>().ok());
        let via = r["nextHopIP"]
            .as_str()
            .and_then(|v| v.parse::<IpAddr>().ok());
        match (cidr, via) {
            (Some(c), Some(v)) => {
                out.insert((c.trunc(), v));
            }
            _ => {
                return Err(refuse(
                    "routes",
                    format!("spec.routes entry {r} needs a \"cidr\" and a \"nextHopIP\""),
                ));
            }
        }
    }
    Ok(out)
}

fn port(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p > 0)
}
