//! The seeds' debug commands, as their troubleshooting section writes them, against the pods a
//! real node runs: `kubectl exec <pod> -- ip addr show`, `kubectl exec <pod> -- ip route show`,
//! a ping from inside the pod over each attachment, and `kubectl get pod <pod> -o yaml` for
//! `network-status`. Each output is checked against the controller's allocation and what the
//! lab saw in the pod's namespace; the first such pod's outputs go into the report.

use std::collections::BTreeMap;

use crate::{
    check::{CheckKind, Checks},
    pod::Pod,
    probe::{
        cli::View,
        reach::{Cell, Matrix},
    },
    rig::{Kubelet, Rig},
};

/// Runs `kubectl <args>`; a failure is a failed check.
fn kubectl(rig: &Rig, args: &[&str], checks: &mut Checks, views: &mut Vec<View>) -> Option<String> {
    let command = format!("kubectl {}", args.join(" "));
    match rig.api.plane().kubectl_run(args, None) {
        Ok(output) => {
            views.push(View {
                command,
                output: output.clone(),
            });
            Some(output)
        }
        Err(e) => {
            checks.record(CheckKind::KubectlExec, command, false, format!("{e:#}"));
            None
        }
    }
}

/// `ip addr show`'s output, interface by interface (busybox's and iproute2's: a block per
/// interface, opened by `<index>: <name>[@peer]: <flags>`).
fn interfaces(output: &str) -> BTreeMap<String, String> {
    let mut blocks = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        let opens = line
            .split_once(": ")
            .filter(|(index, _)| !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
        if let Some((_, rest)) = opens {
            let name = rest.split([':', '@']).next().unwrap_or_default().to_owned();
            current = Some(name.clone());
            blocks.insert(name, String::new());
        } else if let Some(block) = current.as_ref().and_then(|c| blocks.get_mut(c)) {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

/// The addresses the controller allocated to attachment `ifname` (its `ip_address`
/// annotation), or, for the primary network, what Multus reported.
fn allocated(pod: &Pod, ifname: &str) -> Vec<String> {
    pod.attachments
        .iter()
        .find(|a| a.ifname == ifname)
        .and_then(|a| pod.key(a, "ip_address"))
        .map(|v| v.split(',').map(|ip| ip.trim().to_owned()).collect())
        .or_else(|| {
            pod.network_status
                .iter()
                .find(|e| e.ifname == ifname)
                .map(|e| e.ips.clone())
        })
        .unwrap_or_default()
}

fn addresses(rig: &Rig, pod: &Pod, checks: &mut Checks, views: &mut Vec<View>) {
    let args = ["exec", pod.name.as_str(), "--", "ip", "addr", "show"];
    let Some(output) = kubectl(rig, &args, checks, views) else {
        return;
    };
    let blocks = interfaces(&output);
    for entry in &pod.network_status {
        let block = blocks.get(&entry.ifname).map_or("", String::as_str);
        for ip in allocated(pod, &entry.ifname) {
            let family = if ip.contains(':') { "inet6" } else { "inet" };
            checks.record(
                CheckKind::KubectlExec,
                format!(
                    "kubectl exec {} -- ip addr show: {} has {ip}",
                    pod.name, entry.ifname
                ),
                block.contains(&format!("{family} {ip}/")),
                format!("allocated {ip}"),
            );
        }
    }
}

fn routes(rig: &Rig, pod: &Pod, checks: &mut Checks, views: &mut Vec<View>) {
    let args = ["exec", pod.name.as_str(), "--", "ip", "route", "show"];
    let Some(output) = kubectl(rig, &args, checks, views) else {
        return;
    };
    // What iproute2 saw in the pod's namespace: each route's destination, then `via` or
    // `dev` and its value, in busybox's output too.
    let seen = pod.routes();
    let missing: Vec<&str> = seen
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let head: Vec<&str> = l.split_whitespace().take(3).collect();
            !output
                .lines()
                .any(|o| o.split_whitespace().take(3).eq(head.iter().copied()))
        })
        .collect();
    checks.record(
        CheckKind::KubectlExec,
        format!(
            "kubectl exec {} -- ip route show: every route of the pod",
            pod.name
        ),
        missing.is_empty() && !seen.trim().is_empty(),
        if missing.is_empty() {
            format!("{} routes", seen.lines().count())
        } else {
            format!("missing {missing:?}")
        },
    );
}

/// From inside pod `index`, one ping over each of its attachments to an address the matrix
/// reached from it.
fn pings(
    rig: &Rig,
    index: usize,
    pods: &[Pod],
    matrix: &Matrix,
    checks: &mut Checks,
    views: &mut Vec<View>,
) {
    let pod = &pods[index];
    for (row, from) in matrix.endpoints.iter().enumerate() {
        if from.pod != index {
            continue;
        }
        let Some(to) = matrix.cells[row]
            .iter()
            .position(|c| *c == Cell::Reached)
            .map(|col| &matrix.endpoints[col])
        else {
            continue;
        };
        let args = [
            "exec",
            pod.name.as_str(),
            "--",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            &to.ip,
        ];
        let answered =
            kubectl(rig, &args, checks, views).is_some_and(|out| out.contains(" 0% packet loss"));
        checks.record(
            CheckKind::KubectlExec,
            format!(
                "kubectl exec {} -- ping {} ({} over {})",
                pod.name, to.ip, to.name, from.nad
            ),
            answered,
            format!("{} -> {}", from.ip, to.ip),
        );
    }
}

fn network_status(rig: &Rig, pod: &Pod, checks: &mut Checks, views: &mut Vec<View>) {
    let args = ["get", "pod", pod.name.as_str(), "-o", "yaml"];
    let mut seen = Vec::new();
    let Some(yaml) = kubectl(rig, &args, checks, &mut seen) else {
        return;
    };
    // The report shows what the seeds' `| grep -A 10 network-status` shows.
    if let Some(start) = yaml.lines().position(|l| l.contains("network-status")) {
        views.push(View {
            command: format!(
                "kubectl get pod {} -o yaml | grep -A 10 network-status",
                pod.name
            ),
            output: yaml
                .lines()
                .skip(start)
                .take(11)
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    let reported: Vec<&String> = pod.network_status.iter().flat_map(|e| &e.ips).collect();
    checks.record(
        CheckKind::KubectlExec,
        format!(
            "kubectl get pod {} -o yaml: network-status names every address",
            pod.name
        ),
        yaml.contains("k8s.v1.cni.cncf.io/network-status")
            && !reported.is_empty()
            && reported.iter().all(|ip| yaml.contains(ip.as_str())),
        format!("{reported:?}"),
    );
}

/// Runs the seeds' debug commands against every pod a real node runs; the first one's outputs.
pub fn check(rig: &Rig, pods: &[Pod], matrix: &Matrix, checks: &mut Checks) -> Vec<View> {
    let mut shown = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        if !matches!(rig.nodes[pod.node].kubelet, Kubelet::Real(_)) {
            continue;
        }
        let mut views = Vec::new();
        addresses(rig, pod, checks, &mut views);
        routes(rig, pod, checks, &mut views);
        pings(rig, index, pods, matrix, checks, &mut views);
        network_status(rig, pod, checks, &mut views);
        if shown.is_empty() {
            shown = views;
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_addr_output_is_split_interface_by_interface() {
        let busybox = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue qlen 1000\n    \
                       link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00\n    \
                       inet 127.0.0.1/8 scope host lo\n\
                       3: eth0@if10: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1500\n    \
                       inet 10.244.1.4/24 brd 10.244.1.255 scope global eth0\n\
                       12: net1@if13: <BROADCAST,MULTICAST,UP,LOWER_UP,M-DOWN> mtu 1400\n    \
                       inet 172.17.0.15/16 brd 172.17.255.255 scope global net1\n    \
                       inet6 fe80::f48a:bdff:fe1f:18ea/64 scope link\n";
        let blocks = interfaces(busybox);
        assert_eq!(blocks.keys().collect::<Vec<_>>(), ["eth0", "lo", "net1"]);
        assert!(blocks["net1"].contains("inet 172.17.0.15/"));
        assert!(!blocks["eth0"].contains("172.17.0.15"));
    }
}
