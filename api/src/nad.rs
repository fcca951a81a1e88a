//! NetworkAttachmentDefinitions (`k8s.cni.cncf.io/v1`): what a NAD's `spec.config` asks of us.
//!
//! A NAD is ours when its plugin (or one plugin of a conflist) is `kube-ovn`/`sidelane` (an
//! OVN-backed interface) or when a plugin's `ipam.type` is (addresses only). Its provider is
//! `<name>.<namespace>.ovn` or `<name>.<namespace>`, from the NAD's own name and namespace; a
//! `provider` field that says otherwise is reported (Kube-OVN issue #4045), not obeyed.

use serde_json::Value;
use thiserror::Error;

use crate::{cni::PLUGIN_TYPES, daemon::Route, network_selection::NadKind};

/// A NAD we cannot use.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NadError {
    /// `spec.config` is empty (the seeds call such NADs incompatible).
    #[error(
        "NetworkAttachmentDefinition {nad} has an empty spec.config; it names no plugin, so no \
         interface or address can be given through it"
    )]
    Empty {
        /// `namespace/name`.
        nad: String,
    },
    /// `spec.config` is not a JSON object.
    #[error("NetworkAttachmentDefinition {nad}: spec.config is not a CNI configuration: {reason}")]
    Json {
        /// `namespace/name`.
        nad: String,
        /// What the parser said.
        reason: String,
    },
}

/// What one of our NADs asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NadConfig {
    /// OVN-backed or IPAM-only.
    pub kind: NadKind,
    /// The provider derived from the NAD's name and namespace.
    pub provider: String,
    /// The `provider` field as written, when present.
    pub provider_field: Option<String>,
    /// The agent socket it names (`server_socket`), empty for the default.
    pub server_socket: String,
    /// Its `routes`.
    pub routes: Vec<Route>,
}

impl NadConfig {
    /// A warning when the `provider` field disagrees with the NAD's name and namespace.
    pub fn provider_mismatch(&self) -> Option<String> {
        let field = self.provider_field.as_deref()?;
        (field != self.provider).then(|| {
            format!(
                "provider {field:?} in spec.config differs from {:?}, the provider of this \
                 NetworkAttachmentDefinition's name and namespace, which is used",
                self.provider
            )
        })
    }
}

/// The provider of NAD `namespace/name` of `kind`.
pub fn provider_of(namespace: &str, name: &str, kind: NadKind) -> String {
    match kind {
        NadKind::KubeOvn => format!("{name}.{namespace}.ovn"),
        NadKind::IpamOnly => format!("{name}.{namespace}"),
    }
}

fn is_ours(kind: Option<&Value>) -> bool {
    kind.and_then(Value::as_str)
        .is_some_and(|t| PLUGIN_TYPES.contains(&t))
}

fn routes_of(v: Option<&Value>) -> Vec<Route> {
    v.and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default()
}

fn string_of(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).map(str::to_owned)
}

/// Parses `spec.config` of NAD `namespace/name`: `Ok(None)` when the NAD is not ours.
pub fn parse(namespace: &str, name: &str, config: &str) -> Result<Option<NadConfig>, NadError> {
    let nad = format!("{namespace}/{name}");
    if config.trim().is_empty() {
        return Err(NadError::Empty { nad });
    }
    let value: Value = serde_json::from_str(config).map_err(|e| NadError::Json {
        nad: nad.clone(),
        reason: e.to_string(),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(NadError::Json {
            nad,
            reason: "not a JSON object".to_owned(),
        });
    };
    let plugins: Vec<&Value> = match obj.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![&value],
    };
    for plugin in plugins {
        if is_ours(plugin.get("type")) {
            return Ok(Some(NadConfig {
                kind: NadKind::KubeOvn,
                provider: provider_of(namespace, name, NadKind::KubeOvn),
                provider_field: string_of(plugin.get("provider")).filter(|p| !p.is_empty()),
                server_socket: string_of(plugin.get("server_socket")).unwrap_or_default(),
                routes: routes_of(plugin.get("routes")),
            }));
        }
        if let Some(ipam) = plugin.get("ipam")
            && is_ours(ipam.get("type"))
        {
            return Ok(Some(NadConfig {
                kind: NadKind::IpamOnly,
                provider: provider_of(namespace, name, NadKind::IpamOnly),
                provider_field: string_of(ipam.get("provider")).filter(|p| !p.is_empty()),
                server_socket: string_of(ipam.get("server_socket")).unwrap_or_default(),
                routes: routes_of(ipam.get("routes")),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_nads_are_ours_with_the_providers_kube_ovn_derives() {
        let attachnet = parse(
            "default",
            "attachnet",
            r#"{"cniVersion": "0.3.0", "type": "kube-ovn",
                "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
                "provider": "attachnet.default.ovn"}"#,
        )
        .expect("parses")
        .expect("ours");
        assert_eq!(attachnet.kind, NadKind::KubeOvn);
        assert_eq!(attachnet.provider, "attachnet.default.ovn");
        assert_eq!(attachnet.provider_mismatch(), None);
        let macvlan = parse(
            "default",
            "macvlan",
            r#"{"cniVersion": "0.3.0", "type": "macvlan", "master": "eth0", "mode": "bridge",
                "ipam": {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock",
                         "provider": "macvlan.default"}}"#,
        )
        .expect("parses")
        .expect("ours");
        assert_eq!(macvlan.kind, NadKind::IpamOnly);
        assert_eq!(macvlan.provider, "macvlan.default");
    }

    #[test]
    fn a_conflist_is_ours_through_any_of_its_plugins() {
        let nad = parse(
            "ns1",
            "chained",
            r#"{"cniVersion": "1.0.0", "name": "chained", "plugins": [
                {"type": "macvlan", "ipam": {"type": "kube-ovn"}}, {"type": "tuning"}]}"#,
        )
        .expect("parses")
        .expect("ours");
        assert_eq!(nad.provider, "chained.ns1");
    }

    #[test]
    fn a_provider_field_that_disagrees_is_reported_and_not_obeyed() {
        let nad = parse(
            "default",
            "attachnet",
            r#"{"type": "kube-ovn", "provider": "other.default.ovn"}"#,
        )
        .expect("parses")
        .expect("ours");
        assert_eq!(nad.provider, "attachnet.default.ovn");
        let warning = nad.provider_mismatch().expect("a warning");
        assert!(warning.contains("\"other.default.ovn\""), "{warning}");
    }

    #[test]
    fn empty_malformed_and_foreign_nads_are_told_apart() {
        assert_eq!(
            parse("default", "empty", "  "),
            Err(NadError::Empty {
                nad: "default/empty".to_owned()
            })
        );
        assert!(matches!(
            parse("default", "bad", "{not json"),
            Err(NadError::Json { .. })
        ));
        assert_eq!(
            parse(
                "default",
                "bridge",
                r#"{"type": "bridge", "ipam": {"type": "host-local"}}"#
            ),
            Ok(None)
        );
    }
}
