//! A synchronous rtnetlink client bound to the network namespace it was opened in (open it on a
//! thread inside the namespace, as [`crate::netns::run_in`] gives; the socket stays bound there).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// An rtnetlink socket in one namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` and waits for the kernel's acknowledgement.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0)?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..n])
                    .map_err(io::Error::other)?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq
                    && let NetlinkPayload::Error(e) = reply.payload
                {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io()),
                    };
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// Dumps with `msg` and returns every reply.
    fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = self.seq;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            let n = self.socket.recv(&mut rx, 0)?;
            let mut offset = 0;
            while offset < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..n])
                    .map_err(io::Error::other)?;
                let len = reply.header.length as usize;
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The addresses (with prefixes) on link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<IpNet>> {
        let replies = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(replies
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|attr| match attr {
                        AddressAttribute::Address(ip) => IpNet::new(ip, prefix).ok(),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// The main table's routes through link `index`, both families: destination (`/0` for a
    /// default route) and gateway.
    pub fn routes(&mut self, index: u32) -> io::Result<Vec<(IpNet, Option<IpAddr>)>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            for m in self.dump(RouteNetlinkMessage::GetRoute(msg))? {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if r.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let (mut dst, mut gw, mut oif) = (None, None, None);
                for attr in r.attributes {
                    match attr {
                        RouteAttribute::Destination(a) => dst = ip_of(&a),
                        RouteAttribute::Gateway(a) => gw = ip_of(&a),
                        RouteAttribute::Oif(i) => oif = Some(i),
                        _ => {}
                    }
                }
                if oif != Some(index) {
                    continue;
                }
                let any = if family == AddressFamily::Inet {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u16; 8])
                };
                if let Ok(net) = IpNet::new(dst.unwrap_or(any), r.header.destination_prefix_length)
                {
                    out.push((net, gw));
                }
            }
        }
        Ok(out)
    }

    /// The MAC of link `index`, if it has one.
    pub fn mac(&mut self, index: u32) -> io::Result<Option<Vec<u8>>> {
        let replies = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) if l.header.index == index => {
                l.attributes.into_iter().find_map(|a| match a {
                    LinkAttribute::Address(mac) => Some(mac),
                    _ => None,
                })
            }
            _ => None,
        }))
    }

    /// Creates a veth pair: `name` here, `peer` created directly in the namespace `peer_netns`.
    pub fn add_veth(
        &mut self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes = vec![
            LinkAttribute::IfName(peer.to_owned()),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(name.to_owned()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
            ]),
        ];
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Renames, sets the MAC and MTU of, and optionally brings up link `index` (a link must be
    /// down to be renamed).
    pub fn configure_link(
        &mut self,
        index: u32,
        name: Option<&str>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        up: bool,
    ) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(name) = name {
            msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        }
        if let Some(mac) = mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(RouteNetlinkMessage::SetLink(msg), 0)?;
        if up {
            let mut msg = LinkMessage::default();
            msg.header.index = index;
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
            self.request(RouteNetlinkMessage::SetLink(msg), 0)?;
        }
        Ok(())
    }

    /// Deletes link `index` (a veth takes its peer with it).
    pub fn delete_link(&mut self, index: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// Adds `address` (with its prefix) to link `index`.
    pub fn add_address(&mut self, index: u32, address: IpNet) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.index = index;
        msg.header.prefix_len = address.prefix_len();
        msg.header.family = family(address.addr());
        msg.attributes.push(AddressAttribute::Local(address.addr()));
        msg.attributes
            .push(AddressAttribute::Address(address.addr()));
        self.request(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Adds or replaces the route to `dst` through link `index`, via `gateway` if given (route
    /// replace, as Kube-OVN does: a default route replaces the pod's default).
    pub fn replace_route(
        &mut self,
        index: u32,
        dst: IpNet,
        gateway: Option<IpAddr>,
    ) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(dst.network())));
        }
        if let Some(gw) = gateway {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_address(addr: IpAddr) -> RouteAddress {
    match addr {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}
