//! Rate limits measured against what is configured, both directions, with iperf3 between the
//! limited pod and a pod of the same network on its node.

use std::time::Duration;

use sidelane_tests::iperf::{self, IperfSpec};

use crate::{
    check::{CheckKind, Checks},
    pod::Pod,
};

/// One direction measured.
#[derive(Clone, Debug)]
pub struct Measured {
    pub pod: String,
    /// `ingress_rate` or `egress_rate`.
    pub key: &'static str,
    /// Configured, Mbit/s.
    pub rate: f64,
    /// The steady state measured at the receiver, Mbit/s.
    pub mbps: f64,
    pub peer: String,
}

impl Measured {
    /// Into the pod (`ingress_rate`) or out of it.
    pub fn direction(&self) -> &'static str {
        if self.key == "ingress_rate" {
            "into the pod"
        } else {
            "out of the pod"
        }
    }
}

/// The peer of `pods[i]`'s first attachment: another pod of the same network on its node,
/// with that pod's address.
fn peer(pods: &[Pod], i: usize) -> Option<(&Pod, String)> {
    let pod = &pods[i];
    let nad = &pod.attachments.first()?.nad;
    pods.iter().enumerate().find_map(|(j, p)| {
        let ip = p
            .attachments
            .iter()
            .find(|x| &x.nad == nad)?
            .ips
            .first()?
            .clone();
        (j != i && p.node == pod.node).then_some((p, ip))
    })
}

/// Measures every rate limit of `pods`.
pub fn check(pods: &[Pod], checks: &mut Checks) -> Vec<Measured> {
    let mut out = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        let Some(a) = pod.attachments.first() else {
            continue;
        };
        let Some(own_ip) = a.ips.first() else {
            continue;
        };
        for (key, into_pod) in [("ingress_rate", true), ("egress_rate", false)] {
            let Some(rate) = pod.rate(a, key).and_then(|r| r.parse::<f64>().ok()) else {
                continue;
            };
            let Some((peer, peer_ip)) = peer(pods, i) else {
                checks.record(
                    CheckKind::Qos,
                    format!("{} {key} measured", pod.name),
                    false,
                    "no pod of its network on its node to measure against",
                );
                continue;
            };
            let (server, server_ip, client) = if into_pod {
                (&pod.ns, own_ip, &peer.ns)
            } else {
                (&peer.ns, &peer_ip, &pod.ns)
            };
            match iperf::measure(
                server,
                server_ip,
                client,
                &IperfSpec::tcp(Duration::from_secs(4)),
            ) {
                Ok(r) => {
                    // The steady state: the first second spends the bucket's burst.
                    let mbps = r.receiver_rate_between(1.0, 4.0).unwrap_or(r.receiver_bps) / 1e6;
                    checks.record(
                        CheckKind::Qos,
                        format!("{} held to its {key} of {rate} Mbit/s", pod.name),
                        mbps <= rate * 1.05 && mbps >= rate * 0.5,
                        format!("{mbps:.0} Mbit/s"),
                    );
                    out.push(Measured {
                        pod: pod.name.clone(),
                        key,
                        rate,
                        mbps,
                        peer: peer.name.clone(),
                    });
                }
                Err(e) => checks.record(
                    CheckKind::Qos,
                    format!("{} {key} measured", pod.name),
                    false,
                    format!("{e:#}"),
                ),
            }
        }
    }
    out
}
