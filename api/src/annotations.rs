//! Pod annotation keys and their errors.
//!
//! Kube-OVN scopes every per-attachment annotation by provider:
//! `<provider>.kubernetes.io/<field>`. The provider of the primary network is `ovn`; an attachment
//! through a `kube-ovn` NAD is `<nad>.<namespace>.ovn`, an IPAM-only one `<nad>.<namespace>`.

use thiserror::Error;

/// The provider of Kube-OVN's primary network, whose keys also act as pod-wide defaults.
pub const DEFAULT_PROVIDER: &str = "ovn";

/// `<provider>.kubernetes.io/<field>`.
pub fn key(provider: &str, field: &str) -> String {
    format!("{provider}.kubernetes.io/{field}")
}

/// The label a gateway node's agent puts on its Node (value: the external network it carries,
/// the external Subnet's name): NAT gateways take their gateway chassis among these nodes.
pub const EXTERNAL_NETWORK_LABEL: &str = "sidelane.io/external-network";

/// Sidelane's mark on a pod whose OVN port name is held by a row of another owner: a JSON
/// object from annotation prefix (`<provider>`) to a description of that row. The controller
/// writes and clears it; the agent refuses to plug such an attachment.
pub const PORTS_HELD_ANNOTATION: &str = "sidelane.io/ports-held";

/// Why the attachment of `prefix` may not be plugged, if [`PORTS_HELD_ANNOTATION`] says so (a
/// value that is not a JSON object of strings holds every attachment: it is not ours to read
/// past).
pub fn port_held(
    annotations: &std::collections::BTreeMap<String, String>,
    prefix: &str,
) -> Option<String> {
    let value = annotations.get(PORTS_HELD_ANNOTATION)?;
    match serde_json::from_str::<std::collections::BTreeMap<String, String>>(value) {
        Ok(held) => held.get(prefix).cloned(),
        Err(e) => Some(format!(
            "{PORTS_HELD_ANNOTATION} {value:?} does not parse: {e}"
        )),
    }
}

/// A pod annotation that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AnnotationError {
    /// The value does not parse.
    #[error("{value:?} is not a valid {key}: {reason}")]
    Invalid {
        /// The annotation key (or field name, before a provider is known).
        key: String,
        /// The value as written.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// The value parses but is out of range.
    #[error("{value} is out of range for {key}: {reason}")]
    OutOfRange {
        /// The annotation key (or field name, before a provider is known).
        key: String,
        /// The value as written.
        value: String,
        /// The accepted range.
        reason: String,
    },
}

impl AnnotationError {
    /// Qualifies a bare field name (`ingress_rate`) with the provider's annotation prefix.
    #[must_use]
    pub fn with_provider(self, provider: &str) -> Self {
        let qualify = |k: String| {
            if k.contains('/') {
                k
            } else {
                key(provider, &k)
            }
        };
        match self {
            AnnotationError::Invalid { key, value, reason } => AnnotationError::Invalid {
                key: qualify(key),
                value,
                reason,
            },
            AnnotationError::OutOfRange { key, value, reason } => AnnotationError::OutOfRange {
                key: qualify(key),
                value,
                reason,
            },
        }
    }
}
