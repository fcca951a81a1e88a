//! Where the agent reads Subnets (`kubeovn.io/v1`): whether a provider is bound to one, as
//! Kube-OVN's daemon checks before it waits, and the MTU an OVN-backed interface gets.
//!
//! [`KubePods`] keeps a watch-fed cache, started on first use; a provider the cache does not
//! know yet (a Subnet created a moment before the pod) is looked up once more directly before
//! the request is refused.

use std::{future::Future, sync::Arc, time::Duration};

use futures::StreamExt as _;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use tokio::sync::OnceCell;
use tracing::warn;

use crate::pods::{KubePods, PodError};

/// What the agent needs of a Subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    /// Its name (the logical switch).
    pub name: String,
    /// `spec.provider` (`ovn` when empty, as Kube-OVN defaults it).
    pub provider: String,
    /// `spec.mtu`, when set.
    pub mtu: Option<u32>,
    /// Whether same-node traffic of its pods may take the fast path: yes unless the Subnet
    /// says `sidelane.io/fastpath: "false"` (annotation), or has ACLs (`spec.acls`) or is
    /// private (`spec.private`), which the fast path cannot enforce.
    pub fastpath: bool,
}

/// The Subnet annotation that switches the fast path off (`"false"`).
pub const FASTPATH_ANNOTATION: &str = "sidelane.io/fastpath";

/// The fast-path switch of a Subnet object (see [`SubnetInfo::fastpath`]).
pub fn fastpath_allowed(obj: &DynamicObject) -> bool {
    let opted_out = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FASTPATH_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    let spec = obj.data.get("spec");
    let acls = spec
        .and_then(|s| s.get("acls"))
        .and_then(serde_json::Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let private = spec
        .and_then(|s| s.get("private"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    !(opted_out || acls || private)
}

/// Reads Subnets. Implemented over the Kubernetes API by [`KubePods`].
pub trait SubnetSource: Send + Sync + 'static {
    /// Every Subnet; `fresh` bypasses any cache.
    fn subnets(
        &self,
        fresh: bool,
    ) -> impl Future<Output = Result<Vec<SubnetInfo>, PodError>> + Send;
}

/// The Subnet that serves `provider` for interface `ifname`: `None` for the primary network
/// (`""`/`ovn`, which needs no Subnet check), else `Some(result)` with the first Subnet whose
/// provider equals `provider` without a trailing `.<ifname>`, as Kube-OVN matches it.
pub fn serving<'a>(
    subnets: &'a [SubnetInfo],
    provider: &str,
    ifname: &str,
) -> Option<Option<&'a SubnetInfo>> {
    if provider.is_empty() || provider == "ovn" {
        return None;
    }
    let base = provider
        .strip_suffix(ifname)
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(provider);
    Some(subnets.iter().find(|s| s.provider == base))
}

/// The MTU of an OVN-backed interface: the allocated logical switch's `spec.mtu`, else that of
/// the Subnet serving the provider, else `default`.
pub fn mtu_for(
    subnets: &[SubnetInfo],
    logical_switch: Option<&str>,
    serving: Option<&SubnetInfo>,
    default: u32,
) -> u32 {
    logical_switch
        .and_then(|ls| subnets.iter().find(|s| s.name == ls))
        .or(serving)
        .and_then(|s| s.mtu)
        .unwrap_or(default)
}

/// The Subnet resource.
pub fn subnet_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "Subnet"),
        "subnets",
    )
}

fn info_of(obj: &DynamicObject) -> SubnetInfo {
    let spec = obj.data.get("spec");
    let provider = spec
        .and_then(|s| s.get("provider"))
        .and_then(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("ovn")
        .to_owned();
    let mtu = spec
        .and_then(|s| s.get("mtu"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|m| u32::try_from(m).ok())
        .filter(|m| *m > 0);
    SubnetInfo {
        name: obj.metadata.name.clone().unwrap_or_default(),
        provider,
        mtu,
        fastpath: fastpath_allowed(obj),
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
        Ok(list.items.iter().map(info_of).collect())
    }

    async fn cached_store(&self) -> Option<Store<DynamicObject>> {
        self.subnet_cache()
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
            return Ok(store.state().iter().map(|o| info_of(o)).collect());
        }
        self.list_subnets().await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn subnet_object(annotations: &serde_json::Value, spec: &serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
            "metadata": {"name": "s", "annotations": annotations}, "spec": spec,
        }))
        .expect("a Subnet object")
    }

    #[test]
    fn the_fast_path_is_on_unless_the_subnet_opts_out_or_has_acls_or_is_private() {
        assert!(fastpath_allowed(&subnet_object(&json!({}), &json!({}))));
        assert!(!fastpath_allowed(&subnet_object(
            &json!({"sidelane.io/fastpath": "false"}),
            &json!({})
        )));
        assert!(fastpath_allowed(&subnet_object(
            &json!({"sidelane.io/fastpath": "true"}),
            &json!({})
        )));
        assert!(!fastpath_allowed(&subnet_object(
            &json!({}),
            &json!({"acls": [{"action": "drop"}]})
        )));
        assert!(!fastpath_allowed(&subnet_object(
            &json!({}),
            &json!({"private": true})
        )));
    }

    fn subnet(name: &str, provider: &str, mtu: Option<u32>) -> SubnetInfo {
        SubnetInfo {
            name: name.to_owned(),
            provider: provider.to_owned(),
            mtu,
            fastpath: true,
        }
    }

    #[test]
    fn a_provider_is_served_by_the_subnet_with_that_provider_even_per_interface() {
        let subnets = [
            subnet("ovn-default", "ovn", None),
            subnet("attachnet", "attachnet.default.ovn", Some(1300)),
        ];
        assert_eq!(serving(&subnets, "ovn", "eth0"), None);
        assert_eq!(serving(&subnets, "", "eth0"), None);
        assert_eq!(
            serving(&subnets, "attachnet.default.ovn", "net1"),
            Some(Some(&subnets[1]))
        );
        assert_eq!(
            serving(&subnets, "attachnet.default.ovn.net2", "net2"),
            Some(Some(&subnets[1]))
        );
        assert_eq!(serving(&subnets, "macvlan.default", "net1"), Some(None));
    }

    #[test]
    fn the_mtu_comes_from_the_allocated_switch_then_the_serving_subnet_then_the_default() {
        let subnets = [
            subnet("a", "p.ns.ovn", Some(1300)),
            subnet("b", "p.ns.ovn", None),
            subnet("c", "p.ns.ovn", Some(9000)),
        ];
        assert_eq!(mtu_for(&subnets, Some("c"), Some(&subnets[0]), 1400), 9000);
        assert_eq!(mtu_for(&subnets, Some("b"), Some(&subnets[0]), 1400), 1400);
        assert_eq!(mtu_for(&subnets, None, Some(&subnets[0]), 1400), 1300);
        assert_eq!(mtu_for(&subnets, Some("gone"), None, 1400), 1400);
    }
}
