//! The eBPF fast path: its per-pod hit counters from the agents' metrics, and whether
//! same-node traffic of one OVN switch took it.

use std::collections::BTreeMap;

use crate::{
    check::{CheckKind, Checks},
    pod::Pod,
    probe::reach::Endpoint,
    rig::Rig,
};

/// `sidelane_agent_fastpath_hits_total` summed per pod.
fn hits_in(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("sidelane_agent_fastpath_hits_total{"))
    {
        let pod = line
            .split("pod=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or_default();
        let v: u64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        *out.entry(pod.to_owned()).or_default() += v;
    }
    out
}

/// The scenario's pods' hits; when two of its pods share an OVN switch on one node, a check
/// that their traffic (the pings, the QoS flows) took the fast path.
pub fn check(
    rig: &Rig,
    pods: &[Pod],
    endpoints: &[Endpoint],
    checks: &mut Checks,
) -> Vec<(String, u64)> {
    let all: BTreeMap<String, u64> = rig
        .nodes
        .iter()
        .flat_map(|n| hits_in(&n.metrics()))
        .collect();
    let hits: Vec<(String, u64)> = all
        .into_iter()
        .filter(|(p, _)| pods.iter().any(|pod| &pod.name == p))
        .collect();
    let same_node_ovn = endpoints.iter().any(|a| {
        endpoints.iter().any(|b| {
            a.pod != b.pod
                && !a.isolated
                && !b.isolated
                && a.node == b.node
                && a.switch == b.switch
                && !a.switch.is_empty()
                && pods[a.pod].attachments.iter().any(|x| x.plugin == "ovn")
        })
    });
    if same_node_ovn {
        let total: u64 = hits.iter().map(|(_, h)| h).sum();
        checks.record(
            CheckKind::FastPath,
            "same-node traffic of one switch took the fast path",
            total > 0,
            format!("{total} hits"),
        );
    }
    hits
}

#[cfg(test)]
mod tests {
    use super::hits_in;

    #[test]
    fn hits_are_summed_per_pod_over_directions() {
        let metrics = "\
# HELP sidelane_agent_fastpath_hits_total Frames forwarded.
sidelane_agent_fastpath_hits_total{pod=\"a\",direction=\"in\"} 3
sidelane_agent_fastpath_hits_total{pod=\"a\",direction=\"out\"} 4
sidelane_agent_fastpath_hits_total{pod=\"b\",direction=\"in\"} 0
sidelane_agent_fastpath_misses_total{pod=\"a\"} 9
";
        let hits = hits_in(metrics);
        assert_eq!(hits.get("a"), Some(&7));
        assert_eq!(hits.get("b"), Some(&0));
        assert_eq!(hits.len(), 2);
    }
}
