//! Per-attachment rate limits enforced by the `sl_qos_pod_*` TC programs.
//!
//! Each attachment gets its own copy of the QoS object, pinned under
//! `<pin_root>/qos/<netns-inode>-<ifindex>/`: the three maps by name and each program as
//! `prog_<name>`. A rate change writes the config map only: no detach, no re-attach, no packet
//! lost. The programs are attached as `cls_bpf` filters (direct action) of a `clsact` qdisc, which
//! outlive the agent; with the pinned maps, everything stays in force while the agent is down, and
//! [`QosDataplane::adopt`] takes it back and removes attachments whose interface is gone.
//!
//! ## Why `cls_bpf` and not TCX links
//! A policer must drop the way a congested network does: silently. TCX knows only pass, drop,
//! redirect and next, and its drop makes `dev_queue_xmit` return `NET_XMIT_DROP` to a sender on
//! the same host, which TCP takes for local congestion: it stops and waits on timers instead of
//! recovering, and a 100 Mbit/s limit delivers about 10. A `cls_bpf` program can return
//! `TC_ACT_STOLEN`: the packet is consumed, the sender sees success and recovers from the loss by
//! fast retransmit. `cls_bpf` also runs on every kernel we support (TCX needs 6.6).
//!
//! ## Modes and the default burst
//! A direction whose traffic *leaves* through the hooked device's egress path (into the pod on a
//! host-side veth, out of the pod on a device inside the pod) can be paced with EDT when that
//! device's root qdisc is `fq`: the program stamps departure times and `fq` holds packets until
//! then, so nothing is dropped below the horizon. Everywhere else, and on kernels or devices
//! without `fq`, the program polices (GCRA). See [`Mode`] and [`default_burst_bytes`].

use std::{
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::{
        LazyLock, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
};
use sidelane_agent_common::qos::{
    self as abi, CONFIG_MAP, COUNTERS_MAP, MODE_EDT, MODE_POLICE, QosConfig, QosCounters,
};
use sidelane_api::qos::{Direction, QosSpec, RateLimit};
use tracing::{debug, info, warn};

use super::{
    DataplaneError, boxed, bpffs, load_error, map_error, object,
    qdisc::{NetlinkQdiscProbe, QdiscProbe},
    test_run::{self, RunResult, SkBuffCtx},
};
use crate::netns;

/// Where an attachment's programs go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QosTarget {
    /// The namespace holding the device (`/run/netns/x`, `/proc/<pid>/ns/net`); `None` means the
    /// agent's own.
    pub netns: Option<PathBuf>,
    /// The device's name in that namespace.
    pub ifname: String,
    /// Which side of the pod's link the device is on.
    pub placement: Placement,
}

impl QosTarget {
    /// The device with `ifindex` in `netns` (`None`: the agent's own namespace, where the host
    /// side of a pod's veth lives), resolved to its name now.
    pub fn by_ifindex(
        netns: Option<PathBuf>,
        ifindex: u32,
        placement: Placement,
    ) -> Result<QosTarget, DataplaneError> {
        let name = netns::run_in(netns.as_deref(), || ifindex_name(ifindex))?;
        let Some(ifname) = name else {
            return Err(DataplaneError::NoSuchInterface {
                ifname: format!("ifindex {ifindex}"),
                netns: netns.as_ref().map_or_else(
                    || "the agent's namespace".to_owned(),
                    |p| p.display().to_string(),
                ),
            });
        };
        Ok(QosTarget {
            netns,
            ifname,
            placement,
        })
    }
}

impl fmt::Display for QosTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.netns {
            Some(ns) => write!(f, "{} in {}", self.ifname, ns.display()),
            None => write!(f, "{} in the agent's namespace", self.ifname),
        }
    }
}

/// Which side of the pod's link a device is on; it decides which TC hook sees which direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The host end of the pod's veth: traffic into the pod leaves through its egress hook.
    HostPeer,
    /// A device inside the pod's namespace (an IPAM-only macvlan): traffic into the pod arrives
    /// through its ingress hook.
    PodDevice,
}

impl Placement {
    /// The TC hook that sees `dir` (named from the pod's side) on a device with this placement.
    pub const fn hook(self, dir: Direction) -> TcAttachType {
        match (self, dir) {
            (Placement::HostPeer, Direction::Ingress)
            | (Placement::PodDevice, Direction::Egress) => TcAttachType::Egress,
            (Placement::HostPeer, Direction::Egress)
            | (Placement::PodDevice, Direction::Ingress) => TcAttachType::Ingress,
        }
    }
}

/// How one direction is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No limit: counted only.
    Unlimited,
    /// Token-bucket policing: packets over the limit are dropped.
    Police,
    /// Earliest-departure-time pacing through the device's `fq` root qdisc.
    Edt,
}

impl Mode {
    const fn from_abi(mode: u32) -> Mode {
        match mode {
            MODE_POLICE => Mode::Police,
            MODE_EDT => Mode::Edt,
            _ => Mode::Unlimited,
        }
    }

    /// `"unlimited"`, `"police"` or `"edt"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Unlimited => "unlimited",
            Mode::Police => "police",
            Mode::Edt => "edt",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of one direction of one attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectionStatus {
    /// The direction, from the pod's side.
    pub direction: Direction,
    /// The configured rate (`burst_mbit` is not recorded; see `burst_bytes`).
    pub limit: RateLimit,
    /// How it is enforced.
    pub mode: Mode,
    /// The effective burst (police) or horizon (EDT), in bytes.
    pub burst_bytes: u64,
    /// Packets passed.
    pub passed_packets: u64,
    /// IP bytes passed.
    pub passed_bytes: u64,
    /// Packets dropped by the limit.
    pub dropped_packets: u64,
    /// IP bytes dropped by the limit.
    pub dropped_bytes: u64,
}

impl fmt::Display for DirectionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({}, burst {} B); passed {} pkts / {} B, dropped {} pkts / {} B",
            self.direction.describe(),
            self.limit,
            self.mode,
            self.burst_bytes,
            self.passed_packets,
            self.passed_bytes,
            self.dropped_packets,
            self.dropped_bytes
        )
    }
}

/// The state of one attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachmentStatus {
    /// `<netns-inode>-<ifindex>`: the pin directory's name.
    pub id: String,
    /// The device name.
    pub ifname: String,
    /// The device index in its namespace.
    pub ifindex: u32,
    /// Traffic into the pod.
    pub ingress: DirectionStatus,
    /// Traffic out of the pod.
    pub egress: DirectionStatus,
}

impl AttachmentStatus {
    /// The status of `dir`.
    pub const fn direction(&self, dir: Direction) -> &DirectionStatus {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What [`QosDataplane::adopt`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AdoptReport {
    /// Attachments still in force, by id.
    pub kept: Vec<String>,
    /// Attachments removed because their interface is gone, by id.
    pub removed: Vec<String>,
    /// Attachments whose interface is gone but whose teardown failed (left for the next
    /// pass), with why.
    pub failed: Vec<String>,
}

/// The smallest bucket, default or explicit: two maximum-size GSO packets. A packet passes only
/// if it fits, so a smaller bucket could refuse a full-size GSO packet forever.
pub const MIN_BURST_BYTES: u64 = 2 * 65_536;
/// The smallest bucket as time at the rate: the programs read a clock that advances in scheduler
/// ticks (up to 10 ms), and a bucket must hold two ticks' worth of tokens to lose none.
pub const MIN_BURST_MS: u64 = 20;
/// The default bucket as time at the configured rate: longer than TCP's minimum retransmission
/// timeout (200 ms), so that a policed TCP flow loses no tokens while it waits for one.
pub const DEFAULT_BURST_MS: u64 = 300;
/// The credit a direction starts with, and restarts with after a second of idleness, as time at
/// the rate: it bounds how far a fresh flow overshoots in its first second (here by 2%).
pub const IDLE_CREDIT_MS: u64 = 20;
/// The default EDT horizon as time at the configured rate.
pub const DEFAULT_HORIZON_MS: u64 = 2_000;

/// The smallest bucket for `rate_bps`: [`MIN_BURST_BYTES`] or [`MIN_BURST_MS`] of the rate,
/// whichever is larger.
pub const fn min_burst_bytes(rate_bps: u64) -> u64 {
    let by_time = rate_bps / 8 * MIN_BURST_MS / 1_000;
    if by_time > MIN_BURST_BYTES {
        by_time
    } else {
        MIN_BURST_BYTES
    }
}

/// `ms` worth of bytes at `rate_bps`, but at least [`min_burst_bytes`].
const fn at_least_min(rate_bps: u64, ms: u64) -> u64 {
    let bytes = rate_bps / 8 * ms / 1_000;
    let min = min_burst_bytes(rate_bps);
    if bytes > min { bytes } else { min }
}

/// The bucket a policer gets when the user sets no burst: [`DEFAULT_BURST_MS`] at the rate, at
/// least [`MIN_BURST_BYTES`]. See the module docs of `sidelane_agent_common::qos` for why a
/// policer on a pod link needs a bucket this deep, and [`idle_credit_bytes`] for what keeps it
/// from letting fresh flows overshoot.
pub const fn default_burst_bytes(rate_bps: u64) -> u64 {
    at_least_min(rate_bps, DEFAULT_BURST_MS)
}

/// The credit after idleness: [`IDLE_CREDIT_MS`] at the rate, at least [`MIN_BURST_BYTES`],
/// and never more than the bucket.
pub const fn idle_credit_bytes(rate_bps: u64, burst_bytes: u64) -> u64 {
    let credit = at_least_min(rate_bps, IDLE_CREDIT_MS);
    if credit < burst_bytes {
        credit
    } else {
        burst_bytes
    }
}

/// Chooses how `limit` is enforced on a hook and builds its map value.
///
/// Pure: the caller supplies the hook and the device's root qdisc kind.
pub fn plan(limit: &RateLimit, hook: TcAttachType, root_qdisc: Option<&str>) -> QosConfig {
    if !limit.is_limited() {
        return QosConfig::UNLIMITED;
    }
    let rate = limit.rate_bps();
    let edt = matches!(hook, TcAttachType::Egress) && root_qdisc == Some("fq");
    if edt {
        let horizon = limit
            .burst_bytes()
            .unwrap_or(rate / 8 * DEFAULT_HORIZON_MS / 1_000);
        QosConfig::edt(rate, horizon)
    } else {
        let burst = limit.burst_bytes().map_or_else(
            || default_burst_bytes(rate),
            |b| b.max(min_burst_bytes(rate)),
        );
        QosConfig::police(rate, burst, idle_credit_bytes(rate, burst))
    }
}

const fn abi_direction(dir: Direction) -> abi::Direction {
    match dir {
        Direction::Ingress => abi::Direction::Ingress,
        Direction::Egress => abi::Direction::Egress,
    }
}

const fn hook_name(hook: TcAttachType) -> &'static str {
    match hook {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    }
}

/// The `cls_bpf` priority of the QoS filters: low numbers run first, and rate limits come
/// before anything else Sidelane attaches to the same hook.
pub const QOS_TC_PRIORITY: u16 = 10;

fn prog_pin(dir: &Path, dir_: Direction) -> PathBuf {
    dir.join(format!("prog_{}", abi_direction(dir_).program()))
}

/// Loads, attaches, configures and observes the QoS programs of every attachment on the node.
pub struct QosDataplane {
    root: PathBuf,
    probe: Box<dyn QdiscProbe + Send + Sync>,
}

impl QosDataplane {
    /// A dataplane whose pins live under `<pin_root>/qos` (`pin_root` is typically
    /// `/sys/fs/bpf/sidelane`); mounts bpffs at `/sys/fs/bpf` if needed.
    pub fn new(pin_root: impl Into<PathBuf>) -> Result<QosDataplane, DataplaneError> {
        let root = pin_root.into().join("qos");
        bpffs::ensure(&root)?;
        // The kernel's BTF is parsed now, not during the first pod's ADD.
        LazyLock::force(&LOADER);
        Ok(QosDataplane {
            root,
            probe: Box::new(NetlinkQdiscProbe),
        })
    }

    /// Attaches (the first time) or updates (map write only) the limits of `target`.
    pub fn apply(
        &self,
        target: &QosTarget,
        spec: &QosSpec,
    ) -> Result<AttachmentStatus, DataplaneError> {
        spec.validate()
            .map_err(|source| DataplaneError::InvalidSpec {
                target: target.to_string(),
                source,
            })?;
        let (id, ifindex, root_qdisc) = self.resolve(target, true)?;
        let dir = self.root.join(&id);
        let configs = Direction::ALL.map(|d| {
            (
                d,
                plan(spec.get(d), target.placement.hook(d), root_qdisc.as_deref()),
            )
        });

        if Direction::ALL.iter().all(|d| prog_pin(&dir, *d).exists()) {
            let mut config = open_array::<QosConfig>(&dir, CONFIG_MAP, target)?;
            for (d, cfg) in configs {
                write_config(&mut config, d, cfg, target)?;
            }
            info!(target = %target, %spec, "updated QoS limits");
        } else {
            if let Err(e) = Self::attach(target, &dir, &configs) {
                // Leave nothing half-made behind; report the original failure.
                if let Err(cleanup) = teardown(&dir, Some(target)) {
                    warn!(target = %target, error = %cleanup, "cleaning up a failed attach");
                }
                return Err(e);
            }
            info!(target = %target, %spec, id = %id, "attached QoS programs");
        }
        Self::read_status(target, &dir, id, ifindex)
    }

    /// Whether the pin directory is still on a mounted bpffs (someone may unmount it).
    pub fn ready(&self) -> Result<(), String> {
        if bpffs::is_bpffs(&self.root) {
            Ok(())
        } else {
            Err(format!(
                "the QoS pin directory {} is not on a mounted bpffs",
                self.root.display()
            ))
        }
    }

    /// Detaches and unpins `target`'s programs and maps; `Ok(false)` if none were attached.
    ///
    /// Best effort and complete: every step is attempted and every failure reported.
    pub fn detach(&self, target: &QosTarget) -> Result<bool, DataplaneError> {
        let (id, _, _) = match self.resolve(target, false) {
            Ok(found) => found,
            Err(DataplaneError::NoSuchInterface { .. }) => {
                // The device is gone, so its links are defunct: collect them.
                self.adopt()?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let dir = self.root.join(&id);
        if !dir.exists() {
            return Ok(false);
        }
        teardown(&dir, Some(target))?;
        info!(target = %target, id = %id, "detached QoS programs");
        Ok(true)
    }

    /// The configured limits, modes and counters of `target`.
    pub fn status(&self, target: &QosTarget) -> Result<AttachmentStatus, DataplaneError> {
        let (id, ifindex, _) = self.resolve(target, false)?;
        let dir = self.root.join(&id);
        Self::read_status(target, &dir, id, ifindex)
    }

    /// Takes back what a previous agent pinned: keeps attachments whose interface still exists
    /// and removes those whose interface (or whole namespace) is gone.
    pub fn adopt(&self) -> Result<AdoptReport, DataplaneError> {
        let mut report = AdoptReport::default();
        let entries = fs::read_dir(&self.root).map_err(|source| DataplaneError::Pin {
            op: "listing",
            path: self.root.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| DataplaneError::Pin {
                op: "listing",
                path: self.root.clone(),
                source,
            })?;
            let dir = entry.path();
            let id = entry.file_name().to_string_lossy().into_owned();
            if interface_exists(&id) {
                report.kept.push(id);
            } else {
                // One that cannot be torn down does not keep the others.
                match teardown(&dir, None) {
                    Ok(()) => {
                        info!(id = %id, "removed QoS attachment whose interface is gone");
                        report.removed.push(id);
                    }
                    Err(e) => report.failed.push(format!("{id}: {e}")),
                }
            }
        }
        report.kept.sort();
        report.removed.sort();
        Ok(report)
    }

    /// Resolves `target` to its pin id, ifindex and (if `probe_qdisc`) root qdisc kind.
    fn resolve(
        &self,
        target: &QosTarget,
        probe_qdisc: bool,
    ) -> Result<(String, u32, Option<String>), DataplaneError> {
        let netns_id = netns::namespace_id(target.netns.as_deref())?;
        let probe = &*self.probe;
        let ifname = target.ifname.as_str();
        let found = netns::run_in(target.netns.as_deref(), || {
            let Ok(ifindex) = nix::net::if_::if_nametoindex(ifname) else {
                return Ok(None);
            };
            let qdisc = if probe_qdisc {
                probe.root_kind(ifindex)?
            } else {
                None
            };
            Ok::<_, io::Error>(Some((ifindex, qdisc)))
        })?
        .map_err(|source| DataplaneError::Qdisc {
            target: target.to_string(),
            source,
        })?;
        let Some((ifindex, qdisc)) = found else {
            return Err(DataplaneError::NoSuchInterface {
                ifname: target.ifname.clone(),
                netns: target.netns.as_ref().map_or_else(
                    || "the agent's namespace".to_owned(),
                    |p| p.display().to_string(),
                ),
            });
        };
        debug!(target = %target, ifindex, root_qdisc = ?qdisc, "resolved QoS target");
        Ok((format!("{netns_id}-{ifindex}"), ifindex, qdisc))
    }

    fn attach(
        target: &QosTarget,
        dir: &Path,
        configs: &[(Direction, QosConfig); 2],
    ) -> Result<(), DataplaneError> {
        let name = target.to_string();
        let mut ebpf = load_object(dir, &name)?;
        {
            let map = ebpf
                .map_mut(CONFIG_MAP)
                .ok_or_else(|| DataplaneError::Load {
                    target: name.clone(),
                    source: format!("the object has no map {CONFIG_MAP}").into(),
                })?;
            let mut config: Array<&mut MapData, QosConfig> =
                Array::try_from(map).map_err(|e| map_error("opening", CONFIG_MAP, &name, e))?;
            // Configure before attaching: the first packet is already charged correctly.
            for (d, cfg) in configs {
                write_config(&mut config, *d, *cfg, target)?;
            }
        }
        for d in Direction::ALL {
            let program = abi_direction(d).program();
            let hook = target.placement.hook(d);
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or_else(|| DataplaneError::Load {
                    target: name.clone(),
                    source: format!("the object has no program {program}").into(),
                })?
                .try_into()
                .map_err(|e| load_error(&name, e))?;
            prog.load().map_err(|e| load_error(&name, e))?;
            prog.pin(prog_pin(dir, d))
                .map_err(|e| load_error(&name, e))?;
            let attach_error = |source| DataplaneError::Attach {
                program,
                hook: hook_name(hook),
                target: name.clone(),
                source,
            };
            let ifname = target.ifname.as_str();
            let link_id = netns::run_in(target.netns.as_deref(), || {
                // Fails harmlessly when the device already has one; a real problem surfaces
                // as the attach error below.
                if let Err(e) = tc::qdisc_add_clsact(ifname) {
                    debug!(ifname, error = %e, "adding clsact qdisc");
                }
                prog.attach_with_options(
                    ifname,
                    hook,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: QOS_TC_PRIORITY,
                        ..NlOptions::default()
                    }),
                )
            })?
            .map_err(|e| attach_error(boxed(e)))?;
            // Owned by the kernel from here on: the filter outlives this process.
            super::leave_attached(
                prog.take_link(link_id)
                    .map_err(|e| attach_error(boxed(e)))?,
            );
        }
        Ok(())
    }

    fn read_status(
        target: &QosTarget,
        dir: &Path,
        id: String,
        ifindex: u32,
    ) -> Result<AttachmentStatus, DataplaneError> {
        let config = open_array::<QosConfig>(dir, CONFIG_MAP, target)?;
        let counters = open_counters(dir, target)?;
        let name = target.to_string();
        let one = |d: Direction| -> Result<DirectionStatus, DataplaneError> {
            let idx = abi_direction(d).index();
            let cfg = config
                .get(&idx, 0)
                .map_err(|e| map_error("reading", CONFIG_MAP, &name, e))?;
            let per_cpu = counters
                .get(&idx, 0)
                .map_err(|e| map_error("reading", COUNTERS_MAP, &name, e))?;
            let sum = per_cpu
                .iter()
                .fold(QosCounters::default(), |acc, c| acc.merged(*c));
            Ok(direction_status(d, &cfg, sum))
        };
        Ok(AttachmentStatus {
            id,
            ifname: target.ifname.clone(),
            ifindex,
            ingress: one(Direction::Ingress)?,
            egress: one(Direction::Egress)?,
        })
    }
}

fn direction_status(direction: Direction, cfg: &QosConfig, c: QosCounters) -> DirectionStatus {
    let mode = Mode::from_abi(cfg.mode);
    let burst_bytes = if cfg.rate_bps == 0 {
        0
    } else {
        u64::try_from(u128::from(cfg.tolerance_ns) * u128::from(cfg.rate_bps) / 8_000_000_000)
            .unwrap_or(u64::MAX)
    };
    DirectionStatus {
        direction,
        limit: RateLimit {
            rate_mbps: cfg.rate_bps / 1_000_000,
            burst_mbit: None,
        },
        mode,
        burst_bytes,
        passed_packets: c.passed_packets,
        passed_bytes: c.passed_bytes,
        dropped_packets: c.dropped_packets,
        dropped_bytes: c.dropped_bytes,
    }
}

/// The one loader of every QoS object. `EbpfLoader::new` parses the kernel's BTF (megabytes of
/// `/sys/kernel/btf/vmlinux`) each time it is called: per attachment, that was most of an ADD's
/// CPU. The loader keeps it parsed; each load only names its own pin directory.
static LOADER: LazyLock<Mutex<EbpfLoader<'static>>> =
    LazyLock::new(|| Mutex::new(EbpfLoader::new()));

fn load_object(pin_dir: &Path, name: &str) -> Result<Ebpf, DataplaneError> {
    let bytes = object::qos()?;
    fs::create_dir_all(pin_dir).map_err(|source| DataplaneError::Pin {
        op: "creating pin directory",
        path: pin_dir.to_owned(),
        source,
    })?;
    LOADER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .default_map_pin_directory(pin_dir)
        .load(bytes)
        .map_err(|e| load_error(name, e))
}

fn open_pinned(
    dir: &Path,
    map: &'static str,
    target: &QosTarget,
) -> Result<MapData, DataplaneError> {
    MapData::from_pin(dir.join(map))
        .map_err(|e| map_error("opening pinned", map, &target.to_string(), e))
}

fn open_array<V: aya::Pod>(
    dir: &Path,
    map: &'static str,
    target: &QosTarget,
) -> Result<Array<MapData, V>, DataplaneError> {
    Array::try_from(Map::Array(open_pinned(dir, map, target)?))
        .map_err(|e| map_error("opening", map, &target.to_string(), e))
}

fn open_counters(
    dir: &Path,
    target: &QosTarget,
) -> Result<PerCpuArray<MapData, QosCounters>, DataplaneError> {
    PerCpuArray::try_from(Map::PerCpuArray(open_pinned(dir, COUNTERS_MAP, target)?))
        .map_err(|e| map_error("opening", COUNTERS_MAP, &target.to_string(), e))
}

fn write_config<T: std::borrow::BorrowMut<MapData>>(
    config: &mut Array<T, QosConfig>,
    d: Direction,
    cfg: QosConfig,
    target: &QosTarget,
) -> Result<(), DataplaneError> {
    config
        .set(abi_direction(d).index(), cfg, 0)
        .map_err(|e| map_error("writing", CONFIG_MAP, &target.to_string(), e))
}

/// Whether the interface of attachment `id` (`<netns-inode>-<ifindex>`) still exists.
fn interface_exists(id: &str) -> bool {
    let Some((ino, ifindex)) = id
        .split_once('-')
        .and_then(|(ino, idx)| Some((ino.parse::<u64>().ok()?, idx.parse::<u32>().ok()?)))
    else {
        return false;
    };
    let Some(netns) = find_namespace(ino) else {
        return false;
    };
    netns::run_in(Some(&netns), || ifindex_exists(ifindex)).unwrap_or(false)
}

/// Whether an interface with `ifindex` exists in the calling thread's network namespace.
///
/// Calls `if_indextoname(3)` itself: nix 0.31's wrapper reads a failed lookup (a null return)
/// as an empty name.
fn ifindex_exists(ifindex: u32) -> bool {
    ifindex_name(ifindex).is_some()
}

/// The name of the interface with `ifindex` in the calling thread's network namespace.
fn ifindex_name(ifindex: u32) -> Option<String> {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` is IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `name`.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// A path to the network namespace with inode `ino`: a bind mount under `/run/netns`, or any
/// process's `ns/net`. `None` when no such namespace exists any more.
fn find_namespace(ino: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let matches = |p: &Path| fs::metadata(p).is_ok_and(|m| m.ino() == ino);
    let own = PathBuf::from("/proc/self/ns/net");
    if matches(&own) {
        return Some(own);
    }
    for dir in ["/run/netns", "/var/run/netns"] {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if matches(&e.path()) {
                    return Some(e.path());
                }
            }
        }
    }
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let p = e.path().join("ns/net");
        (e.file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
            && matches(&p))
        .then_some(p)
    })
}

/// Detaches the filters (when the target's device still exists), unpins everything in an
/// attachment's directory and removes the directory. Goes on past failures and reports them all.
fn teardown(dir: &Path, target: Option<&QosTarget>) -> Result<(), DataplaneError> {
    let what = target.map_or_else(|| dir.display().to_string(), ToString::to_string);
    let mut errors = Vec::new();
    if let Some(target) = target {
        let ifname = target.ifname.as_str();
        let placement = target.placement;
        match netns::run_in(target.netns.as_deref(), || {
            Direction::ALL
                .into_iter()
                .filter_map(|d| {
                    let program = abi_direction(d).program();
                    match tc::qdisc_detach_program(ifname, placement.hook(d), program) {
                        Ok(()) => None,
                        Err(tc::TcError::IoError(e))
                            if matches!(e.kind(), io::ErrorKind::NotFound) =>
                        {
                            None
                        }
                        Err(e) => Some(format!("detaching {program}: {e}")),
                    }
                })
                .collect::<Vec<_>>()
        }) {
            Ok(failures) => errors.extend(failures),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(format!("listing {}: {e}", dir.display()));
            Vec::new()
        }
    };
    for path in entries {
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            errors.push(format!("unpinning {}: {e}", path.display()));
        }
    }
    if let Err(e) = fs::remove_dir(dir)
        && e.kind() != io::ErrorKind::NotFound
    {
        errors.push(format!("removing {}: {e}", dir.display()));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::Teardown {
            target: what,
            errors,
        })
    }
}

/// A private, unattached copy of the QoS object, for `BPF_PROG_TEST_RUN`: unit tests of the
/// programs' decisions and the per-packet cost benchmark. Its pins live in a scratch directory
/// under bpffs that is removed on drop.
pub struct QosProgramsUnderTest {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

impl QosProgramsUnderTest {
    /// Loads both programs with every direction unlimited.
    pub fn load() -> Result<QosProgramsUnderTest, DataplaneError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let pin_dir = PathBuf::from(bpffs::BPFFS).join(format!(
            "sidelane-test-run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        bpffs::ensure(&pin_dir)?;
        let mut ebpf = load_object(&pin_dir, "programs under test")?;
        for d in Direction::ALL {
            let program = abi_direction(d).program();
            let prog: &mut SchedClassifier = ebpf
                .program_mut(program)
                .ok_or_else(|| DataplaneError::Load {
                    target: "programs under test".to_owned(),
                    source: format!("the object has no program {program}").into(),
                })?
                .try_into()
                .map_err(|e| load_error("programs under test", e))?;
            prog.load()
                .map_err(|e| load_error("programs under test", e))?;
        }
        Ok(QosProgramsUnderTest { ebpf, pin_dir })
    }

    /// Writes `dir`'s configuration.
    pub fn configure(&mut self, d: Direction, cfg: QosConfig) -> Result<(), DataplaneError> {
        let map = self.ebpf.map_mut(CONFIG_MAP).ok_or_else(|| {
            map_error(
                "opening",
                CONFIG_MAP,
                "programs under test",
                io::Error::other("missing"),
            )
        })?;
        let mut config: Array<&mut MapData, QosConfig> = Array::try_from(map)
            .map_err(|e| map_error("opening", CONFIG_MAP, "programs under test", e))?;
        config
            .set(abi_direction(d).index(), cfg, 0)
            .map_err(|e| map_error("writing", CONFIG_MAP, "programs under test", e))
    }

    /// `dir`'s counters summed over CPUs.
    pub fn counters(&self, d: Direction) -> Result<QosCounters, DataplaneError> {
        let map = self.ebpf.map(COUNTERS_MAP).ok_or_else(|| {
            map_error(
                "opening",
                COUNTERS_MAP,
                "programs under test",
                io::Error::other("missing"),
            )
        })?;
        let counters: PerCpuArray<&MapData, QosCounters> = PerCpuArray::try_from(map)
            .map_err(|e| map_error("opening", COUNTERS_MAP, "programs under test", e))?;
        let per_cpu = counters
            .get(&abi_direction(d).index(), 0)
            .map_err(|e| map_error("reading", COUNTERS_MAP, "programs under test", e))?;
        Ok(per_cpu
            .iter()
            .fold(QosCounters::default(), |acc, c| acc.merged(*c)))
    }

    /// Runs the program charging `dir` on `packet`, `repeat` times.
    pub fn run(
        &self,
        d: Direction,
        packet: &[u8],
        ctx: &SkBuffCtx,
        repeat: u32,
    ) -> Result<RunResult, DataplaneError> {
        let program = abi_direction(d).program();
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or_else(|| DataplaneError::Load {
                target: "programs under test".to_owned(),
                source: format!("the object has no program {program}").into(),
            })?
            .try_into()
            .map_err(|e| load_error("programs under test", e))?;
        test_run::run(prog, program, packet, ctx, repeat)
    }
}

impl Drop for QosProgramsUnderTest {
    fn drop(&mut self) {
        if let Err(e) = teardown(&self.pin_dir, None) {
            warn!(error = %e, "removing the scratch pins of the programs under test");
        }
    }
}

/// What one program costs per packet, as `BPF_PROG_TEST_RUN` measures it.
#[derive(Clone, Copy, Debug)]
pub struct ProgramCost {
    /// Mean time per test run of the ingress (into the pod) program, ns.
    pub ingress_raw_ns: f64,
    /// Mean time per test run of the egress (out of the pod) program, ns.
    pub egress_raw_ns: f64,
    /// Mean time per test run of a program that only returns: the test-run loop's own cost, ns.
    pub harness_ns: f64,
}

impl ProgramCost {
    /// The ingress program's own cost: raw minus the harness.
    pub fn ingress_ns(&self) -> f64 {
        (self.ingress_raw_ns - self.harness_ns).max(0.0)
    }

    /// The egress program's own cost: raw minus the harness.
    pub fn egress_ns(&self) -> f64 {
        (self.egress_raw_ns - self.harness_ns).max(0.0)
    }
}

/// Measures each program's cost per packet: a 1514-byte UDP frame through a policer at 10 Gbit/s
/// (the common case: a limited direction, packet within budget), one million runs each, and the
/// harness baseline in the same run (see [`test_run::harness_baseline`]). The best of three
/// rounds is kept, to shed interference from other work on the machine.
pub fn measure_prog_cost() -> Result<ProgramCost, DataplaneError> {
    const RUNS: u32 = 1_000_000;
    let mut progs = QosProgramsUnderTest::load()?;
    let frame = test_run::ipv4_udp_frame(1514);
    let (rate, burst) = (10_000_000_000, default_burst_bytes(10_000_000_000));
    for d in Direction::ALL {
        progs.configure(
            d,
            QosConfig::police(rate, burst, idle_credit_bytes(rate, burst)),
        )?;
    }
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per run are small")]
    let ns = |d: std::time::Duration| d.as_nanos() as f64;
    let mut best = ProgramCost {
        ingress_raw_ns: f64::INFINITY,
        egress_raw_ns: f64::INFINITY,
        harness_ns: f64::INFINITY,
    };
    for _ in 0..3 {
        let ctx = SkBuffCtx::default();
        let ingress = ns(progs.run(Direction::Ingress, &frame, &ctx, RUNS)?.per_run);
        let egress = ns(progs.run(Direction::Egress, &frame, &ctx, RUNS)?.per_run);
        let harness = ns(test_run::harness_baseline(&frame, RUNS)?);
        best.ingress_raw_ns = best.ingress_raw_ns.min(ingress);
        best.egress_raw_ns = best.egress_raw_ns.min(egress);
        best.harness_ns = best.harness_ns.min(harness);
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_side_veth_sees_traffic_into_the_pod_on_its_egress_hook() {
        assert!(matches!(
            Placement::HostPeer.hook(Direction::Ingress),
            TcAttachType::Egress
        ));
        assert!(matches!(
            Placement::HostPeer.hook(Direction::Egress),
            TcAttachType::Ingress
        ));
    }

    #[test]
    fn a_device_inside_the_pod_sees_traffic_into_the_pod_on_its_ingress_hook() {
        assert!(matches!(
            Placement::PodDevice.hook(Direction::Ingress),
            TcAttachType::Ingress
        ));
        assert!(matches!(
            Placement::PodDevice.hook(Direction::Egress),
            TcAttachType::Egress
        ));
    }

    #[test]
    fn an_egress_hook_with_fq_paces_with_edt() {
        let cfg = plan(&RateLimit::mbps(100), TcAttachType::Egress, Some("fq"));
        assert_eq!(cfg.mode, MODE_EDT);
        assert_eq!(cfg.rate_bps, 100_000_000);
        // Default horizon: two seconds at the rate.
        assert_eq!(cfg.tolerance_ns, 2_000_000_000);
    }

    #[test]
    fn without_fq_or_on_an_ingress_hook_the_limit_is_policed() {
        for (hook, qdisc) in [
            (TcAttachType::Egress, Some("noqueue")),
            (TcAttachType::Egress, None),
            (TcAttachType::Ingress, Some("fq")),
        ] {
            assert_eq!(plan(&RateLimit::mbps(100), hook, qdisc).mode, MODE_POLICE);
        }
    }

    #[test]
    fn zero_rate_plans_unlimited() {
        assert_eq!(
            plan(&RateLimit::UNLIMITED, TcAttachType::Egress, Some("fq")),
            QosConfig::UNLIMITED
        );
    }

    #[test]
    fn an_explicit_burst_in_megabits_overrides_the_default() {
        let limit = RateLimit {
            rate_mbps: 8,
            burst_mbit: Some(2),
        };
        let cfg = plan(&limit, TcAttachType::Ingress, None);
        // 2 Mbit = 250 000 bytes = 250 ms at 8 Mbit/s; idle credit 20 ms is 20 000 bytes,
        // raised to the 128 KiB floor.
        assert_eq!(cfg.tolerance_ns, 250_000_000);
        assert_eq!(cfg.idle_credit_ns, 131_072_000);
    }

    #[test]
    fn an_explicit_burst_below_twenty_milliseconds_is_raised_to_it() {
        let limit = RateLimit {
            rate_mbps: 1000,
            burst_mbit: Some(1),
        };
        let cfg = plan(&limit, TcAttachType::Ingress, None);
        assert_eq!(cfg.tolerance_ns, 20_000_000);
    }

    #[test]
    fn an_explicit_burst_below_two_gso_packets_is_raised_to_it() {
        let limit = RateLimit {
            rate_mbps: 8,
            burst_mbit: Some(0),
        };
        let cfg = plan(&limit, TcAttachType::Ingress, None);
        assert_eq!(cfg.tolerance_ns, 131_072_000);
    }

    #[test]
    fn the_default_bucket_holds_three_hundred_milliseconds_and_restarts_with_twenty() {
        assert_eq!(default_burst_bytes(1_000_000_000), 37_500_000);
        assert_eq!(idle_credit_bytes(1_000_000_000, 37_500_000), 2_500_000);
        assert_eq!(default_burst_bytes(1_000_000), MIN_BURST_BYTES);
        assert_eq!(idle_credit_bytes(10_000_000, 375_000), MIN_BURST_BYTES);
    }

    #[test]
    fn status_reports_the_effective_burst_in_bytes() {
        let cfg = QosConfig::police(100_000_000, 250_000, 250_000);
        let s = direction_status(Direction::Egress, &cfg, QosCounters::default());
        assert_eq!(s.mode, Mode::Police);
        assert_eq!(s.limit.rate_mbps, 100);
        assert_eq!(s.burst_bytes, 250_000);
    }
}
