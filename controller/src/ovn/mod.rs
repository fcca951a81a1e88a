//! The OVN logical topology Sidelane wants in the Northbound database, as plain values
//! ([`Topology`], built by [`build`] from Subnets, Vpcs and allocations), and the operations
//! that turn what the database holds ([`Observed`]) into it ([`diff`]). Pure: the `nb` module talks to the
//! database.
//!
//! Kube-OVN's shapes and names: a Subnet is a `Logical_Switch` of its name (other_config
//! `subnet`, `exclude_ips`, `ipv6_prefix`); a Vpc is a Logical_Router of its name, and Subnets
//! without one belong to `ovn-cluster`; each Subnet of a router gets a router port
//! `<vpc>-<subnet>` holding the gateway address and a switch port `<subnet>-<vpc>` of type
//! `router`; each OVN attachment is a `Logical_Switch_Port` `<pod>.<namespace>.<provider>` with
//! "MAC IP[ IP]" as addresses, and as port security when the pod asks for it.

pub mod diff;
pub mod isolation;
pub mod nat;
pub mod observed;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::subnet::SubnetConfig;

pub use diff::{Plan, diff};
pub use isolation::{GroupInput, Isolation, SubnetIsolation};
pub use nat::{Dnat, GatewayInput};
pub use observed::{Observed, TABLES};

/// The `external_ids` key marking rows Sidelane created; rows without it are never touched.
pub const OWNER_KEY: &str = "sidelane.io/owner";
/// The marker's value.
pub const OWNER: &str = "sidelane-controller";
/// The router of Subnets that name no Vpc (Kube-OVN's default VPC).
pub const DEFAULT_VPC: &str = "ovn-cluster";

/// A Logical_Router.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Router {
    /// Its static routes.
    pub static_routes: BTreeSet<StaticRoute>,
    /// Its NAT rows (a NAT gateway's SNAT and FIP).
    pub nats: BTreeSet<Nat>,
    /// The load balancers it applies (a NAT gateway's port forwarding), by name.
    pub load_balancers: BTreeSet<String>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// A NAT row of a router.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Nat {
    /// `snat` or `dnat_and_snat`.
    pub kind: String,
    /// The external address (an EIP).
    pub external_ip: String,
    /// The internal address or CIDR.
    pub logical_ip: String,
}

/// A `Load_Balancer` (a NAT gateway's port forwarding): `vips` maps `EIP:port` to
/// `address:port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadBalancer {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// `EIP:port` → `address:port`.
    pub vips: BTreeMap<String, String>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// A Logical_Router_Static_Route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaticRoute {
    /// The destination (or source, with policy `src-ip`) prefix.
    pub ip_prefix: String,
    /// The next hop.
    pub nexthop: String,
    /// `dst-ip` or `src-ip`.
    pub policy: String,
}

/// A `Logical_Switch`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Switch {
    /// `other_config` (`subnet`, `exclude_ips`, `ipv6_prefix`).
    pub other_config: BTreeMap<String, String>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
    /// ACLs (a private Subnet's, and the Subnet's `acls`).
    pub acls: BTreeSet<Acl>,
}

/// An ACL (of a switch or a port group). Its `external_ids` are the marker and `parent`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    /// `from-lport` or `to-lport`.
    pub direction: String,
    /// 0 to 32767.
    pub priority: u16,
    /// The OVN match.
    pub r#match: String,
    /// `allow-related`, `drop`...
    pub action: String,
}

/// A `Port_Group`: a security group's ports and ACLs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortGroup {
    /// Its switch ports, by name.
    pub ports: BTreeSet<String>,
    /// Its ACLs.
    pub acls: BTreeSet<Acl>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// An `Address_Set`: the addresses of a security group's members, of one family.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressSet {
    /// The addresses.
    pub addresses: BTreeSet<String>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// A `Logical_Switch_Port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SwitchPort {
    /// The switch it belongs to.
    pub switch: String,
    /// `type`: empty for a VIF, `router` for a router's port.
    pub kind: String,
    /// `addresses`.
    pub addresses: BTreeSet<String>,
    /// `port_security`.
    pub port_security: BTreeSet<String>,
    /// `options` (`router-port` for a router's port).
    pub options: BTreeMap<String, String>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// A Logical_Router_Port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouterPort {
    /// The router it belongs to.
    pub router: String,
    /// `mac`.
    pub mac: String,
    /// `networks`: gateway/prefix of each family.
    pub networks: BTreeSet<String>,
    /// Its gateway chassis (a NAT gateway's port): chassis name → priority.
    pub gateway_chassis: BTreeMap<String, u16>,
    /// `external_ids` (the marker included).
    pub external_ids: BTreeMap<String, String>,
}

/// The whole topology Sidelane owns, by row name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    /// Routers.
    pub routers: BTreeMap<String, Router>,
    /// Switches.
    pub switches: BTreeMap<String, Switch>,
    /// Router ports.
    pub router_ports: BTreeMap<String, RouterPort>,
    /// Switch ports (attachments and routers' ports).
    pub switch_ports: BTreeMap<String, SwitchPort>,
    /// Port groups (security groups, and the one every member of any is in).
    pub port_groups: BTreeMap<String, PortGroup>,
    /// Address sets of security groups' members.
    pub address_sets: BTreeMap<String, AddressSet>,
    /// Load balancers (NAT gateways' port forwarding).
    pub load_balancers: BTreeMap<String, LoadBalancer>,
}

/// A Vpc's part in the topology.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VpcInput {
    /// Its static routes (`spec.staticRoutes`).
    pub static_routes: Vec<StaticRoute>,
}

/// One OVN attachment's allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInput {
    /// The port's name (`<pod>.<namespace>.<provider>`).
    pub name: String,
    /// The Subnet (switch).
    pub subnet: String,
    /// The MAC.
    pub mac: [u8; 6],
    /// The addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// `<namespace>/<pod>`.
    pub pod: String,
    /// The provider.
    pub provider: String,
    /// The pod asked for port security (`<provider>.kubernetes.io/port_security: "true"`).
    pub port_security: bool,
    /// The security groups it joins (`security_groups`), sorted.
    pub security_groups: Vec<String>,
}

/// `external_ids` with the marker and `pairs`.
pub fn owned_ids<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    let mut ids: BTreeMap<String, String> = pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    ids.insert(OWNER_KEY.to_owned(), OWNER.to_owned());
    ids.insert("vendor".to_owned(), "sidelane".to_owned());
    ids
}

/// Kube-OVN's Vpc static route policy in OVN's words.
pub fn route_policy(kube_ovn: &str) -> &'static str {
    if kube_ovn == "policySrc" {
        "src-ip"
    } else {
        "dst-ip"
    }
}

/// A router port's MAC as OVN's rows write it ([`sidelane_api::mac::router_port_mac`]).
pub fn router_port_mac(name: &str) -> String {
    sidelane_api::mac::format(sidelane_api::mac::router_port_mac(name))
}

/// The topology for these Subnets (OVN ones only), Vpcs and attachments, isolated as
/// `isolation` says. Attachments whose Subnet is not an OVN Subnet here get no port.
pub fn build<'a>(
    subnets: impl IntoIterator<Item = &'a SubnetConfig>,
    vpcs: &BTreeMap<String, VpcInput>,
    ports: impl IntoIterator<Item = PortInput>,
    isolation: &Isolation,
) -> Topology {
    let mut t = Topology::default();
    for (name, vpc) in vpcs {
        t.routers.insert(
            name.clone(),
            Router {
                static_routes: vpc.static_routes.iter().cloned().collect(),
                external_ids: owned_ids([("vpc", name)]),
                ..Router::default()
            },
        );
    }
    for s in subnets.into_iter().filter(|s| s.is_ovn()) {
        t.add_subnet(s);
        if let Some(i) = isolation.subnets.get(&s.name) {
            t.isolate_subnet(s, i);
        }
    }
    let mut members = Vec::new();
    for p in ports {
        if t.switches.contains_key(&p.subnet) {
            t.add_port(&p);
            if !p.security_groups.is_empty() {
                members.push(p);
            }
        }
    }
    t.add_security_groups(&isolation.groups, &members);
    t
}

impl Topology {
    /// A Subnet's switch, and its router (if no Vpc made it) with the port pair between them.
    fn add_subnet(&mut self, s: &SubnetConfig) {
        let vpc = s.vpc_or_default().to_owned();
        self.routers.entry(vpc.clone()).or_insert_with(|| Router {
            external_ids: owned_ids([("vpc", &vpc)]),
            ..Router::default()
        });
        self.switches.insert(
            s.name.clone(),
            Switch {
                other_config: switch_config(s),
                external_ids: owned_ids([("subnet", &s.name), ("logical_router", &vpc)]),
                acls: BTreeSet::new(),
            },
        );
        let lrp = sidelane_api::mac::router_port_name(&vpc, &s.name);
        let lsp = format!("{}-{vpc}", s.name);
        self.router_ports.insert(
            lrp.clone(),
            RouterPort {
                router: vpc.clone(),
                mac: router_port_mac(&lrp),
                networks: s
                    .cidrs
                    .iter()
                    .zip(&s.gateways)
                    .map(|(c, g)| format!("{g}/{}", c.prefix_len()))
                    .collect(),
                gateway_chassis: BTreeMap::new(),
                external_ids: owned_ids([("subnet", &s.name), ("vpc", &vpc)]),
            },
        );
        self.switch_ports.insert(
            lsp,
            SwitchPort {
                switch: s.name.clone(),
                kind: "router".to_owned(),
                addresses: ["router".to_owned()].into(),
                port_security: BTreeSet::new(),
                options: [("router-port".to_owned(), lrp)].into(),
                external_ids: owned_ids([("subnet", &s.name), ("vpc", &vpc)]),
            },
        );
    }

    /// An attachment's port on its Subnet's switch.
    fn add_port(&mut self, p: &PortInput) {
        let mut address = sidelane_api::mac::format(p.mac);
        for ip in &p.ips {
            address.push(' ');
            address.push_str(&ip.to_string());
        }
        let ips = p
            .ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.switch_ports.insert(
            p.name.clone(),
            SwitchPort {
                switch: p.subnet.clone(),
                kind: String::new(),
                // As Kube-OVN: only when the pod asks, or link-local IPv6, neighbour discovery
                // and multicast are dropped (the fast path keeps its own spoofing guard).
                port_security: if p.port_security {
                    [address.clone()].into()
                } else {
                    BTreeSet::new()
                },
                addresses: [address].into(),
                options: BTreeMap::new(),
                external_ids: owned_ids([
                    ("pod", &p.pod),
                    ("ls", &p.subnet),
                    ("ip", &ips),
                    ("attachment-provider", &p.provider),
                ]),
            },
        );
    }
}

/// A Subnet switch's `other_config`: `subnet` and `exclude_ips` (IPv4), `ipv6_prefix`.
fn switch_config(s: &SubnetConfig) -> BTreeMap<String, String> {
    let mut other_config = BTreeMap::new();
    let exclude: Vec<String> = s
        .exclude
        .iter()
        .filter(|(a, _)| a.is_ipv4())
        .map(crate::subnet::exclude_entry)
        .collect();
    for cidr in &s.cidrs {
        match cidr.addr() {
            IpAddr::V4(_) => {
                other_config.insert("subnet".to_owned(), cidr.to_string());
                if !exclude.is_empty() {
                    other_config.insert("exclude_ips".to_owned(), exclude.join(" "));
                }
            }
            IpAddr::V6(_) => {
                other_config.insert("ipv6_prefix".to_owned(), cidr.network().to_string());
            }
        }
    }
    other_config
}

#[cfg(test)]
mod tests;
