//! The ping matrix over the secondary networks: every address pings every other whose
//! reachability the topology decides (one switch: reached; two Vpcs: not; two Subnets of one
//! Vpc with routes both ways: reached through its router).

use std::time::{Duration, Instant};

use sidelane_tests::{control_plane::SidelaneCluster, netns::NetNs};

use crate::{
    check::{CheckKind, Checks},
    pod::Pod,
};

/// One address of one pod.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub pod: usize,
    pub name: String,
    pub node: usize,
    pub nad: String,
    /// Empty for attachments without a switch.
    pub switch: String,
    pub ip: String,
    /// The attachment joins a security group: what reaches it is the scenario's isolation
    /// matrix to say, not the topology.
    pub isolated: bool,
}

/// A cell of the matrix: what the row's ping to the column showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    /// The same pod.
    Itself,
    /// The topology decides nothing here: not pinged.
    NotExpected,
    Reached,
    /// Should have been reached, was not.
    Missed,
    /// Not reached, as the topology requires.
    Isolated,
    /// Reached though the topology forbids it.
    Leaked,
}

/// The matrix: row pings column.
#[derive(Clone, Debug)]
pub struct Matrix {
    pub endpoints: Vec<Endpoint>,
    pub cells: Vec<Vec<Cell>>,
}

fn ping(from: &NetNs, to: &str) -> bool {
    from.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", to])
        .is_ok()
}

fn ping_eventually(from: &NetNs, to: &str, within: Duration) -> bool {
    let start = Instant::now();
    loop {
        if ping(from, to) {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every address of every attachment.
pub fn endpoints(pods: &[Pod]) -> Vec<Endpoint> {
    pods.iter()
        .enumerate()
        .flat_map(|(i, pod)| {
            pod.attachments.iter().flat_map(move |a| {
                a.ips.iter().map(move |ip| Endpoint {
                    pod: i,
                    name: pod.name.clone(),
                    node: pod.node,
                    nad: a.nad.clone(),
                    switch: a.switch.clone(),
                    ip: ip.clone(),
                    isolated: !sidelane_api::security_group::membership(
                        &pod.annotations,
                        &a.provider,
                    )
                    .is_empty(),
                })
            })
        })
        .collect()
}

/// What the topology says of `a` pinging `b`: the kind of check, and whether it must reach.
fn expectation(
    api: &SidelaneCluster,
    pods: &[Pod],
    a: &Endpoint,
    b: &Endpoint,
) -> Option<(CheckKind, bool, &'static str)> {
    let vpc_of = |switch: &str| {
        api.get("kubeovn.io/v1", "Subnet", "", switch)
            .and_then(|s| s["spec"]["vpc"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    if a.isolated || b.isolated {
        return None;
    }
    let same_switch = a.switch == b.switch && !a.switch.is_empty();
    if same_switch || (a.nad == b.nad && a.switch.is_empty()) {
        return Some(if a.node == b.node {
            (CheckKind::ReachSameNode, true, "same switch, same node")
        } else {
            (
                CheckKind::ReachAcrossNodes,
                true,
                "same switch, across nodes",
            )
        });
    }
    if a.switch.is_empty() || b.switch.is_empty() {
        return None;
    }
    let (va, vb) = (vpc_of(&a.switch), vpc_of(&b.switch));
    if va != vb {
        return Some((CheckKind::VpcIsolation, false, "different VPCs, forbidden"));
    }
    (pods[a.pod].routes_to(&b.ip) && pods[b.pod].routes_to(&a.ip)).then_some((
        CheckKind::RoutedAcrossSubnets,
        true,
        "across Subnets of a Vpc, routed",
    ))
}

/// Pings as the topology decides, records a check per ping, and returns the matrix.
pub fn check(api: &SidelaneCluster, pods: &[Pod], checks: &mut Checks) -> Matrix {
    let endpoints = endpoints(pods);
    let mut cells = vec![vec![Cell::NotExpected; endpoints.len()]; endpoints.len()];
    for (ai, a) in endpoints.iter().enumerate() {
        for (bi, b) in endpoints.iter().enumerate() {
            if a.pod == b.pod {
                cells[ai][bi] = Cell::Itself;
                continue;
            }
            let Some((kind, must_reach, why)) = expectation(api, pods, a, b) else {
                continue;
            };
            let from = &pods[a.pod].ns;
            let reached = if must_reach {
                ping_eventually(from, &b.ip, Duration::from_secs(10))
            } else {
                ping(from, &b.ip)
            };
            cells[ai][bi] = match (must_reach, reached) {
                (true, true) => Cell::Reached,
                (true, false) => Cell::Missed,
                (false, false) => Cell::Isolated,
                (false, true) => Cell::Leaked,
            };
            checks.record(
                kind,
                format!("ping {} -> {} ({why})", a.name, b.name),
                reached == must_reach,
                format!("{} -> {}", a.ip, b.ip),
            );
        }
    }
    Matrix { endpoints, cells }
}
