//! The dataplane as the agent's CNI logic sees it: [`QosPort`] (rate limits) and
//! [`FastpathPorts`] (the same-node fast path), each over the eBPF dataplane in the agent and
//! over recording fakes in unit tests.

use std::{path::Path, sync::Mutex};

use sidelane_api::qos::QosSpec;

use super::{
    DataplaneError,
    fastpath::{FastpathDataplane, FastpathPort},
    qos::{QosDataplane, QosTarget},
};

/// Puts rate limits on interfaces. [`QosDataplane`] in the agent; fakes in tests.
pub trait QosPort: Send + Sync + 'static {
    /// Attaches or updates `spec` on `target` (unlimited detaches).
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError>;
    /// Removes the limits of `target`, if any.
    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError>;
    /// Removes the limits of every interface that no longer exists (a namespace deleted before
    /// its attachments were).
    fn sweep(&self) -> Result<(), DataplaneError>;
    /// Whether limits can be put on now (CNI STATUS); why not, if they cannot.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

impl QosPort for QosDataplane {
    fn apply(&self, target: &QosTarget, spec: &QosSpec) -> Result<(), DataplaneError> {
        if spec.is_limited() {
            QosDataplane::apply(self, target, spec).map(drop)
        } else {
            QosDataplane::detach(self, target).map(drop)
        }
    }

    fn detach(&self, target: &QosTarget) -> Result<(), DataplaneError> {
        QosDataplane::detach(self, target).map(drop)
    }

    fn sweep(&self) -> Result<(), DataplaneError> {
        let report = QosDataplane::adopt(self)?;
        if report.failed.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Teardown {
                target: "the QoS attachments of vanished interfaces".to_owned(),
                errors: report.failed,
            })
        }
    }

    fn ready(&self) -> Result<(), String> {
        QosDataplane::ready(self)
    }
}

/// Puts attachments on the fast path and takes them off. Every call is blocking.
pub trait FastpathPorts: Send + Sync {
    /// Puts `port` on the fast path.
    fn attach(&self, port: &FastpathPort) -> Result<(), DataplaneError>;
    /// Takes the host end `host_ifname` in `netns` off it (its endpoints first); idempotent.
    fn detach(&self, netns: Option<&Path>, host_ifname: &str) -> Result<(), DataplaneError>;
    /// Removes the entries of every interface that no longer exists in `netns`.
    fn sweep(&self, netns: Option<&Path>) -> Result<(), DataplaneError>;
    /// Marks the endpoints of `host_ifname` as policed or not; how many changed.
    fn set_policed(
        &self,
        netns: Option<&Path>,
        host_ifname: &str,
        policed: bool,
    ) -> Result<usize, DataplaneError>;
    /// The security groups as now read: the allowed pairs of isolated attachments follow.
    fn set_groups(
        &self,
        groups: std::collections::BTreeMap<String, sidelane_api::security_group::Group>,
    ) -> Result<(), DataplaneError>;
    /// The security groups of the attachment whose host end is `host_ifname` (a restarted
    /// agent, from its records).
    fn set_member_groups(
        &self,
        netns: Option<&Path>,
        host_ifname: &str,
        groups: Vec<String>,
    ) -> Result<(), DataplaneError>;
    /// The routed Subnets as now read, by switch number: routing between them follows.
    fn set_routes(
        &self,
        routes: std::collections::BTreeMap<u32, super::fastpath::PortRoute>,
    ) -> Result<(), DataplaneError>;
}

impl FastpathPorts for Mutex<FastpathDataplane> {
    fn attach(&self, port: &FastpathPort) -> Result<(), DataplaneError> {
        locked(self).attach(port)
    }

    fn detach(&self, netns: Option<&Path>, host_ifname: &str) -> Result<(), DataplaneError> {
        locked(self).detach(netns, host_ifname)
    }

    fn sweep(&self, netns: Option<&Path>) -> Result<(), DataplaneError> {
        locked(self).sweep(netns)
    }

    fn set_policed(
        &self,
        netns: Option<&Path>,
        host_ifname: &str,
        policed: bool,
    ) -> Result<usize, DataplaneError> {
        locked(self).set_policed(netns, host_ifname, policed)
    }

    fn set_groups(
        &self,
        groups: std::collections::BTreeMap<String, sidelane_api::security_group::Group>,
    ) -> Result<(), DataplaneError> {
        locked(self).set_groups(groups)
    }

    fn set_member_groups(
        &self,
        netns: Option<&Path>,
        host_ifname: &str,
        groups: Vec<String>,
    ) -> Result<(), DataplaneError> {
        locked(self).set_member_groups_of(netns, host_ifname, groups)
    }

    fn set_routes(
        &self,
        routes: std::collections::BTreeMap<u32, super::fastpath::PortRoute>,
    ) -> Result<(), DataplaneError> {
        locked(self).set_routes(routes)
    }
}

fn locked(fastpath: &Mutex<FastpathDataplane>) -> std::sync::MutexGuard<'_, FastpathDataplane> {
    fastpath
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
