//! The chaos run's audit: every live pod's attachment has exactly one address and none is
//! held twice; no IP resource, Logical_Switch_Port, host veth, fast-path map entry, QoS pin or
//! agent record is left without its pod.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::Value;
use sidelane_tests::veth;

use super::{ChaosReport, IPAM_PROVIDER};
use crate::{
    chaos::faults::OVN_PROVIDER,
    pod::{NAMESPACE, Pod},
    rig::{Node, Rig},
};

/// One audit's findings.
#[derive(Debug, Default)]
pub struct Audit {
    pub duplicates: usize,
    pub leaked: BTreeMap<&'static str, usize>,
    pub missing: BTreeMap<&'static str, usize>,
    pub problems: Vec<String>,
}

impl Audit {
    fn clean(&self) -> bool {
        self.duplicates == 0
            && self.leaked.values().all(|n| *n == 0)
            && self.missing.values().all(|n| *n == 0)
    }

    /// Counts what is in `have` and not in `want` as leaked, and the reverse as missing.
    fn diff(&mut self, kind: &'static str, have: &BTreeSet<String>, want: &BTreeSet<String>) {
        let leaked: Vec<&String> = have.difference(want).collect();
        let missing: Vec<&String> = want.difference(have).collect();
        if !leaked.is_empty() || !missing.is_empty() {
            self.problems.push(format!(
                "{kind}: {} leaked (e.g. {:?}), {} missing (e.g. {:?})",
                leaked.len(),
                leaked.iter().take(3).collect::<Vec<_>>(),
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>()
            ));
        }
        *self.leaked.entry(kind).or_default() += leaked.len();
        *self.missing.entry(kind).or_default() += missing.len();
    }

    /// Counts `have - want` as leaked when positive.
    fn excess(&mut self, kind: &'static str, have: usize, want: usize, what: String) {
        if have > want {
            *self.leaked.entry(kind).or_default() += have - want;
            self.problems.push(what);
        }
    }
}

/// Audits until nothing is off, or for 90 s; the last findings go into the report.
pub fn until_settled(rig: &Rig, live: &[&Pod], report: &mut ChaosReport, when: &str) {
    let start = Instant::now();
    loop {
        let found = audit(rig, live);
        let clean = found.clean();
        if clean || start.elapsed() > Duration::from_secs(90) {
            report.duplicates += found.duplicates;
            for (k, v) in found.leaked {
                *report.leaked.entry(k).or_default() += v;
            }
            for (k, v) in found.missing {
                *report.missing.entry(k).or_default() += v;
            }
            report
                .problems
                .extend(found.problems.into_iter().map(|p| format!("{when}: {p}")));
            eprintln!(
                "    audit {when}: {} after {:.1} s",
                if clean { "clean" } else { "NOT clean" },
                start.elapsed().as_secs_f64()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn audit(rig: &Rig, live: &[&Pod]) -> Audit {
    let mut a = Audit::default();
    addresses(rig, live, &mut a);
    let expected_ips: BTreeSet<String> = live
        .iter()
        .flat_map(|p| {
            [OVN_PROVIDER, IPAM_PROVIDER].map(|prov| format!("{}.{NAMESPACE}.{prov}", p.name))
        })
        .collect();
    let ips: BTreeSet<String> = rig
        .api
        .list("kubeovn.io/v1", "IP", None)
        .iter()
        .filter_map(|ip| ip["metadata"]["name"].as_str().map(str::to_owned))
        .filter(|n| n.ends_with(OVN_PROVIDER) || n.ends_with(IPAM_PROVIDER))
        .collect();
    a.diff("ips", &ips, &expected_ips);
    // Logical_Switch_Ports of attachments (not the router's).
    let expected_lsps: BTreeSet<String> = live
        .iter()
        .map(|p| format!("{}.{NAMESPACE}.{OVN_PROVIDER}", p.name))
        .collect();
    let lsps: BTreeSet<String> = rig
        .central
        .nbctl(&["--bare", "--columns=name", "list", "Logical_Switch_Port"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| l.ends_with(OVN_PROVIDER))
        .map(str::to_owned)
        .collect();
    a.diff("lsps", &lsps, &expected_lsps);
    for (i, node) in rig.nodes.iter().enumerate() {
        let on_node: Vec<&Pod> = live.iter().copied().filter(|p| p.node == i).collect();
        node_leftovers(node, &on_node, &mut a);
    }
    a
}

/// One address per attachment of every live pod, none held twice.
fn addresses(rig: &Rig, live: &[&Pod], a: &mut Audit) {
    let mut held: BTreeMap<String, String> = BTreeMap::new();
    for pod in live {
        let Some(obj) = rig.api.get("v1", "Pod", NAMESPACE, &pod.name) else {
            a.problems
                .push(format!("{} is missing from the API", pod.name));
            continue;
        };
        let ann = &obj["metadata"]["annotations"];
        for p in [OVN_PROVIDER, IPAM_PROVIDER] {
            let ip = ann[format!("{p}.kubernetes.io/ip_address")]
                .as_str()
                .unwrap_or_default();
            if ip.is_empty() {
                *a.missing.entry("allocations").or_default() += 1;
                continue;
            }
            if let Some(other) = held.insert(format!("{p} {ip}"), pod.name.clone()) {
                a.duplicates += 1;
                a.problems
                    .push(format!("{ip} ({p}) is held by {} and {other}", pod.name));
            }
        }
    }
}

/// Host veths, fast-path endpoints, QoS pins and agent records without a pod on `node`.
fn node_leftovers(node: &Node, on_node: &[&Pod], a: &mut Audit) {
    let expected_veths: BTreeSet<String> = on_node.iter().filter_map(|p| p.host_veth()).collect();
    let veths: BTreeSet<String> = veth::links_ending(&node.chassis.ns, "_net1_h")
        .into_iter()
        .collect();
    // A veth deleted by hand is gone with its pod's interface: only leftovers count.
    let leaked: BTreeSet<&String> = veths.difference(&expected_veths).collect();
    a.excess(
        "veths",
        leaked.len(),
        0,
        format!("{}: veths without a pod: {leaked:?}", node.name),
    );
    let pin = node.pins.path().join("fastpath/SL_FP_ENDPOINTS");
    let Some(endpoints) = map_entries(&pin) else {
        a.problems
            .push(format!("{}: cannot read {}", node.name, pin.display()));
        *a.missing.entry("map_reads").or_default() += 1;
        return;
    };
    // One endpoint per live OVN attachment whose interface still exists.
    let want_endpoints = on_node
        .iter()
        .filter(|p| p.host_veth().is_some_and(|v| veths.contains(&v)))
        .count();
    a.excess(
        "map_entries",
        endpoints,
        want_endpoints,
        format!(
            "{}: {endpoints} fast-path endpoints for {want_endpoints} attachments",
            node.name
        ),
    );
    let pins = std::fs::read_dir(node.pins.path().join("qos"))
        .map_or(0, |d| d.filter_map(Result::ok).count());
    let want_pins = on_node
        .iter()
        .filter(|p| p.annotations.contains_key("ovn.kubernetes.io/ingress_rate"))
        .count()
        * 2;
    a.excess(
        "pins",
        pins,
        want_pins,
        format!(
            "{}: {pins} QoS pins for {want_pins} limited attachments",
            node.name
        ),
    );
    let records = std::fs::read_dir(&node.records).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .count()
    });
    let want_records = on_node.len() * 2;
    a.excess(
        "records",
        records,
        want_records,
        format!(
            "{}: {records} attachment records for {want_records} attachments",
            node.name
        ),
    );
}

/// Entries of a pinned hash map (`bpftool map dump`); `None` when it cannot be read.
fn map_entries(pin: &Path) -> Option<usize> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()
        .ok()?;
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
}
