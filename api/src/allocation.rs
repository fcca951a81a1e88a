//! The controller's allocation for one attachment, read from the pod's annotations.
//!
//! The controller writes `<provider>.kubernetes.io/{ip_address, mac_address, cidr, gateway,
//! allocated}` (and for OVN subnets `logical_switch`); users may add `routes` and
//! `default_route`. When the same NAD is attached twice, the keys carry the interface:
//! `<provider>.<ifname>.kubernetes.io/...`; as in Kube-OVN, the agent uses that prefix whenever
//! `<provider>.<ifname>.kubernetes.io/ip_address` exists.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::{
    annotations::{AnnotationError, key},
    daemon::Route,
};

/// One address of the attachment, in its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocatedIp {
    /// The address.
    pub address: IpAddr,
    /// The subnet's CIDR block (`cidr`), whose prefix length the address takes.
    pub subnet: IpNet,
    /// The subnet's gateway of that family, if the controller wrote one.
    pub gateway: Option<IpAddr>,
}

impl AllocatedIp {
    /// The address with the subnet's prefix length (`10.16.0.5/16`).
    pub fn with_prefix(&self) -> IpNet {
        // The prefix length comes from a parsed IpNet of the same family: always valid.
        IpNet::new(self.address, self.subnet.prefix_len()).unwrap_or(self.subnet)
    }
}

/// What the controller allocated for one attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// The annotation prefix used (`<provider>` or `<provider>.<ifname>`).
    pub prefix: String,
    /// One address per family, in the annotation's order.
    pub ips: Vec<AllocatedIp>,
    /// The MAC (`mac_address`); IPAM-only subnets allocate none.
    pub mac: Option<String>,
    /// Extra routes (`routes`, JSON `[{"dst", "gw"}]`).
    pub routes: Vec<Route>,
    /// Whether this attachment carries the pod's default route (`default_route: "true"`).
    pub default_route: bool,
    /// The logical switch (OVN subnets only).
    pub logical_switch: Option<String>,
}

/// The annotation prefix for `provider` on `ifname` (see the module docs).
pub fn prefix(annotations: &BTreeMap<String, String>, provider: &str, ifname: &str) -> String {
    let per_interface = format!("{provider}.{ifname}");
    if annotations.contains_key(&key(&per_interface, "ip_address")) {
        per_interface
    } else {
        provider.to_owned()
    }
}

/// Reads the allocation of `provider` on `ifname`. `Ok(None)` while the controller has not
/// allocated yet (no `allocated: "true"` or no `ip_address`); an error names the key and value
/// that cannot be used.
pub fn read(
    annotations: &BTreeMap<String, String>,
    provider: &str,
    ifname: &str,
) -> Result<Option<Allocation>, AnnotationError> {
    let prefix = prefix(annotations, provider, ifname);
    let get = |field: &str| {
        let k = key(&prefix, field);
        annotations
            .get(&k)
            .map(|v| (k, v.trim()))
            .filter(|(_, v)| !v.is_empty())
    };
    let allocated = get("allocated").is_some_and(|(_, v)| v == "true");
    let Some((ip_key, ip_value)) = get("ip_address") else {
        return Ok(None);
    };
    if !allocated {
        return Ok(None);
    }
    let invalid = |k: &str, v: &str, reason: &str| AnnotationError::Invalid {
        key: k.to_owned(),
        value: v.to_owned(),
        reason: reason.to_owned(),
    };
    let (cidr_key, cidr_value) = get("cidr")
        .ok_or_else(|| invalid(&key(&prefix, "cidr"), "", "missing beside ip_address"))?;
    let subnets = cidr_value
        .split(',')
        .map(|s| {
            s.trim().parse::<IpNet>().map_err(|_| {
                invalid(
                    &cidr_key,
                    cidr_value,
                    "expected CIDR blocks, comma-separated",
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gateways = match get("gateway") {
        Some((gw_key, gw_value)) => gw_value
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| invalid(&gw_key, gw_value, "expected addresses, comma-separated"))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let mut ips = Vec::new();
    for part in ip_value.split(',') {
        let address: IpAddr = part
            .trim()
            .parse()
            .map_err(|_| invalid(&ip_key, ip_value, "expected addresses, comma-separated"))?;
        let subnet = *subnets
            .iter()
            .find(|s| s.contains(&address))
            .ok_or_else(|| {
                invalid(
                    &ip_key,
                    ip_value,
                    &format!("{address} lies in none of the subnets {cidr_value}"),
                )
            })?;
        let gateway = gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == address.is_ipv4());
        ips.push(AllocatedIp {
            address,
            subnet,
            gateway,
        });
    }
    let routes = match get("routes") {
        Some((routes_key, routes_value)) => serde_json::from_str::<Vec<Route>>(routes_value)
            .map_err(|e| {
                invalid(
                    &routes_key,
                    routes_value,
                    &format!("expected [{{\"dst\", \"gw\"}}]: {e}"),
                )
            })?,
        None => Vec::new(),
    };
    let default_route = match get("default_route") {
        Some((_, "true")) => true,
        Some((_, "false")) | None => false,
        Some((k, v)) => return Err(invalid(&k, v, "expected \"true\" or \"false\"")),
    };
    Ok(Some(Allocation {
        ips,
        mac: get("mac_address").map(|(_, v)| v.to_owned()),
        routes,
        default_route,
        logical_switch: get("logical_switch").map(|(_, v)| v.to_owned()),
        prefix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const P: &str = "attachnet.default.ovn";

    #[test]
    fn a_dual_stack_allocation_is_read_with_prefixes_gateways_and_mac() {
        let a = annotations(&[
            ("attachnet.default.ovn.kubernetes.io/allocated", "true"),
            (
                "attachnet.default.ovn.kubernetes.io/ip_address",
                "172.17.0.5,fd00::5",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/cidr",
                "172.17.0.0/16,fd00::/120",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/gateway",
                "172.17.0.1,fd00::1",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/mac_address",
                "00:00:00:8a:3c:4f",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/logical_switch",
                "subnet1",
            ),
        ]);
        let alloc = read(&a, P, "net1").expect("valid").expect("allocated");
        assert_eq!(alloc.prefix, P);
        let got: Vec<(String, Option<String>)> = alloc
            .ips
            .iter()
            .map(|ip| {
                (
                    ip.with_prefix().to_string(),
                    ip.gateway.map(|g| g.to_string()),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("172.17.0.5/16".to_owned(), Some("172.17.0.1".to_owned())),
                ("fd00::5/120".to_owned(), Some("fd00::1".to_owned())),
            ]
        );
        assert_eq!(alloc.mac.as_deref(), Some("00:00:00:8a:3c:4f"));
        assert_eq!(alloc.logical_switch.as_deref(), Some("subnet1"));
        assert!(!alloc.default_route);
    }

    #[test]
    fn nothing_is_allocated_until_the_controller_says_so() {
        let a = annotations(&[(
            "attachnet.default.ovn.kubernetes.io/ip_address",
            "172.17.0.5",
        )]);
        assert_eq!(read(&a, P, "net1").expect("valid"), None);
        assert_eq!(read(&BTreeMap::new(), P, "net1").expect("valid"), None);
    }

    #[test]
    fn the_per_interface_keys_win_when_the_same_nad_is_attached_twice() {
        let a = annotations(&[
            ("attachnet.default.ovn.kubernetes.io/allocated", "true"),
            (
                "attachnet.default.ovn.kubernetes.io/ip_address",
                "172.17.0.5",
            ),
            ("attachnet.default.ovn.kubernetes.io/cidr", "172.17.0.0/16"),
            ("attachnet.default.ovn.net2.kubernetes.io/allocated", "true"),
            (
                "attachnet.default.ovn.net2.kubernetes.io/ip_address",
                "172.17.0.6",
            ),
            (
                "attachnet.default.ovn.net2.kubernetes.io/cidr",
                "172.17.0.0/16",
            ),
        ]);
        let net1 = read(&a, P, "net1").expect("valid").expect("allocated");
        let net2 = read(&a, P, "net2").expect("valid").expect("allocated");
        assert_eq!(net1.ips[0].address.to_string(), "172.17.0.5");
        assert_eq!(net2.prefix, "attachnet.default.ovn.net2");
        assert_eq!(net2.ips[0].address.to_string(), "172.17.0.6");
    }

    #[test]
    fn routes_and_default_route_are_read() {
        let a = annotations(&[
            ("macvlan.default.kubernetes.io/allocated", "true"),
            ("macvlan.default.kubernetes.io/ip_address", "172.18.0.9"),
            ("macvlan.default.kubernetes.io/cidr", "172.18.0.0/16"),
            (
                "macvlan.default.kubernetes.io/routes",
                r#"[{"dst":"10.0.0.0/8","gw":"172.18.0.254"}]"#,
            ),
            ("macvlan.default.kubernetes.io/default_route", "true"),
        ]);
        let alloc = read(&a, "macvlan.default", "net1")
            .expect("valid")
            .expect("allocated");
        assert_eq!(
            alloc.routes,
            vec![Route {
                destination: "10.0.0.0/8".to_owned(),
                gateway: "172.18.0.254".to_owned()
            }]
        );
        assert!(alloc.default_route);
        assert_eq!(alloc.mac, None);
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let base = [
            ("macvlan.default.kubernetes.io/allocated", "true"),
            ("macvlan.default.kubernetes.io/cidr", "172.18.0.0/16"),
        ];
        let mut a = annotations(&base);
        a.insert(
            "macvlan.default.kubernetes.io/ip_address".to_owned(),
            "10.9.9.9".to_owned(),
        );
        let err = read(&a, "macvlan.default", "net1").expect_err("outside the subnet");
        let msg = err.to_string();
        assert!(
            msg.contains("macvlan.default.kubernetes.io/ip_address"),
            "{msg}"
        );
        assert!(msg.contains("10.9.9.9"), "{msg}");

        a.insert(
            "macvlan.default.kubernetes.io/ip_address".to_owned(),
            "172.18.0.300".to_owned(),
        );
        let msg = read(&a, "macvlan.default", "net1")
            .expect_err("bad address")
            .to_string();
        assert!(msg.contains("172.18.0.300"), "{msg}");

        a.insert(
            "macvlan.default.kubernetes.io/ip_address".to_owned(),
            "172.18.0.3".to_owned(),
        );
        a.insert(
            "macvlan.default.kubernetes.io/routes".to_owned(),
            "not json".to_owned(),
        );
        let msg = read(&a, "macvlan.default", "net1")
            .expect_err("bad routes")
            .to_string();
        assert!(
            msg.contains("macvlan.default.kubernetes.io/routes"),
            "{msg}"
        );
        assert!(msg.contains("not json"), "{msg}");
    }
}
