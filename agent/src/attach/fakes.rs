//! Recording fakes of everything the CNI logic touches: one [`FakeNode`] plays the link layer,
//! the fast path, OVS and the QoS dataplane, keeps the interfaces it "made", logs every call in
//! order, and fails the calls a test names.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use sidelane_api::qos::QosSpec;

use crate::{
    dataplane::{
        DataplaneError,
        fastpath::FastpathPort,
        ports::{FastpathPorts, QosPort},
        qos::QosTarget,
    },
    link::{LinkError, Links, PodInterfacePlan},
    ovs::{Datapath, OvsError, PortBinding, PortPlug},
    pods::{Annotations, PodError, PodSource, Waited},
    subnets::{SubnetInfo, SubnetSource},
};

/// The node double.
#[derive(Default)]
pub(crate) struct FakeNode {
    /// Every call, in order (`create 3f2a_net1_h`, `qos.apply 3f2a_net1_h`, ...).
    log: Mutex<Vec<String>>,
    /// The operations that fail (`create`, `delete`, `fastpath.attach`, `ovs.plug`, ...).
    failing: Mutex<BTreeSet<String>>,
    /// Interfaces that exist, by name.
    links: Mutex<BTreeSet<String>>,
    /// Host ends on the fast path.
    fastpath: Mutex<BTreeSet<String>>,
    /// Ports on the bridge.
    ports: Mutex<BTreeSet<String>>,
    /// Interfaces with limits.
    limited: Mutex<BTreeSet<String>>,
    /// `ovs.plug` never returns (ovn-controller never binds the port).
    plug_hangs: Mutex<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeNode {
    pub(crate) fn new() -> Arc<FakeNode> {
        Arc::new(FakeNode::default())
    }

    /// `op` (`create`), or `op` on one object (`delete 3f2a_net1_h`), fails from now on.
    pub(crate) fn fail(&self, op: &str) {
        lock(&self.failing).insert(op.to_owned());
    }

    /// Nothing fails any more.
    pub(crate) fn heal(&self) {
        lock(&self.failing).clear();
    }

    /// `ovs.plug` never returns from now on.
    pub(crate) fn hang_plug(&self) {
        *lock(&self.plug_hangs) = true;
    }

    /// Every call so far.
    pub(crate) fn calls(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// What exists now: interfaces, fast-path entries, bridge ports, limited interfaces.
    pub(crate) fn state(&self) -> BTreeMap<&'static str, BTreeSet<String>> {
        BTreeMap::from([
            ("links", lock(&self.links).clone()),
            ("fastpath", lock(&self.fastpath).clone()),
            ("ports", lock(&self.ports).clone()),
            ("limited", lock(&self.limited).clone()),
        ])
    }

    /// Whether nothing is left of any attachment.
    pub(crate) fn is_bare(&self) -> bool {
        self.state().values().all(BTreeSet::is_empty)
    }

    /// Makes `ifname` exist (an interface another plugin made).
    pub(crate) fn add_link(&self, ifname: &str) {
        lock(&self.links).insert(ifname.to_owned());
    }

    /// Removes `ifname` behind the agent's back.
    pub(crate) fn remove_link(&self, ifname: &str) {
        lock(&self.links).remove(ifname);
    }

    /// Logs `op object`; `Err(())` when `op` is set to fail.
    fn call(&self, op: &str, object: &str) -> Result<(), ()> {
        let call = format!("{op} {object}");
        lock(&self.log).push(call.clone());
        let failing = lock(&self.failing);
        if failing.contains(op) || failing.contains(&call) {
            Err(())
        } else {
            Ok(())
        }
    }
}

fn link_failure(op: &'static str, object: &str) -> LinkError {
    LinkError::Io {
        op,
        object: object.to_owned(),
        source: std::io::Error::other("injected"),
    }
}

fn dataplane_failure(ifname: &str) -> DataplaneError {
    DataplaneError::Pin {
        op: "injected failure on",
        path: ifname.into(),
        source: std::io::Error::other("injected"),
    }
}

fn ovs_failure(port: &str) -> OvsError {
    OvsError::Interface {
        port: port.to_owned(),
        error: "injected".to_owned(),
    }
}

impl Links for FakeNode {
    fn create(
        &self,
        _host_netns: Option<&Path>,
        host: &str,
        _pod_netns: &Path,
        _temp: &str,
        _plan: &PodInterfacePlan,
    ) -> Result<(), LinkError> {
        self.call("create", host)
            .map_err(|()| link_failure("creating", host))?;
        lock(&self.links).insert(host.to_owned());
        Ok(())
    }

    fn create_host_pair(
        &self,
        _host_netns: Option<&Path>,
        a: &str,
        b: &str,
        _mtu: Option<u32>,
    ) -> Result<(), LinkError> {
        self.call("create_host_pair", a)
            .map_err(|()| link_failure("creating", a))?;
        lock(&self.links).extend([a.to_owned(), b.to_owned()]);
        Ok(())
    }

    fn disable_tx_checksum(&self, _netns: Option<&Path>, ifname: &str) -> Result<(), LinkError> {
        self.call("checksum", ifname)
            .map_err(|()| link_failure("turning TX checksum offload off on", ifname))
    }

    fn delete(&self, _netns: Option<&Path>, ifname: &str) -> Result<bool, LinkError> {
        self.call("delete", ifname)
            .map_err(|()| link_failure("deleting", ifname))?;
        let mut links = lock(&self.links);
        let existed = links.remove(ifname);
        if existed && let Some(base) = ifname.strip_suffix("_o") {
            links.remove(&format!("{base}_p"));
        }
        Ok(existed)
    }

    fn verify(&self, _pod_netns: &Path, plan: &PodInterfacePlan) -> Result<Vec<String>, LinkError> {
        self.call("verify", &plan.ifname)
            .map_err(|()| link_failure("verifying", &plan.ifname))?;
        Ok(Vec::new())
    }

    fn exists(&self, _netns: Option<&Path>, ifname: &str) -> bool {
        lock(&self.links).contains(ifname)
    }

    fn is_namespace(&self, _path: &Path) -> bool {
        true
    }
}

impl FastpathPorts for FakeNode {
    fn attach(&self, port: &FastpathPort) -> Result<(), DataplaneError> {
        self.call("fastpath.attach", &port.host_ifname)
            .map_err(|()| dataplane_failure(&port.host_ifname))?;
        lock(&self.fastpath).insert(port.host_ifname.clone());
        Ok(())
    }

    fn detach(&self, _netns: Option<&Path>, host_ifname: &str) -> Result<(), DataplaneError> {
        self.call("fastpath.detach", host_ifname)
            .map_err(|()| dataplane_failure(host_ifname))?;
        lock(&self.fastpath).remove(host_ifname);
        Ok(())
    }

    fn sweep(&self, _netns: Option<&Path>) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn set_policed(
        &self,
        _netns: Option<&Path>,
        _host_ifname: &str,
        _policed: bool,
    ) -> Result<usize, DataplaneError> {
        Ok(0)
    }

    fn set_groups(
        &self,
        _groups: BTreeMap<String, sidelane_api::security_group::Group>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn set_member_groups(
        &self,
        _netns: Option<&Path>,
        host_ifname: &str,
        groups: Vec<String>,
    ) -> Result<(), DataplaneError> {
        self.call("fastpath.set_member_groups", host_ifname)
            .map_err(|()| dataplane_failure(host_ifname))?;
        let _ = groups;
        Ok(())
    }

    fn set_routes(
        &self,
        _routes: BTreeMap<u32, crate::dataplane::fastpath::PortRoute>,
    ) -> Result<(), DataplaneError> {
        Ok(())
    }
}

impl PortPlug for FakeNode {
    fn plug<'a>(&'a self, binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(async move {
            self.call("ovs.plug", &binding.port)
                .map_err(|()| ovs_failure(&binding.port))?;
            lock(&self.ports).insert(binding.port.clone());
            Ok(())
        })
    }

    fn wait_bound<'a>(&'a self, _binding: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(async move {
            if *lock(&self.plug_hangs) {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    }

    fn unplug<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(async move {
            self.call("ovs.unplug", port)
                .map_err(|()| ovs_failure(port))?;
            lock(&self.ports).remove(port);
            Ok(())
        })
    }

    fn datapath(&self) -> Datapath {
        Datapath::System
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.call("ovs.ready", "")
                .map_err(|()| "the Open_vSwitch database does not answer".to_owned())
        })
    }
}

/// The QoS side of a [`FakeNode`].
pub(crate) struct FakeQos(pub(crate) Arc<FakeNode>);

impl QosPort for FakeQos {
    fn apply(&self, target: &QosTarget, _spec: &QosSpec) -> Result<(), DataplaneError> {
        self.0
            .call("qos.apply", &target.ifname)
            .map_err(|()| dataplane_failure(&target.ifname))?;
        lock(&self.0.limited).insert(target.ifname.clone());
        Ok(())
    }

    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError> {
        self.0
            .call("qos.detach", &target.ifname)
            .map_err(|()| dataplane_failure(&target.ifname))?;
        lock(&self.0.limited).remove(&target.ifname);
        Ok(())
    }

    fn sweep(&self) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        self.0
            .call("qos.ready", "")
            .map_err(|()| "the QoS pin directory is not on a mounted bpffs".to_owned())
    }
}

/// One pod's annotations and the Subnets, as the API server would give them.
#[derive(Default)]
pub(crate) struct FakePods {
    pub(crate) annotations: Mutex<Annotations>,
    pub(crate) subnets: Vec<SubnetInfo>,
}

impl PodSource for FakePods {
    async fn wait_for(
        &self,
        _namespace: &str,
        _name: &str,
        ready: impl Fn(&Annotations) -> bool + Send + Sync + 'static,
        _timeout: Duration,
    ) -> Result<Waited, PodError> {
        let annotations = lock(&self.annotations).clone();
        Ok(if ready(&annotations) {
            Waited::Ready(annotations)
        } else {
            Waited::TimedOut(Some(annotations))
        })
    }
}

impl SubnetSource for FakePods {
    async fn subnets(&self, _fresh: bool) -> Result<Vec<SubnetInfo>, PodError> {
        Ok(self.subnets.clone())
    }
}
