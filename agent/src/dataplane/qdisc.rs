//! Which root qdisc a device has: EDT pacing needs `fq` to honour departure times.

use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// Reads root qdisc kinds. A trait so that the mode decision is testable without a kernel.
pub trait QdiscProbe {
    /// The kind (`"fq"`, `"noqueue"`, `"htb"`, ...) of the root qdisc of `ifindex` in the calling
    /// thread's network namespace, or `None` if the device has none listed.
    fn root_kind(&self, ifindex: u32) -> io::Result<Option<String>>;
}

/// The kernel, over rtnetlink.
pub struct NetlinkQdiscProbe;

impl QdiscProbe for NetlinkQdiscProbe {
    fn root_kind(&self, ifindex: u32) -> io::Result<Option<String>> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;

        let index = i32::try_from(ifindex).map_err(io::Error::other)?;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        header.sequence_number = 1;
        let mut request = NetlinkMessage::new(
            header,
            NetlinkPayload::from(RouteNetlinkMessage::GetQueueDiscipline(
                TcMessage::with_index(index),
            )),
        );
        request.finalize();
        let mut buf = vec![0; request.buffer_len()];
        request.serialize(&mut buf);
        socket.send(&buf, 0)?;

        let mut found = None;
        let mut rx = Vec::with_capacity(64 * 1024);
        loop {
            rx.clear();
            let n = socket.recv(&mut rx, 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[offset..n])
                    .map_err(io::Error::other)?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(found),
                    NetlinkPayload::Error(e) => {
                        return Err(e.to_io());
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(q))
                        if q.header.index == index && q.header.parent == TcHandle::ROOT =>
                    {
                        found = q.attributes.into_iter().find_map(|a| match a {
                            TcAttribute::Kind(kind) => Some(kind),
                            _ => None,
                        });
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }
}
