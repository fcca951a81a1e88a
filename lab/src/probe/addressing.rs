//! What the seeds promise of each attachment's addressing: the controller's allocation, the
//! address, pool and switch the user asked for, custom routes and the default route.

use serde_json::Value;
use sidelane_api::network_selection;

use crate::{
    check::{CheckKind, Checks},
    pod::{Attachment, NAMESPACE, Pod},
    scenario,
};

/// Checks every attachment of `pods`; `docs` are the scenario's objects (what the user asked).
pub fn check(pods: &[Pod], docs: &[Value], checks: &mut Checks) {
    for pod in pods {
        let requested = scenario::requested_annotations(docs, &pod.name);
        let asked = |a: &Attachment, key: &str| {
            requested
                .get(&format!("{}.kubernetes.io/{key}", a.provider))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        for a in &pod.attachments {
            allocation(pod, a, checks);
            if let Some(wanted) = asked(a, "ip_address") {
                let ok = a
                    .ips
                    .iter()
                    .any(|ip| wanted.split(',').any(|s| s.trim() == ip));
                checks.record(
                    CheckKind::StaticAddress,
                    format!(
                        "{} {} has the address it asked for, {wanted}",
                        pod.name, a.ifname
                    ),
                    ok,
                    a.ips.join(", "),
                );
            }
            if let Some(pool) = asked(a, "ip_pool") {
                let ok = a
                    .ips
                    .iter()
                    .any(|ip| pool.split([',', ';']).any(|s| s.trim() == ip));
                checks.record(
                    CheckKind::IpPool,
                    format!("{} {} took an address of its ip_pool", pod.name, a.ifname),
                    ok,
                    format!("{} in {pool}", a.ips.join(", ")),
                );
            }
            if let Some(ls) = asked(a, "logical_switch") {
                checks.record(
                    CheckKind::LogicalSwitch,
                    format!(
                        "{} {} is on the logical switch it names ({ls})",
                        pod.name, a.ifname
                    ),
                    a.switch == ls,
                    a.switch.clone(),
                );
            }
            if let Some(routes) = asked(a, "routes") {
                custom_routes(pod, &routes, checks);
            }
        }
        default_routes(pod, checks);
    }
}

/// The controller's annotations name the interface's address and a switch.
fn allocation(pod: &Pod, a: &Attachment, checks: &mut Checks) {
    let annotated = pod.key(a, "ip_address").cloned().unwrap_or_default();
    let ok = !a.switch.is_empty()
        && !annotated.is_empty()
        && annotated
            .split(',')
            .all(|ip| a.ips.iter().any(|have| have == ip.trim()));
    checks.record(
        CheckKind::Allocation,
        format!(
            "{} {}'s allocation ({annotated} on {}) is the interface's",
            pod.name, a.ifname, a.switch
        ),
        ok,
        a.ips.join(", "),
    );
}

/// Whether a line of `ip route` is the route to `dst` via `gw`.
fn is_route(line: &str, dst: &str, gw: &str) -> bool {
    line.contains(&format!("via {gw}"))
        && (dst == "default" && line.starts_with("default")
            || line.starts_with(dst.split('/').next().unwrap_or(dst))
            || dst
                .parse::<ipnet::IpNet>()
                .is_ok_and(|n| line.starts_with(&n.trunc().to_string())))
}

fn custom_routes(pod: &Pod, routes: &str, checks: &mut Checks) {
    let table = pod.routes_of_both_families();
    let wanted: Vec<Value> = serde_json::from_str(routes).unwrap_or_default();
    for route in wanted {
        let gw = route["gw"].as_str().unwrap_or_default();
        let dst = route["dst"].as_str().unwrap_or("default");
        checks.record(
            CheckKind::CustomRoute,
            format!("{} has the custom route {dst} via {gw}", pod.name),
            table.lines().any(|l| is_route(l, dst, gw)),
            table.lines().collect::<Vec<_>>().join("; "),
        );
    }
}

/// Each selection's `default-route` is the pod's default route on that interface.
fn default_routes(pod: &Pod, checks: &mut Checks) {
    let selection = pod
        .annotations
        .get("k8s.v1.cni.cncf.io/networks")
        .cloned()
        .unwrap_or_default();
    let Ok(selections) = network_selection::parse(&selection, NAMESPACE) else {
        return;
    };
    for (i, sel) in selections.iter().enumerate() {
        for gw in &sel.default_route {
            let ifname = sel.interface_or_default(i + 1);
            let table = pod.routes_of_both_families();
            let ok = table
                .lines()
                .any(|l| l.starts_with(&format!("default via {gw} dev {ifname}")));
            checks.record(
                CheckKind::DefaultRoute,
                format!(
                    "{}'s default route is via {gw} on {ifname} (default-route)",
                    pod.name
                ),
                ok,
                table.lines().collect::<Vec<_>>().join("; "),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_route;

    #[test]
    fn a_route_line_matches_its_destination_and_gateway() {
        let line = "192.168.0.0/24 via 172.17.0.254 dev net1";
        assert!(is_route(line, "192.168.0.101/24", "172.17.0.254"));
        assert!(!is_route(line, "192.168.0.101/24", "172.17.0.1"));
        assert!(is_route(
            "default via 172.17.0.254 dev net1",
            "default",
            "172.17.0.254"
        ));
        assert!(!is_route(
            "10.0.0.0/8 via 172.17.0.254 dev net1",
            "default",
            "172.17.0.254"
        ));
    }
}
