//! What the agent needs of pods: waiting until a pod's annotations satisfy a condition
//! ([`PodSource`]); over the API server in [`crate::api_server`], over fakes in tests.

use std::{collections::BTreeMap, future::Future, time::Duration};

use thiserror::Error;

/// A pod's annotations.
pub type Annotations = BTreeMap<String, String>;

/// Reading a pod failed.
#[derive(Debug, Error)]
pub enum PodError {
    /// The watch failed.
    #[error("watching pod {namespace}/{name}: {reason}")]
    Watch {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
        /// What the API said.
        reason: String,
    },
    /// Listing or watching Subnets failed.
    #[error("reading kubeovn.io/v1 Subnets: {reason}")]
    Subnets {
        /// What the API said.
        reason: String,
    },
}

/// The outcome of a wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// The condition held; the annotations at that moment.
    Ready(Annotations),
    /// The timeout passed first; the last annotations seen (`None`: no such pod).
    TimedOut(Option<Annotations>),
}

/// Waits on pods. Implemented over the Kubernetes API by [`KubePods`]; tests use fakes.
pub trait PodSource: Send + Sync + 'static {
    /// Waits up to `timeout` until pod `namespace/name` exists and `ready` holds for its
    /// annotations.
    fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        ready: impl Fn(&Annotations) -> bool + Send + Sync + 'static,
        timeout: Duration,
    ) -> impl Future<Output = Result<Waited, PodError>> + Send;
}
