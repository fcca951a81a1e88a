//! Sidelane's CNI plugin, installed as `kube-ovn` (what the seeds' NADs name) and `sidelane`.
//!
//! It is both a main plugin (`"type": "kube-ovn"`: the agent creates the interface) and an IPAM
//! plugin (`"ipam": {"type": "kube-ovn"}` under macvlan and the like: the agent answers with
//! addresses only); the configuration says which. It validates, forwards the request to the node
//! agent over `server_socket` in Kube-OVN's protocol ([`sidelane_api::daemon`]) and prints the
//! answer in the configuration's CNI version. Nothing else: kubelet forks it for every pod.

pub mod rpc;

use std::{collections::BTreeMap, path::Path};

use ipnet::IpNet;
use serde_json::{Value, json};
use sidelane_api::{
    cni::{
        CniError, CniResult, CniVersion, Command, Environment, ErrorCode, Interface, Mode,
        PluginConfig, ResultIp, ResultRoute, version_info,
    },
    daemon::{
        CniRequest, CniResponse, Dns, Expected, GcRequest, MAX_REQUEST_BYTES, PATH_ADD, PATH_CHECK,
        PATH_DEL, PATH_GC, PATH_STATUS, Protocol, ValidAttachment,
    },
};

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Standard output (a result, an error, or nothing).
    pub stdout: String,
    /// The exit status: 0 on success, 1 on error.
    pub exit_code: i32,
}

/// Runs one CNI call: `vars` is the environment, `stdin` the network configuration.
pub fn run(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Outcome {
    // Errors are printed in the configuration's version when it can be read at all.
    let version = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CniVersion::V1_1_0.as_str().to_owned());
    match dispatch(vars, stdin) {
        Ok(Some(out)) => Outcome {
            stdout: out.to_string(),
            exit_code: 0,
        },
        Ok(None) => Outcome {
            stdout: String::new(),
            exit_code: 0,
        },
        Err(e) => Outcome {
            stdout: e.to_json(&version).to_string(),
            exit_code: 1,
        },
    }
}

fn dispatch(vars: &BTreeMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = Environment::from_vars(vars)?;
    if env.command == Command::Version {
        return Ok(Some(version_info()));
    }
    let cfg = PluginConfig::parse(stdin)?;
    let socket = Path::new(&cfg.server_socket);
    match env.command {
        Command::Version => Ok(Some(version_info())),
        Command::Add => add(&env, &cfg, socket).map(Some),
        Command::Del => del(&env, &cfg, socket).map(|()| None),
        Command::Check => check(&env, &cfg, socket).map(|()| None),
        Command::Gc => gc(&cfg, socket).map(|()| None),
        Command::Status => status(&cfg, socket).map(|()| None),
    }
}

/// The request Kube-OVN's binary would send for this call.
fn request(env: &Environment, cfg: &PluginConfig) -> Result<CniRequest, CniError> {
    let pod_arg = |key: &str| {
        env.arg(key).map(str::to_owned).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("{key} is missing from CNI_ARGS"),
                format!(
                    "CNI_ARGS={:?}: the runtime must pass K8S_POD_NAMESPACE and K8S_POD_NAME",
                    join_args(env)
                ),
            )
        })
    };
    let dns = cfg
        .raw
        .dns
        .clone()
        .map(serde_json::from_value::<Dns>)
        .transpose()
        .map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                format!("\"dns\": {e}"),
            )
        })?
        .unwrap_or_default();
    Ok(CniRequest {
        cni_type: cfg.outer_type.clone(),
        pod_name: pod_arg("K8S_POD_NAME")?,
        pod_namespace: pod_arg("K8S_POD_NAMESPACE")?,
        container_id: env.container_id.clone(),
        net_ns: env.netns.clone(),
        if_name: env.ifname.clone(),
        provider: cfg.provider.clone(),
        routes: cfg.routes.clone(),
        dns,
        ..CniRequest::default()
    })
}

fn join_args(env: &Environment) -> String {
    env.args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// Sends `body` to `path`; any transport failure or unexpected status is Kube-OVN's
/// "RPC failed" (code 11) with the status and the agent's error in the details.
fn call(socket: &Path, path: &str, body: &[u8], ok: u16) -> Result<Vec<u8>, CniError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "the request is too large",
            format!(
                "{path}: {} bytes, over the agent's limit of {MAX_REQUEST_BYTES} bytes \
                 (routes, DNS or prevResult in the network configuration make it so)",
                body.len()
            ),
        ));
    }
    answer(rpc::post(socket, path, body), ok)
}

/// The body of an answer with status `ok`; anything else is an error with the code the agent
/// gives it ("RPC failed", 11, when it gives none, as Kube-OVN's daemon does).
fn answer(resp: Result<rpc::Response, rpc::RpcError>, ok: u16) -> Result<Vec<u8>, CniError> {
    let resp =
        resp.map_err(|e| CniError::new(ErrorCode::TryAgainLater, "RPC failed", e.to_string()))?;
    if resp.status == ok {
        return Ok(resp.body);
    }
    let parsed = serde_json::from_slice::<CniResponse>(&resp.body).ok();
    let code = parsed
        .as_ref()
        .and_then(|r| r.cni_code)
        .and_then(ErrorCode::from_u32)
        .unwrap_or(ErrorCode::TryAgainLater);
    let error = parsed
        .map(|r| r.error)
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_owned());
    Err(CniError::new(
        code,
        code.describe(),
        format!("request ip return {} {error}", resp.status),
    ))
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, CniError> {
    serde_json::to_vec(value)
        .map_err(|e| CniError::new(ErrorCode::Io, "encoding the request failed", e.to_string()))
}

fn add(env: &Environment, cfg: &PluginConfig, socket: &Path) -> Result<Value, CniError> {
    let req = request(env, cfg)?;
    let body = call(socket, PATH_ADD, &encode(&req)?, 200)?;
    let resp: CniResponse = serde_json::from_slice(&body).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "the agent's answer is not a CniResponse",
            format!("{e}: {}", String::from_utf8_lossy(&body)),
        )
    })?;
    Ok(result(cfg, env, &resp)?.to_json(cfg.version))
}

/// The result Kube-OVN's binary builds from the agent's answer.
pub fn result(
    cfg: &PluginConfig,
    env: &Environment,
    resp: &CniResponse,
) -> Result<CniResult, CniError> {
    let main = cfg.mode == Mode::Main;
    let interfaces = if main {
        vec![Interface {
            name: if resp.nicname.is_empty() {
                env.ifname.clone()
            } else {
                resp.nicname.clone()
            },
            mac: resp.mac_address.clone(),
            mtu: (resp.mtu > 0).then_some(resp.mtu),
            sandbox: env.netns.clone(),
        }]
    } else {
        Vec::new()
    };
    let mut ips = Vec::new();
    for ip in &resp.ips {
        let subnet: IpNet = ip.cidr.parse().map_err(|_| {
            CniError::new(
                ErrorCode::Decode,
                "the agent's answer is malformed",
                format!("cidr {:?} of {} is not a CIDR block", ip.cidr, ip.ip),
            )
        })?;
        ips.push(ResultIp {
            address: format!("{}/{}", ip.ip, subnet.prefix_len()),
            gateway: Some(ip.gateway.clone()).filter(|g| !g.is_empty()),
            interface: main.then_some(0),
            is_v4: ip.protocol == Protocol::IPv4,
        });
    }
    let routes = if resp.routes.is_empty() {
        ips.iter()
            .filter_map(|ip| {
                ip.gateway.as_ref().map(|gw| ResultRoute {
                    dst: if ip.is_v4 { "0.0.0.0/0" } else { "::/0" }.to_owned(),
                    gw: Some(gw.clone()),
                })
            })
            .collect()
    } else {
        resp.routes
            .iter()
            .map(|r| ResultRoute {
                dst: if r.destination.is_empty() {
                    if r.gateway.contains(':') {
                        "::/0"
                    } else {
                        "0.0.0.0/0"
                    }
                    .to_owned()
                } else {
                    r.destination.clone()
                },
                gw: Some(r.gateway.clone()).filter(|g| !g.is_empty()),
            })
            .collect()
    };
    let dns = serde_json::to_value(&resp.dns)
        .ok()
        .filter(|d| d != &json!({}));
    Ok(CniResult {
        interfaces,
        ips,
        routes,
        dns,
    })
}

fn del(env: &Environment, cfg: &PluginConfig, socket: &Path) -> Result<(), CniError> {
    let req = request(env, cfg)?;
    match rpc::post(socket, PATH_DEL, &encode(&req)?) {
        // No agent, nothing it could have set up on this node: DEL is idempotent.
        Err(e) if e.is_unreachable() => Ok(()),
        other => answer(other, 204).map(drop),
    }
}

/// An error unless the configuration's `cniVersion` is at least `since`, the version that
/// brought `verb`.
fn needs(cfg: &PluginConfig, since: CniVersion, verb: &str) -> Result<(), CniError> {
    if cfg.version < since {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("{verb} needs cniVersion {} or later", since.as_str()),
            format!("cniVersion is {}", cfg.version),
        ));
    }
    Ok(())
}

fn check(env: &Environment, cfg: &PluginConfig, socket: &Path) -> Result<(), CniError> {
    needs(cfg, CniVersion::V0_4_0, "CHECK")?;
    let mut req = request(env, cfg)?;
    req.expected = Some(expected(env, cfg)?);
    call(socket, PATH_CHECK, &encode(&req)?, 204).map(drop)
}

/// What the runtime's `prevResult` says of `CNI_IFNAME`, as the spec has CHECK compare it: its
/// MAC and addresses for our own interface; the addresses alone when we serve only IPAM (the
/// calling plugin checks its interface). No `prevResult`, one that is not a result, or one
/// that does not name the interface is an error.
fn expected(env: &Environment, cfg: &PluginConfig) -> Result<Expected, CniError> {
    let prev = cfg.raw.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "CHECK needs prevResult",
            "the network configuration has no prevResult",
        )
    })?;
    if !prev.is_object() {
        return Err(CniError::new(
            ErrorCode::Decode,
            "prevResult is not a CNI result",
            format!("prevResult is {prev}"),
        ));
    }
    let result = CniResult::from_json(prev)?;
    let ipam_only = !cfg.outer_type.is_empty() && cfg.outer_type != "kube-ovn";
    let index = result
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && (i.sandbox.is_empty() || i.sandbox == env.netns));
    if index.is_none() && !ipam_only {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "prevResult does not name the interface",
            format!(
                "no interface {:?} in sandbox {:?} among {:?}",
                env.ifname,
                env.netns,
                result
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
            ),
        ));
    }
    let ips = result
        .ips
        .iter()
        .filter(|ip| index.is_none() || ip.interface.is_none() || ip.interface == index)
        .map(|ip| ip.address.clone())
        .collect();
    Ok(Expected {
        mac: index
            .map(|i| result.interfaces[i].mac.clone())
            .unwrap_or_default(),
        ips,
    })
}

fn gc(cfg: &PluginConfig, socket: &Path) -> Result<(), CniError> {
    needs(cfg, CniVersion::V1_1_0, "GC")?;
    let valid = cfg
        .raw
        .extra
        .get("cni.dev/valid-attachments")
        .cloned()
        .map(serde_json::from_value::<Vec<ValidAttachment>>)
        .transpose()
        .map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                format!("\"cni.dev/valid-attachments\": {e}"),
            )
        })?
        .unwrap_or_default();
    let req = GcRequest {
        provider: cfg.provider.clone(),
        valid_attachments: valid,
    };
    call(socket, PATH_GC, &encode(&req)?, 204).map(drop)
}

fn status(cfg: &PluginConfig, socket: &Path) -> Result<(), CniError> {
    needs(cfg, CniVersion::V1_1_0, "STATUS")?;
    call(socket, PATH_STATUS, b"{}", 204)
        .map(drop)
        .map_err(|e| {
            CniError::new(
                ErrorCode::NotAvailable,
                "the Sidelane agent is not ready",
                e.details,
            )
        })
}
