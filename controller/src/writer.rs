//! The leader's writes to the API server, in kube-rs's reconcile / error-policy shape: each
//! pod's outcome is carried out in order after its earlier ones (concurrently with other pods'),
//! and a failed write goes to [`error_policy`], which drops it (its object is gone) or requeues
//! it after a backoff; nothing is forgotten while this replica leads.

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Resource as _, ResourceExt,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    runtime::events::{Event as KubeEvent, EventType, Recorder},
};
use serde_json::{Value, json};
use tokio::{
    sync::{Semaphore, oneshot},
    time::Instant,
};
use tracing::{debug, warn};

use crate::{
    engine::{Event, IpRecord, PodOutcome},
    metrics::Metrics,
    objects,
    switch_finalizer::FINALIZER,
};

/// What to do with a write that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Its object is gone (404): nothing to write any more.
    Drop,
    /// Try again after this long.
    RequeueAfter(Duration),
}

/// The error policy of every write: a 404 drops it; anything else (a 5xx, a timeout, a refused
/// connection, a 409 from a concurrent writer, a 403 while RBAC is being fixed) requeues it
/// after 0.1 s doubling to 5 s, for as long as this replica leads.
pub(crate) fn error_policy(error: &kube::Error, attempt: u32) -> Action {
    match error {
        kube::Error::Api(e) if e.code == 404 => Action::Drop,
        _ => {
            let backoff = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1).min(16)));
            Action::RequeueAfter(backoff.min(Duration::from_secs(5)))
        }
    }
}

/// Carries out outcomes against the API.
pub(crate) struct Writer {
    pub(crate) client: Client,
    pub(crate) recorder: Recorder,
    pub(crate) ips: Api<DynamicObject>,
    pub(crate) subnets: Api<DynamicObject>,
    pub(crate) security_groups: Api<DynamicObject>,
    pub(crate) permits: Arc<Semaphore>,
    /// The completion of each pod's last queued write (by UID), so that its writes stay in
    /// order; the number tells whose it is.
    pub(crate) chains: std::sync::Mutex<HashMap<String, (u64, oneshot::Receiver<()>)>>,
    pub(crate) generation: AtomicU64,
    pub(crate) metrics: Arc<Metrics>,
    /// Set when this replica stops leading: queued writes are dropped, not carried out after
    /// another replica has loaded the cluster (they would leave what it does not know of).
    pub(crate) stopped: AtomicBool,
}

impl Writer {
    /// Queues `outcome`'s writes: after the pod's earlier writes, concurrently with others.
    pub(crate) fn submit(self: &Arc<Self>, pod: Option<&Pod>, node: String, outcome: PodOutcome) {
        if outcome.annotations.is_empty()
            && outcome.cleared.is_empty()
            && outcome.upsert_ips.is_empty()
            && outcome.delete_ips.is_empty()
            && outcome.events.is_empty()
        {
            return;
        }
        let started = Instant::now();
        let target = pod.map(|p| {
            (
                p.namespace().unwrap_or_default(),
                p.name_any(),
                p.object_ref(&()),
            )
        });
        let key = pod.and_then(ResourceExt::uid).unwrap_or_default();
        // Chained here, in submission order: this write waits for the pod's previous one.
        let (done, finished) = oneshot::channel::<()>();
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let previous = self
            .chains
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), (generation, finished));
        let writer = Arc::clone(self);
        tokio::spawn(async move {
            if let Some((_, previous)) = previous {
                // An error only means the previous write's task ended without signalling.
                let _ = previous.await;
            }
            if let Ok(_permit) = Arc::clone(&writer.permits).acquire_owned().await
                && !writer.is_stopped()
            {
                writer.write(target.as_ref(), &node, outcome).await;
            }
            writer
                .metrics
                .reconcile_seconds
                .observe(started.elapsed().as_secs_f64());
            let _ = done.send(());
            let mut chains = writer
                .chains
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if chains.get(&key).is_some_and(|(g, _)| *g == generation) {
                chains.remove(&key);
            }
        });
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    async fn write(
        &self,
        target: Option<&(String, String, ObjectReference)>,
        node: &str,
        outcome: PodOutcome,
    ) {
        for record in &outcome.upsert_ips {
            if self.upsert_ip(record, node).await == Written::Stopped {
                return;
            }
        }
        if self.is_stopped() {
            return;
        }
        if let Some((ns, name, _)) = target
            && !(outcome.annotations.is_empty() && outcome.cleared.is_empty())
        {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let mut annotations = json!(outcome.annotations);
            for key in &outcome.cleared {
                annotations[key] = Value::Null;
            }
            let patch = Patch::Merge(json!({"metadata": {"annotations": annotations}}));
            let params = PatchParams::default();
            let what = format!("writing the allocation of pod {ns}/{name}");
            let written = self
                .until_done(&what, || pods.patch(name, &params, &patch))
                .await;
            match written {
                Written::Done => debug!(pod = %format!("{ns}/{name}"), "wrote the allocation"),
                Written::Gone => {
                    debug!(pod = %format!("{ns}/{name}"), "the pod is gone; its release follows");
                }
                Written::Stopped => return,
            }
        }
        for name in &outcome.delete_ips {
            let what = format!("deleting the IP resource {name}");
            let params = DeleteParams::default();
            let deleted = self
                .until_done(&what, || self.ips.delete(name, &params))
                .await;
            if deleted == Written::Stopped {
                return;
            }
        }
        if let Some((_, _, reference)) = target {
            self.publish(&outcome.events, reference).await;
        }
    }

    /// Runs the write `op` until it lands, [`error_policy`] drops it, or this replica stops
    /// leading.
    pub(crate) async fn until_done<T, F, Fut>(&self, what: &str, mut op: F) -> Written
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let mut attempt = 1u32;
        loop {
            if self.is_stopped() {
                return Written::Stopped;
            }
            let Err(error) = op().await else {
                return Written::Done;
            };
            match error_policy(&error, attempt) {
                Action::Drop => return Written::Gone,
                Action::RequeueAfter(backoff) => {
                    warn!(%error, attempt, retry_in = ?backoff, "{what}");
                    self.metrics.write_retries.inc();
                    tokio::time::sleep(backoff).await;
                }
            }
            attempt += 1;
        }
    }

    /// Creates the IP resource of `record`, or updates the one of that name.
    pub(crate) async fn upsert_ip(&self, record: &IpRecord, node: &str) -> Written {
        let body = objects::ip_object(record, node);
        let obj: DynamicObject = match serde_json::from_value(body.clone()) {
            Ok(o) => o,
            Err(e) => {
                warn!(ip = %record.name, error = %e, "building the IP resource");
                return Written::Gone;
            }
        };
        let patch = json!({"metadata": {"labels": body["metadata"]["labels"], "annotations": body["metadata"]["annotations"]}, "spec": body["spec"]});
        let what = format!("writing the IP resource {}", record.name);
        self.until_done(&what, || async {
            match self.ips.create(&PostParams::default(), &obj).await {
                Err(kube::Error::Api(e)) if e.code == 409 => self
                    .ips
                    .patch(&record.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ()),
                other => other.map(|_| ()),
            }
        })
        .await
    }

    pub(crate) async fn publish(&self, events: &[Event], reference: &ObjectReference) {
        for e in events {
            let event = KubeEvent {
                type_: if e.warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: e.reason.to_owned(),
                note: Some(e.message.clone()),
                action: "Allocate".to_owned(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&event, reference).await {
                warn!(error = %err, reason = e.reason, "recording an event");
            }
        }
    }

    pub(crate) async fn format_subnet(&self, name: &str, spec: Value) {
        let patch = Patch::Merge(json!({ "spec": spec }));
        let params = PatchParams::default();
        let what = format!("writing the defaulted spec of Subnet {name}");
        self.until_done(&what, || self.subnets.patch(name, &params, &patch))
            .await;
    }

    /// Puts Sidelane's finalizer on Subnet `name` (`add`) or takes it off.
    pub(crate) async fn subnet_finalizer(&self, name: &str, add: bool) {
        self.finalizer(&self.subnets, "Subnet", name, FINALIZER, add)
            .await;
    }

    /// Puts `finalizer` on the object `kind`/`name` of `api` (`add`) or takes it off; read
    /// afresh on each attempt and written with its resourceVersion, so another writer's
    /// finalizers stay.
    pub(crate) async fn finalizer(
        &self,
        api: &Api<DynamicObject>,
        kind: &str,
        name: &str,
        finalizer: &str,
        add: bool,
    ) {
        let what = format!(
            "{} the finalizer {finalizer} of {kind} {name}",
            if add { "adding" } else { "removing" }
        );
        self.until_done(&what, || async {
            let obj = api.get(name).await?;
            let mut finalizers = obj.metadata.finalizers.clone().unwrap_or_default();
            if finalizers.iter().any(|f| f == finalizer) == add {
                return Ok(());
            }
            if add {
                if obj.metadata.deletion_timestamp.is_some() {
                    return Ok(());
                }
                finalizers.push(finalizer.to_owned());
            } else {
                finalizers.retain(|f| f != finalizer);
            }
            let patch = json!({"metadata": {
                "finalizers": finalizers,
                "resourceVersion": obj.metadata.resource_version,
            }});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
        })
        .await;
    }

    pub(crate) async fn subnet_status(&self, name: &str, status: Value) {
        self.status(&self.subnets, "Subnet", name, status).await;
    }

    pub(crate) async fn security_group_status(&self, name: &str, status: Value) {
        self.status(&self.security_groups, "SecurityGroup", name, status)
            .await;
    }

    pub(crate) async fn status(
        &self,
        api: &Api<DynamicObject>,
        kind: &str,
        name: &str,
        status: Value,
    ) {
        let patch = Patch::Merge(json!({ "status": status }));
        let params = PatchParams::default();
        let what = format!("writing the status of {kind} {name}");
        self.until_done(&what, || api.patch_status(name, &params, &patch))
            .await;
    }
}

/// How a retried write ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Written {
    /// It landed.
    Done,
    /// Its object is gone (404): nothing to write.
    Gone,
    /// This replica stopped leading: nothing may be written any more.
    Stopped,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure("injected", "Injected")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_gone_object_drops_the_write_and_anything_else_requeues_it_with_a_growing_backoff() {
        assert_eq!(error_policy(&api_error(404), 1), Action::Drop);
        let requeued: Vec<Action> = (1..=8).map(|a| error_policy(&api_error(500), a)).collect();
        assert_eq!(
            requeued[0],
            Action::RequeueAfter(Duration::from_millis(100))
        );
        assert_eq!(
            requeued[1],
            Action::RequeueAfter(Duration::from_millis(200))
        );
        assert_eq!(requeued[7], Action::RequeueAfter(Duration::from_secs(5)));
        assert_eq!(
            error_policy(&api_error(403), 1_000),
            Action::RequeueAfter(Duration::from_secs(5))
        );
    }
}
