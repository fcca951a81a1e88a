//! Reading and writing any object of the cluster as JSON from synchronous test code (and from
//! async tests alike): a kube client on a runtime of its own, with kinds found by discovery.

use std::{
    collections::HashMap,
    future::Future,
    path::Path,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, anyhow};
use kube::{
    Api,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
    core::GroupVersionKind,
    discovery::{ApiCapabilities, Scope},
};
use serde_json::Value;

/// A client of the cluster for tests: every object as a `serde_json::Value`.
pub struct Objects {
    runtime: Option<tokio::runtime::Runtime>,
    client: kube::Client,
    kinds: Mutex<HashMap<(String, String), (ApiResource, ApiCapabilities)>>,
}

impl Objects {
    /// Connects with `kubeconfig`.
    pub fn connect(kubeconfig: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cluster-objects")
            .enable_all()
            .build()
            .context("building the objects client's runtime")?;
        let path = kubeconfig.to_owned();
        let client = on(&runtime, async move { super::client_from(&path).await })?;
        Ok(Self {
            runtime: Some(runtime),
            client,
            kinds: Mutex::new(HashMap::new()),
        })
    }

    /// A clone of the underlying client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    fn call<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        on(
            self.runtime
                .as_ref()
                .unwrap_or_else(|| unreachable!("the runtime lives until drop")),
            future,
        )
    }

    fn resource(&self, api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
        let key = (api_version.to_owned(), kind.to_owned());
        if let Some((resource, caps)) = self
            .kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok((resource.clone(), caps.scope == Scope::Namespaced));
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let client = self.client.clone();
        let found = self
            .call(async move { kube::discovery::pinned_kind(&client, &gvk).await })
            .with_context(|| format!("discovering {api_version} {kind}"))?;
        let namespaced = found.1.scope == Scope::Namespaced;
        let resource = found.0.clone();
        self.kinds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, found);
        Ok((resource, namespaced))
    }

    fn api(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> anyhow::Result<Api<DynamicObject>> {
        let (resource, namespaced) = self.resource(api_version, kind)?;
        Ok(match namespace {
            Some(ns) if namespaced => Api::namespaced_with(self.client.clone(), ns, &resource),
            _ => Api::all_with(self.client.clone(), &resource),
        })
    }

    /// The object, or `None` if it does not exist (or its kind is not served).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let api = self.api(api_version, kind, Some(namespace)).ok()?;
        let name = name.to_owned();
        self.call(async move { api.get_opt(&name).await })
            .ok()
            .flatten()
            .and_then(|o| serde_json::to_value(o).ok())
    }

    /// Every object of a kind, in `namespace` or in all (`None`).
    ///
    /// # Panics
    /// When the API server refuses the list: a test cannot go on without it.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let listed = self.api(api_version, kind, namespace).and_then(|api| {
            self.call(async move { api.list(&ListParams::default()).await })
                .map_err(|e| anyhow!(e))
        });
        match listed {
            Ok(list) => list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .collect(),
            Err(error) => panic!("listing {api_version} {kind}: {error:#}"),
        }
    }

    /// Creates `object` as given; a `status` in it is then written through the status
    /// subresource, as the component that owns it would (a cluster that already holds it).
    /// Returns the stored object.
    pub fn create(&self, object: &Value) -> anyhow::Result<Value> {
        self.create_owned(object.clone())
    }

    /// [`Objects::create`], taking the object.
    pub fn create_owned(&self, mut object: Value) -> anyhow::Result<Value> {
        let (api_version, kind, namespace, name) = identity(&object)?;
        let status = object
            .as_object_mut()
            .and_then(|o| o.remove("status"))
            .filter(|s| !s.is_null());
        let api = self.api(&api_version, &kind, Some(&namespace))?;
        let (_, namespaced) = self.resource(&api_version, &kind)?;
        let mut body: DynamicObject = serde_json::from_value(object)
            .with_context(|| format!("{kind} {name} is not a Kubernetes object"))?;
        if namespaced {
            body.metadata.namespace = Some(namespace.clone());
        }
        let created = {
            let api = api.clone();
            self.call(async move { api.create(&PostParams::default(), &body).await })
                .with_context(|| format!("creating {kind} {namespace}/{name}"))?
        };
        let Some(status) = status else {
            return serde_json::to_value(created).context("serialising the created object");
        };
        let created_name = created.metadata.name.clone().unwrap_or(name);
        let target = created_name.clone();
        let patched = self
            .call(async move {
                api.patch_status(
                    &target,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": status })),
                )
                .await
            })
            .with_context(|| format!("writing the status of {kind} {namespace}/{created_name}"))?;
        serde_json::to_value(patched).context("serialising the created object")
    }

    /// Deletes the object at once (grace period 0: as a kubelet confirms, or `--force`). A
    /// missing object is no error.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.delete_with(
            api_version,
            kind,
            namespace,
            name,
            DeleteParams::default().grace_period(0),
        )
    }

    /// Deletes the object as a user does (`kubectl delete`): a pod bound to a node stays,
    /// terminating, until its kubelet confirms. A missing object is no error.
    pub fn delete_gracefully(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<()> {
        self.delete_with(api_version, kind, namespace, name, DeleteParams::default())
    }

    fn delete_with(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        params: DeleteParams,
    ) -> anyhow::Result<()> {
        let api = self.api(api_version, kind, Some(namespace))?;
        let owned = name.to_owned();
        match self.call(async move { api.delete(&owned, &params).await }) {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(error) => {
                Err(anyhow!(error)).with_context(|| format!("deleting {kind} {namespace}/{name}"))
            }
        }
    }
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").finish_non_exhaustive()
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        // Allowed from inside an async test, unlike dropping the runtime outright.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `future` on `runtime` and waits for it, from any thread (async tests included).
fn on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .unwrap_or_else(|_| panic!("the objects client's runtime stopped"))
}

/// `apiVersion`, `kind`, namespace (default `default`) and name of an object.
fn identity(object: &Value) -> anyhow::Result<(String, String, String, String)> {
    let text = |pointer: &str| object.pointer(pointer).and_then(Value::as_str);
    let api_version = text("/apiVersion").context("the object has no apiVersion")?;
    let kind = text("/kind").context("the object has no kind")?;
    let name = text("/metadata/name")
        .or_else(|| text("/metadata/generateName"))
        .with_context(|| format!("the {kind} has no name"))?;
    Ok((
        api_version.to_owned(),
        kind.to_owned(),
        text("/metadata/namespace").unwrap_or("default").to_owned(),
        name.to_owned(),
    ))
}
