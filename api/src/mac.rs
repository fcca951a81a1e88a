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

#[cfg(test)]
mod tests {
    use super::*;

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
