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
