//! What the outside world sees of a NAT gateway (`outside:` in `lab/scenarios.yaml`): pods'
//! connections out arrive at the outside host from their EIP (SNAT, FIP), and the outside
//! host's connections in reach exactly what DNAT and FIP forward (EIPs by name, from their
//! status). Before the inward probes the outside router gains a route to the Vpc's CIDR
//! through the gateway, so "not reachable" is judged on packets that do arrive at the gateway.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::Value;
use sidelane_tests::{
    control_plane::SidelaneCluster,
    netns::in_netns,
    outside::{Peers, record_peers_in},
};

use crate::{
    check::{CheckKind, Checks},
    outside::{HOST, OutsideWorld},
    pod::Pod,
};

/// The port the outside host listens on for pods' connections out.
const HOST_PORT: u16 = 9000;

/// The scenario's outside world.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Outside {
    /// The `VpcNatGateway` everything goes through.
    pub gateway: String,
    /// The Vpc CIDR the outside router is given a route to (through the gateway).
    pub vpc_cidr: String,
    /// The probes.
    pub probes: Vec<Probe>,
}

/// One probe: out (`from` a pod, `seen-as` an EIP) or in (`to` an EIP, `pod/<name>` or an
/// address, `port`, answered by a listener of `server` on `server-port`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Probe {
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub seen_as: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub server: Option<String>,
    #[serde(default)]
    pub server_port: Option<u16>,
    #[serde(default = "yes")]
    pub reach: bool,
    pub why: String,
}

fn yes() -> bool {
    true
}

/// One probe as measured, for the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub line: String,
    pub ok: bool,
}

/// What the report shows of the scenario's outside world.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The gateway, its external address and chassis.
    pub gateway: String,
    pub rows: Vec<Row>,
}

fn status(api: &SidelaneCluster, kind: &str, name: &str) -> Value {
    api.get("kubeovn.io/v1", kind, "", name)
        .map_or(Value::Null, |o| o["status"].clone())
}

/// Waits for `f` to hold, up to `limit`.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs the probes and records an `outside` check for each, and one for the gateway.
pub fn check(
    api: &SidelaneCluster,
    world: &OutsideWorld,
    pods: &[Pod],
    outside: &Outside,
    checks: &mut Checks,
) -> Seen {
    let mut seen = Seen::default();
    let mut gw = Value::Null;
    let ready = within(Duration::from_secs(30), || {
        gw = status(api, "VpcNatGateway", &outside.gateway);
        gw["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    });
    let external = gw["externalIp"].as_str().unwrap_or_default().to_owned();
    seen.gateway = format!(
        "VpcNatGateway {}: external address {external}, gateway chassis {}",
        outside.gateway,
        gw["chassis"]
            .as_array()
            .map(|c| c
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default()
    );
    checks.record(
        CheckKind::Outside,
        format!("VpcNatGateway {} is Ready", outside.gateway),
        ready,
        gw.to_string(),
    );
    if !ready {
        return seen;
    }
    let peers = match record_peers_in(&world.host, HOST_PORT) {
        Ok(p) => p,
        Err(e) => {
            checks.record(
                CheckKind::Outside,
                "the outside host listens",
                false,
                format!("{e:#}"),
            );
            return seen;
        }
    };
    let _ = world.router.exec(&[
        "ip",
        "route",
        "replace",
        &outside.vpc_cidr,
        "via",
        &external,
    ]);
    for p in &outside.probes {
        let row = match (&p.from, &p.to) {
            (Some(from), None) => outward(api, pods, &peers, from, p),
            (None, Some(to)) => inward(api, world, pods, to, p),
            _ => Err(anyhow::anyhow!("a probe names `from` or `to`, not both")),
        };
        let row = row.unwrap_or_else(|e| Row {
            line: format!("{}: {e:#}", p.why),
            ok: false,
        });
        checks.record(CheckKind::Outside, p.why.clone(), row.ok, row.line.clone());
        seen.rows.push(row);
    }
    seen
}

fn pod<'a>(pods: &'a [Pod], name: &str) -> anyhow::Result<&'a Pod> {
    pods.iter()
        .find(|p| p.name == name)
        .ok_or_else(|| anyhow::anyhow!("pod {name} is not in the scenario"))
}

fn eip(api: &SidelaneCluster, name: &str) -> anyhow::Result<String> {
    status(api, "IptablesEIP", name)["ip"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("IptablesEIP {name} shows no address"))
}

/// A pod connects to the outside host: the source it sees must be the EIP.
fn outward(
    api: &SidelaneCluster,
    pods: &[Pod],
    peers: &Peers,
    from: &str,
    p: &Probe,
) -> anyhow::Result<Row> {
    let pod = pod(pods, from)?;
    let want = match &p.seen_as {
        Some(e) => Some(eip(api, e)?),
        None => None,
    };
    let addr: SocketAddr = format!("{HOST}:{HOST_PORT}").parse()?;
    let ns = pod.ns.path();
    let count = || peers.lock().map(|l| l.len()).unwrap_or_default();
    let before = count();
    let connected = within(Duration::from_secs(20), || {
        let ns = ns.clone();
        in_netns(&ns, move || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok())
        })
        .unwrap_or(false)
    });
    let _ = within(Duration::from_secs(2), || count() > before);
    let got = peers
        .lock()
        .ok()
        .and_then(|l| l.last().map(|a| a.ip().to_string()))
        .filter(|_| connected);
    let ok = connected == p.reach && (!connected || want.is_none() || got == want);
    let line = format!(
        "{from} → outside host {addr}: {}{}",
        if connected {
            "arrived"
        } else {
            "never arrived"
        },
        got.map(|g| {
            format!(
                ", seen from {g}{}",
                p.seen_as
                    .as_ref()
                    .map(|e| format!(" (must be {e}: {})", want.clone().unwrap_or_default()))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default()
    );
    Ok(Row { line, ok })
}

/// The outside host connects to `to:port`; it must (or must not) reach the server pod.
fn inward(
    api: &SidelaneCluster,
    world: &OutsideWorld,
    pods: &[Pod],
    to: &str,
    p: &Probe,
) -> anyhow::Result<Row> {
    let port = p
        .port
        .ok_or_else(|| anyhow::anyhow!("an inward probe names `port`"))?;
    let target = if let Some(name) = to.strip_prefix("pod/") {
        let pod = pod(pods, name)?;
        pod.attachments
            .iter()
            .find_map(|a| a.ips.first().cloned())
            .ok_or_else(|| anyhow::anyhow!("pod {name} has no address"))?
    } else if to.parse::<std::net::IpAddr>().is_ok() {
        to.to_owned()
    } else {
        eip(api, to)?
    };
    let _listener = match &p.server {
        Some(server) => {
            let server_port = p.server_port.unwrap_or(port);
            Some(in_netns(&pod(pods, server)?.ns.path(), move || {
                Ok(TcpListener::bind(("0.0.0.0", server_port))?)
            })?)
        }
        None => None,
    };
    let addr: SocketAddr = format!("{target}:{port}").parse()?;
    let host = world.host.path();
    let once = || {
        let host = host.clone();
        in_netns(&host, move || {
            Ok(TcpStream::connect_timeout(&addr, Duration::from_millis(800)).is_ok())
        })
        .unwrap_or(false)
    };
    let arrived = if p.reach {
        within(Duration::from_secs(20), once)
    } else {
        once()
    };
    let line = format!(
        "outside host → {to} {addr}{}: {} (must be {})",
        p.server
            .as_ref()
            .map(|s| format!(" (listener: {s}:{})", p.server_port.unwrap_or(port)))
            .unwrap_or_default(),
        if arrived { "arrived" } else { "denied" },
        if p.reach { "allowed" } else { "denied" }
    );
    Ok(Row {
        line,
        ok: arrived == p.reach,
    })
}
