//! One address family's range of a Subnet: which addresses are held, by whom, and which to hand
//! out next.
//!
//! Kube-OVN's order: the lowest never-used free address first; an address released goes to the
//! back of a queue and is handed out again only when no never-used address is left (stale ARP
//! caches and conntrack entries of its last holder have time to expire). Random allocation never
//! hands out the network, broadcast or gateway address or anything in `excludeIps`; a static
//! claim may take an excluded address (as in Kube-OVN) but never the gateway.
//!
//! Addresses are kept as offsets from the first usable address. Holders live in one hash map
//! (offset → owner); "released once" is a bitmap for ranges up to 2^26 addresses and a set
//! beyond (IPv6). Every operation is O(1) amortised: the fresh cursor only moves forward.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use foldhash::fast::RandomState;
use ipnet::IpNet;
use thiserror::Error;

/// Who holds an address: a handle the caller maps to its attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OwnerId(pub u32);

/// Why a pool refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PoolError {
    /// No address is left to hand out.
    #[error("no available address in {network}")]
    Exhausted {
        /// The range.
        network: IpNet,
    },
    /// The address is not a usable address of this range.
    #[error("{address} is out of the range of {network}")]
    OutOfRange {
        /// The address asked for.
        address: IpAddr,
        /// The range.
        network: IpNet,
    },
    /// The address is the Subnet's gateway.
    #[error("{address} is the gateway of {network}")]
    Gateway {
        /// The address.
        address: IpAddr,
        /// The range.
        network: IpNet,
    },
    /// Someone else holds the address.
    #[error("{address} is already held by another attachment")]
    Conflict {
        /// The address.
        address: IpAddr,
        /// Its holder.
        holder: OwnerId,
    },
}

/// Offsets released at least once.
#[derive(Debug)]
enum OffsetBits {
    Dense(Vec<u64>),
    Sparse(HashSet<u64, RandomState>),
}

/// Ranges up to this many addresses keep a bitmap (8 MiB at most).
const DENSE_LIMIT: u64 = 1 << 26;

impl OffsetBits {
    fn new(size: u64) -> OffsetBits {
        if size <= DENSE_LIMIT {
            // size ≤ 2^26, so the word count fits usize.
            OffsetBits::Dense(vec![0; usize::try_from(size.div_ceil(64)).unwrap_or(0)])
        } else {
            OffsetBits::Sparse(HashSet::default())
        }
    }

    fn contains(&self, offset: u64) -> bool {
        match self {
            OffsetBits::Dense(words) => usize::try_from(offset / 64)
                .ok()
                .and_then(|i| words.get(i))
                .is_some_and(|w| w & (1 << (offset % 64)) != 0),
            OffsetBits::Sparse(set) => set.contains(&offset),
        }
    }

    fn insert(&mut self, offset: u64) {
        match self {
            OffsetBits::Dense(words) => {
                if let Some(w) = usize::try_from(offset / 64)
                    .ok()
                    .and_then(|i| words.get_mut(i))
                {
                    *w |= 1 << (offset % 64);
                }
            }
            OffsetBits::Sparse(set) => {
                set.insert(offset);
            }
        }
    }

    fn remove(&mut self, offset: u64) {
        match self {
            OffsetBits::Dense(words) => {
                if let Some(w) = usize::try_from(offset / 64)
                    .ok()
                    .and_then(|i| words.get_mut(i))
                {
                    *w &= !(1 << (offset % 64));
                }
            }
            OffsetBits::Sparse(set) => {
                set.remove(&offset);
            }
        }
    }
}

/// One family's range of a Subnet.
#[derive(Debug)]
pub struct Pool {
    network: IpNet,
    /// The first usable address, as an integer.
    first: u128,
    /// How many usable addresses (capped at 2^63).
    size: u64,
    /// The gateway's offset, when it is in range.
    gateway: Option<u64>,
    /// Merged, sorted, inclusive offset ranges random allocation skips (the gateway included).
    excluded: Vec<(u64, u64)>,
    excluded_count: u64,
    holders: HashMap<u64, OwnerId, RandomState>,
    /// Holders whose address is excluded (claimed statically).
    held_excluded: u64,
    released_once: OffsetBits,
    /// Released addresses, oldest first; entries held again since are skipped.
    released: VecDeque<u64>,
    /// Which offsets are in `released` (each is queued once, however often it is released).
    queued: OffsetBits,
    /// Every offset below is held, excluded or released once.
    cursor: u64,
    /// The first excluded range that ends at or after the cursor.
    excluded_at: usize,
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Pool {
    /// The usable addresses of `network` (network+1 to broadcast−1; both addresses of a /31 or
    /// /127, the one address of a /32 or /128), less `excluded` (addresses or inclusive ranges
    /// of this family; others are ignored) and the gateway for random allocation.
    pub fn new(network: IpNet, gateway: Option<IpAddr>, excluded: &[(IpAddr, IpAddr)]) -> Pool {
        let network = network.trunc();
        let lo = to_int(network.network());
        let hi = to_int(network.broadcast());
        let (first, last) = if hi - lo >= 2 {
            (lo + 1, hi - 1)
        } else {
            (lo, hi)
        };
        let size = u64::try_from(last - first + 1)
            .unwrap_or(1 << 63)
            .min(1 << 63);
        let v4 = network.addr().is_ipv4();
        let top = first + u128::from(size) - 1;
        let gateway = gateway
            .filter(|g| g.is_ipv4() == v4)
            .map(to_int)
            .filter(|g| (first..=top).contains(g))
            .and_then(|g| u64::try_from(g - first).ok());
        // Ranges reaching past either end are cut to the usable addresses.
        let mut ranges: Vec<(u64, u64)> = excluded
            .iter()
            .filter(|(a, b)| a.is_ipv4() == v4 && b.is_ipv4() == v4)
            .filter_map(|&(a, b)| {
                let (a, b) = (to_int(a).min(to_int(b)), to_int(a).max(to_int(b)));
                let (lo, hi) = (a.max(first), b.min(top));
                (lo <= hi).then(|| {
                    Some((
                        u64::try_from(lo - first).ok()?,
                        u64::try_from(hi - first).ok()?,
                    ))
                })?
            })
            .collect();
        if let Some(g) = gateway {
            ranges.push((g, g));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        let excluded_count = merged.iter().map(|(s, e)| e - s + 1).sum();
        Pool {
            network,
            first,
            size,
            gateway,
            excluded: merged,
            excluded_count,
            holders: HashMap::default(),
            held_excluded: 0,
            released_once: OffsetBits::new(size),
            released: VecDeque::new(),
            queued: OffsetBits::new(size),
            cursor: 0,
            excluded_at: 0,
        }
    }

    /// The range.
    pub fn network(&self) -> IpNet {
        self.network
    }

    fn address(&self, offset: u64) -> IpAddr {
        let n = self.first + u128::from(offset);
        if self.network.addr().is_ipv4() {
            IpAddr::from(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
        } else {
            IpAddr::from(Ipv6Addr::from(n))
        }
    }

    fn offset(&self, ip: IpAddr) -> Option<u64> {
        if ip.is_ipv4() != self.network.addr().is_ipv4() {
            return None;
        }
        let n = to_int(ip);
        if n < self.first || n - self.first >= u128::from(self.size) {
            return None;
        }
        u64::try_from(n - self.first).ok()
    }

    fn is_excluded(&self, offset: u64) -> bool {
        let i = self.excluded.partition_point(|&(_, e)| e < offset);
        self.excluded.get(i).is_some_and(|&(s, _)| s <= offset)
    }

    /// Hands `owner` the next address: the lowest never-used free one, else the oldest
    /// released one.
    pub fn allocate(&mut self, owner: OwnerId) -> Result<IpAddr, PoolError> {
        while self.cursor < self.size {
            if let Some(&(s, e)) = self.excluded.get(self.excluded_at)
                && self.cursor >= s
            {
                self.cursor = e.saturating_add(1);
                self.excluded_at += 1;
                continue;
            }
            let offset = self.cursor;
            self.cursor += 1;
            if self.holders.contains_key(&offset) || self.released_once.contains(offset) {
                continue;
            }
            self.holders.insert(offset, owner);
            return Ok(self.address(offset));
        }
        while let Some(offset) = self.released.pop_front() {
            self.queued.remove(offset);
            if self.holders.contains_key(&offset) || self.is_excluded(offset) {
                continue;
            }
            self.holders.insert(offset, owner);
            return Ok(self.address(offset));
        }
        Err(PoolError::Exhausted {
            network: self.network,
        })
    }

    /// Gives `owner` the address `ip` (a static address); taking it again is a no-op.
    pub fn claim(&mut self, ip: IpAddr, owner: OwnerId) -> Result<(), PoolError> {
        let offset = self.offset(ip).ok_or(PoolError::OutOfRange {
            address: ip,
            network: self.network,
        })?;
        if self.gateway == Some(offset) {
            return Err(PoolError::Gateway {
                address: ip,
                network: self.network,
            });
        }
        match self.holders.get(&offset) {
            Some(&holder) if holder == owner => Ok(()),
            Some(&holder) => Err(PoolError::Conflict {
                address: ip,
                holder,
            }),
            None => {
                self.holders.insert(offset, owner);
                if self.is_excluded(offset) {
                    self.held_excluded += 1;
                }
                Ok(())
            }
        }
    }

    /// Releases `ip` if `owner` holds it (fencing: a stale owner cannot free its successor's
    /// address). `Ok(false)` if no one held it.
    pub fn release(&mut self, ip: IpAddr, owner: OwnerId) -> Result<bool, PoolError> {
        let Some(offset) = self.offset(ip) else {
            return Ok(false);
        };
        match self.holders.get(&offset) {
            None => Ok(false),
            Some(&holder) if holder != owner => Err(PoolError::Conflict {
                address: ip,
                holder,
            }),
            Some(_) => {
                self.holders.remove(&offset);
                if self.is_excluded(offset) {
                    self.held_excluded -= 1;
                } else {
                    self.released_once.insert(offset);
                    if !self.queued.contains(offset) {
                        self.queued.insert(offset);
                        self.released.push_back(offset);
                    }
                }
                Ok(true)
            }
        }
    }

    /// Who holds `ip`.
    pub fn holder(&self, ip: IpAddr) -> Option<OwnerId> {
        self.offset(ip).and_then(|o| self.holders.get(&o).copied())
    }

    /// Addresses held.
    pub fn used(&self) -> u64 {
        self.holders.len() as u64
    }

    /// Addresses random allocation can still hand out.
    pub fn available(&self) -> u64 {
        self.size - self.excluded_count - (self.used() - self.held_excluded)
    }

    /// Kube-OVN's text for a list of offset ranges: `a-b` for a range, `a` for one address,
    /// comma-separated.
    fn ranges_text(&self, ranges: &[(u64, u64)]) -> String {
        ranges
            .iter()
            .map(|&(s, e)| {
                if s == e {
                    self.address(s).to_string()
                } else {
                    format!("{}-{}", self.address(s), self.address(e))
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The held offsets as merged ranges.
    fn held_ranges(&self) -> Vec<(u64, u64)> {
        let mut offsets: Vec<u64> = self.holders.keys().copied().collect();
        offsets.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::new();
        for o in offsets {
            match out.last_mut() {
                Some(last) if last.1 + 1 == o => last.1 = o,
                _ => out.push((o, o)),
            }
        }
        out
    }

    /// `v4usingIPrange` / `v6usingIPrange`: the held addresses, as Kube-OVN writes them.
    pub fn using_ranges(&self) -> String {
        self.ranges_text(&self.held_ranges())
    }

    /// `v4availableIPrange` / `v6availableIPrange`: what random allocation can still hand out
    /// (neither excluded nor held), as Kube-OVN writes it.
    pub fn available_ranges(&self) -> String {
        let mut blocked = self.excluded.clone();
        blocked.extend(self.held_ranges());
        blocked.sort_unstable();
        let mut free = Vec::new();
        let mut next = 0u64;
        for (s, e) in blocked {
            if s > next {
                free.push((next, s - 1));
            }
            next = next.max(e.saturating_add(1));
        }
        if next < self.size {
            free.push((next, self.size - 1));
        }
        self.ranges_text(&free)
    }

    /// Every held address and its holder, in address order.
    pub fn held(&self) -> Vec<(IpAddr, OwnerId)> {
        let mut out: Vec<_> = self
            .holders
            .iter()
            .map(|(&o, &h)| (self.address(o), h))
            .collect();
        out.sort_by_key(|&(ip, _)| to_int(ip));
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_range_strings_are_kube_ovns_held_and_free_addresses() {
        let net: IpNet = "10.0.0.0/28".parse().expect("a network");
        // Usable .1-.14; the gateway .1 and .5-.6 excluded.
        let mut pool = Pool::new(
            net,
            Some(ip("10.0.0.1")),
            &[(ip("10.0.0.5"), ip("10.0.0.6"))],
        );
        assert_eq!(pool.using_ranges(), "");
        assert_eq!(
            pool.available_ranges(),
            "10.0.0.2-10.0.0.4,10.0.0.7-10.0.0.14"
        );
        for (o, addr) in [(1, "10.0.0.2"), (2, "10.0.0.3"), (3, "10.0.0.9")] {
            pool.claim(ip(addr), OwnerId(o)).expect("claimed");
        }
        assert_eq!(pool.using_ranges(), "10.0.0.2-10.0.0.3,10.0.0.9");
        assert_eq!(
            pool.available_ranges(),
            "10.0.0.4,10.0.0.7-10.0.0.8,10.0.0.10-10.0.0.14"
        );
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("a CIDR")
    }

    #[test]
    fn addresses_come_lowest_first_skipping_network_gateway_exclusions_and_broadcast() {
        let mut pool = Pool::new(
            net("10.0.0.0/29"),
            Some(ip("10.0.0.1")),
            &[(ip("10.0.0.3"), ip("10.0.0.4"))],
        );
        assert_eq!(pool.available(), 3, ".2 .5 .6");
        let got: Vec<IpAddr> = (0..3)
            .map(|i| pool.allocate(OwnerId(i)).expect("free"))
            .collect();
        assert_eq!(got, [ip("10.0.0.2"), ip("10.0.0.5"), ip("10.0.0.6")]);
        assert_eq!(
            pool.allocate(OwnerId(9)),
            Err(PoolError::Exhausted {
                network: net("10.0.0.0/29")
            })
        );
        assert_eq!(pool.available(), 0);
    }

    #[test]
    fn released_addresses_wait_until_the_never_used_ones_are_gone() {
        let mut pool = Pool::new(net("10.0.0.0/29"), Some(ip("10.0.0.1")), &[]);
        let a = pool.allocate(OwnerId(1)).expect("free");
        assert_eq!(a, ip("10.0.0.2"));
        assert_eq!(pool.release(a, OwnerId(1)), Ok(true));
        let next: Vec<IpAddr> = (2..7)
            .map(|i| pool.allocate(OwnerId(i)).expect("free"))
            .collect();
        assert_eq!(
            next,
            [
                ip("10.0.0.3"),
                ip("10.0.0.4"),
                ip("10.0.0.5"),
                ip("10.0.0.6"),
                ip("10.0.0.2")
            ],
            "the released .2 comes back last"
        );
    }

    #[test]
    fn a_static_claim_may_take_an_excluded_address_but_never_the_gateway_or_a_held_one() {
        let mut pool = Pool::new(
            net("172.18.0.0/16"),
            Some(ip("172.18.0.1")),
            &[(ip("172.18.0.2"), ip("172.18.0.10"))],
        );
        assert_eq!(pool.claim(ip("172.18.0.5"), OwnerId(1)), Ok(()));
        assert_eq!(
            pool.claim(ip("172.18.0.5"), OwnerId(1)),
            Ok(()),
            "idempotent"
        );
        assert_eq!(
            pool.claim(ip("172.18.0.5"), OwnerId(2)),
            Err(PoolError::Conflict {
                address: ip("172.18.0.5"),
                holder: OwnerId(1)
            })
        );
        assert!(matches!(
            pool.claim(ip("172.18.0.1"), OwnerId(2)),
            Err(PoolError::Gateway { .. })
        ));
        for outside in ["172.18.0.0", "172.18.255.255", "10.9.9.9", "fd00::1"] {
            assert!(
                matches!(
                    pool.claim(ip(outside), OwnerId(2)),
                    Err(PoolError::OutOfRange { .. })
                ),
                "{outside}"
            );
        }
        assert_eq!(
            pool.available(),
            65534 - 10,
            "a held excluded address counts once"
        );
    }

    #[test]
    fn a_stale_owner_cannot_release_its_successors_address() {
        let mut pool = Pool::new(net("10.1.0.0/24"), None, &[]);
        pool.claim(ip("10.1.0.7"), OwnerId(2)).expect("free");
        assert_eq!(
            pool.release(ip("10.1.0.7"), OwnerId(1)),
            Err(PoolError::Conflict {
                address: ip("10.1.0.7"),
                holder: OwnerId(2)
            })
        );
        assert_eq!(pool.holder(ip("10.1.0.7")), Some(OwnerId(2)));
    }

    #[test]
    fn tiny_ranges_use_every_address_as_kube_ovn_does() {
        let mut p31 = Pool::new(net("10.2.0.0/31"), None, &[]);
        assert_eq!(p31.available(), 2);
        assert_eq!(p31.allocate(OwnerId(1)), Ok(ip("10.2.0.0")));
        let mut v6 = Pool::new(net("fd00::/120"), Some(ip("fd00::1")), &[]);
        assert_eq!(v6.available(), 253);
        assert_eq!(v6.allocate(OwnerId(1)), Ok(ip("fd00::2")));
        let mut big = Pool::new(net("fd00:10::/64"), Some(ip("fd00:10::1")), &[]);
        assert_eq!(big.allocate(OwnerId(1)), Ok(ip("fd00:10::2")));
        assert_eq!(big.used(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Allocate(u32),
        Claim(u8, u32),
        Release(u8, u32),
        ReleaseHeld(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..40).prop_map(Op::Allocate),
            2 => (any::<u8>(), 0u32..40).prop_map(|(a, o)| Op::Claim(a, o)),
            1 => (any::<u8>(), 0u32..40).prop_map(|(a, o)| Op::Release(a, o)),
            3 => any::<usize>().prop_map(Op::ReleaseHeld),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Against a model: no address is ever held twice; random allocation never hands out
        /// the network, broadcast, gateway or an excluded address; it reports exhaustion
        /// exactly when nothing is free; a released address comes back only when no
        /// never-used address is free.
        #[test]
        fn random_sequences_never_double_allocate_and_report_exhaustion_exactly(
            prefix in 26u8..=30,
            gw in proptest::option::of(1u8..6),
            excl in proptest::collection::vec((0u8..70, 0u8..8), 0..4),
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let network = IpNet::new(ip("10.9.0.0"), prefix).expect("valid");
            let size = 1u32 << (32 - prefix);
            let a = |n: u32| IpAddr::from(Ipv4Addr::from(0x0a09_0000 + n));
            let gateway = gw.map(|g| a(u32::from(g)));
            let excluded: Vec<(IpAddr, IpAddr)> = excl
                .iter()
                .map(|&(s, l)| (a(u32::from(s)), a(u32::from(s) + u32::from(l))))
                .collect();
            let mut pool = Pool::new(network, gateway, &excluded);
            let skip: BTreeSet<u32> = (0..size)
                .filter(|&n| {
                    n == 0 || n == size - 1 || Some(a(n)) == gateway
                        || excluded.iter().any(|&(s, e)| s <= a(n) && a(n) <= e)
                })
                .collect();
            let mut held: BTreeMap<u32, u32> = BTreeMap::new();
            let mut ever: BTreeSet<u32> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Allocate(owner) => {
                        let free_fresh = (0..size)
                            .any(|n| !skip.contains(&n) && !held.contains_key(&n) && !ever.contains(&n));
                        let free_any = (0..size)
                            .any(|n| !skip.contains(&n) && !held.contains_key(&n));
                        match pool.allocate(OwnerId(owner)) {
                            Ok(got) => {
                                let IpAddr::V4(v4) = got else { panic!("v6 from a v4 pool") };
                                let n = u32::from(v4) - 0x0a09_0000;
                                prop_assert!(!skip.contains(&n), "handed out reserved {got}");
                                prop_assert!(!held.contains_key(&n), "handed out held {got}");
                                prop_assert!(!ever.contains(&n) || !free_fresh,
                                    "reused {got} while a never-used address was free");
                                held.insert(n, owner);
                                ever.insert(n);
                            }
                            Err(PoolError::Exhausted { .. }) => prop_assert!(!free_any),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Claim(n, owner) => {
                        let n = u32::from(n) % (size + 2);
                        let result = pool.claim(a(n), OwnerId(owner));
                        let in_range = n >= 1 && n + 1 < size;
                        match held.get(&n) {
                            _ if !in_range => prop_assert!(matches!(result, Err(PoolError::OutOfRange { .. })), "{:?}", result),
                            _ if Some(a(n)) == gateway => prop_assert!(matches!(result, Err(PoolError::Gateway { .. })), "{:?}", result),
                            Some(&h) if h == owner => prop_assert_eq!(result, Ok(())),
                            Some(&h) => prop_assert_eq!(result, Err(PoolError::Conflict { address: a(n), holder: OwnerId(h) })),
                            None => {
                                prop_assert_eq!(result, Ok(()));
                                held.insert(n, owner);
                                ever.insert(n);
                            }
                        }
                    }
                    Op::Release(n, owner) => {
                        let n = u32::from(n) % size;
                        let result = pool.release(a(n), OwnerId(owner));
                        match held.get(&n) {
                            None => prop_assert_eq!(result, Ok(false)),
                            Some(&h) if h == owner => {
                                prop_assert_eq!(result, Ok(true));
                                held.remove(&n);
                            }
                            Some(_) => prop_assert!(result.is_err()),
                        }
                    }
                    Op::ReleaseHeld(i) => {
                        if !held.is_empty() {
                            let (&n, &owner) = held.iter().nth(i % held.len()).expect("in range");
                            prop_assert_eq!(pool.release(a(n), OwnerId(owner)), Ok(true));
                            held.remove(&n);
                        }
                    }
                }
                let available = (0..size)
                    .filter(|n| !skip.contains(n) && !held.contains_key(n))
                    .count() as u64;
                prop_assert_eq!(pool.available(), available);
                prop_assert_eq!(pool.used(), held.len() as u64);
            }
        }
    }
}
