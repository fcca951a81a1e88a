//! A NAT gateway in OVN's own terms (docs/nat.md): the Vpc's router gains a gateway port on
//! the external Subnet's switch (which reaches the nodes' external network through a
//! `localnet` port), bound to gateway chassis by priority; SNAT and FIP are the router's NAT
//! rows, DNAT with ports its load balancers. `lanIp` is answered by the router itself, and a
//! Vpc route to it leaves through the gateway port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;

use super::{
    Acl, LoadBalancer, Nat, RouterPort, StaticRoute, Switch, SwitchPort, Topology, owned_ids,
    router_port_mac,
};

/// One port forwarding of a gateway (an `IptablesDnatRule`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dnat {
    /// The EIP.
    pub eip: IpAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The EIP's port.
    pub external_port: u16,
    /// The internal address.
    pub internal_ip: IpAddr,
    /// The internal port.
    pub internal_port: u16,
}

/// A checked `VpcNatGateway` with what its EIPs and rules ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayInput {
    /// The `VpcNatGateway`'s name.
    pub name: String,
    /// Its Vpc (router).
    pub vpc: String,
    /// Its LAN Subnet.
    pub subnet: String,
    /// `lanIp`, with the LAN Subnet's prefix length.
    pub lan_ip: IpNet,
    /// The external Subnet's name: the switch's name and the physical network's
    /// (`ovn-bridge-mappings` on the gateway nodes).
    pub external_subnet: String,
    /// The external Subnet's CIDR.
    pub external_cidr: IpNet,
    /// The external Subnet's gateway: the Vpc's next hop out.
    pub external_gateway: IpAddr,
    /// The gateway port's own address on the external Subnet.
    pub external_ip: IpAddr,
    /// The gateway chassis, highest priority first.
    pub chassis: Vec<String>,
    /// SNAT: internal CIDR → EIP.
    pub snat: BTreeSet<(IpNet, IpAddr)>,
    /// FIP: internal address → EIP.
    pub fip: BTreeSet<(IpAddr, IpAddr)>,
    /// Port forwarding.
    pub dnat: BTreeSet<Dnat>,
    /// Extra routes (`routes`: CIDR → next hop on the external Subnet).
    pub routes: BTreeSet<(IpNet, IpAddr)>,
    /// The CIDRs of the Vpc's Subnets: the outside never reaches them but through an EIP.
    pub internal_cidrs: BTreeSet<IpNet>,
}

impl GatewayInput {
    /// The gateway router port's name.
    pub fn port_name(&self) -> String {
        format!("{}-external", self.vpc)
    }
}

/// The priority of the external switch's ACL dropping what comes from outside addressed to a
/// Vpc's own CIDRs.
pub const OUTSIDE_IN_PRIORITY: u16 = 1000;

/// The priority of the first gateway chassis; each next one is one lower.
pub const FIRST_CHASSIS_PRIORITY: u16 = 100;

impl Topology {
    /// Adds NAT gateways to a topology whose Subnets and Vpcs are in. A gateway whose Vpc or
    /// LAN Subnet has no router here is skipped (it was refused before).
    pub fn add_gateways(&mut self, gateways: &[GatewayInput]) {
        for g in gateways {
            if !self.routers.contains_key(&g.vpc) {
                continue;
            }
            self.add_external_switch(g);
            self.add_gateway_port(g);
            self.answer_lan_ip(g);
            self.add_gateway_routes(g);
            self.add_nat(g);
        }
    }

    /// The external Subnet's switch, reaching the physical network through `localnet`; what
    /// comes from outside addressed to the Vpc's own CIDRs is dropped there (only EIPs lead
    /// in).
    fn add_external_switch(&mut self, g: &GatewayInput) {
        let name = &g.external_subnet;
        let mut other_config = BTreeMap::new();
        if g.external_cidr.addr().is_ipv4() {
            other_config.insert("subnet".to_owned(), g.external_cidr.to_string());
        }
        let switch = self.switches.entry(name.clone()).or_insert_with(|| Switch {
            other_config,
            external_ids: owned_ids([("subnet", name), ("external", "true")]),
            acls: BTreeSet::new(),
        });
        let v4: Vec<String> = g
            .internal_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4())
            .map(ToString::to_string)
            .collect();
        if !v4.is_empty() {
            switch.acls.insert(Acl {
                direction: "from-lport".to_owned(),
                priority: OUTSIDE_IN_PRIORITY,
                r#match: format!(
                    "inport == \"ln-{name}\" && ip4.dst == {{{}}}",
                    v4.join(", ")
                ),
                action: "drop".to_owned(),
            });
        }
        self.switch_ports
            .entry(format!("ln-{name}"))
            .or_insert_with(|| SwitchPort {
                switch: name.clone(),
                kind: "localnet".to_owned(),
                addresses: ["unknown".to_owned()].into(),
                port_security: BTreeSet::new(),
                options: [("network_name".to_owned(), name.clone())].into(),
                external_ids: owned_ids([("subnet", name)]),
            });
    }

    /// The Vpc router's port on the external switch, bound to the gateway chassis.
    fn add_gateway_port(&mut self, g: &GatewayInput) {
        let lrp = g.port_name();
        let ids = owned_ids([
            ("vpc", &g.vpc),
            ("vpc-nat-gateway", &g.name),
            ("subnet", &g.external_subnet),
        ]);
        let mut priority = FIRST_CHASSIS_PRIORITY;
        let mut gateway_chassis = BTreeMap::new();
        for c in &g.chassis {
            gateway_chassis.insert(c.clone(), priority);
            priority = priority.saturating_sub(1).max(1);
        }
        self.router_ports.insert(
            lrp.clone(),
            RouterPort {
                router: g.vpc.clone(),
                mac: router_port_mac(&lrp),
                networks: [format!(
                    "{}/{}",
                    g.external_ip,
                    g.external_cidr.prefix_len()
                )]
                .into(),
                gateway_chassis,
                external_ids: ids.clone(),
            },
        );
        self.switch_ports.insert(
            format!("{}-{}", g.external_subnet, g.vpc),
            SwitchPort {
                switch: g.external_subnet.clone(),
                kind: "router".to_owned(),
                addresses: ["router".to_owned()].into(),
                port_security: BTreeSet::new(),
                options: [("router-port".to_owned(), lrp)].into(),
                external_ids: ids,
            },
        );
    }

    /// `lanIp` is a second address of the router's port on the LAN Subnet: no pod holds it,
    /// and it answers ARP and ping as Kube-OVN's gateway pod does.
    fn answer_lan_ip(&mut self, g: &GatewayInput) {
        if let Some(p) = self
            .router_ports
            .get_mut(&sidelane_api::mac::router_port_name(&g.vpc, &g.subnet))
        {
            p.networks.insert(g.lan_ip.to_string());
        }
    }

    /// A Vpc route to `lanIp` leaves through the gateway port (its next hop becomes the
    /// external gateway); without any default route the Vpc gets one; `routes` are added.
    fn add_gateway_routes(&mut self, g: &GatewayInput) {
        let Some(router) = self.routers.get_mut(&g.vpc) else {
            return;
        };
        let lan = g.lan_ip.addr().to_string();
        let out = g.external_gateway.to_string();
        router.static_routes = std::mem::take(&mut router.static_routes)
            .into_iter()
            .map(|mut r| {
                if r.nexthop == lan {
                    r.nexthop.clone_from(&out);
                }
                r
            })
            .collect();
        let default = if g.external_gateway.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        if !router
            .static_routes
            .iter()
            .any(|r| r.ip_prefix == default && r.policy == "dst-ip")
        {
            router.static_routes.insert(StaticRoute {
                ip_prefix: default.to_owned(),
                nexthop: out,
                policy: "dst-ip".to_owned(),
            });
        }
        for (cidr, via) in &g.routes {
            router.static_routes.insert(StaticRoute {
                ip_prefix: cidr.to_string(),
                nexthop: via.to_string(),
                policy: "dst-ip".to_owned(),
            });
        }
    }

    /// SNAT and FIP as NAT rows; DNAT as one load balancer per EIP and protocol.
    fn add_nat(&mut self, g: &GatewayInput) {
        let mut lbs: BTreeMap<String, LoadBalancer> = BTreeMap::new();
        for d in &g.dnat {
            let name = format!("{}-{}-{}", g.name, d.eip, d.protocol);
            let lb = lbs.entry(name).or_insert_with(|| LoadBalancer {
                protocol: d.protocol.clone(),
                vips: BTreeMap::new(),
                external_ids: owned_ids([("vpc-nat-gateway", &g.name), ("vpc", &g.vpc)]),
            });
            lb.vips.insert(
                socket_text(d.eip, d.external_port),
                socket_text(d.internal_ip, d.internal_port),
            );
        }
        let Some(router) = self.routers.get_mut(&g.vpc) else {
            return;
        };
        for (cidr, eip) in &g.snat {
            router.nats.insert(Nat {
                kind: "snat".to_owned(),
                external_ip: eip.to_string(),
                logical_ip: if cidr.prefix_len() == cidr.max_prefix_len() {
                    cidr.addr().to_string()
                } else {
                    cidr.to_string()
                },
            });
        }
        for (internal, eip) in &g.fip {
            router.nats.insert(Nat {
                kind: "dnat_and_snat".to_owned(),
                external_ip: eip.to_string(),
                logical_ip: internal.to_string(),
            });
        }
        router.load_balancers.extend(lbs.keys().cloned());
        self.load_balancers.extend(lbs);
    }
}

/// `ip:port`, with IPv6 in brackets.
fn socket_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
