//! What the `sidelane` command line shows, as text: Subnets and their usage, the attachments of a
//! pod (read from its annotations with the one parser in `sidelane-api`), and the QoS and
//! fast-path counters of a node's interfaces (the agent's `/attachments`). Pure functions from
//! data to tables, so the binary stays a thin shell over the API server and the agent.

use std::{collections::BTreeMap, fmt::Write as _};

use sidelane_api::{
    allocation,
    crd::{Subnet, SubnetStatus},
    network_selection::{self, NETWORKS_ANNOTATION},
    qos::{QosSpec, RateLimit},
};

use crate::metrics::{AttachmentView, QosDirectionView};

/// A plain text table: columns as wide as their widest cell, two spaces apart.
#[derive(Debug)]
struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut l = String::new();
            for (i, cell) in cells.enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                let _ = write!(l, "{cell:<w$}  ");
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn count(v: Option<f64>) -> String {
    // Kube-OVN writes the counts as JSON numbers with a fraction; they are whole.
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "address counts are whole, non-negative and far below 2^53"
    )]
    v.map_or_else(|| "-".to_owned(), |n| (n.max(0.0) as u64).to_string())
}

/// What a Subnet's conditions say: `invalid: <why>`, `full`, `ok`, or `pending` before the
/// controller has written any.
fn state(status: Option<&SubnetStatus>) -> String {
    let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let is = |kind: &str, value: &str| {
        conditions
            .iter()
            .find(|c| c.kind == kind)
            .filter(|c| c.status == value)
    };
    if let Some(c) = is("Validated", "False") {
        format!("invalid: {}", c.message)
    } else if is("Full", "True").is_some() {
        "full".to_owned()
    } else if conditions.is_empty() {
        "pending".to_owned()
    } else {
        "ok".to_owned()
    }
}

/// The Subnets with their provider, Vpc, CIDR, gateway, address usage and state (from the
/// status the controller keeps; an invalid Subnet says why), sorted by name.
pub fn subnets_table(subnets: &[Subnet]) -> String {
    let mut sorted: Vec<&Subnet> = subnets.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut t = Table::new(vec![
        "NAME",
        "PROVIDER",
        "VPC",
        "CIDR",
        "GATEWAY",
        "USED",
        "AVAILABLE",
        "EXCLUDED",
        "STATE",
    ]);
    for s in sorted {
        let spec = &s.spec;
        // A Subnet written as the non-primary document writes it (`cidr:`) before the
        // controller has defaulted `cidrBlock`.
        let cidr = if spec.cidr_block.is_empty() {
            spec.other
                .get("cidr")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        } else {
            spec.cidr_block.clone()
        };
        let status = s.status.as_ref();
        let used = |v4: Option<f64>, v6: Option<f64>| match (v4, v6) {
            (Some(a), Some(b)) if b > 0.0 => format!("{}+{}", count(Some(a)), count(Some(b))),
            (Some(a), _) => count(Some(a)),
            (None, b) => count(b),
        };
        t.row(vec![
            s.metadata.name.clone().unwrap_or_default(),
            or_dash(&spec.provider),
            or_dash(&spec.vpc),
            or_dash(&cidr),
            or_dash(&spec.gateway),
            used(
                status.and_then(|st| st.v4_using_ips),
                status.and_then(|st| st.v6_using_ips),
            ),
            used(
                status.and_then(|st| st.v4_available_ips),
                status.and_then(|st| st.v6_available_ips),
            ),
            or_dash(&spec.exclude_ips.join(",")),
            state(status),
        ]);
    }
    t.render()
}

fn rate(limit: RateLimit) -> String {
    match (limit.rate_mbps, limit.burst_mbit) {
        (0, _) => "-".to_owned(),
        (r, None) => format!("{r} Mbit/s"),
        (r, Some(b)) => format!("{r} Mbit/s (burst {b} Mbit)"),
    }
}

/// The providers a pod has allocations for: every `<prefix>.kubernetes.io/allocated: "true"`.
fn allocated_prefixes(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations
        .iter()
        .filter(|(_, v)| v.trim() == "true")
        .filter_map(|(k, _)| k.strip_suffix(".kubernetes.io/allocated"))
        .map(str::to_owned)
        .collect()
}

/// The interface a provider's attachment takes, from the pod's network selection: `net<N>`
/// by position unless the element names one; `eth0` for Kube-OVN's primary (`ovn`).
fn interface_of(annotations: &BTreeMap<String, String>, namespace: &str, prefix: &str) -> String {
    if prefix == "ovn" {
        return "eth0".to_owned();
    }
    let Some(value) = annotations.get(NETWORKS_ANNOTATION) else {
        return "?".to_owned();
    };
    let Ok(selections) = network_selection::parse(value, namespace) else {
        return "?".to_owned();
    };
    selections
        .iter()
        .enumerate()
        .find(|(i, s)| {
            let base = format!("{}.{}", s.name, s.namespace);
            let ifname = s.interface_or_default(i + 1);
            [base.clone(), format!("{base}.ovn")]
                .iter()
                .any(|provider| {
                    // `<provider>` or the per-interface `<provider>.<ifname>`.
                    prefix == provider
                        || prefix
                            .strip_prefix(provider.as_str())
                            .and_then(|rest| rest.strip_prefix('.'))
                            .is_some_and(|rest| rest == ifname)
                })
        })
        .map_or_else(|| "?".to_owned(), |(i, s)| s.interface_or_default(i + 1))
}

/// A pod's attachments as the controller allocated them: interface, provider, addresses,
/// MAC, gateway, logical switch, routes and QoS, with any annotation that cannot be read named
/// with its value.
pub fn pod_attachments(
    namespace: &str,
    name: &str,
    annotations: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "pod {namespace}/{name}");
    if let Some(networks) = annotations.get(NETWORKS_ANNOTATION) {
        let _ = writeln!(out, "  {NETWORKS_ANNOTATION}: {networks}");
    }
    let prefixes = allocated_prefixes(annotations);
    if prefixes.is_empty() {
        let _ = writeln!(
            out,
            "  no allocation yet (no <provider>.kubernetes.io/allocated: \"true\")"
        );
        return out;
    }
    let mut t = Table::new(vec![
        "INTERFACE",
        "PROVIDER",
        "ADDRESSES",
        "MAC",
        "GATEWAY",
        "SWITCH",
        "ROUTES",
        "INGRESS",
        "EGRESS",
    ]);
    let mut problems = Vec::new();
    for prefix in &prefixes {
        let ifname = interface_of(annotations, namespace, prefix);
        let alloc = match allocation::read(annotations, prefix, &ifname) {
            Ok(Some(a)) => a,
            Ok(None) => continue,
            Err(e) => {
                problems.push(format!("{prefix}: {e}"));
                continue;
            }
        };
        let qos = match QosSpec::from_annotations(annotations, prefix) {
            Ok(q) => (rate(q.ingress), rate(q.egress)),
            Err(e) => {
                problems.push(format!("{prefix}: {e}"));
                ("?".to_owned(), "?".to_owned())
            }
        };
        let mut routes: Vec<String> = alloc
            .routes
            .iter()
            .map(|r| {
                let dst = if r.destination.is_empty() {
                    "default"
                } else {
                    &r.destination
                };
                if r.gateway.is_empty() {
                    dst.to_owned()
                } else {
                    format!("{dst} via {}", r.gateway)
                }
            })
            .collect();
        if alloc.default_route {
            routes.insert(0, "default (default_route)".to_owned());
        }
        t.row(vec![
            ifname,
            prefix.clone(),
            alloc
                .ips
                .iter()
                .map(|ip| ip.with_prefix().to_string())
                .collect::<Vec<_>>()
                .join(","),
            alloc.mac.unwrap_or_else(|| "-".to_owned()),
            or_dash(
                &alloc
                    .ips
                    .iter()
                    .filter_map(|ip| ip.gateway)
                    .map(|g| g.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            alloc.logical_switch.unwrap_or_else(|| "-".to_owned()),
            or_dash(&routes.join("; ")),
            qos.0,
            qos.1,
        ]);
    }
    for line in t.render().lines() {
        let _ = writeln!(out, "  {line}");
    }
    for p in problems {
        let _ = writeln!(out, "  cannot read {p}");
    }
    out
}

fn direction_cells(d: Option<&QosDirectionView>) -> [String; 3] {
    match d {
        None => ["-".to_owned(), "-".to_owned(), "-".to_owned()],
        Some(d) if d.rate_mbps == 0 => [
            "unlimited".to_owned(),
            d.passed_packets.to_string(),
            d.dropped_packets.to_string(),
        ],
        Some(d) => [
            format!("{} Mbit/s {}", d.rate_mbps, d.mode),
            d.passed_packets.to_string(),
            d.dropped_packets.to_string(),
        ],
    }
}

/// The agent's attachments with their QoS (per direction: limit and mode, packets passed and
/// dropped) and fast-path counters (frames forwarded, handed to OVS, spoofed).
pub fn interfaces_table(views: &[AttachmentView]) -> String {
    let mut t = Table::new(vec![
        "POD",
        "IF",
        "KIND",
        "HOST-IF",
        "IN-LIMIT",
        "IN-PASS",
        "IN-DROP",
        "OUT-LIMIT",
        "OUT-PASS",
        "OUT-DROP",
        "FP-HITS",
        "FP-MISSES",
        "FP-SPOOFED",
    ]);
    for v in views {
        let [in_limit, in_pass, in_drop] = direction_cells(v.qos.as_ref().map(|q| &q.ingress));
        let [out_limit, out_pass, out_drop] = direction_cells(v.qos.as_ref().map(|q| &q.egress));
        let fp = |f: fn(&crate::metrics::FastpathView) -> u64| {
            v.fastpath
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| f(c).to_string())
        };
        t.row(vec![
            format!("{}/{}", v.namespace, v.pod),
            v.interface.clone(),
            v.kind.clone(),
            or_dash(&v.host_interface),
            in_limit,
            in_pass,
            in_drop,
            out_limit,
            out_pass,
            out_drop,
            fp(|c| c.hits),
            fp(|c| c.misses),
            fp(|c| c.spoofed),
        ]);
    }
    t.render()
}

/// One attachment in full: every counter with its bytes.
pub fn interface_detail(v: &AttachmentView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}/{} {} ({}, provider {}, container {})",
        v.namespace, v.pod, v.interface, v.kind, v.provider, v.container_id
    );
    if !v.host_interface.is_empty() {
        let _ = writeln!(out, "  host end: {}", v.host_interface);
    }
    match &v.qos {
        None => {
            let _ = writeln!(out, "  QoS: no limit set (no programs attached)");
        }
        Some(q) => {
            for (name, d) in [("into the pod", &q.ingress), ("out of the pod", &q.egress)] {
                let limit = if d.rate_mbps == 0 {
                    "unlimited".to_owned()
                } else {
                    format!(
                        "{} Mbit/s, {}, burst {} B",
                        d.rate_mbps, d.mode, d.burst_bytes
                    )
                };
                let _ = writeln!(
                    out,
                    "  QoS {name}: {limit}; passed {} packets / {} B, dropped {} packets / {} B",
                    d.passed_packets, d.passed_bytes, d.dropped_packets, d.dropped_bytes
                );
            }
        }
    }
    match &v.fastpath {
        None if v.kind == "ovn" => {
            let _ = writeln!(out, "  fast path: off (the agent runs without it)");
        }
        None => {
            let _ = writeln!(
                out,
                "  fast path: not applicable (another plugin's interface)"
            );
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "  fast path: {} frames / {} B forwarded ({} routed between Subnets), {} handed to OVS, {} spoofed (never fast-pathed), {} isolated (security groups: to OVS's ACLs), {} TTL expiring (to OVN's router)",
                c.hits, c.hit_bytes, c.routed, c.misses, c.spoofed, c.isolated, c.expired
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use sidelane_api::crd::{Condition, SubnetSpec};

    use super::*;
    use crate::metrics::{FastpathView, QosView};

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn subnets_table_shows_usage_and_falls_back_to_the_documents_cidr_field() {
        let mut a = Subnet::new(
            "attachnet",
            SubnetSpec {
                cidr_block: "172.17.0.0/16".to_owned(),
                gateway: "172.17.0.1".to_owned(),
                provider: "attachnet.default.ovn".to_owned(),
                exclude_ips: vec!["172.17.0.0..172.17.0.10".to_owned()],
                ..SubnetSpec::default()
            },
        );
        a.status = Some(SubnetStatus {
            v4_using_ips: Some(3.0),
            v4_available_ips: Some(65_520.0),
            conditions: vec![condition("Validated", "True", "")],
            ..SubnetStatus::default()
        });
        let mut other = BTreeMap::new();
        other.insert("cidr".to_owned(), serde_json::json!("10.100.0.0/16"));
        let b = Subnet::new(
            "subnet-secondary",
            SubnetSpec {
                vpc: "vpc-secondary".to_owned(),
                provider: "kube-ovn-vpc-network.default.ovn".to_owned(),
                other,
                ..SubnetSpec::default()
            },
        );
        let text = subnets_table(&[b, a]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("NAME"), "{text}");
        let attachnet: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            attachnet,
            [
                "attachnet",
                "attachnet.default.ovn",
                "-",
                "172.17.0.0/16",
                "172.17.0.1",
                "3",
                "65520",
                "172.17.0.0..172.17.0.10",
                "ok"
            ]
        );
        let secondary: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(secondary[3], "10.100.0.0/16", "{text}");
        assert_eq!(secondary[2], "vpc-secondary", "{text}");
        assert_eq!(secondary.last(), Some(&"pending"), "{text}");
    }

    fn condition(kind: &str, status: &str, message: &str) -> Condition {
        Condition {
            kind: kind.to_owned(),
            status: status.to_owned(),
            message: message.to_owned(),
            ..Condition::default()
        }
    }

    #[test]
    fn subnets_table_marks_an_invalid_subnet_with_why_and_a_full_one() {
        let mut broken = Subnet::new(
            "broken",
            SubnetSpec {
                cidr_block: "10.88.0.0/24".to_owned(),
                gateway: "10.99.0.1".to_owned(),
                ..SubnetSpec::default()
            },
        );
        broken.status = Some(SubnetStatus {
            conditions: vec![condition(
                "Validated",
                "False",
                "gateway 10.99.0.1 is not in cidr 10.88.0.0/24",
            )],
            ..SubnetStatus::default()
        });
        let mut full = Subnet::new("full", SubnetSpec::default());
        full.status = Some(SubnetStatus {
            conditions: vec![
                condition("Validated", "True", ""),
                condition("Full", "True", "every address of the subnet is in use"),
            ],
            ..SubnetStatus::default()
        });
        let text = subnets_table(&[broken, full]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].ends_with("invalid: gateway 10.99.0.1 is not in cidr 10.88.0.0/24"),
            "{text}"
        );
        assert!(lines[2].trim_end().ends_with("full"), "{text}");
    }

    #[test]
    fn pod_attachments_name_each_interface_with_its_allocation_routes_and_qos() {
        let a = annotations(&[
            (
                "k8s.v1.cni.cncf.io/networks",
                "default/attachnet, default/macvlan",
            ),
            ("attachnet.default.ovn.kubernetes.io/allocated", "true"),
            (
                "attachnet.default.ovn.kubernetes.io/ip_address",
                "172.17.0.12",
            ),
            ("attachnet.default.ovn.kubernetes.io/cidr", "172.17.0.0/16"),
            ("attachnet.default.ovn.kubernetes.io/gateway", "172.17.0.1"),
            (
                "attachnet.default.ovn.kubernetes.io/mac_address",
                "00:00:00:12:34:56",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/logical_switch",
                "attachnet",
            ),
            (
                "attachnet.default.ovn.kubernetes.io/routes",
                r#"[{"dst":"192.168.0.101/24","gw":"172.17.0.254"}]"#,
            ),
            ("ovn.kubernetes.io/ingress_rate", "100"),
            ("macvlan.default.kubernetes.io/allocated", "true"),
            ("macvlan.default.kubernetes.io/ip_address", "10.9.0.5"),
            ("macvlan.default.kubernetes.io/cidr", "10.9.0.0/24"),
            ("macvlan.default.kubernetes.io/egress_rate", "abc"),
        ]);
        let text = pod_attachments("default", "p", &a);
        let net1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("net1"))
            .unwrap_or_else(|| panic!("no net1 line in\n{text}"));
        for want in [
            "attachnet.default.ovn",
            "172.17.0.12/16",
            "00:00:00:12:34:56",
            "172.17.0.1",
            "192.168.0.101/24 via 172.17.0.254",
            "100 Mbit/s",
        ] {
            assert!(net1.contains(want), "{want:?} missing from {net1:?}");
        }
        let net2 = text
            .lines()
            .find(|l| l.trim_start().starts_with("net2"))
            .unwrap_or_else(|| panic!("no net2 line in\n{text}"));
        assert!(net2.contains("10.9.0.5/24"), "{net2}");
        assert!(
            text.contains(
                "cannot read macvlan.default: \"abc\" is not a valid macvlan.default.kubernetes.io/egress_rate"
            ),
            "{text}"
        );
    }

    #[test]
    fn pod_attachments_say_when_nothing_is_allocated_yet() {
        let text = pod_attachments(
            "default",
            "p",
            &annotations(&[("k8s.v1.cni.cncf.io/networks", "default/attachnet")]),
        );
        assert!(text.contains("no allocation yet"), "{text}");
    }

    #[test]
    fn interfaces_table_shows_limits_and_counters_per_direction() {
        let dir = |rate, passed, dropped| QosDirectionView {
            rate_mbps: rate,
            mode: if rate == 0 { "unlimited" } else { "police" }.to_owned(),
            burst_bytes: 37_500_000,
            passed_packets: passed,
            passed_bytes: passed * 1500,
            dropped_packets: dropped,
            dropped_bytes: dropped * 1500,
        };
        let v = AttachmentView {
            namespace: "default".to_owned(),
            pod: "qos-pod".to_owned(),
            interface: "net1".to_owned(),
            provider: "attachnet.default.ovn".to_owned(),
            container_id: "c1".to_owned(),
            kind: "ovn".to_owned(),
            host_interface: "c1_net1_h".to_owned(),
            fastpath: Some(FastpathView {
                hits: 9000,
                hit_bytes: 13_500_000,
                misses: 12,
                spoofed: 0,
                isolated: 0,
                routed: 0,
                expired: 0,
            }),
            qos: Some(QosView {
                ingress: dir(1000, 500, 7),
                egress: dir(0, 20, 0),
            }),
        };
        let text = interfaces_table(std::slice::from_ref(&v));
        let row: Vec<&str> = text
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "default/qos-pod",
                "net1",
                "ovn",
                "c1_net1_h",
                "1000",
                "Mbit/s",
                "police",
                "500",
                "7",
                "unlimited",
                "20",
                "0",
                "9000",
                "12",
                "0"
            ]
        );
        let detail = interface_detail(&v);
        assert!(
            detail.contains("QoS into the pod: 1000 Mbit/s, police, burst 37500000 B; passed 500 packets / 750000 B, dropped 7 packets / 10500 B"),
            "{detail}"
        );
        assert!(
            detail.contains(
                "fast path: 9000 frames / 13500000 B forwarded (0 routed between Subnets), 12 handed to OVS"
            ),
            "{detail}"
        );
    }
}
