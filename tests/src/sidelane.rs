//! Sidelane's QoS dataplane on a [`PodLink`], through the agent's library API
//! (`sidelane_agent::dataplane::qos`), with pins under a scratch bpffs directory of its own.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use sidelane_agent::dataplane::qos::{
    AdoptReport, AttachmentStatus, Placement, QosDataplane, QosTarget,
};
use sidelane_api::qos::{Direction, QosSpec, RateLimit};

use crate::topology::PodLink;

/// Where scratch pin roots go.
pub const BPFFS: &str = "/sys/fs/bpf";

/// A spec limiting `dir` to `mbps` Mbit/s (default burst) and leaving the other direction
/// unlimited.
pub fn spec(dir: Direction, mbps: u64) -> QosSpec {
    let mut spec = QosSpec::UNLIMITED;
    match dir {
        Direction::Ingress => spec.ingress = RateLimit::mbps(mbps),
        Direction::Egress => spec.egress = RateLimit::mbps(mbps),
    }
    spec
}

/// A pin root of its own, `/sys/fs/bpf/<prefix>-<pid>-<n>`, removed with everything under it on
/// drop (best effort).
#[derive(Debug)]
pub struct PinRoot {
    path: PathBuf,
}

impl PinRoot {
    /// A fresh, unique path (not yet created: the dataplane creates it, mounting bpffs first if
    /// needed).
    pub fn new(prefix: &str) -> PinRoot {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        PinRoot {
            path: Path::new(BPFFS).join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )),
        }
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: removing {}: {e}", self.path.display()),
        }
    }
}

/// The QoS dataplane attached (or ready to attach) to the host end of a [`PodLink`], with
/// placement `HostPeer`. Detached on drop, best effort; its pins go with its [`PinRoot`].
pub struct SidelaneQos {
    // Dropped in this order: the dataplane handle, then the pins.
    dataplane: QosDataplane,
    target: QosTarget,
    pins: PinRoot,
}

impl SidelaneQos {
    /// A dataplane pinned under `pins`, targeting `link`'s host-side veth.
    pub fn new(link: &PodLink, pins: PinRoot) -> anyhow::Result<SidelaneQos> {
        let dataplane = QosDataplane::new(pins.path())?;
        Ok(SidelaneQos {
            dataplane,
            target: QosTarget {
                netns: Some(link.host().path()),
                ifname: link.host_if().to_owned(),
                placement: Placement::HostPeer,
            },
            pins,
        })
    }

    /// The attachment target.
    pub fn target(&self) -> &QosTarget {
        &self.target
    }

    /// The pin root.
    pub fn pin_root(&self) -> &Path {
        self.pins.path()
    }

    /// The dataplane itself.
    pub fn dataplane(&self) -> &QosDataplane {
        &self.dataplane
    }

    /// Attaches or updates the limits.
    pub fn apply(&self, spec: &QosSpec) -> anyhow::Result<AttachmentStatus> {
        Ok(self.dataplane.apply(&self.target, spec)?)
    }

    /// Detaches; `false` if nothing was attached.
    pub fn detach(&self) -> anyhow::Result<bool> {
        Ok(self.dataplane.detach(&self.target)?)
    }

    /// Limits, modes and counters.
    pub fn status(&self) -> anyhow::Result<AttachmentStatus> {
        Ok(self.dataplane.status(&self.target)?)
    }

    /// An agent restart: drops this dataplane handle, opens a new one on the same pin root and
    /// adopts what is pinned there.
    pub fn restart(&mut self) -> anyhow::Result<AdoptReport> {
        self.dataplane = QosDataplane::new(self.pins.path())?;
        Ok(self.dataplane.adopt()?)
    }
}

impl Drop for SidelaneQos {
    fn drop(&mut self) {
        if let Err(e) = self.dataplane.detach(&self.target) {
            eprintln!("warning: detaching {}: {e:#}", self.target);
        }
    }
}

/// A QoS port that does nothing: for tests of the agent's logic where limits are not the
/// point (the real dataplane has tests of its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoQos;

impl sidelane_agent::attach::QosPort for NoQos {
    fn apply(
        &self,
        _: &QosTarget,
        _: &QosSpec,
    ) -> Result<(), sidelane_agent::dataplane::DataplaneError> {
        Ok(())
    }

    fn detach(&self, _: &QosTarget) -> Result<(), sidelane_agent::dataplane::DataplaneError> {
        Ok(())
    }

    fn sweep(&self) -> Result<(), sidelane_agent::dataplane::DataplaneError> {
        Ok(())
    }
}
