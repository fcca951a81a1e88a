//! Rates changed on running pods. Kube-OVN applies a changed `ingress_rate` / `egress_rate`
//! live, and so does Sidelane: the agent follows the QoS annotations of the pods it attached
//! and applies a change to their interfaces at once. A limit already in place is changed by a
//! map write (its counters are kept); a limit set on an unlimited attachment attaches the
//! programs; a limit removed detaches them. On the fast path, an attachment with an ingress
//! limit is reached through its host end (where the limit is), one without straight in its
//! namespace; that follows too.

use std::path::PathBuf;

use sidelane_api::{annotations::key, qos::QosSpec};
use tracing::{info, warn};

use crate::{
    attach::{Attacher, QosPort},
    dataplane::qos::{Placement, QosTarget},
    pods::{Annotations, PodSource},
    records::{AttachmentKind, AttachmentRecord},
    subnets::SubnetSource,
};

/// The annotation fields followed live: an attachment's QoS, and the security groups that
/// decide which of its peers it reaches on the fast path.
const QOS_FIELDS: [&str; 5] = [
    "ingress_rate",
    "egress_rate",
    "ingress_burst",
    "egress_burst",
    "security_groups",
];

/// The QoS annotations of each pod last seen, by `namespace/name`: only a change of them is
/// acted on (a pod's other updates, its status first of all, are many).
#[derive(Debug, Default)]
pub struct QosAnnotations(std::collections::HashMap<String, Annotations>);

impl QosAnnotations {
    /// Records the pod's QoS annotations; whether they differ from those last seen (a pod
    /// first seen with none is no change).
    pub fn changed(&mut self, pod_key: &str, annotations: &Annotations) -> bool {
        let qos: Annotations = annotations
            .iter()
            .filter(|(k, _)| {
                k.rsplit_once('/')
                    .is_some_and(|(_, field)| QOS_FIELDS.contains(&field))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let before = self.0.get(pod_key).cloned().unwrap_or_default();
        if qos.is_empty() {
            self.0.remove(pod_key);
        } else {
            self.0.insert(pod_key.to_owned(), qos.clone());
        }
        before != qos
    }

    /// Forgets a deleted pod.
    pub fn forget(&mut self, pod_key: &str) {
        self.0.remove(pod_key);
    }
}

/// One attachment's QoS, followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Followed {
    /// `<container_id>/<ifname>`.
    pub attachment: String,
    /// What is now in force, or why it could not be applied.
    pub result: Result<QosSpec, String>,
}

/// The annotation prefix of a record's attachment: `<provider>.<ifname>` when the pod lists the
/// NAD twice (the controller allocates under that prefix then), else the provider.
fn prefix_of(record: &AttachmentRecord, annotations: &Annotations) -> String {
    let twice = format!("{}.{}", record.provider, record.ifname);
    if annotations.contains_key(&key(&twice, "allocated")) {
        twice
    } else {
        record.provider.clone()
    }
}

/// Where the record's limits are enforced, as ADD placed them.
fn target_of(record: &AttachmentRecord, host_netns: Option<&PathBuf>) -> QosTarget {
    match &record.kind {
        AttachmentKind::Ovn { host_ifname } => QosTarget {
            netns: host_netns.cloned(),
            ifname: host_ifname.clone(),
            placement: Placement::HostPeer,
        },
        AttachmentKind::Ipam => QosTarget {
            netns: Some(record.netns.clone()),
            ifname: record.ifname.clone(),
            placement: Placement::PodDevice,
        },
    }
}

impl<P: PodSource + SubnetSource, Q: QosPort> Attacher<P, Q> {
    /// Applies the QoS `annotations` of pod `namespace/name` to each attachment of it on this
    /// node (none: nothing to do), one after the other with ADD and DEL of that attachment.
    pub async fn follow_qos(
        &self,
        namespace: &str,
        name: &str,
        annotations: &Annotations,
    ) -> Vec<Followed> {
        let records = match self.list_records() {
            Ok((records, _)) => records,
            Err(e) => {
                warn!(pod = %format!("{namespace}/{name}"), error = %e, "reading the attachment records to follow a rate change");
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for record in records
            .into_iter()
            .filter(|r| r.pod_namespace == namespace && r.pod_name == name)
        {
            let _serialised = self
                .in_flight
                .lock(&record.container_id, &record.ifname)
                .await;
            self.follow_groups(&record, annotations).await;
            let result = self.follow_one(&record, annotations).await;
            match &result {
                Ok(spec) => info!(pod = %record.pod_key(), ifname = %record.ifname,
                                  provider = %record.provider, %spec, "applied a changed rate"),
                Err(e) => warn!(pod = %record.pod_key(), ifname = %record.ifname,
                                provider = %record.provider, error = %e, "applying a changed rate"),
            }
            out.push(Followed {
                attachment: format!("{}/{}", record.container_id, record.ifname),
                result,
            });
        }
        out
    }

    /// A changed `security_groups` of an OVN attachment on the fast path: its record and its
    /// allowed pairs follow at once (a pod leaving a group must not keep its fast-path pairs).
    async fn follow_groups(&self, record: &AttachmentRecord, annotations: &Annotations) {
        let (Some(fastpath), AttachmentKind::Ovn { host_ifname }) =
            (&self.node.fastpath, &record.kind)
        else {
            return;
        };
        let groups =
            sidelane_api::security_group::membership(annotations, &prefix_of(record, annotations));
        if groups == record.security_groups {
            return;
        }
        let updated = AttachmentRecord {
            security_groups: groups.clone(),
            ..record.clone()
        };
        if let Err(e) = self.records().put(&updated) {
            warn!(pod = %record.pod_key(), ifname = %record.ifname, error = %e,
                  "recording the attachment's new security groups");
        }
        let fastpath = std::sync::Arc::clone(fastpath);
        let (host_netns, host) = (self.node.host_netns.clone(), host_ifname.clone());
        let set = tokio::task::spawn_blocking(move || {
            fastpath.set_member_groups(host_netns.as_deref(), &host, groups)
        })
        .await;
        match set {
            Ok(Ok(())) => info!(pod = %record.pod_key(), ifname = %record.ifname,
                                "the fast path follows the attachment's new security groups"),
            Ok(Err(e)) => warn!(pod = %record.pod_key(), ifname = %record.ifname, error = %e,
                                "applying the attachment's new security groups to the fast path"),
            Err(e) => warn!(pod = %record.pod_key(), ifname = %record.ifname, error = %e,
                            "applying the attachment's new security groups to the fast path"),
        }
    }

    async fn follow_one(
        &self,
        record: &AttachmentRecord,
        annotations: &Annotations,
    ) -> Result<QosSpec, String> {
        let prefix = prefix_of(record, annotations);
        let spec = QosSpec::from_annotations(annotations, &prefix).map_err(|e| e.to_string())?;
        let target = target_of(record, self.node.host_netns.as_ref());
        let qos = std::sync::Arc::clone(&self.qos);
        let applied = {
            let target = target.clone();
            tokio::task::spawn_blocking(move || qos.apply(&target, &spec))
                .await
                .map_err(|e| format!("the QoS task failed: {e}"))?
        };
        applied.map_err(|e| e.to_string())?;
        if let (Some(fastpath), AttachmentKind::Ovn { host_ifname }) =
            (&self.node.fastpath, &record.kind)
        {
            let policed = spec.get(sidelane_api::qos::Direction::Ingress).is_limited();
            let fastpath = std::sync::Arc::clone(fastpath);
            let (host_netns, host) = (self.node.host_netns.clone(), host_ifname.clone());
            tokio::task::spawn_blocking(move || {
                fastpath.set_policed(host_netns.as_deref(), &host, policed)
            })
            .await
            .map_err(|e| format!("the fast-path task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        }
        Ok(spec)
    }
}

/// Follows the pods (those bound to `node`, or all) by watch for as long as the agent runs,
/// applying each change of a pod's QoS annotations to its attachments here.
pub async fn follow_forever<P, Q>(
    attacher: std::sync::Arc<Attacher<P, Q>>,
    client: kube::Client,
    node: Option<String>,
) where
    P: PodSource + SubnetSource,
    Q: QosPort,
{
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, watcher};
    let mut config = watcher::Config::default();
    if let Some(node) = &node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let pods = kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client);
    let events = watcher(pods, config).default_backoff();
    futures::pin_mut!(events);
    let mut seen = QosAnnotations::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
                    continue;
                };
                let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                if seen.changed(&format!("{ns}/{name}"), &annotations) {
                    attacher.follow_qos(ns, name, &annotations).await;
                }
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) {
                    seen.forget(&format!("{ns}/{name}"));
                }
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "the watch of pods' rates failed; it retries"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> Annotations {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_a_change_of_a_pods_qos_annotations_is_acted_on() {
        let mut seen = QosAnnotations::default();
        let plain = annotations(&[("k8s.v1.cni.cncf.io/network-status", "[]")]);
        assert!(
            !seen.changed("default/a", &plain),
            "none, first seen: no change"
        );
        let limited = annotations(&[
            ("macvlan.default.kubernetes.io/egress_rate", "50"),
            ("k8s.v1.cni.cncf.io/network-status", "[]"),
        ]);
        assert!(seen.changed("default/a", &limited));
        let status_only = annotations(&[
            ("macvlan.default.kubernetes.io/egress_rate", "50"),
            ("k8s.v1.cni.cncf.io/network-status", "[{}]"),
        ]);
        assert!(!seen.changed("default/a", &status_only));
        let lowered = annotations(&[("macvlan.default.kubernetes.io/egress_rate", "10")]);
        assert!(seen.changed("default/a", &lowered));
        assert!(seen.changed("default/a", &plain), "removed: a change");
    }

    #[test]
    fn an_attachment_of_a_nad_listed_twice_reads_its_per_interface_keys() {
        let record = AttachmentRecord {
            container_id: "c".to_owned(),
            ifname: "net2".to_owned(),
            netns: PathBuf::from("/var/run/netns/p"),
            pod_namespace: "default".to_owned(),
            pod_name: "p".to_owned(),
            provider: "macvlan.default".to_owned(),
            kind: AttachmentKind::Ipam,
            security_groups: Vec::new(),
        };
        let twice = annotations(&[("macvlan.default.net2.kubernetes.io/allocated", "true")]);
        assert_eq!(prefix_of(&record, &twice), "macvlan.default.net2");
        assert_eq!(prefix_of(&record, &Annotations::new()), "macvlan.default");
        let target = target_of(&record, None);
        assert_eq!(target.placement, Placement::PodDevice);
        assert_eq!(target.ifname, "net2");
    }
}
