//! Bounds-checked header parsing: only what the programs need, nothing more.

use aya_ebpf::programs::TcContext;

/// Ethernet header length.
pub const ETH_HLEN: u32 = 14;
/// `ETH_P_IP` as it appears in `__sk_buff.protocol` (network byte order).
pub const PROTO_IPV4: u32 = (0x0800u16).to_be() as u32;
/// `ETH_P_IPV6` as it appears in `__sk_buff.protocol` (network byte order).
pub const PROTO_IPV6: u32 = (0x86DDu16).to_be() as u32;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: u32 = 8;
/// Used when the headers are not in the linear area: IPv4 plus a TCP header with timestamps.
const FALLBACK_SEG_HDR_LEN: u32 = 52;

/// The IP plus transport header length that every GSO segment of this packet repeats.
#[inline(always)]
pub fn seg_hdr_len(ctx: &TcContext, protocol: u32) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    let l3 = data + ETH_HLEN as usize;
    let (ip_len, l4_proto) = if protocol == PROTO_IPV4 {
        if l3 + 20 > end {
            return FALLBACK_SEG_HDR_LEN;
        }
        // SAFETY: bounds checked above.
        let (vihl, proto) = unsafe { (*(l3 as *const u8), *((l3 + 9) as *const u8)) };
        (usize::from(vihl & 0x0f) * 4, proto)
    } else {
        if l3 + IPV6_HLEN > end {
            return FALLBACK_SEG_HDR_LEN;
        }
        // SAFETY: bounds checked above.
        (IPV6_HLEN, unsafe { *((l3 + 6) as *const u8) })
    };
    match l4_proto {
        IPPROTO_TCP => {
            let l4 = l3 + ip_len;
            if l4 + 20 > end {
                return FALLBACK_SEG_HDR_LEN;
            }
            // SAFETY: bounds checked above.
            let doff = unsafe { *((l4 + 12) as *const u8) } >> 4;
            ip_len as u32 + u32::from(doff) * 4
        }
        IPPROTO_UDP => ip_len as u32 + UDP_HLEN,
        _ => ip_len as u32,
    }
}
