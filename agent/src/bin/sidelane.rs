//! `sidelane`: what an operator asks of Sidelane on a node or from a workstation.
//!
//! - `sidelane subnets`: the Subnets, their provider, Vpc, CIDR and address usage.
//! - `sidelane pod <namespace>/<name>`: a pod's attachments as allocated (interface, addresses,
//!   MAC, gateway, logical switch, routes, QoS).
//! - `sidelane interfaces [<namespace>/<pod>] [<interface>]`: the QoS and fast-path counters of
//!   this node's attachments, from the agent's `/attachments` (the agent runs on the host
//!   network; `--agent` names another).
//!
//! The first two talk to the Kubernetes API (KUBECONFIG or in-cluster, as kubectl does).

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};
use sidelane_agent::{inspect, metrics::AttachmentView};
use sidelane_api::crd::Subnet;

#[derive(Parser)]
#[command(
    name = "sidelane",
    version,
    about = "Inspect Sidelane: subnets, pod attachments, interface counters"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The Subnets and their address usage.
    Subnets,
    /// A pod's attachments as the controller allocated them.
    Pod {
        /// `<namespace>/<name>`, or `<name>` in `default`.
        pod: String,
    },
    /// QoS and fast-path counters of this node's attachments (from the agent).
    Interfaces {
        /// Only this pod (`<namespace>/<name>`, or `<name>` in `default`).
        pod: Option<String>,
        /// Only this interface of the pod (`net1`), shown in full.
        interface: Option<String>,
        /// The agent's metrics address (its `--metrics-addr`).
        #[arg(long, env = "SIDELANE_AGENT", default_value = "127.0.0.1:10665")]
        agent: String,
    },
}

fn split_pod(pod: &str) -> (String, String) {
    match pod.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => ("default".to_owned(), pod.to_owned()),
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")
}

/// `GET <path>` from the agent over plain HTTP/1.0: the body.
fn agent_get(agent: &str, path: &str) -> anyhow::Result<String> {
    let addr = agent.trim_start_matches("http://").trim_end_matches('/');
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving the agent address {addr:?}"))?
        .next()
        .with_context(|| format!("the agent address {addr:?} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(3)).with_context(|| {
        format!("connecting to the agent at {addr} (is sidelane-agent running with --metrics-addr {addr}?)")
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .context("setting a read timeout")?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .with_context(|| format!("asking the agent at {addr} for {path}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the agent's answer for {path}"))?;
    let text = String::from_utf8(raw).context("the agent's answer is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("the agent's answer for {path} has no header end"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("the agent at {addr} answered {path} with {status:?}: {body}");
    }
    Ok(body.to_owned())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidelane: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The causes in one line, as an operator reads them; no backtrace.
            eprintln!("sidelane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Subnets => {
            let subnets: Api<Subnet> = Api::all(client().await?);
            let list = subnets
                .list(&ListParams::default())
                .await
                .context("listing Subnets (kubeovn.io/v1)")?;
            print!("{}", inspect::subnets_table(&list.items));
        }
        Command::Pod { pod } => {
            let (ns, name) = split_pod(&pod);
            let pods: Api<Pod> = Api::namespaced(client().await?, &ns);
            let p = pods
                .get(&name)
                .await
                .with_context(|| format!("reading pod {ns}/{name}"))?;
            let annotations: BTreeMap<String, String> = p.metadata.annotations.unwrap_or_default();
            print!("{}", inspect::pod_attachments(&ns, &name, &annotations));
        }
        Command::Interfaces {
            pod,
            interface,
            agent,
        } => {
            let body = agent_get(&agent, "/attachments")?;
            let mut views: Vec<AttachmentView> = serde_json::from_str(&body)
                .with_context(|| format!("reading the agent's /attachments from {agent}"))?;
            if let Some(pod) = &pod {
                let (ns, name) = split_pod(pod);
                views.retain(|v| v.namespace == ns && v.pod == name);
                if views.is_empty() {
                    bail!("the agent at {agent} has no attachment of pod {ns}/{name}");
                }
            }
            match &interface {
                Some(ifname) => {
                    let Some(v) = views.iter().find(|v| &v.interface == ifname) else {
                        bail!(
                            "pod {} has no interface {ifname} on this node",
                            pod.as_deref().unwrap_or("?")
                        );
                    };
                    print!("{}", inspect::interface_detail(v));
                }
                None => print!("{}", inspect::interfaces_table(&views)),
            }
        }
    }
    Ok(())
}
