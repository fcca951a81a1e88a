//! A Subnet's spec, defaulted and validated as Kube-OVN does it (`formatSubnet` and
//! `util.ValidateSubnet`), so that a Subnet written for Kube-OVN means the same here and a bad
//! one is refused with the same words.
//!
//! Defaulting: the CIDR is normalised to its network address; the gateway defaults to the
//! first usable address of each family; the gateways join `excludeIps`, whose ranges are merged
//! and sorted; `protocol` is rewritten from the CIDR; `provider` defaults to `ovn`.

use std::{cmp::Ordering, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use thiserror::Error;

/// The address families of a Subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// IPv4 only.
    IPv4,
    /// IPv6 only.
    IPv6,
    /// Both.
    Dual,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::IPv4 => "IPv4",
            Protocol::IPv6 => "IPv6",
            Protocol::Dual => "Dual",
        })
    }
}

/// The Subnet fields the controller reads, as written by the user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubnetInput {
    /// `metadata.name`.
    pub name: String,
    /// `spec.cidrBlock`: `v4`, `v6` or `v4,v6`.
    pub cidr_block: String,
    /// `spec.gateway`: `gw` or `gw4,gw6`; may be empty.
    pub gateway: String,
    /// `spec.excludeIps`: addresses and `a..b` ranges.
    pub exclude_ips: Vec<String>,
    /// `spec.provider` (empty: `ovn`).
    pub provider: String,
    /// `spec.protocol` (rewritten from the CIDR).
    pub protocol: String,
    /// `spec.vpc`.
    pub vpc: String,
    /// `spec.namespaces`.
    pub namespaces: Vec<String>,
    /// `spec.mtu`.
    pub mtu: Option<u32>,
}

/// A Subnet the controller can allocate from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetConfig {
    /// Its name (and logical switch).
    pub name: String,
    /// Its provider.
    pub provider: String,
    /// Its families.
    pub protocol: Protocol,
    /// The CIDRs, IPv4 first.
    pub cidrs: Vec<IpNet>,
    /// The gateway of each CIDR, same order.
    pub gateways: Vec<IpAddr>,
    /// Excluded inclusive ranges, merged and sorted (gateways included).
    pub exclude: Vec<(IpAddr, IpAddr)>,
    /// The namespaces it serves (empty: every namespace).
    pub namespaces: Vec<String>,
    /// Its VPC, if any.
    pub vpc: String,
    /// Its MTU, if set.
    pub mtu: Option<u32>,
}

/// Why a Subnet is refused (Kube-OVN's messages).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SubnetError {
    /// A CIDR does not parse or is not allowed.
    #[error("subnet {subnet} cidr {cidr} is invalid")]
    InvalidCidr {
        /// The Subnet.
        subnet: String,
        /// The CIDR as written.
        cidr: String,
    },
    /// A CIDR has upper-case hex digits.
    #[error("subnet {subnet} cidr {cidr} v6 ip address can not contain upper case")]
    UpperCase {
        /// The Subnet.
        subnet: String,
        /// The CIDR.
        cidr: String,
    },
    /// A CIDR overlaps a reserved block.
    #[error("{cidr} conflict with {what} cidr {reserved}")]
    Reserved {
        /// The CIDR.
        cidr: String,
        /// `v4 loopback` and the like.
        what: &'static str,
        /// The reserved block.
        reserved: &'static str,
    },
    /// A /32 or /128 leaves no address to hand out.
    #[error("subnet {subnet} cidr {cidr}: a /{prefix} has no address to allocate")]
    HostPrefix {
        /// The Subnet.
        subnet: String,
        /// The CIDR.
        cidr: String,
        /// Its prefix length.
        prefix: u8,
    },
    /// The gateway is outside the CIDR.
    #[error("gateway {gateway} is not in cidr {cidr}")]
    GatewayOutside {
        /// The gateway.
        gateway: String,
        /// The CIDR block.
        cidr: String,
    },
    /// An `excludeIps` entry has upper-case letters (Kube-OVN refuses them; it does not
    /// lowercase them).
    #[error("subnet exclude ip {0} can not contain upper case")]
    ExcludeUpperCase(String),
    /// The gateway has upper-case letters.
    #[error("subnet gateway {0} v6 ip address can not contain upper case")]
    GatewayUpperCase(String),
    /// An `excludeIps` entry is not an address.
    #[error("ip {0} in excludeIps is not a valid address")]
    ExcludeAddress(String),
    /// An `excludeIps` range is malformed.
    #[error("{0} in excludeIps is not a valid ip range")]
    ExcludeRange(String),
    /// `protocol` names no family.
    #[error("{0} is not a valid protocol type")]
    Protocol(String),
    /// The MTU of an IPv6 subnet is below IPv6's minimum.
    #[error("validate ipv6 subnet mtu {0} should be greater than 1280")]
    Ipv6Mtu(u32),
    /// Two OVN Subnets of one VPC overlap (Kube-OVN's 409).
    #[error("subnet {subnet} cidr {cidr} is conflict with subnet {other} cidr {other_cidr}")]
    Overlap {
        /// The Subnet refused.
        subnet: String,
        /// Its CIDR block.
        cidr: String,
        /// The Subnet it overlaps.
        other: String,
        /// That Subnet's CIDR block.
        other_cidr: String,
    },
    /// The Subnet is named as its VPC.
    #[error("subnet name {0} should not be equal to vpc name")]
    NamedAsVpc(String),
    /// A spec field has the wrong type (`mtu: "1400"`).
    #[error(transparent)]
    Spec(#[from] sidelane_api::crd::SpecError),
}

const V4_RESERVED: [(&str, &str); 4] = [
    ("v4 loopback", "127.0.0.0/8"),
    ("v4 broadcast", "255.255.255.255/32"),
    ("v4 multicast", "224.0.0.0/4"),
    ("v4 link local", "169.254.0.0/16"),
];
const V6_RESERVED: [(&str, &str); 3] = [
    ("v6 loopback", "::1/128"),
    ("v6 multicast", "ff00::/8"),
    ("v6 link local", "fe80::/10"),
];

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn cmp_ip(a: IpAddr, b: IpAddr) -> Ordering {
    (a.is_ipv6(), int(a)).cmp(&(b.is_ipv6(), int(b)))
}

/// The address after `ip`, if any.
fn next(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(a) => u32::from(a)
            .checked_add(1)
            .map(|n| IpAddr::from(n.to_be_bytes())),
        IpAddr::V6(a) => u128::from(a)
            .checked_add(1)
            .map(|n| IpAddr::from(n.to_be_bytes())),
    }
}

/// The first usable address of `cidr` (Kube-OVN's default gateway).
fn first_usable(cidr: IpNet) -> IpAddr {
    if cidr.hosts().next().is_some() && cidr.prefix_len() + 1 < cidr.max_prefix_len() {
        next(cidr.network()).unwrap_or(cidr.network())
    } else {
        cidr.network()
    }
}

/// Parses one `excludeIps` entry.
///
/// Kube-OVN's checks and messages, in its order: upper case, more than two parts, each part an
/// address (an empty part too: `10.16.0.1..` is `ip  in excludeIps is not a valid address`),
/// start before end. A range across families is refused as a range as well (Kube-OVN compares
/// them as numbers).
pub fn parse_exclude(entry: &str) -> Result<(IpAddr, IpAddr), SubnetError> {
    let entry = entry.trim();
    if entry.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(SubnetError::ExcludeUpperCase(entry.to_owned()));
    }
    let address =
        |part: &str| IpAddr::from_str(part).map_err(|_| SubnetError::ExcludeAddress(part.into()));
    match entry.split("..").collect::<Vec<_>>()[..] {
        [one] => {
            let ip = address(one)?;
            Ok((ip, ip))
        }
        [a, b] => {
            let bad = || SubnetError::ExcludeRange(entry.to_owned());
            let a = address(a)?;
            let b = address(b)?;
            if a.is_ipv4() != b.is_ipv4() || cmp_ip(a, b) == Ordering::Greater {
                return Err(bad());
            }
            Ok((a, b))
        }
        _ => Err(SubnetError::ExcludeRange(entry.to_owned())),
    }
}

/// Merges and sorts ranges (adjacent ones join).
pub fn merge(mut ranges: Vec<(IpAddr, IpAddr)>) -> Vec<(IpAddr, IpAddr)> {
    ranges.sort_by(|a, b| cmp_ip(a.0, b.0));
    let mut out: Vec<(IpAddr, IpAddr)> = Vec::with_capacity(ranges.len());
    for (s, e) in ranges {
        if let Some(last) = out.last_mut()
            && last.1.is_ipv4() == s.is_ipv4()
            && next(last.1).is_none_or(|n| cmp_ip(s, n) != Ordering::Greater)
        {
            if cmp_ip(e, last.1) == Ordering::Greater {
                last.1 = e;
            }
            continue;
        }
        out.push((s, e));
    }
    out
}

/// One CIDR of `cidrBlock`, normalised, refused when Kube-OVN refuses it.
fn parse_cidr(name: &str, raw: &str) -> Result<IpNet, SubnetError> {
    let invalid = || SubnetError::InvalidCidr {
        subnet: name.to_owned(),
        cidr: raw.to_owned(),
    };
    if raw.contains(':') && raw.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(SubnetError::UpperCase {
            subnet: name.to_owned(),
            cidr: raw.to_owned(),
        });
    }
    let cidr = IpNet::from_str(raw).map_err(|_| invalid())?.trunc();
    if cidr.prefix_len() == cidr.max_prefix_len() {
        return Err(SubnetError::HostPrefix {
            subnet: name.to_owned(),
            cidr: raw.to_owned(),
            prefix: cidr.prefix_len(),
        });
    }
    let reserved: &[(&str, &str)] = if cidr.addr().is_ipv4() {
        &V4_RESERVED
    } else {
        &V6_RESERVED
    };
    for &(what, block) in reserved {
        if block.parse::<IpNet>().is_ok_and(|b| overlaps(cidr, b)) {
            return Err(SubnetError::Reserved {
                cidr: raw.to_owned(),
                what,
                reserved: block,
            });
        }
    }
    if cidr.addr().is_ipv4() && cidr.network() == IpAddr::from([0, 0, 0, 0]) {
        return Err(SubnetError::Reserved {
            cidr: raw.to_owned(),
            what: "v4 zero",
            reserved: "0.0.0.0/32",
        });
    }
    Ok(cidr)
}

impl SubnetConfig {
    /// Defaults and validates `input`.
    pub fn from_input(input: &SubnetInput) -> Result<SubnetConfig, SubnetError> {
        let name = input.name.clone();
        let mut cidrs = Vec::new();
        for raw in input.cidr_block.split(',').map(str::trim) {
            cidrs.push(parse_cidr(&name, raw)?);
        }
        cidrs.sort_by_key(|c| c.addr().is_ipv6());
        let protocol = match (
            cidrs.iter().filter(|c| c.addr().is_ipv4()).count(),
            cidrs.iter().filter(|c| c.addr().is_ipv6()).count(),
        ) {
            (1, 0) => Protocol::IPv4,
            (0, 1) => Protocol::IPv6,
            (1, 1) => Protocol::Dual,
            _ => {
                return Err(SubnetError::InvalidCidr {
                    subnet: name,
                    cidr: input.cidr_block.clone(),
                });
            }
        };
        if !input.protocol.is_empty()
            && !["IPv4", "IPv6", "Dual", "Mac"].contains(&input.protocol.as_str())
        {
            return Err(SubnetError::Protocol(input.protocol.clone()));
        }
        if input.gateway.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(SubnetError::GatewayUpperCase(input.gateway.clone()));
        }
        let given: Vec<IpAddr> = input
            .gateway
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(|g| {
                IpAddr::from_str(g).map_err(|_| SubnetError::GatewayOutside {
                    gateway: g.to_owned(),
                    cidr: input.cidr_block.clone(),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut gateways = Vec::with_capacity(cidrs.len());
        for cidr in &cidrs {
            let gw = given
                .iter()
                .copied()
                .find(|g| g.is_ipv4() == cidr.addr().is_ipv4())
                .unwrap_or_else(|| first_usable(*cidr));
            if !cidr.contains(&gw) {
                return Err(SubnetError::GatewayOutside {
                    gateway: gw.to_string(),
                    cidr: input.cidr_block.clone(),
                });
            }
            gateways.push(gw);
        }
        if let Some(g) = given.iter().find(|g| !cidrs.iter().any(|c| c.contains(*g))) {
            return Err(SubnetError::GatewayOutside {
                gateway: g.to_string(),
                cidr: input.cidr_block.clone(),
            });
        }
        let mut exclude = input
            .exclude_ips
            .iter()
            .map(|e| parse_exclude(e))
            .collect::<Result<Vec<_>, _>>()?;
        exclude.extend(gateways.iter().map(|&g| (g, g)));
        let exclude = merge(exclude);
        if let Some(mtu) = input.mtu
            && protocol != Protocol::IPv4
            && mtu != 0
            && mtu < 1280
        {
            return Err(SubnetError::Ipv6Mtu(mtu));
        }
        if !input.vpc.is_empty() && input.vpc == name {
            return Err(SubnetError::NamedAsVpc(name));
        }
        Ok(SubnetConfig {
            name,
            provider: if input.provider.is_empty() {
                "ovn".to_owned()
            } else {
                input.provider.clone()
            },
            protocol,
            cidrs,
            gateways,
            exclude,
            namespaces: input.namespaces.clone(),
            vpc: input.vpc.clone(),
            mtu: input.mtu.filter(|m| *m > 0),
        })
    }

    /// `spec.cidrBlock` as Kube-OVN writes it back.
    pub fn cidr_block(&self) -> String {
        join(&self.cidrs)
    }

    /// `spec.gateway` as Kube-OVN writes it back.
    pub fn gateway(&self) -> String {
        join(&self.gateways)
    }

    /// `spec.excludeIps` as Kube-OVN writes it back: merged, `a..b` for ranges, string-sorted.
    pub fn exclude_ips(&self) -> Vec<String> {
        let mut out: Vec<String> = self.exclude.iter().map(exclude_entry).collect();
        out.sort();
        out
    }

    /// The gateway of `family_of`'s family.
    pub fn gateway_of(&self, family_of: IpAddr) -> Option<IpAddr> {
        self.gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == family_of.is_ipv4())
    }

    /// The CIDR of `family_of`'s family.
    pub fn cidr_of(&self, family_of: IpAddr) -> Option<IpNet> {
        self.cidrs
            .iter()
            .copied()
            .find(|c| c.addr().is_ipv4() == family_of.is_ipv4())
    }

    /// Whether it is an OVN Subnet (a logical switch), as opposed to IPAM only.
    pub fn is_ovn(&self) -> bool {
        self.provider == "ovn"
            || self
                .provider
                .rsplit_once('.')
                .is_some_and(|(_, last)| last == "ovn")
    }

    /// The VPC it belongs to: OVN Subnets without one belong to Kube-OVN's `ovn-cluster`.
    pub fn vpc_or_default(&self) -> &str {
        if self.vpc.is_empty() && self.is_ovn() {
            "ovn-cluster"
        } else {
            &self.vpc
        }
    }

    /// Kube-OVN's overlap rule: two OVN Subnets of one VPC may not share addresses (IPAM-only
    /// Subnets are separate networks and may).
    pub fn conflicts_with(&self, other: &SubnetConfig) -> bool {
        self.name != other.name
            && self.is_ovn()
            && other.is_ovn()
            && self.vpc_or_default() == other.vpc_or_default()
            && self
                .cidrs
                .iter()
                .any(|a| other.cidrs.iter().any(|b| overlaps(*a, *b)))
    }

    /// Whether it serves pods of `namespace`.
    pub fn serves(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

/// One merged `excludeIps` range as written: the address, or `a..b`.
pub fn exclude_entry(&(a, b): &(IpAddr, IpAddr)) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}..{b}")
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(cidr: &str, gateway: &str, exclude: &[&str]) -> SubnetInput {
        SubnetInput {
            name: "attachnet".to_owned(),
            cidr_block: cidr.to_owned(),
            gateway: gateway.to_owned(),
            exclude_ips: exclude.iter().map(|s| (*s).to_owned()).collect(),
            provider: "attachnet.default.ovn".to_owned(),
            protocol: "IPv4".to_owned(),
            ..SubnetInput::default()
        }
    }

    #[test]
    fn the_seeds_subnet_is_defaulted_as_kube_ovn_writes_it() {
        let cfg = SubnetConfig::from_input(&input(
            "172.17.0.0/16",
            "172.17.0.1",
            &["172.17.0.0..172.17.0.10"],
        ))
        .expect("valid");
        assert_eq!(cfg.cidr_block(), "172.17.0.0/16");
        assert_eq!(cfg.gateway(), "172.17.0.1");
        assert_eq!(cfg.exclude_ips(), ["172.17.0.0..172.17.0.10"]);
        assert_eq!(cfg.protocol, Protocol::IPv4);
    }

    #[test]
    fn the_cidr_is_normalised_the_gateway_defaulted_and_excluded_and_ranges_merged() {
        let cfg = SubnetConfig::from_input(&SubnetInput {
            protocol: String::new(),
            ..input(
                "10.66.3.7/16,fd00:66::9/120",
                "",
                &[
                    "10.66.0.20..10.66.0.30",
                    "10.66.0.25..10.66.0.40",
                    "10.66.0.41",
                ],
            )
        })
        .expect("valid");
        assert_eq!(cfg.cidr_block(), "10.66.0.0/16,fd00:66::/120");
        assert_eq!(cfg.gateway(), "10.66.0.1,fd00:66::1");
        assert_eq!(cfg.protocol, Protocol::Dual);
        assert_eq!(
            cfg.exclude_ips(),
            ["10.66.0.1", "10.66.0.20..10.66.0.41", "fd00:66::1"]
        );
    }

    #[test]
    fn bad_subnets_are_refused_with_kube_ovns_messages() {
        let cases = [
            (
                input("172.17.0.0/16", "10.0.0.1", &[]),
                "gateway 10.0.0.1 is not in cidr 172.17.0.0/16",
            ),
            (
                input("127.1.0.0/16", "", &[]),
                "127.1.0.0/16 conflict with v4 loopback cidr 127.0.0.0/8",
            ),
            (
                input("172.17.0.0/16", "", &["172.17.0.x"]),
                "ip 172.17.0.x in excludeIps is not a valid address",
            ),
            (
                input("172.17.0.0/16", "", &["172.17.0.9..172.17.0.2"]),
                "172.17.0.9..172.17.0.2 in excludeIps is not a valid ip range",
            ),
            (
                input("172.17.0.0/16", "", &["1..2..3"]),
                "1..2..3 in excludeIps is not a valid ip range",
            ),
            (
                input("10.16.0.0/16", "", &["10.16.0.1.."]),
                "ip  in excludeIps is not a valid address",
            ),
            (
                input("10.16.0.0/16", "", &["10.16.0.1..10.16.0.x"]),
                "ip 10.16.0.x in excludeIps is not a valid address",
            ),
            (
                input("fd00::/64", "", &["FD00::5"]),
                "subnet exclude ip FD00::5 can not contain upper case",
            ),
            (
                input("fd00::/64", "FD00::1", &[]),
                "subnet gateway FD00::1 v6 ip address can not contain upper case",
            ),
            (input("fd00::/64", "", &[]), "there is no error"),
            (
                input("FD00::/64", "", &[]),
                "subnet attachnet cidr FD00::/64 v6 ip address can not contain upper case",
            ),
            (
                input("172.17.0.5/32", "", &[]),
                "subnet attachnet cidr 172.17.0.5/32: a /32 has no address to allocate",
            ),
            (
                input("172.17.0.0/33", "", &[]),
                "subnet attachnet cidr 172.17.0.0/33 is invalid",
            ),
            (
                SubnetInput {
                    protocol: "IPv5".into(),
                    ..input("172.17.0.0/16", "", &[])
                },
                "IPv5 is not a valid protocol type",
            ),
            (
                SubnetInput {
                    vpc: "attachnet".into(),
                    ..input("172.17.0.0/16", "", &[])
                },
                "subnet name attachnet should not be equal to vpc name",
            ),
            (
                SubnetInput {
                    mtu: Some(1200),
                    ..input("fd00::/64", "", &[])
                },
                "validate ipv6 subnet mtu 1200 should be greater than 1280",
            ),
        ];
        for (input, want) in cases {
            match SubnetConfig::from_input(&input) {
                Ok(_) => assert_eq!(want, "there is no error", "{input:?}"),
                Err(e) => assert_eq!(e.to_string(), want),
            }
        }
    }

    #[test]
    fn a_slash_31_is_allowed_and_its_gateway_is_its_first_address() {
        let cfg = SubnetConfig::from_input(&input("10.9.0.0/31", "", &[])).expect("valid");
        assert_eq!(cfg.gateway(), "10.9.0.0");
    }
}
