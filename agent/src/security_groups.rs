//! The security groups, followed for the fast path: each `SecurityGroup`'s rules as last
//! accepted (a spec that does not check keeps the rules accepted before, as the controller
//! keeps them in OVN), handed to the fast path on every change so that its allowed pairs of
//! isolated attachments follow within the watch's delay. Until the first list is read, no
//! isolated pair is fast-pathed.

use std::sync::Arc;

use futures::StreamExt as _;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use sidelane_api::security_group::Group;
use tracing::{info, warn};

use crate::{dataplane::ports::FastpathPorts, watched::Watched};

/// `kubeovn.io/v1` `SecurityGroup`.
pub fn security_group_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "SecurityGroup"),
        "security-groups",
    )
}

/// Reads a group's rules; `None` (keep the rules accepted before) if they do not check.
fn read_group(obj: &DynamicObject) -> Option<Group> {
    Group::of(&obj.data)
        .map_err(|e| {
            warn!(security_group = %obj.metadata.name.as_deref().unwrap_or_default(), error = %e,
                  "a security group's rules do not check; the fast path keeps those accepted before");
        })
        .ok()
}

/// Follows the `SecurityGroups` forever, handing each change to `fastpath`.
pub async fn follow_forever(client: kube::Client, fastpath: Arc<dyn FastpathPorts>) {
    let api: Api<DynamicObject> = Api::all_with(client, &security_group_resource());
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut accepted = Watched::<Group>::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "watching SecurityGroups; retrying");
                continue;
            }
        };
        if !accepted.take(event, read_group) {
            continue;
        }
        let (groups, fastpath) = (accepted.items.clone(), Arc::clone(&fastpath));
        let count = groups.len();
        match tokio::task::spawn_blocking(move || fastpath.set_groups(groups)).await {
            Ok(Ok(())) => info!(groups = count, "the fast path follows the security groups"),
            Ok(Err(e)) => warn!(error = %e, "handing the security groups to the fast path"),
            Err(e) => warn!(error = %e, "handing the security groups to the fast path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object(name: &str, spec: &serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "SecurityGroup",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("an object")
    }

    #[test]
    fn a_bad_spec_keeps_the_rules_accepted_before() {
        let mut a = Watched::default();
        a.take(watcher::Event::Init, read_group);
        a.take(
            watcher::Event::InitApply(object("peers", &json!({"allowSameGroupTraffic": true}))),
            read_group,
        );
        assert!(a.take(watcher::Event::InitDone, read_group));
        let bad = json!({"ingressRules": [{"ipVersion": "IPv4"}]});
        assert!(!a.take(watcher::Event::Apply(object("peers", &bad)), read_group));
        assert!(a.items["peers"].allow_same_group_traffic);
    }
}
