//! The same-node fast path: one object per node (`sidelane-fastpath`), its maps pinned under
//! `<pin root>/fastpath/` and shared by every OVN-backed attachment, so an agent restart changes
//! nothing on the wire and the restarted agent finds every entry where it was.
//!
//! For each attachment the agent attaches `sl_fastpath` to the TC ingress hook of its host end
//! (after the QoS policer, at a later priority), records what may leave it ([`Source`]) and, when
//! its Subnet allows the fast path, publishes its addresses as endpoints ([`Endpoint`]): on its
//! switch, and, when its Subnet is routed on the fast path ([`PortRoute`]), in its Vpc's routing
//! domain too, where frames other Subnets of the Vpc send to their gateway find it. On a
//! node whose OVS runs the userspace datapath, OVS reads a second veth (`<cid>_<if>_p`, whose
//! peer `<cid>_<if>_o` is where frames the fast path does not take are redirected), because that
//! datapath's packet socket sees every frame of the device it reads *before* TC ingress: a frame
//! redirected from a device OVS reads would be delivered twice.
//!
//! Everything is keyed by ifindex in the namespace that holds the host ends.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    },
    util::nr_cpus,
};
use sidelane_agent_common::fastpath::{
    COUNTERS_MAP, DIRECT_IFINDEXES, DOMAIN_OFF, ENDPOINT_ISOLATED, ENDPOINT_POLICED, ENDPOINTS_MAP,
    Endpoint, EndpointKey, FastpathCounters, LAYOUTS, MAX_ATTACHMENTS, PAIRS_MAP, PROG_FORWARD,
    PROG_TO_POD, ROUTED_MAP, SOURCE_HAS_V4, SOURCE_HAS_V6, SOURCE_IN_USE, SOURCE_ISOLATED,
    SOURCES_DIRECT_MAP, SOURCES_MAP, Source, TO_POD_MAP,
};
use sidelane_api::security_group::Group;
use tracing::{debug, info};

use super::{
    DataplaneError, boxed, bpffs, load_error, map_error, object,
    test_run::{self, RunResult, SkBuffCtx},
};
use crate::netns;

/// The fast path's TC priority: after the QoS policer (`QOS_TC_PRIORITY`, 10), so the sender's
/// egress limit charges a frame before the fast path takes it.
pub const FASTPATH_TC_PRIORITY: u16 = 20;

/// The switch number that is never an endpoint's: a source on it always misses (the fast path
/// is off for its Subnet, or the pod has security groups).
pub const SWITCH_OFF: u32 = 0;

/// A logical switch's number in the maps: FNV-1a of its name (never [`SWITCH_OFF`]).
pub fn switch_id(name: &str) -> u32 {
    name_id(name, SWITCH_OFF)
}

/// A number for a name in the maps (FNV-1a), never `off`: switches and routing domains.
fn name_id(name: &str, off: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == off { off.wrapping_add(1) } else { h }
}

/// A Vpc's routing domain in the maps: FNV-1a of its name (never [`DOMAIN_OFF`]).
pub fn domain_id(vpc: &str) -> u32 {
    name_id(vpc, DOMAIN_OFF)
}

/// How an attachment's Subnet is routed on the fast path: within its Vpc's domain, behind the
/// router port whose MAC its pods know as their gateway's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRoute {
    /// The Vpc's routing domain ([`domain_id`]).
    pub domain: u32,
    /// The MAC of the Vpc router's port on the attachment's switch.
    pub gateway_mac: [u8; 6],
}

/// The fast path's two endpoint tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    /// By switch: frames switched between pods of one Subnet ([`ENDPOINTS_MAP`]).
    Switched,
    /// By routing domain: frames routed between Subnets of one Vpc ([`ROUTED_MAP`]).
    Routed,
}

impl Table {
    /// Both, in index order.
    pub const ALL: [Table; 2] = [Table::Switched, Table::Routed];

    const fn index(self) -> usize {
        match self {
            Table::Switched => 0,
            Table::Routed => 1,
        }
    }

    /// The map's name.
    pub const fn map_name(self) -> &'static str {
        match self {
            Table::Switched => ENDPOINTS_MAP,
            Table::Routed => ROUTED_MAP,
        }
    }
}

/// One attachment as the fast path sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastpathPort {
    /// The namespace of the host ends (`None`: the agent's own).
    pub netns: Option<PathBuf>,
    /// The host end of the pod's veth.
    pub host_ifname: String,
    /// With the userspace datapath: the device frames for OVS are redirected to.
    pub ovs_ifname: Option<String>,
    /// The logical switch's number ([`switch_id`]), or [`SWITCH_OFF`].
    pub switch: u32,
    /// The attachment's MAC.
    pub mac: [u8; 6],
    /// Its addresses.
    pub ips: Vec<IpAddr>,
    /// Whether it has an ingress limit (delivered through its host end's egress hook).
    pub policed: bool,
    /// Whether other pods may reach it on the fast path.
    pub published: bool,
    /// The security groups it joins: with any, it reaches and is reached on the fast path only
    /// by peers whose traffic with it OVN passes whole.
    pub groups: Vec<String>,
}

/// The node's fast-path object and maps.
pub struct FastpathDataplane {
    ebpf: Ebpf,
    sources: HashMap<MapData, u32, Source>,
    sources_direct: Array<MapData, Source>,
    /// By [`Table::index`].
    endpoints: [HashMap<MapData, EndpointKey, Endpoint>; 2],
    to_pod: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, FastpathCounters>,
    pub(super) pairs: HashMap<MapData, sidelane_agent_common::fastpath::PairKey, u32>,
    /// Each attachment on the fast path, by host-end ifindex (kept in memory: an agent that
    /// restarts learns the groups again from its records).
    pub(super) members: BTreeMap<u32, super::pairs::Member>,
    /// The security groups as last read (`None`: not read yet, so no isolated pair passes).
    pub(super) groups: Option<BTreeMap<String, Group>>,
    /// The routed Subnets by switch number, as last handed on (`None`: not read yet, so
    /// nothing is routed).
    pub(super) routes: Option<BTreeMap<u32, PortRoute>>,
    /// What the maps hold, mirrored in memory (this is their only writer), so that an ADD or a
    /// DEL reads nothing whole: no 16,384-entry array scan per call, and no cost that grows
    /// with the attachments already on the node.
    mirror: Mirror,
}

/// The fast-path maps' entries, by host-end ifindex.
#[derive(Default)]
struct Mirror {
    /// Source entries in use.
    sources: BTreeMap<u32, Source>,
    /// The endpoint keys leading to each host end, by [`Table::index`].
    endpoints: [BTreeMap<u32, Vec<EndpointKey>>; 2],
    /// The OVS-side ifindexes whose frames go to each host end (`SL_FP_TO_POD`).
    to_pod: BTreeMap<u32, Vec<u32>>,
}

/// Refuses maps pinned under `dir` whose layout is not this version's ([`LAYOUTS`]): aya
/// reuses a pinned map by name whatever its shape, and the programs would then be refused by
/// the verifier at best.
fn check_pins(dir: &Path) -> Result<(), DataplaneError> {
    let shape = |key: u32, value: u32, entries: u32| {
        format!("{key}-byte keys, {value}-byte values, {entries} entries")
    };
    for layout in LAYOUTS {
        let path = dir.join(layout.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path)
            .map_err(|e| map_error("reading", layout.name, "the fast path's pins", e))?;
        let found = (info.key_size(), info.value_size(), info.max_entries());
        if found != (layout.key_size, layout.value_size, layout.max_entries) {
            return Err(DataplaneError::StalePin {
                map: layout.name,
                path,
                dir: dir.to_path_buf(),
                found: shape(found.0, found.1, found.2),
                wanted: shape(layout.key_size, layout.value_size, layout.max_entries),
            });
        }
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, DataplaneError> {
    ebpf.take_map(name).ok_or_else(|| {
        load_error(
            "the fast path",
            std::io::Error::other(format!("the object has no map {name}")),
        )
    })
}

pub(super) fn ifindex_in(
    netns: Option<&Path>,
    ifname: &str,
) -> Result<Option<u32>, DataplaneError> {
    let name = ifname.to_owned();
    Ok(netns::run_in(netns, move || {
        nix::net::if_::if_nametoindex(name.as_str()).ok()
    })?)
}

fn host_desc(port: &FastpathPort) -> String {
    match &port.netns {
        Some(ns) => format!("{} in {}", port.host_ifname, ns.display()),
        None => port.host_ifname.clone(),
    }
}

impl FastpathDataplane {
    /// Loads the object, reusing the maps pinned under `<pin_root>/fastpath/` (a restarted agent
    /// finds every entry in place).
    pub fn open(pin_root: &Path) -> Result<FastpathDataplane, DataplaneError> {
        let dir = pin_root.join("fastpath");
        bpffs::ensure(&dir)?;
        fs::create_dir_all(&dir).map_err(|source| DataplaneError::Pin {
            op: "creating pin directory",
            path: dir.clone(),
            source,
        })?;
        check_pins(&dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&dir)
            .load(object::fastpath()?)
            .map_err(|e| load_error("the fast path", e))?;
        for name in [PROG_FORWARD, PROG_TO_POD] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| {
                    load_error(
                        "the fast path",
                        std::io::Error::other(format!("the object has no program {name}")),
                    )
                })?
                .try_into()
                .map_err(|e| load_error("the fast path", e))?;
            prog.load().map_err(|e| load_error("the fast path", e))?;
        }
        let sources = HashMap::try_from(take_map(&mut ebpf, SOURCES_MAP)?)
            .map_err(|e| map_error("opening", SOURCES_MAP, "the fast path", e))?;
        let sources_direct = Array::try_from(take_map(&mut ebpf, SOURCES_DIRECT_MAP)?)
            .map_err(|e| map_error("opening", SOURCES_DIRECT_MAP, "the fast path", e))?;
        let mut endpoint_map = |table: Table| {
            HashMap::try_from(take_map(&mut ebpf, table.map_name())?)
                .map_err(|e| map_error("opening", table.map_name(), "the fast path", e))
        };
        let endpoints = [endpoint_map(Table::Switched)?, endpoint_map(Table::Routed)?];
        let to_pod = HashMap::try_from(take_map(&mut ebpf, TO_POD_MAP)?)
            .map_err(|e| map_error("opening", TO_POD_MAP, "the fast path", e))?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, COUNTERS_MAP)?)
            .map_err(|e| map_error("opening", COUNTERS_MAP, "the fast path", e))?;
        let pairs = HashMap::try_from(take_map(&mut ebpf, PAIRS_MAP)?)
            .map_err(|e| map_error("opening", PAIRS_MAP, "the fast path", e))?;
        info!(pins = %dir.display(), "loaded the fast path");
        let mut dp = FastpathDataplane {
            ebpf,
            sources,
            sources_direct,
            endpoints,
            to_pod,
            counters,
            pairs,
            members: BTreeMap::new(),
            groups: None,
            routes: None,
            mirror: Mirror::default(),
        };
        dp.mirror = dp.read_maps()?;
        dp.members = FastpathDataplane::members_of_sources(dp.all_sources());
        Ok(dp)
    }

    fn free_slot(&self, reuse_for: u32) -> Result<u32, DataplaneError> {
        if let Some(src) = self.mirror.sources.get(&reuse_for) {
            return Ok(src.slot);
        }
        let used: BTreeSet<u32> = self.mirror.sources.values().map(|s| s.slot).collect();
        (0..MAX_ATTACHMENTS)
            .find(|s| !used.contains(s))
            .ok_or_else(|| {
                map_error(
                    "allocating a counter slot in",
                    COUNTERS_MAP,
                    "the fast path",
                    std::io::Error::other(format!("all {MAX_ATTACHMENTS} slots are in use")),
                )
            })
    }

    fn attach_program(
        &mut self,
        program: &'static str,
        netns: Option<&Path>,
        ifname: &str,
    ) -> Result<(), DataplaneError> {
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| {
                load_error(
                    ifname,
                    std::io::Error::other(format!("no program {program}")),
                )
            })?
            .try_into()
            .map_err(|e| load_error(ifname, e))?;
        let attach_error = |source| DataplaneError::Attach {
            program,
            hook: "ingress",
            target: ifname.to_owned(),
            source,
        };
        let link = netns::run_in(netns, || {
            if let Err(e) = tc::qdisc_add_clsact(ifname) {
                debug!(ifname, error = %e, "adding clsact qdisc");
            }
            // A repeated attach replaces, never stacks.
            let _ = tc::qdisc_detach_program(ifname, TcAttachType::Ingress, program);
            prog.attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::Netlink(NlOptions {
                    priority: FASTPATH_TC_PRIORITY,
                    ..NlOptions::default()
                }),
            )
        })?
        .map_err(|e| attach_error(boxed(e)))?;
        // Owned by the kernel from here on: the filter outlives this process.
        super::leave_attached(prog.take_link(link).map_err(|e| attach_error(boxed(e)))?);
        Ok(())
    }

    /// Puts an attachment on the fast path: its source entry, its endpoints (if published) and
    /// the programs on its devices. Repeating it updates in place.
    pub fn attach(&mut self, port: &FastpathPort) -> Result<(), DataplaneError> {
        let target = host_desc(port);
        let netns = port.netns.as_deref();
        let host = ifindex_in(netns, &port.host_ifname)?.ok_or_else(|| {
            DataplaneError::NoSuchInterface {
                ifname: port.host_ifname.clone(),
                netns: netns.map_or_else(
                    || "the agent's namespace".to_owned(),
                    |p| p.display().to_string(),
                ),
            }
        })?;
        let ovs =
            match &port.ovs_ifname {
                Some(name) => Some(ifindex_in(netns, name)?.ok_or_else(|| {
                    DataplaneError::NoSuchInterface {
                        ifname: name.clone(),
                        netns: netns.map_or_else(
                            || "the agent's namespace".to_owned(),
                            |p| p.display().to_string(),
                        ),
                    }
                })?),
                None => None,
            };
        let slot = self.free_slot(host)?;
        let zero = PerCpuValues::try_from(vec![
            FastpathCounters::default();
            nr_cpus().map_err(|(_, e)| map_error(
                "counting CPUs for",
                COUNTERS_MAP,
                &target,
                e
            ))?
        ])
        .map_err(|e| map_error("writing", COUNTERS_MAP, &target, e))?;
        if self.source(host)?.is_none() {
            self.counters
                .set(slot, zero, 0)
                .map_err(|e| map_error("resetting", COUNTERS_MAP, &target, e))?;
        }
        let isolated = !port.groups.is_empty();
        let route = self.route_of(port.switch);
        let mut src = Source {
            switch: port.switch,
            slot,
            miss_ifindex: ovs.unwrap_or(0),
            mac: port.mac,
            flags: SOURCE_IN_USE | if isolated { SOURCE_ISOLATED } else { 0 },
            domain: route.map_or(DOMAIN_OFF, |r| r.domain),
            gw_mac: route.map_or([0; 6], |r| r.gateway_mac),
            ..Source::default()
        };
        for ip in &port.ips {
            match ip {
                IpAddr::V4(a) => {
                    src.flags |= SOURCE_HAS_V4;
                    src.ip4 = a.octets();
                }
                IpAddr::V6(a) => {
                    src.flags |= SOURCE_HAS_V6;
                    src.ip6 = a.octets();
                }
            }
        }
        self.remove_endpoints_of(host, &target)?;
        if port.published {
            self.publish(host, port, isolated, route, &target)?;
        }
        self.put_source(host, src)?;
        self.join(host, port, &target)?;
        if let (Some(ovs), Some(name)) = (ovs, &port.ovs_ifname) {
            self.to_pod
                .insert(ovs, host, 0)
                .map_err(|e| map_error("writing", TO_POD_MAP, &target, e))?;
            let ovs_ends = self.mirror.to_pod.entry(host).or_default();
            if !ovs_ends.contains(&ovs) {
                ovs_ends.push(ovs);
            }
            self.attach_program(PROG_TO_POD, netns, name)?;
        }
        self.attach_program(PROG_FORWARD, netns, &port.host_ifname)?;
        info!(target = %target, switch = port.switch, published = port.published,
              policed = port.policed, routed = route.is_some(), "fast path on");
        Ok(())
    }

    /// Publishes `port`'s addresses as endpoints of `host`: on its switch, and in its routing
    /// domain when its Subnet is routed.
    fn publish(
        &mut self,
        host: u32,
        port: &FastpathPort,
        isolated: bool,
        route: Option<PortRoute>,
        target: &str,
    ) -> Result<(), DataplaneError> {
        let ep = Endpoint {
            ifindex: host,
            flags: if port.policed { ENDPOINT_POLICED } else { 0 }
                | if isolated { ENDPOINT_ISOLATED } else { 0 },
            mac: port.mac,
            ..Endpoint::default()
        };
        let scopes = [
            (
                Table::Switched,
                (port.switch != SWITCH_OFF).then_some((port.switch, [0; 6])),
            ),
            (Table::Routed, route.map(|r| (r.domain, r.gateway_mac))),
        ];
        for (table, scope) in scopes {
            let Some((scope, router_mac)) = scope else {
                continue;
            };
            for ip in &port.ips {
                let ep = Endpoint { router_mac, ..ep };
                self.insert_endpoint(table, endpoint_key(scope, *ip), ep, target)?;
            }
        }
        Ok(())
    }

    fn remove_endpoints_of(&mut self, host: u32, target: &str) -> Result<(), DataplaneError> {
        for table in Table::ALL {
            self.remove_table_endpoints_of(table, host, target)?;
        }
        Ok(())
    }

    pub(super) fn remove_table_endpoints_of(
        &mut self,
        table: Table,
        host: u32,
        target: &str,
    ) -> Result<(), DataplaneError> {
        let i = table.index();
        let mut keys = self.mirror.endpoints[i].remove(&host).unwrap_or_default();
        while let Some(k) = keys.pop() {
            match self.endpoints[i].remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => {
                    // Still there: keep what is left in the mirror.
                    keys.push(k);
                    self.mirror.endpoints[i].insert(host, keys);
                    return Err(map_error("removing from", table.map_name(), target, e));
                }
            }
        }
        Ok(())
    }

    /// Takes an attachment off the fast path (its endpoints first, so nothing is redirected to
    /// it any more). Idempotent; an interface already gone sweeps every vanished one.
    pub fn detach(
        &mut self,
        netns: Option<&Path>,
        host_ifname: &str,
    ) -> Result<(), DataplaneError> {
        let Some(host) = ifindex_in(netns, host_ifname)? else {
            return self.sweep(netns);
        };
        self.forget(host, host_ifname)
    }

    fn forget(&mut self, host: u32, target: &str) -> Result<(), DataplaneError> {
        self.remove_endpoints_of(host, target)?;
        self.leave(host, target)?;
        for o in self.mirror.to_pod.remove(&host).unwrap_or_default() {
            let _ = self.to_pod.remove(&o);
        }
        if host < DIRECT_IFINDEXES {
            self.sources_direct
                .set(host, Source::default(), 0)
                .map_err(|e| map_error("clearing", SOURCES_DIRECT_MAP, target, e))?;
        } else {
            match self.sources.remove(&host) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_error("removing from", SOURCES_MAP, target, e)),
            }
        }
        self.mirror.sources.remove(&host);
        Ok(())
    }

    /// Removes the entries of every interface that no longer exists in `netns`.
    pub fn sweep(&mut self, netns: Option<&Path>) -> Result<(), DataplaneError> {
        let mut endpoint_hosts: Vec<u32> = self
            .mirror
            .endpoints
            .iter()
            .flat_map(|t| t.keys().copied())
            .collect();
        endpoint_hosts.extend(self.mirror.sources.keys().copied());
        endpoint_hosts.extend(self.mirror.to_pod.keys().copied());
        endpoint_hosts.sort_unstable();
        endpoint_hosts.dedup();
        let alive: Vec<bool> = netns::run_in(netns, || {
            endpoint_hosts
                .iter()
                .map(|i| {
                    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
                    // SAFETY: `name` is IF_NAMESIZE bytes, as if_indextoname requires.
                    !unsafe { libc::if_indextoname(*i, name.as_mut_ptr()) }.is_null()
                })
                .collect()
        })?;
        for (host, alive) in endpoint_hosts.iter().zip(alive) {
            if !alive {
                self.forget(*host, &format!("ifindex {host}"))?;
                debug!(ifindex = host, "swept a vanished fast-path attachment");
            }
        }
        Ok(())
    }

    /// The counters of an attachment (summed over CPUs); zero if it is not on the fast path.
    pub fn counters(
        &self,
        netns: Option<&Path>,
        host_ifname: &str,
    ) -> Result<FastpathCounters, DataplaneError> {
        let Some(host) = ifindex_in(netns, host_ifname)? else {
            return Ok(FastpathCounters::default());
        };
        let Some(src) = self.source(host)? else {
            return Ok(FastpathCounters::default());
        };
        let values = self
            .counters
            .get(&src.slot, 0)
            .map_err(|e| map_error("reading", COUNTERS_MAP, host_ifname, e))?;
        Ok(values
            .iter()
            .fold(FastpathCounters::default(), |acc, c| acc.merged(*c)))
    }

    /// Marks the endpoints of `host_ifname` as policed (frames go through the host end, where
    /// the pod's ingress limit is) or not (straight into the pod's namespace); returns how many
    /// entries changed. A rate set or removed on a running pod changes this.
    pub fn set_policed(
        &mut self,
        netns: Option<&Path>,
        host_ifname: &str,
        policed: bool,
    ) -> Result<usize, DataplaneError> {
        let Some(host) = ifindex_in(netns, host_ifname)? else {
            return Ok(0);
        };
        self.set_endpoint_flag(host, ENDPOINT_POLICED, policed, host_ifname)
    }

    /// Sets or clears `flag` on every endpoint leading to `host`; how many entries changed.
    fn set_endpoint_flag(
        &mut self,
        host: u32,
        flag: u32,
        on: bool,
        target: &str,
    ) -> Result<usize, DataplaneError> {
        let want = if on { flag } else { 0 };
        let changed: Vec<(Table, EndpointKey, Endpoint)> = self
            .endpoints_of(host)
            .into_iter()
            .filter(|(_, _, ep)| ep.flags & flag != want)
            .collect();
        for (table, key, ep) in &changed {
            let ep = Endpoint {
                flags: (ep.flags & !flag) | want,
                ..*ep
            };
            self.endpoints[table.index()]
                .insert(key, ep, 0)
                .map_err(|e| map_error("writing", table.map_name(), target, e))?;
        }
        Ok(changed.len())
    }

    /// Marks the source and endpoints of the attachment at `host` as isolated (in a security
    /// group: fast-pathed only with allowed pairs) or not.
    pub(super) fn set_isolated(
        &mut self,
        host: u32,
        isolated: bool,
        target: &str,
    ) -> Result<(), DataplaneError> {
        if let Some(mut src) = self.source(host)? {
            src.flags = (src.flags & !SOURCE_ISOLATED) | if isolated { SOURCE_ISOLATED } else { 0 };
            self.put_source(host, src)?;
        }
        self.set_endpoint_flag(host, ENDPOINT_ISOLATED, isolated, target)?;
        Ok(())
    }

    /// Every endpoint of `table` (switch or routing domain, address) and the host end it
    /// leads to.
    pub fn endpoints(&self, table: Table) -> Vec<(EndpointKey, Endpoint)> {
        self.endpoints[table.index()]
            .iter()
            .filter_map(Result::ok)
            .collect()
    }

    /// The endpoints leading to `host`, as the maps hold them.
    pub(super) fn endpoints_of(&self, host: u32) -> Vec<(Table, EndpointKey, Endpoint)> {
        Table::ALL
            .into_iter()
            .flat_map(|table| {
                let i = table.index();
                self.mirror.endpoints[i]
                    .get(&host)
                    .into_iter()
                    .flatten()
                    .filter_map(move |k| self.endpoints[i].get(k, 0).ok().map(|ep| (table, *k, ep)))
            })
            .collect()
    }
}

impl FastpathDataplane {
    /// Writes the source entry of `ifindex` (marked in use); tests of the program's decisions
    /// call it directly.
    pub fn put_source(&mut self, ifindex: u32, mut src: Source) -> Result<(), DataplaneError> {
        src.flags |= SOURCE_IN_USE;
        if ifindex < DIRECT_IFINDEXES {
            self.sources_direct
                .set(ifindex, src, 0)
                .map_err(|e| map_error("writing", SOURCES_DIRECT_MAP, "the fast path", e))?;
        } else {
            self.sources
                .insert(ifindex, src, 0)
                .map_err(|e| map_error("writing", SOURCES_MAP, "the fast path", e))?;
        }
        self.mirror.sources.insert(ifindex, src);
        Ok(())
    }

    /// The source entry of `ifindex`, if in use.
    pub(super) fn source(&self, ifindex: u32) -> Result<Option<Source>, DataplaneError> {
        if ifindex < DIRECT_IFINDEXES {
            let src = self
                .sources_direct
                .get(&ifindex, 0)
                .map_err(|e| map_error("reading", SOURCES_DIRECT_MAP, "the fast path", e))?;
            return Ok(Some(src).filter(|s| s.flags & SOURCE_IN_USE != 0));
        }
        match self.sources.get(&ifindex, 0) {
            Ok(src) => Ok(Some(src)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_error("reading", SOURCES_MAP, "the fast path", e)),
        }
    }

    /// Every source entry in use, by ifindex.
    pub(super) fn all_sources(&self) -> Vec<(u32, Source)> {
        self.mirror.sources.iter().map(|(i, s)| (*i, *s)).collect()
    }

    /// Reads the maps whole, once, when the object is opened (a restarted agent finds its
    /// entries in place).
    fn read_maps(&self) -> Result<Mirror, DataplaneError> {
        let mut mirror = Mirror::default();
        for (i, src) in self.sources_direct.iter().enumerate() {
            let src =
                src.map_err(|e| map_error("reading", SOURCES_DIRECT_MAP, "the fast path", e))?;
            if src.flags & SOURCE_IN_USE != 0 {
                mirror
                    .sources
                    .insert(u32::try_from(i).unwrap_or(u32::MAX), src);
            }
        }
        for entry in &self.sources {
            let (i, src) =
                entry.map_err(|e| map_error("reading", SOURCES_MAP, "the fast path", e))?;
            mirror.sources.insert(i, src);
        }
        for table in Table::ALL {
            let i = table.index();
            for (key, ep) in self.endpoints[i].iter().filter_map(Result::ok) {
                mirror.endpoints[i].entry(ep.ifindex).or_default().push(key);
            }
        }
        for (ovs, host) in self.to_pod.iter().filter_map(Result::ok) {
            mirror.to_pod.entry(host).or_default().push(ovs);
        }
        Ok(mirror)
    }

    /// Writes an endpoint entry of `table` directly (tests of the program's decisions).
    pub fn put_endpoint(
        &mut self,
        table: Table,
        key: EndpointKey,
        ep: Endpoint,
    ) -> Result<(), DataplaneError> {
        self.insert_endpoint(table, key, ep, "the fast path")
    }

    pub(super) fn insert_endpoint(
        &mut self,
        table: Table,
        key: EndpointKey,
        ep: Endpoint,
        target: &str,
    ) -> Result<(), DataplaneError> {
        let i = table.index();
        self.endpoints[i]
            .insert(key, ep, 0)
            .map_err(|e| map_error("writing", table.map_name(), target, e))?;
        let keys = self.mirror.endpoints[i].entry(ep.ifindex).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
        Ok(())
    }

    /// The counters in `slot`, summed over CPUs.
    pub fn slot_counters(&self, slot: u32) -> Result<FastpathCounters, DataplaneError> {
        let values = self
            .counters
            .get(&slot, 0)
            .map_err(|e| map_error("reading", COUNTERS_MAP, "the fast path", e))?;
        Ok(values
            .iter()
            .fold(FastpathCounters::default(), |acc, c| acc.merged(*c)))
    }

    /// Runs `program` on `packet` with `BPF_PROG_TEST_RUN`, `repeat` times.
    pub fn test_run(
        &self,
        program: &'static str,
        packet: &[u8],
        ctx: &SkBuffCtx,
        repeat: u32,
    ) -> Result<RunResult, DataplaneError> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(program)
            .ok_or_else(|| {
                load_error(
                    "the fast path",
                    std::io::Error::other(format!("no program {program}")),
                )
            })?
            .try_into()
            .map_err(|e| load_error("the fast path", e))?;
        test_run::run(prog, program, packet, ctx, repeat)
    }
}

/// A private copy of the fast path with its pins in a scratch bpffs directory, removed on drop:
/// for `BPF_PROG_TEST_RUN` tests of the program's decisions and the per-packet cost benchmark.
pub struct FastpathUnderTest {
    /// The dataplane.
    pub dataplane: FastpathDataplane,
    pin_root: PathBuf,
}

impl FastpathUnderTest {
    /// Loads the object with empty maps.
    pub fn load() -> Result<FastpathUnderTest, DataplaneError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let pin_root = PathBuf::from(bpffs::BPFFS).join(format!(
            "sidelane-fp-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let dataplane = FastpathDataplane::open(&pin_root)?;
        Ok(FastpathUnderTest {
            dataplane,
            pin_root,
        })
    }
}

impl Drop for FastpathUnderTest {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.pin_root);
    }
}

/// The forwarding program's cost per packet (a hit: a 1514-byte IPv4 frame to a local endpoint),
/// best of three rounds of one million runs, minus the test-run loop's own cost, ns.
pub fn measure_prog_cost() -> Result<f64, DataplaneError> {
    const RUNS: u32 = 1_000_000;
    let mut fp = FastpathUnderTest::load()?;
    let frame = test_run::ipv4_udp_frame(1514);
    let (src_mac, dst_mac) = ([0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]);
    fp.dataplane.put_source(
        1,
        Source {
            switch: 7,
            slot: 0,
            flags: SOURCE_HAS_V4,
            mac: src_mac,
            ip4: [10, 0, 0, 1],
            ..Source::default()
        },
    )?;
    fp.dataplane.put_endpoint(
        Table::Switched,
        EndpointKey::v4(7, [10, 0, 0, 2]),
        Endpoint {
            ifindex: 2,
            mac: dst_mac,
            ..Endpoint::default()
        },
    )?;
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per run are small")]
    let ns = |d: std::time::Duration| d.as_nanos() as f64;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let raw = ns(fp
            .dataplane
            .test_run(PROG_FORWARD, &frame, &SkBuffCtx::default(), RUNS)?
            .per_run);
        let harness = ns(test_run::harness_baseline(&frame, RUNS)?);
        best = best.min((raw - harness).max(0.0));
    }
    Ok(best)
}

/// The map key of `ip` on `switch`.
pub fn endpoint_key(switch: u32, ip: IpAddr) -> EndpointKey {
    match ip {
        IpAddr::V4(a) => EndpointKey::v4(switch, a.octets()),
        IpAddr::V6(a) => EndpointKey::v6(switch, a.octets()),
    }
}
