//! What the `sidelane` command line shows of a scenario: the Subnets and their usage, the
//! first pod's attachments, and each rate-limited pod's interface with its limits and counters.

use serde_json::Value;

use crate::{
    check::{CheckKind, Checks},
    pod::{NAMESPACE, Pod},
    rig::Rig,
};

/// One command and what it printed.
#[derive(Clone, Debug)]
pub struct View {
    pub command: String,
    pub output: String,
}

/// Runs `sidelane <args>`; a failure is a failed check.
fn run(rig: &Rig, args: &[&str], checks: &mut Checks, views: &mut Vec<View>) -> Option<String> {
    match rig.cli(args) {
        Ok(output) => {
            views.push(View {
                command: format!("sidelane {}", args.join(" ")),
                output: output.clone(),
            });
            Some(output)
        }
        Err(e) => {
            checks.record(
                CheckKind::Cli,
                format!("sidelane {}", args.join(" ")),
                false,
                format!("{e:#}"),
            );
            None
        }
    }
}

/// Checks the views against the scenario's objects (`docs`) and pods.
pub fn check(rig: &Rig, docs: &[Value], pods: &[Pod], checks: &mut Checks) -> Vec<View> {
    let mut views = Vec::new();
    if let Some(text) = run(rig, &["subnets"], checks, &mut views) {
        for doc in docs.iter().filter(|d| d["kind"] == "Subnet") {
            let name = doc["metadata"]["name"].as_str().unwrap_or_default();
            let listed = text
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name));
            checks.record(
                CheckKind::Cli,
                format!("sidelane subnets lists {name}"),
                listed,
                "",
            );
        }
    }
    if let Some(first) = pods.first() {
        let target = format!("{NAMESPACE}/{}", first.name);
        if let Some(text) = run(rig, &["pod", &target], checks, &mut views) {
            let shown = first
                .attachments
                .iter()
                .all(|a| a.ips.iter().all(|ip| text.contains(&format!("{ip}/"))));
            checks.record(
                CheckKind::Cli,
                format!("sidelane pod {target} shows its addresses"),
                shown,
                "",
            );
        }
    }
    for pod in pods {
        let Some(a) = pod.attachments.first() else {
            continue;
        };
        let Some(rate) = ["ingress_rate", "egress_rate"]
            .iter()
            .find_map(|k| pod.rate(a, k))
        else {
            continue;
        };
        let target = format!("{NAMESPACE}/{}", pod.name);
        let agent = rig.nodes[pod.node].metrics_addr.clone();
        let args = ["interfaces", &target, &a.ifname, "--agent", &agent];
        if let Some(text) = run(rig, &args, checks, &mut views) {
            checks.record(
                CheckKind::Cli,
                format!(
                    "sidelane interfaces shows {}'s limit of {rate} Mbit/s",
                    pod.name
                ),
                text.contains(&format!("{rate} Mbit/s")),
                "",
            );
        }
    }
    views
}
