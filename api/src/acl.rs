//! A Subnet's `acls` as Kube-OVN writes them (`direction`, `priority`, `match`, `action`), read
//! into checked ACLs, and the syntax of an OVN match expression, checked before it reaches the
//! Northbound database: OVN stores any string there and `ovn-northd` drops a flow whose match does
//! not parse with only a log line, so a typo would silently open (or close) a network.
//!
//! The check follows `ovn-sb(5)`: relations (`field == value`, `field != {a, b}`, `1 <= field
//! <= 9`), bare boolean fields (`ip4`, `ct.est`), `!`, parentheses, and `&&` and `||`, which
//! must be parenthesized when used together. Fields are checked against the names OVN knows;
//! values are numbers, addresses (with `/prefix` or `/mask`), MACs, quoted strings, `$address_set`
//! and `@port_group`.

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

/// One ACL of a Subnet, checked.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubnetAcl {
    /// `from-lport` or `to-lport`.
    pub direction: String,
    /// 0 to 32767.
    pub priority: u16,
    /// The OVN match.
    pub r#match: String,
    /// `allow`, `allow-related`, `allow-stateless`, `drop`, `reject` or `pass`.
    pub action: String,
}

/// An ACL as the YAML has it.
#[derive(Clone, Debug, Default, Deserialize)]
struct RawAcl {
    #[serde(default)]
    direction: String,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default, rename = "match")]
    r#match: String,
    #[serde(default)]
    action: String,
}

/// A Subnet ACL that cannot be rendered, named by its place, field and value.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("spec.acls[{index}].{field}: {value:?} {reason}")]
pub struct AclError {
    /// Its position in `spec.acls` (0 for the list itself).
    pub index: usize,
    /// The field.
    pub field: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

const DIRECTIONS: [&str; 2] = ["from-lport", "to-lport"];
const ACTIONS: [&str; 6] = [
    "allow",
    "allow-related",
    "allow-stateless",
    "drop",
    "reject",
    "pass",
];

/// The checked ACLs of a Subnet's `spec.acls` (absent or `null`: none).
pub fn subnet_acls(acls: Option<&Value>) -> Result<Vec<SubnetAcl>, AclError> {
    let Some(list) = acls.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(items) = list.as_array() else {
        return Err(AclError {
            index: 0,
            field: "acls",
            value: list.to_string(),
            reason: "is not a list".to_owned(),
        });
    };
    items.iter().enumerate().map(|(i, v)| acl(i, v)).collect()
}

fn acl(index: usize, v: &Value) -> Result<SubnetAcl, AclError> {
    let refuse = |field, value: String, reason: String| AclError {
        index,
        field,
        value,
        reason,
    };
    let raw = RawAcl::deserialize(v)
        .map_err(|e| refuse("acls", v.to_string(), format!("does not parse: {e}")))?;
    if !DIRECTIONS.contains(&raw.direction.as_str()) {
        return Err(refuse(
            "direction",
            raw.direction,
            "should be 'from-lport' or 'to-lport'".to_owned(),
        ));
    }
    let priority = raw
        .priority
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p <= 32767)
        .ok_or_else(|| {
            refuse(
                "priority",
                raw.priority.map(|p| p.to_string()).unwrap_or_default(),
                "is not in the range of 0 to 32767".to_owned(),
            )
        })?;
    if !ACTIONS.contains(&raw.action.as_str()) {
        return Err(refuse(
            "action",
            raw.action,
            format!("should be one of {}", ACTIONS.join(", ")),
        ));
    }
    check_match(&raw.r#match).map_err(|e| refuse("match", raw.r#match.clone(), e))?;
    Ok(SubnetAcl {
        direction: raw.direction,
        priority,
        r#match: raw.r#match,
        action: raw.action,
    })
}

/// Fields OVN's match language knows (`ovn-sb(5)`, "`Logical_Flow` TABLE"), boolean ones included.
const FIELDS: &[&str] = &[
    "inport",
    "outport",
    "eth.src",
    "eth.dst",
    "eth.type",
    "eth.bcast",
    "eth.mcast",
    "eth.mcastv6",
    "vlan.tci",
    "vlan.vid",
    "vlan.pcp",
    "vlan.present",
    "ip",
    "ip4",
    "ip6",
    "ip.proto",
    "ip.dscp",
    "ip.ecn",
    "ip.ttl",
    "ip.frag",
    "ip.is_frag",
    "ip.later_frag",
    "ip.first_frag",
    "ip4.src",
    "ip4.dst",
    "ip4.mcast",
    "ip4.src_mcast",
    "ip6.src",
    "ip6.dst",
    "ip6.label",
    "ip6.mcast",
    "ip6.mcast_rsvd",
    "ip6.mcast_all_nodes",
    "ip6.mcast_all_rtrs",
    "ip6.mcast_sol_node",
    "ip6.mcast_flood",
    "arp",
    "arp.op",
    "arp.spa",
    "arp.tpa",
    "arp.sha",
    "arp.tha",
    "rarp",
    "nd",
    "nd_ns",
    "nd_na",
    "nd_rs",
    "nd_ra",
    "nd_ns_mcast",
    "nd.target",
    "nd.sll",
    "nd.tll",
    "tcp",
    "tcp.src",
    "tcp.dst",
    "tcp.flags",
    "udp",
    "udp.src",
    "udp.dst",
    "sctp",
    "sctp.src",
    "sctp.dst",
    "icmp",
    "icmp4",
    "icmp4.type",
    "icmp4.code",
    "icmp6",
    "icmp6.type",
    "icmp6.code",
    "igmp",
    "mldv1",
    "mldv2",
    "ct.new",
    "ct.est",
    "ct.rel",
    "ct.rpl",
    "ct.inv",
    "ct.trk",
    "ct.snat",
    "ct.dnat",
    "ct_mark",
    "ct_label",
    "ct_state",
    "ct_proto",
    "ct_nw_src",
    "ct_nw_dst",
    "ct_ip6_src",
    "ct_ip6_dst",
    "ct_tp_src",
    "ct_tp_dst",
    "pkt.mark",
    "flags.loopback",
    "dhcp",
    "bfd",
];

fn known_field(name: &str) -> bool {
    FIELDS.contains(&name)
        || ["reg", "xreg", "xxreg"].iter().any(|p| {
            name.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    SetOpen,
    SetClose,
    Comma,
    And,
    Or,
    Not,
    /// `==`, `!=`, `<`, `<=`, `>`, `>=`.
    Rel(&'static str),
    Field(String),
    Const(String),
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let two = text.get(i..i + 2).unwrap_or_default();
        let (token, len) = match (b[i], two) {
            (c, _) if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            (_, "&&") => (Token::And, 2),
            (_, "||") => (Token::Or, 2),
            (_, "==") => (Token::Rel("=="), 2),
            (_, "!=") => (Token::Rel("!="), 2),
            (_, "<=") => (Token::Rel("<="), 2),
            (_, ">=") => (Token::Rel(">="), 2),
            (b'<', _) => (Token::Rel("<"), 1),
            (b'>', _) => (Token::Rel(">"), 1),
            (b'!', _) => (Token::Not, 1),
            (b'(', _) => (Token::Open, 1),
            (b')', _) => (Token::Close, 1),
            (b'{', _) => (Token::SetOpen, 1),
            (b'}', _) => (Token::SetClose, 1),
            (b',', _) => (Token::Comma, 1),
            (b'"', _) => {
                let end = text[i + 1..]
                    .find('"')
                    .ok_or_else(|| format!("a string opened at byte {i} is not closed"))?;
                (Token::Const(text[i..i + end + 2].to_owned()), end + 2)
            }
            _ => word(text, i)?,
        };
        out.push(token);
        i += len;
    }
    Ok(out)
}

/// A field name or a constant starting at byte `i`.
fn word(text: &str, i: usize) -> Result<(Token, usize), String> {
    let rest = &text[i..];
    let len = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "_.:/$@-".contains(c)))
        .unwrap_or(rest.len());
    let w = &rest[..len];
    if w.is_empty() {
        return Err(format!("unexpected {:?} at byte {i}", &rest[..1]));
    }
    let first = w.as_bytes()[0];
    let is_name = (first.is_ascii_alphabetic() || first == b'_')
        && w.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
    if is_name && !is_constant(w) {
        // A subfield: `reg0[3]`, `ct_label[0..7]`.
        if let Some(bits) = rest[len..].strip_prefix('[') {
            let end = bits
                .find(']')
                .ok_or_else(|| format!("{w:?}: a subfield \"[\" is not closed"))?;
            let inner = &bits[..end];
            let numbers = inner
                .split_once("..")
                .map_or((inner, inner), |(a, b)| (a, b));
            if numbers.0.parse::<u16>().is_err() || numbers.1.parse::<u16>().is_err() {
                return Err(format!("{w}[{inner}] is not a subfield"));
            }
            return Ok((Token::Field(w.to_owned()), len + end + 2));
        }
        return Ok((Token::Field(w.to_owned()), len));
    }
    if is_constant(w) {
        return Ok((Token::Const(w.to_owned()), len));
    }
    Err(format!("{w:?} is neither a field nor a value"))
}

/// A number, address (with `/prefix` or `/mask`), MAC, `$set` or `@group`.
fn is_constant(w: &str) -> bool {
    if let Some(name) = w.strip_prefix('$').or_else(|| w.strip_prefix('@')) {
        return !name.is_empty()
            && name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.');
    }
    let (value, mask) = w.split_once('/').map_or((w, None), |(v, m)| (v, Some(m)));
    let plain = |v: &str| {
        v.parse::<u64>().is_ok()
            || v.strip_prefix("0x")
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()))
            || v.parse::<std::net::IpAddr>().is_ok()
            || crate::mac::parse(v).is_some()
    };
    let prefix_fits = match (
        value.parse::<std::net::IpAddr>(),
        mask.map(str::parse::<u8>),
    ) {
        (Ok(ip), Some(Ok(len))) => len <= if ip.is_ipv4() { 32 } else { 128 },
        _ => true,
    };
    plain(value) && mask.is_none_or(plain) && prefix_fits
}

/// Whether `text` is an OVN match expression; if not, why.
pub fn check_match(text: &str) -> Result<(), String> {
    let tokens = lex(text)?;
    if tokens.is_empty() {
        return Err("is empty".to_owned());
    }
    let mut p = Parser { tokens, at: 0 };
    p.disjunction()?;
    match p.tokens.get(p.at) {
        None => Ok(()),
        Some(t) => Err(format!("unexpected {} after a whole expression", show(t))),
    }
}

fn show(t: &Token) -> String {
    match t {
        Token::Open => "\"(\"".to_owned(),
        Token::Close => "\")\"".to_owned(),
        Token::SetOpen => "\"{\"".to_owned(),
        Token::SetClose => "\"}\"".to_owned(),
        Token::Comma => "\",\"".to_owned(),
        Token::And => "\"&&\"".to_owned(),
        Token::Or => "\"||\"".to_owned(),
        Token::Not => "\"!\"".to_owned(),
        Token::Rel(r) => format!("{r:?}"),
        Token::Field(f) | Token::Const(f) => format!("{f:?}"),
    }
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self, wanted: &str) -> Result<Token, String> {
        let t = self
            .tokens
            .get(self.at)
            .cloned()
            .ok_or_else(|| format!("ends where {wanted} was expected"))?;
        self.at += 1;
        Ok(t)
    }

    /// Terms joined by one kind of operator: OVN refuses `a && b || c` unparenthesized.
    fn disjunction(&mut self) -> Result<(), String> {
        self.term()?;
        let mut joined: Option<Token> = None;
        while let Some(op @ (Token::And | Token::Or)) = self.peek().cloned() {
            if joined.as_ref().is_some_and(|j| *j != op) {
                return Err("\"&&\" and \"||\" must be parenthesized when used together".to_owned());
            }
            joined = Some(op);
            self.at += 1;
            self.term()?;
        }
        Ok(())
    }

    fn term(&mut self) -> Result<(), String> {
        match self.next("a field, a value, \"!\" or \"(\"")? {
            Token::Not => self.term(),
            Token::Open => {
                self.disjunction()?;
                match self.next("\")\"")? {
                    Token::Close => Ok(()),
                    t => Err(format!("expected \")\", found {}", show(&t))),
                }
            }
            Token::Field(f) => {
                if !known_field(&f) {
                    return Err(format!("{f:?} is not a field OVN knows"));
                }
                if let Some(Token::Rel(_)) = self.peek() {
                    self.at += 1;
                    self.value()?;
                }
                Ok(())
            }
            // `1` and `0` are true and false; `min <= field <= max` is a range.
            Token::Const(c) => match self.peek() {
                Some(Token::Rel(_)) => {
                    self.at += 1;
                    match self.next("a field")? {
                        Token::Field(f) if known_field(&f) => {}
                        t => return Err(format!("expected a field, found {}", show(&t))),
                    }
                    match self.next("a relation")? {
                        Token::Rel(_) => self.value(),
                        t => Err(format!("expected a relation, found {}", show(&t))),
                    }
                }
                _ if c == "0" || c == "1" => Ok(()),
                _ => Err(format!("{c:?} is a value where a field was expected")),
            },
            t => Err(format!("unexpected {}", show(&t))),
        }
    }

    /// A constant or a `{set}` of them (comma or space separated).
    fn value(&mut self) -> Result<(), String> {
        match self.next("a value")? {
            Token::Const(_) => Ok(()),
            Token::SetOpen => {
                let mut any = false;
                loop {
                    match self.next("\"}\"")? {
                        Token::SetClose if any => return Ok(()),
                        Token::Const(_) => any = true,
                        Token::Comma if any => {}
                        t => return Err(format!("unexpected {} in a set", show(&t))),
                    }
                }
            }
            t => Err(format!("expected a value, found {}", show(&t))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn matches_kube_ovn_and_its_users_write_are_accepted() {
        for m in [
            "ip4.src == 10.10.0.2 && ip4.dst == 10.10.0.3",
            "ip4.dst == 10.30.0.0/24 && tcp && tcp.dst == 80",
            "outport == @ovn.sg.web && ip4 && ip4.src == $ovn.sg.web.associated.v4",
            "1 <= tcp.dst <= 1024 && ip6.src == fd00::/64",
            "(ip4.src == 10.0.0.1 || ip4.src == 10.0.0.2) && !ct.est",
            "inport == \"pod-a.ns.net1.ns.ovn\" && eth.src == 0a:00:00:00:00:01",
            "icmp6.type == {130, 134, 135, 136} && icmp6.code == 0 && ip.ttl == 255",
            "ip4.src == 10.0.0.0/255.255.255.0 && reg0[3] == 1 && ct_label[0..7] == 0x1",
            "ip",
        ] {
            assert_eq!(check_match(m), Ok(()), "{m}");
        }
    }

    #[test]
    fn broken_matches_are_refused_saying_why() {
        for (m, why) in [
            ("", "is empty"),
            ("ip4.src == ", "ends where a value was expected"),
            ("ip4.src = 10.0.0.1", "unexpected \"=\" at byte 8"),
            (
                "ip4.source == 10.0.0.1",
                "\"ip4.source\" is not a field OVN knows",
            ),
            (
                "ip4 && tcp || udp",
                "must be parenthesized when used together",
            ),
            ("(ip4 && tcp", "ends where \")\" was expected"),
            (
                "ip4.src == 10.0.0.300",
                "\"10.0.0.300\" is neither a field nor a value",
            ),
            ("tcp.dst == {}", "unexpected \"}\" in a set"),
            ("ip4 ip6", "unexpected \"ip6\" after a whole expression"),
        ] {
            let err = check_match(m).expect_err(m);
            assert!(err.contains(why), "{m}: {err}");
        }
    }

    #[test]
    fn subnet_acls_read_as_kube_ovn_writes_them() {
        let acls = subnet_acls(Some(&json!([{
            "action": "drop", "direction": "to-lport", "priority": 1002,
            "match": "ip4.src == 10.10.0.2 && ip4.dst == 10.10.0.3",
        }])))
        .expect("valid");
        assert_eq!(
            acls,
            vec![SubnetAcl {
                direction: "to-lport".to_owned(),
                priority: 1002,
                r#match: "ip4.src == 10.10.0.2 && ip4.dst == 10.10.0.3".to_owned(),
                action: "drop".to_owned(),
            }]
        );
        assert_eq!(subnet_acls(None), Ok(Vec::new()));
    }

    #[test]
    fn a_bad_subnet_acl_is_refused_naming_its_place_field_and_value() {
        let refuse = |acl: Value| {
            subnet_acls(Some(&json!([acl])))
                .expect_err("refused")
                .to_string()
        };
        let ok = json!({"action": "drop", "direction": "to-lport", "priority": 1, "match": "ip"});
        let mut bad = ok.clone();
        bad["direction"] = json!("ingress");
        assert_eq!(
            refuse(bad),
            "spec.acls[0].direction: \"ingress\" should be 'from-lport' or 'to-lport'"
        );
        let mut bad = ok.clone();
        bad["priority"] = json!(40000);
        assert_eq!(
            refuse(bad),
            "spec.acls[0].priority: \"40000\" is not in the range of 0 to 32767"
        );
        let mut bad = ok.clone();
        bad["action"] = json!("deny");
        assert!(refuse(bad).starts_with("spec.acls[0].action: \"deny\" should be one of"));
        let mut bad = ok;
        bad["match"] = json!("ip4.dst == 10.0.0.0/33");
        assert_eq!(
            refuse(bad),
            "spec.acls[0].match: \"ip4.dst == 10.0.0.0/33\" \"10.0.0.0/33\" is neither a field nor a value"
        );
    }
}
