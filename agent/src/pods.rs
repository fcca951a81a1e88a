//! Where the agent reads pods: waiting, by watch (not by polling, as Kube-OVN's 20 × 1 s loop
//! does), until a pod's annotations satisfy a condition.

use std::{collections::BTreeMap, future::Future, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, runtime::wait::await_condition};
use thiserror::Error;

use crate::subnets::SubnetCache;

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

/// Pods read through a `kube::Client`.
#[derive(Clone)]
pub struct KubePods {
    client: Client,
    subnets: SubnetCache,
}

impl KubePods {
    /// Over `client`.
    pub fn new(client: Client) -> KubePods {
        KubePods {
            client,
            subnets: SubnetCache::default(),
        }
    }

    /// The client.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// The Subnet cache.
    pub(crate) fn subnet_cache(&self) -> &SubnetCache {
        &self.subnets
    }
}

fn annotations_of(pod: &Pod) -> Annotations {
    pod.metadata.annotations.clone().unwrap_or_default()
}

impl PodSource for KubePods {
    async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        ready: impl Fn(&Annotations) -> bool + Send + Sync + 'static,
        timeout: Duration,
    ) -> Result<Waited, PodError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let cond = move |pod: Option<&Pod>| pod.is_some_and(|p| ready(&annotations_of(p)));
        match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
            Ok(Ok(pod)) => Ok(Waited::Ready(
                pod.as_ref().map(annotations_of).unwrap_or_default(),
            )),
            Ok(Err(e)) => Err(PodError::Watch {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                reason: e.to_string(),
            }),
            Err(_elapsed) => {
                let last = api.get_opt(name).await.map_err(|e| PodError::Watch {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: e.to_string(),
                })?;
                Ok(Waited::TimedOut(last.as_ref().map(annotations_of)))
            }
        }
    }
}
