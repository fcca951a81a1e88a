//! A Kubernetes API double: an HTTP/1.1 server on 127.0.0.1 that speaks the part of the
//! Kubernetes API Sidelane's components use, so that separate processes (controller
//! replicas, node agents, `kubectl --server`) share one cluster state as they would with a
//! real API server.
//!
//! **Test and lab infrastructure only.** There is no API server, kind, k3s or envtest on the
//! machines Sidelane is built on; this stands in for one. It has no authentication, no TLS,
//! no admission webhooks, no controllers and no persistence.
//!
//! # What it serves
//! - core v1 `namespaces`, `nodes`, `pods` (each with `status`), `events`;
//!   `events.k8s.io/v1` `events`; `coordination.k8s.io/v1` `leases`;
//!   `k8s.cni.cncf.io/v1` `network-attachment-definitions` (namespaced);
//!   `apps/v1` `statefulsets`;
//!   `kubeovn.io/v1` `subnets`, `vpcs`, `ippools` (cluster-scoped, with `status`) and `ips`
//!   (cluster-scoped; Kube-OVN gives IPs no status subresource).
//! - Discovery: `/api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`, also as
//!   aggregated discovery (`apidiscovery.k8s.io/v2`), and `/version`.
//! - Verbs: get, list, watch, create, update, patch, delete, deletecollection; `Accept`
//!   negotiation of `PartialObjectMetadata(List)` (kube's metadata API and
//!   `metadata_watcher`).
//!
//! # Faithful where it matters
//! - One global `resourceVersion`, bumped by every write; a write that changes nothing is
//!   not a write (same `resourceVersion`, no watch event). Update or patch with a stale
//!   `metadata.resourceVersion` is 409 `Conflict`; create of an existing name is 409
//!   `AlreadyExists`; a missing object is 404 `NotFound`; every failure has a `Status` body.
//! - Server-owned metadata: `uid`, `creationTimestamp`, `generation` (bumped when anything but
//!   metadata and status changes), `generateName`. Names, label and annotation keys and label
//!   values are validated as a real server validates them (422 `Invalid`).
//! - Status subresources: writes to the main resource keep the stored status; writes to
//!   `/status` change only the status. Create resets status as the real strategies do (Pods
//!   become `Pending`, custom resources with a status subresource lose it).
//! - Deletion: an object with finalizers gets `deletionTimestamp` and stays until the last
//!   finalizer is removed; no finalizer may be added meanwhile. `preconditions` are checked.
//!   Namespaces must exist for objects created in them; deleting one deletes its objects
//!   (respecting their finalizers), refuses new ones (403) and removes it once empty.
//! - Patches: merge, JSON (RFC 6902), strategic merge (applied as merge; rejected with 415
//!   on custom resources, as a real server does) and server-side apply with a JSON body and
//!   a required `fieldManager`, applied as a merge patch that creates missing objects.
//! - Lists: `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, exists, `!key`), `fieldSelector`
//!   on the fields the real type supports (unsupported fields are a 400), `limit` and
//!   `continue` (pages are consistent: later pages are read at the first page's
//!   `resourceVersion`), `resourceVersionMatch=Exact`.
//! - Watches (the `watch` module): resume from a `resourceVersion`, 410 `Expired` as an `ERROR`
//!   event once the bounded history no longer reaches back, bookmarks, `timeoutSeconds`,
//!   `sendInitialEvents`, selectors.
//!
//! # Not modelled
//! - Field ownership in server-side apply (`managedFields`), strategic merge list semantics.
//! - Garbage collection through `ownerReferences` (`propagationPolicy` is accepted and
//!   ignored); graceful pod deletion (no kubelet: deletes are immediate unless finalizers
//!   hold them); `dryRun` (rejected with 400).
//! - Tables (`kubectl get` prints NAME and AGE from plain lists), OpenAPI (`kubectl create -f`
//!   and `apply -f` need `--validate=false`), protobuf: kubectl's typed commands that send
//!   protobuf bodies (`kubectl create namespace`) get 415, while `create -f`, `apply
//!   [--server-side]`, `run`, `label`, `annotate`, `patch`, `delete`, `describe`, `get` and
//!   `get -w` work.
//! - The shared storage of core and `events.k8s.io` Events (they are separate here).
//! - `metadata.generation` is kept on every type, not only on those a real server versions.

mod patch;
mod resources;
mod selectors;
mod server;
mod status;
mod store;
mod watch;

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use serde_json::{Value, json};
pub use status::ApiError;
use store::Store;

/// How the API double behaves where a real server's behaviour is configurable or slow.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How many changes the history keeps; watches from an older `resourceVersion` get
    /// 410 `Expired`. Default 10 000.
    pub history_limit: usize,
    /// How often a watch with `allowWatchBookmarks=true` gets a `BOOKMARK`. Default one
    /// second (a real server sends one about every minute; tests should not wait that long).
    pub bookmark_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            history_limit: 10_000,
            bookmark_interval: Duration::from_secs(1),
        }
    }
}

/// A failure of the API double's own operations (not of API requests, which answer with
/// [`ApiError`] `Status` bodies).
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    /// Binding the loopback listener failed.
    #[error("binding the Kubernetes API double to 127.0.0.1:0: {source}")]
    Bind {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Building the server's tokio runtime or thread failed.
    #[error("starting the Kubernetes API double's {what}: {source}")]
    Start {
        /// Runtime or thread.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a kubeconfig file failed.
    #[error("writing the kubeconfig {}: {source}", .path.display())]
    WriteKubeconfig {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Seeding an object failed as the API would have refused it.
    #[error("seeding {kind} {name:?}: {source}")]
    Seed {
        /// The object's kind.
        kind: String,
        /// The object's name (or generateName).
        name: String,
        /// Why the store refused it.
        #[source]
        source: Box<ApiError>,
    },
}

/// State shared by the server's tasks and the [`ApiServer`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// The latest `resourceVersion`; watches wait on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// Bumped by [`ApiServer::close_watches`].
    closes: tokio::sync::watch::Sender<u64>,
    bookmark_interval: Duration,
    address: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panic in a handler cannot leave the store half-written (every write is computed
        // before it is stored), so a poisoned lock is still a consistent store.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the store.
    fn read<T>(&self, f: impl FnOnce(&Store) -> T) -> T {
        f(&self.lock())
    }

    /// Runs `f` on the store and wakes the watches if it wrote.
    fn write<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let (result, version) = {
            let mut store = self.lock();
            let result = f(&mut store);
            (result, store.resource_version())
        };
        self.changes.send_if_modified(|latest| {
            let changed = *latest != version;
            *latest = version;
            changed
        });
        result
    }
}

/// A running API double; it stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
    url: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts an API double with default [`Options`] on 127.0.0.1 and an ephemeral port,
    /// served by a thread of its own (so it works from sync and async tests alike).
    ///
    /// # Panics
    /// If the loopback listener or the server thread cannot be created: a test cannot go on
    /// without its API server.
    pub fn start() -> Self {
        Self::start_with(Options::default())
            .unwrap_or_else(|error| panic!("starting the Kubernetes API double: {error}"))
    }

    /// Starts an API double with `options`.
    pub fn start_with(options: Options) -> Result<Self, ApiServerError> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| ApiServerError::Bind { source })?;
        let address = listener
            .local_addr()
            .map_err(|source| ApiServerError::Bind { source })?;
        let store = Store::new(options.history_limit);
        let (changes, _) = tokio::sync::watch::channel(store.resource_version());
        let (closes, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changes,
            closes,
            bookmark_interval: options.bookmark_interval,
            address,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| ApiServerError::Start {
                what: "runtime",
                source,
            })?;
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let served = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("apiserver-double-{}", address.port()))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => server::serve(listener, served, shutdown_rx).await,
                        Err(error) => {
                            tracing::error!(%error, "registering the API double's listener");
                        }
                    }
                });
            })
            .map_err(|source| ApiServerError::Start {
                what: "thread",
                source,
            })?;
        tracing::info!(%address, "Kubernetes API double listening");
        Ok(Self {
            shared,
            url: format!("http://{address}"),
            shutdown,
            thread: Some(thread),
        })
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes a kubeconfig file for processes (`KUBECONFIG=<path>`, `kubectl --kubeconfig`)
    /// whose current context points at this server, namespace `default`.
    pub fn kubeconfig(&self, path: &Path) -> Result<(), ApiServerError> {
        // JSON is YAML: kubectl and kube read it as is.
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "apidouble", "cluster": {"server": self.url}}],
            "users": [{"name": "apidouble", "user": {}}],
            "contexts": [{
                "name": "apidouble",
                "context": {"cluster": "apidouble", "user": "apidouble", "namespace": "default"},
            }],
            "current-context": "apidouble",
            "preferences": {},
        });
        let mut text = serde_json::to_string_pretty(&config).unwrap_or_default();
        let _ = writeln!(text);
        std::fs::write(path, text).map_err(|source| ApiServerError::WriteKubeconfig {
            path: path.to_owned(),
            source,
        })
    }

    /// A `kube::Client` for this server (plain HTTP, default namespace `default`).
    ///
    /// # Panics
    /// Outside a tokio runtime, as `kube::Client` itself does.
    pub fn client(&self) -> kube::Client {
        let url: hyper::Uri = self
            .url
            .parse()
            .unwrap_or_else(|error| panic!("the server URL {} is a URI: {error}", self.url));
        kube::Client::try_from(kube::Config::new(url))
            .unwrap_or_else(|error| panic!("building a plain-HTTP kube client: {error}"))
    }

    /// Stores `object` (any served `apiVersion`/`kind`) as a cluster would already hold it:
    /// status kept as given, namespace created if missing (`default` if unset); `uid`,
    /// `creationTimestamp` and `resourceVersion` filled in. Watches see it as `ADDED`.
    /// Returns the stored object.
    pub fn seed(&self, object: Value) -> Result<Value, ApiServerError> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let name = object
            .pointer("/metadata/name")
            .or_else(|| object.pointer("/metadata/generateName"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.shared
            .write(|store| store.seed(object))
            .map_err(|source| ApiServerError::Seed {
                kind,
                name,
                source: Box::new(source),
            })
    }

    /// The stored object, read without a client: `None` if missing or of a type not served.
    /// `namespace` is ignored for cluster-scoped types.
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = resources::by_kind(api_version, kind)?;
        self.shared
            .read(|store| store.get(resource, namespace, name))
            .ok()
    }

    /// Every stored object of a type, in `namespace` or all namespaces (`None`), in listing
    /// order; empty for a type not served.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        resources::by_kind(api_version, kind).map_or_else(Vec::new, |resource| {
            self.shared.read(|store| store.objects(resource, namespace))
        })
    }

    /// The latest `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.shared.read(Store::resource_version)
    }

    /// Forgets the change history, as an etcd compaction does: watches (and continue
    /// tokens) from an older `resourceVersion` get 410 `Expired`, so clients must re-list.
    pub fn compact(&self) {
        self.shared.write(Store::compact);
    }

    /// Ends every open watch cleanly, as a restarting API server or a dropped connection
    /// would; clients reconnect from their last `resourceVersion`.
    pub fn close_watches(&self) {
        self.shared
            .closes
            .send_modify(|generation| *generation += 1);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(url = %self.url, "the API double's thread panicked");
        }
    }
}
