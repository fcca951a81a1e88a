//! The lab's report: one model, one renderer.

use std::{fmt::Write as _, time::Duration};

use crate::{
    check::{CheckKind, Checks},
    phases::Phases,
    pod::Pod,
    probe::{
        cli::View,
        qos::Measured,
        reach::{Cell, Matrix},
    },
    rig::Rig,
};

/// What one scenario made and showed.
pub struct ScenarioReport {
    pub name: String,
    pub files: Vec<String>,
    pub pods: Vec<Pod>,
    pub checks: Checks,
    pub matrix: Matrix,
    /// The declared allowed/denied matrix, as measured.
    pub isolation: Vec<crate::probe::isolation::Row>,
    /// What the outside world saw of the scenario's NAT gateway.
    pub outside: Option<crate::probe::outside::Seen>,
    pub qos: Vec<Measured>,
    pub fastpath_hits: Vec<(String, u64)>,
    pub cli: Vec<View>,
    /// The seeds' debug commands against a pod of the real node, and what they printed.
    pub exec: Vec<View>,
    pub took: Duration,
}

impl ScenarioReport {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.checks.failed().next().is_none()
    }
}

/// Where the rig's parts are, for the report's head.
pub fn rig_lines(rig: &Rig) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Kubernetes: kube-apiserver {} (etcd, kube-controller-manager, kube-scheduler; \
             Node,RBAC); node1's pods run by a real kubelet with containerd and runc, node2's \
             set up by the kubelet stand-in, both through the real Multus",
            rig.api.plane().url()
        ),
        format!(
            "OVN central: Northbound {} (TLS, client certificates), {}; Southbound {} (TLS, \
             each chassis' ovn-controller with its own client certificate)",
            rig.nb_tls.remote,
            rig.central.nb.unix_remote(),
            rig.nb_tls.sb_remote
        ),
    ];
    lines.extend(rig.nodes.iter().map(|n| {
        format!(
            "{}: namespace {}, OVS {} ({} datapath), agent metrics http://{}/metrics",
            n.name,
            n.chassis.ns.name(),
            n.chassis.db.unix_remote(),
            n.chassis.datapath,
            n.metrics_addr
        )
    }));
    lines
}

/// The whole report.
pub fn render(rig_lines: &[String], scenarios: &[ScenarioReport], phases: &Phases) -> String {
    let mut out = String::from("\n# Sidelane lab report\n\n");
    for line in rig_lines {
        let _ = writeln!(out, "{line}");
    }
    for sc in scenarios {
        render_scenario(&mut out, sc);
    }
    let _ = writeln!(out, "\n## Phases");
    for (name, took) in phases.iter() {
        let _ = writeln!(out, "   {:>6.1} s  {name}", took.as_secs_f64());
    }
    for sc in scenarios {
        let _ = writeln!(
            out,
            "   {:>6.1} s  scenario: {}",
            sc.took.as_secs_f64(),
            sc.name
        );
    }
    let total: usize = scenarios.iter().map(|s| s.checks.len()).sum();
    let failed: Vec<(&str, &crate::check::Check)> = scenarios
        .iter()
        .flat_map(|s| s.checks.failed().map(move |c| (s.name.as_str(), c)))
        .collect();
    let _ = writeln!(out, "\n## Result: {total} checks, {} failed", failed.len());
    for (scenario, c) in &failed {
        let _ = writeln!(out, "   FAILED [{scenario}] {}: {}", c.what, c.detail);
    }
    out
}

fn render_scenario(out: &mut String, sc: &ScenarioReport) {
    let _ = writeln!(out, "\n## {}\n   files: {}", sc.name, sc.files.join(", "));
    for pod in &sc.pods {
        let shown: Vec<String> = pod
            .network_status
            .iter()
            .map(|e| format!("{} {} ({})", e.ifname, e.ips.join(","), e.network))
            .collect();
        let _ = writeln!(out, "   network-status {}: {}", pod.name, shown.join("; "));
    }
    let _ = writeln!(out, "   pods:");
    for pod in &sc.pods {
        render_pod(out, pod);
    }
    // Attachments show in the pods' lines, pings in the matrix.
    let listed = |c: &&crate::check::Check| {
        !matches!(
            c.kind,
            CheckKind::Attached
                | CheckKind::ReachSameNode
                | CheckKind::ReachAcrossNodes
                | CheckKind::RoutedAcrossSubnets
                | CheckKind::VpcIsolation
                | CheckKind::Isolation
                | CheckKind::Outside
        )
    };
    for c in sc.checks.iter().filter(listed) {
        let _ = writeln!(out, "   {}  {}", if c.ok { "ok  " } else { "FAIL" }, c.what);
    }
    render_matrix(out, &sc.matrix);
    render_isolation(out, &sc.isolation);
    if let Some(seen) = &sc.outside {
        render_outside(out, seen);
    }
    for m in &sc.qos {
        let _ = writeln!(
            out,
            "   QoS: {} {} {} Mbit/s ({}), measured {:.0} Mbit/s (TCP, seconds 1-4) with {}",
            m.pod,
            m.key,
            m.rate,
            m.direction(),
            m.mbps,
            m.peer
        );
    }
    if !sc.fastpath_hits.is_empty() {
        let shown: Vec<String> = sc
            .fastpath_hits
            .iter()
            .map(|(p, h)| format!("{p} {h}"))
            .collect();
        let _ = writeln!(out, "   fast-path hits: {}", shown.join(", "));
    }
    for view in sc.cli.iter().chain(&sc.exec) {
        let _ = writeln!(out, "   $ {}", view.command);
        for line in view.output.lines() {
            let _ = writeln!(out, "     {line}");
        }
    }
}

fn render_pod(out: &mut String, pod: &Pod) {
    let mut ifs: Vec<String> = Vec::new();
    if pod.primary_standin {
        ifs.push("eth0 (primary CNI)".to_owned());
    }
    ifs.extend(pod.attachments.iter().map(|a| {
        let on = if a.switch.is_empty() {
            String::new()
        } else {
            format!(" on {}", a.switch)
        };
        format!("{} {} ({}{on})", a.ifname, a.ips.join(","), a.nad)
    }));
    let _ = writeln!(
        out,
        "     {:<30} node{}  {}",
        pod.name,
        pod.node + 1,
        ifs.join("  ")
    );
}

fn render_isolation(out: &mut String, rows: &[crate::probe::isolation::Row]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "   isolation matrix (security groups, private Subnets): what arrived, against what must"
    );
    for r in rows {
        let e = &r.expect;
        let seen = if r.arrived { "arrived" } else { "denied" };
        let want = if e.reach { "allowed" } else { "denied" };
        let mark = if r.arrived == e.reach { "ok  " } else { "FAIL" };
        let _ = writeln!(
            out,
            "   {mark}  {:<14} → {:<14} {:<9} {:<8} (must be {want}: {})  {} → {}",
            e.from, e.to, e.probe, seen, e.why, r.from_ip, r.to_ip
        );
    }
}

fn render_outside(out: &mut String, seen: &crate::probe::outside::Seen) {
    let _ = writeln!(
        out,
        "   outside world (router 172.20.0.1, host {}) through {}",
        crate::outside::HOST,
        seen.gateway
    );
    for r in &seen.rows {
        let _ = writeln!(out, "   {}  {}", if r.ok { "ok  " } else { "FAIL" }, r.line);
    }
}

fn cell_char(cell: Cell) -> char {
    match cell {
        Cell::Itself => '-',
        Cell::NotExpected => ' ',
        Cell::Reached => 'o',
        Cell::Missed => 'X',
        Cell::Isolated => '.',
        Cell::Leaked => '!',
    }
}

fn render_matrix(out: &mut String, matrix: &Matrix) {
    if matrix.endpoints.len() < 2 {
        return;
    }
    let _ = writeln!(
        out,
        "   ping matrix over the secondary networks (row pings column; o reached, . not reached \
         as required: another VPC; X or ! wrong; blank not expected either way):"
    );
    let labels: Vec<String> = matrix
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, a)| format!("{:>2} {} {} node{}", i + 1, a.name, a.ip, a.node + 1))
        .collect();
    let width = labels.iter().map(String::len).max().unwrap_or(0) + 2;
    let header = (1..=matrix.endpoints.len()).fold(String::new(), |mut acc, i| {
        let _ = write!(acc, "{i:>3}");
        acc
    });
    let _ = writeln!(out, "     {:<width$}{header}", "");
    for (label, row) in labels.iter().zip(&matrix.cells) {
        let cells = row.iter().fold(String::new(), |mut acc, c| {
            let _ = write!(acc, "{:>3}", cell_char(*c));
            acc
        });
        let _ = writeln!(out, "     {label:<width$}{cells}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::reach::Endpoint;

    fn endpoint(pod: usize, name: &str, ip: &str) -> Endpoint {
        Endpoint {
            pod,
            name: name.to_owned(),
            node: 0,
            nad: "attachnet".to_owned(),
            switch: "attachnet".to_owned(),
            ip: ip.to_owned(),
            isolated: false,
        }
    }

    #[test]
    fn the_matrix_renders_one_row_per_address_with_a_mark_per_ping() {
        let matrix = Matrix {
            endpoints: vec![endpoint(0, "a", "10.0.0.2"), endpoint(1, "b", "10.0.0.3")],
            cells: vec![
                vec![Cell::Itself, Cell::Reached],
                vec![Cell::Leaked, Cell::Itself],
            ],
        };
        let mut out = String::new();
        render_matrix(&mut out, &matrix);
        let rows: Vec<&str> = out.lines().skip(2).map(str::trim_end).collect();
        assert_eq!(
            rows,
            [
                "      1 a 10.0.0.2 node1    -  o",
                "      2 b 10.0.0.3 node1    !  -"
            ]
        );
    }

    #[test]
    fn a_lone_address_has_no_matrix() {
        let matrix = Matrix {
            endpoints: vec![endpoint(0, "a", "10.0.0.2")],
            cells: vec![vec![Cell::Itself]],
        };
        let mut out = String::new();
        render_matrix(&mut out, &matrix);
        assert!(out.is_empty());
    }
}
