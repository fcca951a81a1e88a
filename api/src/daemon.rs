//! The CNI plugin ⇄ node agent protocol: Kube-OVN's, byte for byte, so that Kube-OVN's own CNI
//! binary works against our agent and ours against theirs.
//!
//! HTTP/1.1 over a unix socket (default [`DEFAULT_SERVER_SOCKET`]); the URL's host is ignored.
//! `POST` [`PATH_ADD`] answers 200 with a [`CniResponse`]; `POST` [`PATH_DEL`] answers 204. Errors
//! answer 400 (a bad body, a provider bound to no subnet) or 500 (timeouts, configuration
//! failures) with a [`CniResponse`] whose `error` says what went wrong. Sidelane's additions, on
//! further paths: [`PATH_CHECK`] (204), [`PATH_GC`] (204, body [`GcRequest`]) and
//! [`PATH_STATUS`] (204 when the agent is ready).
//!
//! Field names are Kube-OVN's Go JSON tags (`snake_case`, and `deviceID`). Go omits nothing on
//! these structs except where noted, and sends `null` for an empty list; both are accepted here.

use serde::{Deserialize, Deserializer, Serialize};

/// Where Kube-OVN's daemon listens, and so where NADs written for Kube-OVN point.
pub const DEFAULT_SERVER_SOCKET: &str = "/run/openvswitch/kube-ovn-daemon.sock";
/// ADD: 200 and a [`CniResponse`].
pub const PATH_ADD: &str = "/api/v1/add";
/// DEL: 204.
pub const PATH_DEL: &str = "/api/v1/del";
/// CHECK (Sidelane): 204 when the attachment is as allocated.
pub const PATH_CHECK: &str = "/api/v1/check";
/// GC (Sidelane): 204 once attachments the runtime no longer lists are removed.
pub const PATH_GC: &str = "/api/v1/gc";
/// STATUS (Sidelane): 204 when the agent can serve ADDs.
pub const PATH_STATUS: &str = "/api/v1/status";
/// The largest request body the agent accepts (a `CniRequest` is a few hundred bytes); the
/// plugin refuses to send a larger one, naming this limit.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// One route, as Kube-OVN writes it: both ends optional (no `dst` means the default route).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The destination prefix (`10.0.0.0/8`); empty for the default route.
    #[serde(rename = "dst", default, skip_serializing_if = "String::is_empty")]
    pub destination: String,
    /// The next hop; empty for an on-link route.
    #[serde(rename = "gw", default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// DNS settings, as the CNI library's `types.DNS` serialises them (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    /// Search domains.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_empty"
    )]
    pub options: Vec<String>,
}

/// What the CNI plugin sends for ADD, DEL and CHECK.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRequest {
    /// The outer plugin's type: `kube-ovn` for our own interface, `macvlan` (etc.) when we
    /// serve only IPAM.
    #[serde(default)]
    pub cni_type: String,
    /// `K8S_POD_NAME`.
    #[serde(default)]
    pub pod_name: String,
    /// `K8S_POD_NAMESPACE`.
    #[serde(default)]
    pub pod_namespace: String,
    /// `CNI_CONTAINERID`.
    #[serde(default)]
    pub container_id: String,
    /// `CNI_NETNS`: the pod's network namespace path (may be empty on DEL).
    #[serde(default)]
    pub net_ns: String,
    /// `CNI_IFNAME`: the interface name inside the pod.
    #[serde(default)]
    pub if_name: String,
    /// The network's provider (`<nad>.<ns>.ovn`, `<nad>.<ns>`); empty means `ovn`.
    #[serde(default)]
    pub provider: String,
    /// The NAD's `routes`.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routes: Vec<Route>,
    /// The NAD's `dns`.
    #[serde(default)]
    pub dns: Dns,
    /// SR-IOV: the VF driver (accepted, unused).
    #[serde(default)]
    pub vf_driver: String,
    /// SR-IOV: the PCI address (accepted, unused).
    #[serde(rename = "deviceID", default)]
    pub device_id: String,
    /// DPDK: the volume holding the vhost-user socket (accepted, unused).
    #[serde(default)]
    pub vhost_user_socket_volume_name: String,
    /// DPDK: the vhost-user socket's name (accepted, unused).
    #[serde(default)]
    pub vhost_user_socket_name: String,
    /// DPDK: who creates the vhost-user socket (accepted, unused).
    #[serde(default)]
    pub vhost_user_socket_consumption: String,
    /// CHECK: what the runtime's `prevResult` says the interface has (Sidelane's plugin sends
    /// it; Kube-OVN's daemon ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<Expected>,
}

/// What `prevResult` says of one interface, for CHECK.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    /// Its MAC (empty: the result names none, as IPAM-only results do).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its addresses with prefix length (`172.17.0.11/16`), as the result wrote them.
    #[serde(default)]
    pub ips: Vec<String>,
}

impl CniRequest {
    /// The provider, with Kube-OVN's default for an empty one.
    pub fn provider_or_default(&self) -> &str {
        if self.provider.is_empty() {
            crate::annotations::DEFAULT_PROVIDER
        } else {
            &self.provider
        }
    }

    /// `<namespace>/<name>`, for messages and logs.
    pub fn pod_key(&self) -> String {
        format!("{}/{}", self.pod_namespace, self.pod_name)
    }
}

/// The IP family of a [`ResponseIp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// IPv4.
    IPv4,
    /// IPv6.
    IPv6,
}

/// One allocated address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseIp {
    /// `IPv4` or `IPv6`.
    pub protocol: Protocol,
    /// The address, without a prefix (`10.16.0.5`).
    pub ip: String,
    /// The subnet's CIDR block (`10.16.0.0/16`): the prefix length of the address comes from it.
    pub cidr: String,
    /// The gateway, when the interface gets one (IPAM-only attachments other than eth0 get none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// What the agent answers: the allocation on success, `error` otherwise.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResponse {
    /// The addresses, one per family.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ips: Vec<ResponseIp>,
    /// The interface's MAC (empty for IPAM-only attachments).
    #[serde(default)]
    pub mac_address: String,
    /// Routes to install (the link's routes for our own interface).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routes: Vec<Route>,
    /// The interface's MTU (0 when the agent does not manage the interface).
    #[serde(default)]
    pub mtu: u32,
    /// The interface's name inside the pod.
    #[serde(default)]
    pub nicname: String,
    /// DNS settings.
    #[serde(default)]
    pub dns: Dns,
    /// Set on failure: what went wrong, naming the pod, provider and field.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Set on failure: the CNI spec's error code for it (4 bad environment, 7 bad network
    /// configuration, 11 try again later...). Kube-OVN's daemon sends none (then 11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_code: Option<u32>,
}

impl CniResponse {
    /// A failure response.
    pub fn failure(error: impl Into<String>) -> CniResponse {
        CniResponse {
            error: error.into(),
            ..CniResponse::default()
        }
    }

    /// A failure response with the CNI spec's code for it.
    pub fn failure_with_code(error: impl Into<String>, code: u32) -> CniResponse {
        CniResponse {
            cni_code: Some(code),
            ..CniResponse::failure(error)
        }
    }
}

/// One attachment the runtime still knows about, for GC (the CNI spec's `cni.dev/valid-attachments`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidAttachment {
    /// The container (sandbox) ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside it.
    #[serde(rename = "ifname")]
    pub if_name: String,
}

/// GC (Sidelane): remove every attachment of `provider` not in `valid_attachments`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The network's provider; empty means `ovn`.
    #[serde(default)]
    pub provider: String,
    /// What the runtime still uses.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub valid_attachments: Vec<ValidAttachment>,
}

/// Go's `encoding/json` writes `null` for a nil slice: read it as empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What Kube-OVN's CNI binary sends for the seed's OVN attachment: every field present,
    /// `null` for empty lists and zero values for the rest, as Go's encoding/json writes them.
    const KUBE_OVN_ADD: &str = r#"{"cni_type":"kube-ovn","pod_name":"samplepod","pod_namespace":"default","container_id":"3f2a9c0d5e7b41aa8c1d","net_ns":"/var/run/netns/cni-1234","if_name":"net1","provider":"attachnet.default.ovn","routes":null,"dns":{},"vf_driver":"","deviceID":"","vhost_user_socket_volume_name":"","vhost_user_socket_name":"","vhost_user_socket_consumption":""}"#;

    #[test]
    fn a_request_exactly_as_kube_ovns_binary_sends_it_is_understood() {
        let req: CniRequest = serde_json::from_str(KUBE_OVN_ADD).expect("parses");
        assert_eq!(req.cni_type, "kube-ovn");
        assert_eq!(req.pod_key(), "default/samplepod");
        assert_eq!(req.if_name, "net1");
        assert_eq!(req.net_ns, "/var/run/netns/cni-1234");
        assert_eq!(req.provider_or_default(), "attachnet.default.ovn");
        assert!(req.routes.is_empty());
        assert_eq!(req.dns, Dns::default());
    }

    #[test]
    fn a_request_serialises_with_kube_ovns_field_names() {
        let req: CniRequest = serde_json::from_str(KUBE_OVN_ADD).expect("parses");
        let value = serde_json::to_value(&req).expect("serialises");
        let mut expected: serde_json::Value =
            serde_json::from_str(KUBE_OVN_ADD).expect("parses as JSON");
        expected["routes"] = json!([]);
        assert_eq!(value, expected);
    }

    #[test]
    fn an_empty_provider_means_ovn() {
        let req = CniRequest::default();
        assert_eq!(req.provider_or_default(), "ovn");
    }

    #[test]
    fn routes_without_a_destination_are_default_routes() {
        let req: CniRequest = serde_json::from_value(json!({
            "routes": [{"gw": "172.17.0.1"}, {"dst": "10.0.0.0/8", "gw": "172.17.0.1"}]
        }))
        .expect("parses");
        assert_eq!(req.routes[0].destination, "");
        assert_eq!(req.routes[0].gateway, "172.17.0.1");
        assert_eq!(
            serde_json::to_value(&req.routes).expect("serialises"),
            json!([{"gw": "172.17.0.1"}, {"dst": "10.0.0.0/8", "gw": "172.17.0.1"}])
        );
    }

    #[test]
    fn a_dual_stack_response_has_the_shape_kube_ovns_binary_reads() {
        let resp = CniResponse {
            ips: vec![
                ResponseIp {
                    protocol: Protocol::IPv4,
                    ip: "172.17.0.5".to_owned(),
                    cidr: "172.17.0.0/16".to_owned(),
                    gateway: "172.17.0.1".to_owned(),
                },
                ResponseIp {
                    protocol: Protocol::IPv6,
                    ip: "fd00::5".to_owned(),
                    cidr: "fd00::/120".to_owned(),
                    gateway: String::new(),
                },
            ],
            mac_address: "00:00:00:8a:3c:4f".to_owned(),
            routes: vec![],
            mtu: 1400,
            nicname: "net1".to_owned(),
            dns: Dns::default(),
            error: String::new(),
            cni_code: None,
        };
        assert_eq!(
            serde_json::to_value(&resp).expect("serialises"),
            json!({
                "ips": [
                    {"protocol": "IPv4", "ip": "172.17.0.5", "cidr": "172.17.0.0/16",
                     "gateway": "172.17.0.1"},
                    {"protocol": "IPv6", "ip": "fd00::5", "cidr": "fd00::/120"}
                ],
                "mac_address": "00:00:00:8a:3c:4f",
                "routes": [],
                "mtu": 1400,
                "nicname": "net1",
                "dns": {}
            })
        );
    }

    #[test]
    fn an_error_response_carries_only_the_error_that_matters() {
        let body = r#"{"ips":null,"mac_address":"","routes":null,"mtu":0,"nicname":"","dns":{},"error":"no address allocated to pod default/p provider attachnet.default.ovn"}"#;
        let resp: CniResponse = serde_json::from_str(body).expect("parses");
        assert!(resp.ips.is_empty());
        assert_eq!(
            resp,
            CniResponse::failure(
                "no address allocated to pod default/p provider attachnet.default.ovn"
            )
        );
    }

    #[test]
    fn a_gc_request_lists_valid_attachments_as_the_cni_spec_names_them() {
        let req: GcRequest = serde_json::from_value(json!({
            "provider": "macvlan.default",
            "valid_attachments": [{"containerID": "abc", "ifname": "net1"}]
        }))
        .expect("parses");
        assert_eq!(
            req.valid_attachments,
            vec![ValidAttachment {
                container_id: "abc".to_owned(),
                if_name: "net1".to_owned()
            }]
        );
    }
}
