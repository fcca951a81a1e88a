//! A control plane with Sidelane installed as the chart installs it (CRDs, ServiceAccounts,
//! RBAC), an admin [`Objects`] client for the test itself, and clients for the controller and
//! the agents under their own ServiceAccounts.

use std::{ops::Deref, path::PathBuf};

use anyhow::Context as _;

use super::{ControlPlane, Objects, Options, SIDELANE_NAMESPACE, client_from};

/// The controller's ServiceAccount (the chart's).
pub const CONTROLLER_ACCOUNT: &str = "sidelane-controller";
/// The agent's ServiceAccount (the chart's).
pub const AGENT_ACCOUNT: &str = "sidelane-agent";

/// A control plane with Sidelane's CRDs and RBAC; reads and writes objects as admin through
/// `Deref` to [`Objects`].
#[derive(Debug)]
pub struct SidelaneCluster {
    objects: Objects,
    controller: PathBuf,
    agent: PathBuf,
    plane: ControlPlane,
}

impl SidelaneCluster {
    /// etcd and kube-apiserver only.
    ///
    /// # Panics
    /// When the control plane cannot start: a test cannot go on without it.
    pub fn start() -> Self {
        Self::start_with(Options::default())
            .unwrap_or_else(|e| panic!("starting a control plane with Sidelane installed: {e:#}"))
    }

    /// With kube-controller-manager and kube-scheduler, so that Deployments and
    /// StatefulSets become pods.
    ///
    /// # Panics
    /// When the control plane cannot start.
    pub fn with_controllers() -> Self {
        Self::start_with(Options { controllers: true }).unwrap_or_else(|e| {
            panic!("starting a control plane with controllers and Sidelane installed: {e:#}")
        })
    }

    /// With these options.
    pub fn start_with(options: Options) -> anyhow::Result<Self> {
        let plane = ControlPlane::start(options)?;
        plane.install_sidelane()?;
        let objects = Objects::connect(plane.admin_kubeconfig())?;
        let controller = plane
            .service_account_kubeconfig(SIDELANE_NAMESPACE, CONTROLLER_ACCOUNT)
            .context("a kubeconfig for the controller")?;
        let agent = plane
            .service_account_kubeconfig(SIDELANE_NAMESPACE, AGENT_ACCOUNT)
            .context("a kubeconfig for the agent")?;
        Ok(Self {
            objects,
            controller,
            agent,
            plane,
        })
    }

    /// The control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// The control plane, for faults (restarts).
    pub fn plane_mut(&mut self) -> &mut ControlPlane {
        &mut self.plane
    }

    /// The controller's kubeconfig (its ServiceAccount, through the proxy).
    pub fn controller_kubeconfig(&self) -> &std::path::Path {
        &self.controller
    }

    /// The agents' kubeconfig (their ServiceAccount, through the proxy).
    pub fn agent_kubeconfig(&self) -> &std::path::Path {
        &self.agent
    }

    /// A client as the controller.
    ///
    /// # Panics
    /// When the kubeconfig cannot be loaded.
    pub async fn controller_client(&self) -> kube::Client {
        client_from(&self.controller)
            .await
            .unwrap_or_else(|e| panic!("a client as the controller: {e:#}"))
    }

    /// A client as an agent.
    ///
    /// # Panics
    /// When the kubeconfig cannot be loaded.
    pub async fn agent_client(&self) -> kube::Client {
        client_from(&self.agent)
            .await
            .unwrap_or_else(|e| panic!("a client as the agent: {e:#}"))
    }

    /// Stores `object` as the cluster would hold it (its namespace created if missing, its
    /// status written through the status subresource); returns the stored object.
    pub fn seed(&self, object: serde_json::Value) -> anyhow::Result<serde_json::Value> {
        if let Some(namespace) = object["metadata"]["namespace"].as_str()
            && self.get("v1", "Namespace", "", namespace).is_none()
        {
            let namespace = serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
            });
            // Another thread may create it first.
            let _ = self.objects.create(&namespace);
        }
        self.objects.create_owned(object)
    }

    /// `kubectl apply --server-side` of `objects`, as admin.
    ///
    /// # Panics
    /// When the API server refuses them: the test's fixture is wrong.
    pub fn apply(&self, objects: &[serde_json::Value]) {
        self.plane
            .apply(objects)
            .unwrap_or_else(|e| panic!("applying {} objects: {e:#}", objects.len()));
    }

    /// Waits (up to a minute) until namespace `namespace` holds at least `count` pods, as a
    /// Deployment's ReplicaSet creates them; returns their names.
    ///
    /// # Panics
    /// When they do not appear in time.
    pub fn wait_for_pods(&self, namespace: &str, count: usize) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_mins(1);
        loop {
            let names: Vec<String> = self
                .list("v1", "Pod", Some(namespace))
                .iter()
                .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                .collect();
            if names.len() >= count {
                return names;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{namespace} has {} pods of {count} after a minute: {names:?}",
                names.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Deref for SidelaneCluster {
    type Target = Objects;

    fn deref(&self) -> &Objects {
        &self.objects
    }
}
