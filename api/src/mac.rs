//! MAC addresses as annotations and IP resources write them: `aa:bb:cc:dd:ee:ff`.

/// Parses six hex octets separated by `:` (or `-`, which some users write).
pub fn parse(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Formats lower-case, colon-separated.
pub fn format(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The name of the Vpc router's port on a Subnet's switch, as the controller creates it.
pub fn router_port_name(vpc: &str, subnet: &str) -> String {
    format!("{vpc}-{subnet}")
}

/// A router port's MAC: derived from its name (FNV-1a), locally administered, so that it is the
/// same on every reconcile and every controller replica, and so that the node agents know a
/// Subnet's gateway MAC without reading the Northbound database.
pub fn router_port_mac(port_name: &str) -> [u8; 6] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in port_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    [0x0a, b[3], b[4], b[5], b[6], b[7]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_router_ports_mac_is_locally_administered_unicast_and_stable() {
        let mac = router_port_mac(&router_port_name("vpc-a", "net-a"));
        assert_eq!(mac[0] & 0b11, 0b10, "locally administered, unicast");
        assert_eq!(mac, router_port_mac("vpc-a-net-a"));
        assert_ne!(mac, router_port_mac("vpc-a-net-b"));
    }

    #[test]
    fn macs_round_trip_and_malformed_ones_are_refused() {
        assert_eq!(
            parse("00:00:00:8A:3C:4F"),
            Some([0, 0, 0, 0x8a, 0x3c, 0x4f])
        );
        assert_eq!(parse("02-00-00-00-00-01"), Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(format([2, 0, 0, 0xab, 0, 1]), "02:00:00:ab:00:01");
        for bad in [
            "",
            "00:00:00:8a:3c",
            "00:00:00:8a:3c:4f:00",
            "0:00:00:8a:3c:4f",
            "zz:00:00:00:00:00",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
