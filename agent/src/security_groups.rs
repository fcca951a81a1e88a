//! The security groups, followed for the fast path: each `SecurityGroup`'s rules as last
//! accepted (a spec that does not check keeps the rules accepted before, as the controller
//! keeps them in OVN), handed to the fast path on every change so that its allowed pairs of
//! isolated attachments follow within the watch's delay. Until the first list is read, no
//! isolated pair is fast-pathed.

use std::{collections::BTreeMap, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use sidelane_api::security_group::Group;
use tracing::{info, warn};

use crate::dataplane::ports::FastpathPorts;

/// `kubeovn.io/v1` `SecurityGroup`.
pub fn security_group_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "SecurityGroup"),
        "security-groups",
    )
}

/// The groups as accepted, and a re-list in progress.
#[derive(Debug, Default)]
pub struct Accepted {
    /// By name.
    pub groups: BTreeMap<String, Group>,
    relisted: Option<Vec<String>>,
    /// A full list has been read.
    pub ready: bool,
}

impl Accepted {
    /// Takes a watch event; whether the groups handed on changed.
    pub fn take(&mut self, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relisted = Some(Vec::new());
                false
            }
            watcher::Event::InitApply(obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                if let Some(seen) = &mut self.relisted {
                    seen.push(name);
                }
                self.apply(&obj);
                false
            }
            watcher::Event::InitDone => {
                let seen = self.relisted.take().unwrap_or_default();
                self.groups.retain(|name, _| seen.contains(name));
                self.ready = true;
                true
            }
            watcher::Event::Apply(obj) => self.apply(&obj) && self.ready,
            watcher::Event::Delete(obj) => {
                let name = obj.metadata.name.clone().unwrap_or_default();
                self.groups.remove(&name).is_some() && self.ready
            }
        }
    }

    /// Takes a group's object; whether its accepted rules changed.
    fn apply(&mut self, obj: &DynamicObject) -> bool {
        let name = obj.metadata.name.clone().unwrap_or_default();
        match Group::of(&obj.data) {
            Ok(g) => self.groups.insert(name, g.clone()) != Some(g),
            Err(e) => {
                warn!(security_group = %name, error = %e,
                      "a security group's rules do not check; the fast path keeps those accepted before");
                false
            }
        }
    }
}

/// Follows the `SecurityGroups` forever, handing each change to `fastpath`.
pub async fn follow_forever(client: kube::Client, fastpath: Arc<dyn FastpathPorts>) {
    let api: Api<DynamicObject> = Api::all_with(client, &security_group_resource());
    let events = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(events);
    let mut accepted = Accepted::default();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "watching SecurityGroups; retrying");
                continue;
            }
        };
        if !accepted.take(event) {
            continue;
        }
        let (groups, fastpath) = (accepted.groups.clone(), Arc::clone(&fastpath));
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
    fn nothing_is_handed_on_before_the_first_list_and_a_bad_spec_keeps_the_rules_before() {
        let mut a = Accepted::default();
        assert!(!a.take(watcher::Event::Init));
        assert!(!a.take(watcher::Event::InitApply(object(
            "peers",
            &json!({"allowSameGroupTraffic": true})
        ))));
        assert!(a.take(watcher::Event::InitDone));
        assert!(a.groups["peers"].allow_same_group_traffic);
        let bad = json!({"ingressRules": [{"ipVersion": "IPv4"}]});
        assert!(!a.take(watcher::Event::Apply(object("peers", &bad))));
        assert!(a.groups["peers"].allow_same_group_traffic);
        assert!(a.take(watcher::Event::Delete(object("peers", &json!({})))));
        assert!(a.groups.is_empty());
    }

    #[test]
    fn a_group_deleted_while_the_watch_was_away_goes_at_the_end_of_the_relist() {
        let mut a = Accepted::default();
        a.take(watcher::Event::Init);
        a.take(watcher::Event::InitApply(object("old", &json!({}))));
        a.take(watcher::Event::InitDone);
        a.take(watcher::Event::Init);
        a.take(watcher::Event::InitApply(object("new", &json!({}))));
        assert!(a.take(watcher::Event::InitDone));
        assert_eq!(a.groups.keys().collect::<Vec<_>>(), ["new"]);
    }
}
