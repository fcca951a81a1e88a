//! The CNI specification as our plugin speaks it (versions 0.3.0 to 1.1.0): the network
//! configuration on stdin, the `CNI_*` environment, results in each version's format and errors
//! with the spec's codes. Pure: the plugin binary feeds it strings.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::daemon::{DEFAULT_SERVER_SOCKET, Route};

/// The plugin type names that mean "us" as a main plugin.
pub const PLUGIN_TYPES: [&str; 2] = ["kube-ovn", "sidelane"];

/// A CNI specification version we speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.3.0.
    V0_3_0,
    /// 0.3.1.
    V0_3_1,
    /// 0.4.0 (adds CHECK).
    V0_4_0,
    /// 1.0.0.
    V1_0_0,
    /// 1.1.0 (adds STATUS and GC).
    V1_1_0,
}

impl CniVersion {
    /// Every supported version, oldest first.
    pub const ALL: [CniVersion; 5] = [
        CniVersion::V0_3_0,
        CniVersion::V0_3_1,
        CniVersion::V0_4_0,
        CniVersion::V1_0_0,
        CniVersion::V1_1_0,
    ];

    /// The version string.
    pub const fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// Results before 1.0.0 carry a `version` ("4"/"6") on each IP.
    const fn ips_carry_version(self) -> bool {
        matches!(
            self,
            CniVersion::V0_3_0 | CniVersion::V0_3_1 | CniVersion::V0_4_0
        )
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CniVersion {
    type Err = CniError;

    fn from_str(s: &str) -> Result<CniVersion, CniError> {
        CniVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("cniVersion {s:?} is not supported"),
                    format!(
                        "supported versions: {}",
                        CniVersion::ALL.map(CniVersion::as_str).join(", ")
                    ),
                )
            })
    }
}

/// The spec's well-known error codes (and Kube-OVN's use of 11 for RPC failures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later (Kube-OVN: "RPC failed").
    TryAgainLater = 11,
    /// 101 (Sidelane's own): CHECK found the interface unlike its `prevResult` or its
    /// allocation; the message names each difference.
    CheckFailed = 101,
    /// 50: the plugin is not available (STATUS).
    NotAvailable = 50,
}

/// An error as the spec prints it on stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// The spec's code.
    pub code: ErrorCode,
    /// A short message.
    pub msg: String,
    /// What exactly is wrong (the field and value, the agent's answer).
    pub details: String,
}

impl ErrorCode {
    /// The code of this number, if it is one of these.
    pub fn from_u32(code: u32) -> Option<ErrorCode> {
        Some(match code {
            1 => ErrorCode::IncompatibleVersion,
            2 => ErrorCode::UnsupportedField,
            3 => ErrorCode::UnknownContainer,
            4 => ErrorCode::InvalidEnvironment,
            5 => ErrorCode::Io,
            6 => ErrorCode::Decode,
            7 => ErrorCode::InvalidConfig,
            11 => ErrorCode::TryAgainLater,
            50 => ErrorCode::NotAvailable,
            101 => ErrorCode::CheckFailed,
            _ => return None,
        })
    }

    /// A short message for an error of this code.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::IncompatibleVersion => "incompatible CNI version",
            ErrorCode::UnsupportedField => "unsupported field in the network configuration",
            ErrorCode::UnknownContainer => "unknown container",
            ErrorCode::InvalidEnvironment => "invalid environment variables",
            ErrorCode::Io => "I/O failure",
            ErrorCode::Decode => "failed to decode content",
            ErrorCode::InvalidConfig => "invalid network configuration",
            // Kube-OVN's words, which runbooks grep for.
            ErrorCode::TryAgainLater => "RPC failed",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::CheckFailed => "the interface is not as expected",
        }
    }
}

impl CniError {
    /// An error with `code`, `msg` and `details`.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The JSON the spec wants on stdout, for `version`.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (code {}): {}",
            self.msg, self.code as u32, self.details
        )
    }
}

impl std::error::Error for CniError {}

/// The CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// VERSION.
    Version,
    /// STATUS.
    Status,
    /// GC.
    Gc,
}

impl FromStr for Command {
    type Err = CniError;

    fn from_str(s: &str) -> Result<Command, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "unknown CNI_COMMAND",
                    format!(
                        "CNI_COMMAND={other:?}; expected ADD, DEL, CHECK, VERSION, STATUS or GC"
                    ),
                ));
            }
        })
    }
}

/// The runtime's environment for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into pairs.
    pub args: BTreeMap<String, String>,
}

impl Environment {
    /// Reads the `CNI_*` variables from `vars`; the ones a command needs must be present.
    pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<Environment, CniError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
        let command: Command = vars
            .get("CNI_COMMAND")
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    "CNI_COMMAND is not set",
                    "the runtime must set CNI_COMMAND",
                )
            })?
            .parse()?;
        let env = Environment {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: parse_args(&get("CNI_ARGS"))?,
        };
        let required: &[(&str, &str)] = match command {
            Command::Add | Command::Check => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Del => &[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        for (name, value) in required {
            if value.is_empty() {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("{name} is not set"),
                    format!("{name} is required for {command:?}"),
                ));
            }
        }
        Ok(env)
    }

    /// A `CNI_ARGS` value (`K8S_POD_NAME` ...), if present and non-empty.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// `K=V;K=V` (`CNI_ARGS`).
fn parse_args(value: &str) -> Result<BTreeMap<String, String>, CniError> {
    value
        .split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::InvalidEnvironment,
                        "CNI_ARGS is malformed",
                        format!("{pair:?} in CNI_ARGS is not KEY=VALUE"),
                    )
                })
        })
        .collect()
}

/// How the plugin was invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `"type": "kube-ovn"`: we create the interface.
    Main,
    /// `"ipam": {"type": "kube-ovn"}` under another plugin: addresses only.
    Ipam,
}

/// The `ipam` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct IpamConfig {
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `server_socket`.
    #[serde(default)]
    pub server_socket: String,
    /// `provider`.
    #[serde(default)]
    pub provider: String,
    /// `routes`.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// The network configuration as the runtime passes it on stdin (unknown fields ignored).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RawConfig {
    /// `cniVersion`.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `type`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `server_socket`.
    #[serde(default)]
    pub server_socket: String,
    /// `provider`.
    #[serde(default)]
    pub provider: String,
    /// `routes`.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// `mtu`.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// `ipam`.
    #[serde(default)]
    pub ipam: Option<IpamConfig>,
    /// `dns`.
    #[serde(default)]
    pub dns: Option<Value>,
    /// `prevResult`.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// `runtimeConfig`.
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// `args`.
    #[serde(default)]
    pub args: Option<Value>,
    /// Every other field (`master`, `mode`, `cni.dev/valid-attachments` ...).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The configuration once validated, with Kube-OVN's IPAM-mode rule applied.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginConfig {
    /// The version results and errors are printed in.
    pub version: CniVersion,
    /// The network's name.
    pub name: String,
    /// The outer plugin's type (`kube-ovn`, `macvlan` ...).
    pub outer_type: String,
    /// Main plugin or IPAM.
    pub mode: Mode,
    /// The agent's socket.
    pub server_socket: String,
    /// The provider (empty → `ovn`).
    pub provider: String,
    /// The NAD's routes.
    pub routes: Vec<Route>,
    /// The interface MTU asked for, if any.
    pub mtu: Option<u32>,
    /// The raw configuration, for fields read later.
    pub raw: RawConfig,
}

impl PluginConfig {
    /// Parses and validates stdin. The version is checked first, so later errors can be printed
    /// in it.
    pub fn parse(stdin: &[u8]) -> Result<PluginConfig, CniError> {
        let raw: RawConfig = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                ErrorCode::Decode,
                "the network configuration is not valid JSON",
                e.to_string(),
            )
        })?;
        let version: CniVersion = raw.cni_version.parse()?;
        if raw.name.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                "\"name\" is missing or empty",
            ));
        }
        let ipam = raw
            .ipam
            .clone()
            .filter(|i| PLUGIN_TYPES.contains(&i.kind.as_str()));
        let (mode, socket, provider, routes) = if PLUGIN_TYPES.contains(&raw.kind.as_str()) {
            (
                Mode::Main,
                raw.server_socket.clone(),
                raw.provider.clone(),
                raw.routes.clone(),
            )
        } else if let Some(ipam) = ipam {
            (Mode::Ipam, ipam.server_socket, ipam.provider, ipam.routes)
        } else {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "invalid network configuration",
                format!(
                    "\"type\" is {:?} and \"ipam.type\" is {:?}; one of them must be \"kube-ovn\"",
                    raw.kind,
                    raw.ipam
                        .as_ref()
                        .map(|i| i.kind.as_str())
                        .unwrap_or_default()
                ),
            ));
        };
        let server_socket = if socket.is_empty() {
            DEFAULT_SERVER_SOCKET.to_owned()
        } else {
            socket
        };
        Ok(PluginConfig {
            version,
            name: raw.name.clone(),
            outer_type: raw.kind.clone(),
            mode,
            server_socket,
            provider,
            routes,
            mtu: raw.mtu,
            raw,
        })
    }
}

/// An interface in a result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The name.
    pub name: String,
    /// The MAC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The MTU (1.1.0 and later print it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace path, for an interface inside the container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address in a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultIp {
    /// The address with its prefix length (`10.16.0.5/16`).
    pub address: String,
    /// The gateway, if any.
    pub gateway: Option<String>,
    /// The index of its interface in `interfaces`, if any.
    pub interface: Option<usize>,
    /// IPv4 (true) or IPv6.
    pub is_v4: bool,
}

/// A route in a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultRoute {
    /// The destination prefix.
    pub dst: String,
    /// The next hop, if any.
    pub gw: Option<String>,
}

/// A result, version-independent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<ResultIp>,
    /// Routes.
    pub routes: Vec<ResultRoute>,
    /// DNS, as given.
    pub dns: Option<Value>,
}

impl CniResult {
    /// The result in `version`'s format.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut v = json!({"name": i.name});
                if !i.mac.is_empty() {
                    v["mac"] = json!(i.mac);
                }
                if let (Some(mtu), CniVersion::V1_1_0) = (i.mtu, version) {
                    v["mtu"] = json!(mtu);
                }
                if !i.sandbox.is_empty() {
                    v["sandbox"] = json!(i.sandbox);
                }
                v
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = json!({"address": ip.address});
                if version.ips_carry_version() {
                    v["version"] = json!(if ip.is_v4 { "4" } else { "6" });
                }
                if let Some(gw) = &ip.gateway {
                    v["gateway"] = json!(gw);
                }
                if let Some(idx) = ip.interface {
                    v["interface"] = json!(idx);
                }
                v
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| match &r.gw {
                Some(gw) => json!({"dst": r.dst, "gw": gw}),
                None => json!({"dst": r.dst}),
            })
            .collect();
        let mut out = json!({"cniVersion": version.as_str()});
        if !interfaces.is_empty() {
            out["interfaces"] = Value::Array(interfaces);
        }
        if !ips.is_empty() {
            out["ips"] = Value::Array(ips);
        }
        if !routes.is_empty() {
            out["routes"] = Value::Array(routes);
        }
        out["dns"] = self.dns.clone().unwrap_or_else(|| json!({}));
        out
    }

    /// Parses a result (e.g. `prevResult`) of any supported version.
    pub fn from_json(value: &Value) -> Result<CniResult, CniError> {
        let bad = |what: &str| {
            CniError::new(
                ErrorCode::Decode,
                "prevResult is not a CNI result",
                what.to_owned(),
            )
        };
        let interfaces = match value.get("interfaces") {
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| bad(&format!("interfaces: {e}")))?
            }
            None => Vec::new(),
        };
        let mut ips = Vec::new();
        for ip in value
            .get("ips")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("an ip without an address: {ip}")))?;
            ips.push(ResultIp {
                address: address.to_owned(),
                gateway: ip.get("gateway").and_then(Value::as_str).map(str::to_owned),
                interface: ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .and_then(|i| usize::try_from(i).ok()),
                is_v4: !address.contains(':'),
            });
        }
        let routes = value
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                Some(ResultRoute {
                    dst: r.get("dst")?.as_str()?.to_owned(),
                    gw: r.get("gw").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .collect();
        Ok(CniResult {
            interfaces,
            ips,
            routes,
            dns: value.get("dns").cloned(),
        })
    }
}

/// The VERSION answer.
pub fn version_info() -> Value {
    json!({
        "cniVersion": CniVersion::V1_1_0.as_str(),
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The seed's macvlan NAD config, verbatim (multi-nic-ipam.en.txt).
    const SEED_MACVLAN: &str = r#"{
      "cniVersion": "0.3.0",
      "type": "macvlan",
      "master": "eth0",
      "mode": "bridge",
      "ipam": {
        "type": "kube-ovn",
        "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
        "provider": "macvlan.default"
      }
    }"#;

    #[test]
    fn the_seeds_macvlan_config_runs_us_as_ipam_with_its_provider() {
        // Multus adds the NAD's name before calling the plugin.
        let mut v: Value = serde_json::from_str(SEED_MACVLAN).expect("seed JSON");
        v["name"] = json!("macvlan");
        let cfg = PluginConfig::parse(v.to_string().as_bytes()).expect("valid");
        assert_eq!(cfg.mode, Mode::Ipam);
        assert_eq!(cfg.version, CniVersion::V0_3_0);
        assert_eq!(cfg.provider, "macvlan.default");
        assert_eq!(cfg.server_socket, "/run/openvswitch/kube-ovn-daemon.sock");
        assert_eq!(cfg.outer_type, "macvlan");
    }

    #[test]
    fn a_kube_ovn_config_runs_us_as_the_main_plugin() {
        let cfg = PluginConfig::parse(
            br#"{"cniVersion":"0.3.1","name":"attachnet","type":"kube-ovn",
                 "server_socket":"/run/openvswitch/kube-ovn-daemon.sock",
                 "provider":"attachnet.default.ovn"}"#,
        )
        .expect("valid");
        assert_eq!(cfg.mode, Mode::Main);
        assert_eq!(cfg.provider, "attachnet.default.ovn");
    }

    #[test]
    fn bad_configs_get_spec_errors_naming_the_field() {
        let err = PluginConfig::parse(b"{").expect_err("not JSON");
        assert_eq!(err.code, ErrorCode::Decode);
        let err = PluginConfig::parse(br#"{"cniVersion":"0.2.0","name":"n","type":"kube-ovn"}"#)
            .expect_err("old version");
        assert_eq!(err.code, ErrorCode::IncompatibleVersion);
        assert!(err.msg.contains("0.2.0"), "{err}");
        let err = PluginConfig::parse(br#"{"cniVersion":"1.0.0","type":"kube-ovn"}"#)
            .expect_err("no name");
        assert_eq!(err.code, ErrorCode::InvalidConfig);
        assert!(err.details.contains("name"), "{err}");
        let err = PluginConfig::parse(br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#)
            .expect_err("not for us");
        assert!(err.details.contains("\"bridge\""), "{err}");
    }

    #[test]
    fn the_environment_names_what_is_missing() {
        let env = Environment::from_vars(&vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "net1"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            ),
        ]))
        .expect("valid");
        assert_eq!(env.arg("K8S_POD_NAME"), Some("p"));
        assert_eq!(env.arg("K8S_POD_UID"), None);
        let err =
            Environment::from_vars(&vars(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c")]))
                .expect_err("no netns");
        assert_eq!(err.code, ErrorCode::InvalidEnvironment);
        assert!(err.msg.contains("CNI_NETNS"), "{err}");
        let del = Environment::from_vars(&vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "net1"),
        ]))
        .expect("DEL tolerates a missing netns");
        assert_eq!(del.netns, "");
        let err = Environment::from_vars(&vars(&[("CNI_COMMAND", "FROB")])).expect_err("unknown");
        assert!(err.details.contains("FROB"), "{err}");
    }

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "net1".to_owned(),
                mac: "00:00:00:8a:3c:4f".to_owned(),
                mtu: Some(1400),
                sandbox: "/var/run/netns/x".to_owned(),
            }],
            ips: vec![ResultIp {
                address: "172.17.0.5/16".to_owned(),
                gateway: Some("172.17.0.1".to_owned()),
                interface: Some(0),
                is_v4: true,
            }],
            routes: vec![ResultRoute {
                dst: "0.0.0.0/0".to_owned(),
                gw: Some("172.17.0.1".to_owned()),
            }],
            dns: None,
        }
    }

    #[test]
    fn results_before_one_point_zero_carry_the_ip_version() {
        let v = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(
            v,
            json!({
                "cniVersion": "0.3.1",
                "interfaces": [{"name": "net1", "mac": "00:00:00:8a:3c:4f",
                                "sandbox": "/var/run/netns/x"}],
                "ips": [{"address": "172.17.0.5/16", "version": "4", "gateway": "172.17.0.1",
                         "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "172.17.0.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn results_from_one_point_zero_drop_the_version_and_one_point_one_adds_mtu() {
        let v = sample().to_json(CniVersion::V1_0_0);
        assert_eq!(v["ips"][0].get("version"), None);
        assert_eq!(v["interfaces"][0].get("mtu"), None);
        let v = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v["interfaces"][0]["mtu"], json!(1400));
        assert_eq!(v["cniVersion"], json!("1.1.0"));
    }

    #[test]
    fn a_result_of_any_version_parses_back() {
        for version in CniVersion::ALL {
            let parsed = CniResult::from_json(&sample().to_json(version)).expect("parses");
            assert_eq!(parsed.ips, sample().ips, "{version}");
            assert_eq!(parsed.routes, sample().routes, "{version}");
        }
    }

    #[test]
    fn errors_print_in_the_spec_shape() {
        let e = CniError::new(
            ErrorCode::TryAgainLater,
            "RPC failed",
            "request ip return 500 x",
        );
        assert_eq!(
            e.to_json("0.3.1"),
            json!({"cniVersion": "0.3.1", "code": 11, "msg": "RPC failed",
                   "details": "request ip return 500 x"})
        );
    }

    #[test]
    fn version_lists_every_supported_version() {
        assert_eq!(
            version_info()["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
    }
}
