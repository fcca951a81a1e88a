//! The API server as the agent reads it: pods by watch (not by polling, as Kube-OVN's 20 × 1 s
//! loop does), and Subnets through a watch-fed cache, started on first use; a provider the
//! cache does not know yet (a Subnet created a moment before the pod) is looked up once more
//! directly before the request is refused.

use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        wait::await_condition,
        watcher,
    },
};
use tokio::sync::OnceCell;
use tracing::warn;

use crate::{
    pods::{Annotations, PodError, PodSource, Waited},
    subnets::{SubnetInfo, SubnetSource, info_of, subnet_resource},
};

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

    /// Starts the Subnet cache and waits (a few seconds at most) for its first list, so the
    /// first pod's ADD does not pay for it.
    pub async fn warm(&self) {
        let _ = self.cached_store().await;
    }

    /// The client.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
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

/// The watch-fed cache of Subnets inside [`KubePods`].
#[derive(Clone, Default)]
pub struct SubnetCache {
    store: Arc<OnceCell<Option<Store<DynamicObject>>>>,
}

/// How long the first use waits for the cache's initial list.
const CACHE_READY_TIMEOUT: Duration = Duration::from_secs(5);

impl KubePods {
    async fn list_subnets(&self) -> Result<Vec<SubnetInfo>, PodError> {
        let api: Api<DynamicObject> = Api::all_with(self.client(), &subnet_resource());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| PodError::Subnets {
                reason: e.to_string(),
            })?;
        Ok(list.items.iter().filter_map(info_of).collect())
    }

    async fn cached_store(&self) -> Option<Store<DynamicObject>> {
        self.subnets
            .store
            .get_or_init(|| async {
                let resource = subnet_resource();
                let api: Api<DynamicObject> = Api::all_with(self.client(), &resource);
                let writer = reflector::store::Writer::new(resource);
                let store = writer.as_reader();
                let stream = reflector::reflector(
                    writer,
                    watcher(api, watcher::Config::default()).default_backoff(),
                );
                tokio::spawn(stream.for_each(|event| async move {
                    if let Err(e) = event {
                        warn!(error = %e, "watching Subnets; retrying");
                    }
                }));
                if let Ok(Ok(())) =
                    tokio::time::timeout(CACHE_READY_TIMEOUT, store.wait_until_ready()).await
                {
                    Some(store)
                } else {
                    warn!("the Subnet cache is not ready; reading Subnets directly");
                    None
                }
            })
            .await
            .clone()
    }
}

impl SubnetSource for KubePods {
    async fn subnets(&self, fresh: bool) -> Result<Vec<SubnetInfo>, PodError> {
        if !fresh && let Some(store) = self.cached_store().await {
            return Ok(store.state().iter().filter_map(|o| info_of(o)).collect());
        }
        self.list_subnets().await
    }
}
