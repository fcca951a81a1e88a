//! The fuzz targets' bodies: every parser of outside input, fed arbitrary bytes. Shared by the
//! libFuzzer binaries (`tests/fuzz/fuzz_targets/`, `cargo xtask fuzz`) and by the normal test
//! run, which replays the committed corpora and regression inputs through the same functions
//! (`tests/tests/fuzz_regressions.rs` includes this file).
//!
//! A body may return errors; it must not panic, loop, or allocate without bound.

use std::collections::BTreeMap;

use serde_json::Value;
use sidelane_api::{
    allocation, cni,
    daemon::{CniRequest, GcRequest},
    nad, network_selection,
    qos::QosSpec,
};
use sidelane_controller::subnet::{self, SubnetConfig, SubnetInput};
use sidelane_ovsdb::{Replica, Schema, framing::Framer};

/// The targets, by name (the file names under `fuzz_targets/` and the corpus directories).
pub const TARGETS: [&str; 8] = [
    "nad_config",
    "network_selection",
    "pod_annotations",
    "subnet_lists",
    "cni_plugin_input",
    "agent_request",
    "ovsdb_framing",
    "ovsdb_update",
];

/// Runs target `name` on `data`.
///
/// # Panics
/// When `name` is not a target (and whenever a parser panics: what fuzzing looks for).
pub fn run(name: &str, data: &[u8]) {
    match name {
        "nad_config" => nad_config(data),
        "network_selection" => network_selection(data),
        "pod_annotations" => pod_annotations(data),
        "subnet_lists" => subnet_lists(data),
        "cni_plugin_input" => cni_plugin_input(data),
        "agent_request" => agent_request(data),
        "ovsdb_framing" => ovsdb_framing(data),
        "ovsdb_update" => ovsdb_update(data),
        other => panic!("no fuzz target {other}"),
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// `key=value` lines (a line without `=` is a key with an empty value).
fn pairs(data: &[u8]) -> BTreeMap<String, String> {
    text(data)
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (l.to_owned(), String::new()),
        })
        .collect()
}

/// A NAD's `spec.config`, as the controller and the validation read it.
pub fn nad_config(data: &[u8]) {
    if let Ok(Some(cfg)) = nad::parse("default", "fuzz", &text(data)) {
        let _ = cfg.provider_mismatch();
    }
}

/// `k8s.v1.cni.cncf.io/networks`, short and JSON forms.
pub fn network_selection(data: &[u8]) {
    if let Ok(selections) = network_selection::parse(&text(data), "default") {
        for (i, s) in selections.iter().enumerate() {
            let _ = s.interface_or_default(i + 1);
        }
        for kind in [
            network_selection::NadKind::KubeOvn,
            network_selection::NadKind::IpamOnly,
        ] {
            for i in 0..selections.len() {
                let _ = network_selection::provider(&selections, i, kind);
            }
        }
    }
}

/// A pod's annotations (`key=value` lines): the allocation and QoS of every provider named.
pub fn pod_annotations(data: &[u8]) {
    let annotations = pairs(data);
    let providers: Vec<String> = annotations
        .keys()
        .filter_map(|k| k.split_once(".kubernetes.io/").map(|(p, _)| p.to_owned()))
        .collect();
    for provider in providers.iter().take(16) {
        for ifname in ["net1", "net2", "eth0"] {
            if let Ok(Some(a)) = allocation::read(&annotations, provider, ifname) {
                for ip in &a.ips {
                    let _ = ip.with_prefix();
                }
            }
        }
        let _ = QosSpec::from_annotations(&annotations, provider);
    }
}

/// A Subnet's CIDR block, gateway and excludeIps (lines: cidr, gateway, then one entry each).
pub fn subnet_lists(data: &[u8]) {
    let t = text(data);
    let mut lines = t.lines();
    let cidr_block = lines.next().unwrap_or_default().to_owned();
    let gateway = lines.next().unwrap_or_default().to_owned();
    let exclude_ips: Vec<String> = lines.take(256).map(str::to_owned).collect();
    for e in &exclude_ips {
        let _ = subnet::parse_exclude(e);
    }
    let input = SubnetInput {
        name: "fuzz".to_owned(),
        cidr_block,
        gateway,
        exclude_ips,
        provider: "fuzz.default".to_owned(),
        protocol: String::new(),
        vpc: String::new(),
        namespaces: Vec::new(),
        mtu: None,
    };
    if let Ok(cfg) = SubnetConfig::from_input(&input) {
        let _ = (cfg.cidr_block(), cfg.gateway(), cfg.exclude_ips());
    }
}

/// What a runtime gives the CNI binary: the environment (`key=value` lines) before a NUL byte,
/// the network configuration (stdin) after it.
pub fn cni_plugin_input(data: &[u8]) {
    let (env, stdin) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&data[..0], data),
    };
    let vars = pairs(env);
    if let Ok(e) = cni::Environment::from_vars(&vars) {
        let _ = e.arg("K8S_POD_NAME");
    }
    if let Ok(cfg) = cni::PluginConfig::parse(stdin) {
        let _ = cfg.server_socket.len();
    }
    if let Ok(v) = serde_json::from_slice::<Value>(stdin) {
        let _ = cni::CniResult::from_json(&v);
    }
}

/// A request body on the agent's socket.
pub fn agent_request(data: &[u8]) {
    if let Ok(r) = serde_json::from_slice::<CniRequest>(data) {
        let _ = (r.provider_or_default(), r.pod_key());
    }
    let _ = serde_json::from_slice::<GcRequest>(data);
}

/// Bytes from an OVSDB server, split into reads at the positions the first byte picks.
pub fn ovsdb_framing(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut framer = Framer::new(64 * 1024);
    for chunk in rest.chunks(step) {
        framer.push(chunk);
        loop {
            match framer.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                // A framing error ends the connection.
                Err(_) => return,
            }
        }
    }
}

/// The Northbound tables a replica keeps (a subset of the schema is enough: unknown tables and
/// columns must be ignored).
const SCHEMA: &str = r#"{"name": "OVN_Northbound", "version": "7.0.0", "tables": {
  "Logical_Switch": {"columns": {"name": {"type": "string"},
    "ports": {"type": {"key": {"type": "uuid", "refTable": "Logical_Switch_Port"}, "min": 0, "max": "unlimited"}},
    "other_config": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}},
    "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}}},
  "Logical_Switch_Port": {"columns": {"name": {"type": "string"},
    "addresses": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
    "port_security": {"type": {"key": "string", "min": 0, "max": "unlimited"}},
    "type": {"type": "string"},
    "external_ids": {"type": {"key": "string", "value": "string", "min": 0, "max": "unlimited"}}}}
}}"#;

/// `update2` notifications and snapshots applied to a replica.
pub fn ovsdb_update(data: &[u8]) {
    let Ok(schema) = serde_json::from_str::<Value>(SCHEMA) else {
        return;
    };
    let mut replica = Replica::new(Schema::from_json(&schema));
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    replica.reset(v.clone());
    replica.apply(v.clone());
    replica.apply(v);
    let _ = replica.len("Logical_Switch");
}
