//! The allowed/denied matrix a scenario declares (`matrix:` in `lab/scenarios.yaml`): from a pod
//! (over one of its networks) to another, by ICMP, a TCP connection to a port or a UDP datagram,
//! and whether it arrived, against what the scenario says its security groups and private
//! Subnets decide. Allowed probes run first (retried while flows settle), so a denied one is
//! judged on a network known to be up.

use std::{
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde::Deserialize;
use sidelane_tests::netns::in_netns;

use crate::{
    check::{CheckKind, Checks},
    pod::Pod,
};

/// One probe the scenario declares.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The sending pod.
    pub from: String,
    /// Its network (NAD name) when it has several.
    #[serde(default)]
    pub via: Option<String>,
    /// The receiving pod (its address on `via`, else its first).
    pub to: String,
    /// `icmp`, `tcp/<port>` or `udp/<port>`.
    pub probe: String,
    /// Whether it must arrive.
    pub reach: bool,
    /// Why, as the report says it.
    pub why: String,
}

/// One row of the matrix as measured.
#[derive(Clone, Debug)]
pub struct Row {
    pub expect: Expect,
    pub from_ip: String,
    pub to_ip: String,
    pub arrived: bool,
}

fn address(pod: &Pod, via: Option<&str>) -> Option<String> {
    pod.attachments
        .iter()
        .find(|a| via.is_none_or(|v| a.nad == v || a.nad.ends_with(&format!("/{v}"))))
        .and_then(|a| a.ips.first().cloned())
}

/// Whether `probe` from `from` reaches `to_ip` in `to` (one attempt).
fn arrives(from: &Pod, to: &Pod, to_ip: &str, probe: &str) -> anyhow::Result<bool> {
    if probe == "icmp" {
        return Ok(from.ns.exec(&["ping", "-c", "1", "-W", "1", to_ip]).is_ok());
    }
    let (proto, port) = probe
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("probe {probe:?} is not icmp, tcp/<port> or udp/<port>"))?;
    let port: u16 = port.parse()?;
    let addr: SocketAddr = format!("{to_ip}:{port}").parse()?;
    match proto {
        "tcp" => {
            let _listener = in_netns(&to.ns.path(), move || {
                Ok(TcpListener::bind(("0.0.0.0", port))?)
            })?;
            in_netns(&from.ns.path(), move || {
                Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok())
            })
        }
        "udp" => {
            let server = in_netns(&to.ns.path(), move || {
                Ok(UdpSocket::bind(("0.0.0.0", port))?)
            })?;
            in_netns(&from.ns.path(), move || {
                UdpSocket::bind(("0.0.0.0", 0))?.send_to(b"probe", addr)?;
                Ok(())
            })?;
            server.set_read_timeout(Some(Duration::from_millis(800)))?;
            let mut buf = [0u8; 8];
            Ok(server.recv_from(&mut buf).is_ok())
        }
        other => anyhow::bail!("probe {probe:?}: {other:?} is not tcp or udp"),
    }
}

/// Runs the declared probes (allowed ones first) and records a check for each.
pub fn check(pods: &[Pod], expects: &[Expect], checks: &mut Checks) -> Vec<Row> {
    let mut ordered: Vec<&Expect> = expects.iter().collect();
    ordered.sort_by_key(|e| !e.reach);
    let mut rows = Vec::new();
    for e in ordered {
        let what = format!("{} → {} {} ({})", e.from, e.to, e.probe, e.why);
        let (Some(from), Some(to)) = (
            pods.iter().find(|p| p.name == e.from),
            pods.iter().find(|p| p.name == e.to),
        ) else {
            checks.record(
                CheckKind::Isolation,
                what,
                false,
                "a pod of the probe is not in the scenario",
            );
            continue;
        };
        let (Some(from_ip), Some(to_ip)) = (
            address(from, e.via.as_deref()),
            address(to, e.via.as_deref()).or_else(|| address(to, None)),
        ) else {
            checks.record(
                CheckKind::Isolation,
                what,
                false,
                "a pod of the probe has no address",
            );
            continue;
        };
        let start = Instant::now();
        let arrived = loop {
            match arrives(from, to, &to_ip, &e.probe) {
                Ok(true) => break true,
                Ok(false) if e.reach && start.elapsed() < Duration::from_secs(15) => {
                    std::thread::sleep(Duration::from_millis(300));
                }
                Ok(false) => break false,
                Err(err) => {
                    checks.record(
                        CheckKind::Isolation,
                        what.clone(),
                        false,
                        format!("{err:#}"),
                    );
                    break false;
                }
            }
        };
        checks.record(
            CheckKind::Isolation,
            what,
            arrived == e.reach,
            format!(
                "{from_ip} → {to_ip}: {}",
                if arrived { "arrived" } else { "never arrived" }
            ),
        );
        rows.push(Row {
            expect: e.clone(),
            from_ip,
            to_ip,
            arrived,
        });
    }
    rows
}
