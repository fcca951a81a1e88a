//! `k8s.v1.cni.cncf.io/networks`: which NetworkAttachmentDefinitions a pod asks for, and the
//! provider string each attachment's annotations are keyed by.
//!
//! Parsed as the NAD client's `ParseNetworkAnnotation` does: a value containing `[`, `{` or `"`
//! is a JSON list of network selection elements; anything else is a comma list of
//! `[namespace/]name[@interface]`, each part a DNS-1123 label. An empty namespace is the pod's.
//!
//! Providers (Kube-OVN's naming, `kube-ovn-compat.md` section 2): `<nad>.<ns>.ovn` for a NAD whose
//! plugin is `kube-ovn`; `<nad>.<ns>.ovn.<interface>` when that NAD is listed more than once (the
//! same network on net1 and net2, Kube-OVN issue #6762); `<nad>.<ns>` for a NAD that uses us for
//! IPAM only.

use serde::Deserialize;
use thiserror::Error;

/// The annotation a pod lists its attachments in.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";

/// A network selection annotation that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetworkSelectionError {
    /// The JSON form does not parse.
    #[error(
        "{NETWORKS_ANNOTATION}: {value:?} is not a JSON list of network selection elements: {reason}"
    )]
    Json {
        /// The annotation as written.
        value: String,
        /// What the JSON parser said.
        reason: String,
    },
    /// One element of the list is malformed.
    #[error("{NETWORKS_ANNOTATION}: {element:?} is not valid: {reason}")]
    Element {
        /// The element as written.
        element: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One requested attachment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct NetworkSelection {
    /// The NAD's name.
    pub name: String,
    /// The NAD's namespace (the pod's when the annotation leaves it out).
    #[serde(default)]
    pub namespace: String,
    /// The interface name the pod asked for (`net1` ...); `None` lets Multus choose.
    #[serde(default, rename = "interface")]
    pub interface: Option<String>,
    /// Static addresses (`ips`), copied into `<provider>.kubernetes.io/ip_address`.
    #[serde(default)]
    pub ips: Vec<String>,
    /// A static MAC, copied into `<provider>.kubernetes.io/mac_address`.
    #[serde(default)]
    pub mac: Option<String>,
    /// Gateways for the pod's default route through this attachment (`default-route`).
    #[serde(default, rename = "default-route")]
    pub default_route: Vec<String>,
}

impl NetworkSelection {
    /// The interface name inside the pod: the requested one, else Multus's `net<position>`
    /// (`position` counts attachments from 1).
    pub fn interface_or_default(&self, position: usize) -> String {
        self.interface
            .clone()
            .unwrap_or_else(|| format!("net{position}"))
    }
}

/// What a NAD asks of us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NadKind {
    /// Its plugin (or one of its chained plugins) is `kube-ovn`: an OVN-backed interface.
    KubeOvn,
    /// Another plugin with `"ipam": {"type": "kube-ovn"}`: addresses only.
    IpamOnly,
}

/// Parses the annotation's value; `pod_namespace` fills in absent namespaces.
pub fn parse(
    value: &str,
    pod_namespace: &str,
) -> Result<Vec<NetworkSelection>, NetworkSelectionError> {
    let mut selections = if value.contains(['[', '{', '"']) {
        serde_json::from_str::<Vec<NetworkSelection>>(value).map_err(|e| {
            NetworkSelectionError::Json {
                value: value.to_owned(),
                reason: e.to_string(),
            }
        })?
    } else {
        value
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_short_form)
            .collect::<Result<Vec<_>, _>>()?
    };
    for sel in &mut selections {
        if sel.namespace.is_empty() {
            pod_namespace.clone_into(&mut sel.namespace);
        }
        let element = format!("{}/{}", sel.namespace, sel.name);
        for (what, label) in [("name", &sel.name), ("namespace", &sel.namespace)] {
            check_label(label).map_err(|reason| NetworkSelectionError::Element {
                element: element.clone(),
                reason: format!("the {what} {reason}"),
            })?;
        }
        if let Some(ifname) = &sel.interface {
            check_ifname(ifname).map_err(|reason| NetworkSelectionError::Element {
                element: element.clone(),
                reason: format!("interface {ifname:?} {reason}"),
            })?;
        }
    }
    Ok(selections)
}

/// The provider of the attachment `selections[index]`, given what its NAD is.
pub fn provider(selections: &[NetworkSelection], index: usize, kind: NadKind) -> Option<String> {
    let sel = selections.get(index)?;
    let base = format!("{}.{}", sel.name, sel.namespace);
    Some(match kind {
        NadKind::IpamOnly => base,
        NadKind::KubeOvn => {
            let listed = selections
                .iter()
                .filter(|s| s.name == sel.name && s.namespace == sel.namespace)
                .count();
            match (&sel.interface, listed > 1) {
                (Some(ifname), true) => format!("{base}.ovn.{ifname}"),
                _ => format!("{base}.ovn"),
            }
        }
    })
}

/// The `default-route` gateways the selection gives the attachment of `provider` (`<nad>.<ns>`
/// with any `.ovn[.<if>]` suffix) on interface `ifname`; empty when it gives none.
pub fn default_route_of<'a>(
    selections: &'a [NetworkSelection],
    provider: &str,
    ifname: &str,
) -> &'a [String] {
    selections
        .iter()
        .enumerate()
        .find(|(i, sel)| {
            let base = format!("{}.{}", sel.name, sel.namespace);
            let same_nad = provider
                .strip_prefix(&base)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
            same_nad && sel.interface_or_default(i + 1) == ifname
        })
        .map_or(&[], |(_, sel)| sel.default_route.as_slice())
}

/// `[namespace/]name[@interface]`.
fn parse_short_form(part: &str) -> Result<NetworkSelection, NetworkSelectionError> {
    let invalid = |reason: &str| NetworkSelectionError::Element {
        element: part.to_owned(),
        reason: reason.to_owned(),
    };
    let (rest, interface) = match part.split_once('@') {
        Some((_, ifname)) if ifname.contains('@') => {
            return Err(invalid("more than one '@'"));
        }
        Some((rest, ifname)) => (rest, Some(ifname.to_owned())),
        None => (part, None),
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((_, name)) if name.contains('/') => return Err(invalid("more than one '/'")),
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (String::new(), rest.to_owned()),
    };
    Ok(NetworkSelection {
        name,
        namespace,
        interface,
        ..NetworkSelection::default()
    })
}

/// A DNS-1123 label: 1–63 lowercase letters, digits and '-', starting and ending alphanumeric.
fn check_label(label: &str) -> Result<(), String> {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if label.is_empty() || label.len() > 63 {
        return Err(format!("{label:?} must be 1 to 63 characters"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || !ok_edge(label.chars().next())
        || !ok_edge(label.chars().last())
    {
        return Err(format!(
            "{label:?} is not a DNS-1123 label (lowercase letters, digits and '-', starting and \
             ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// A Linux interface name: 1–15 bytes, no '/', no whitespace, not `.` or `..`.
fn check_ifname(ifname: &str) -> Result<(), String> {
    if ifname.is_empty() || ifname.len() > 15 {
        return Err("must be 1 to 15 bytes".to_owned());
    }
    if ifname == "."
        || ifname == ".."
        || ifname.contains(['/', ':'])
        || ifname.contains(char::is_whitespace)
    {
        return Err("is not a valid interface name".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_of_an_attachment_comes_from_its_own_selection_element() {
        let selections = parse(
            r#"[{"name":"attachnet","interface":"net1"},
                {"name":"macvlan","namespace":"kube-system","default-route":["172.18.0.1"]}]"#,
            "default",
        )
        .expect("parses");
        assert!(default_route_of(&selections, "attachnet.default.ovn", "net1").is_empty());
        assert_eq!(
            default_route_of(&selections, "macvlan.kube-system", "net2"),
            ["172.18.0.1".to_owned()]
        );
        assert!(default_route_of(&selections, "macvlan.kube-system", "net9").is_empty());
        assert!(default_route_of(&selections, "macvlan.kube-systemx", "net2").is_empty());
    }

    #[test]
    fn the_seeds_short_form_names_the_nad_in_the_pods_namespace() {
        let sels = parse("default/attachnet", "apps").expect("parses");
        assert_eq!(sels.len(), 1);
        assert_eq!(
            (sels[0].namespace.as_str(), sels[0].name.as_str()),
            ("default", "attachnet")
        );
        let sels = parse("macvlan", "apps").expect("parses");
        assert_eq!(sels[0].namespace, "apps");
        assert_eq!(sels[0].interface_or_default(1), "net1");
    }

    #[test]
    fn a_comma_list_keeps_order_and_interfaces() {
        let sels = parse(" a@eth9 , other/b ,c", "ns1").expect("parses");
        let got: Vec<(String, String, Option<String>)> = sels
            .into_iter()
            .map(|s| (s.namespace, s.name, s.interface))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ns1".to_owned(), "a".to_owned(), Some("eth9".to_owned())),
                ("other".to_owned(), "b".to_owned(), None),
                ("ns1".to_owned(), "c".to_owned(), None),
            ]
        );
    }

    #[test]
    fn the_json_form_reads_interface_ips_mac_and_default_route() {
        let sels = parse(
            r#"[{"name":"attachnet","namespace":"default","interface":"net2","ips":["172.17.0.20"],
                "mac":"c2:b0:57:49:47:f1","default-route":["172.17.0.1"]}]"#,
            "x",
        )
        .expect("parses");
        assert_eq!(sels[0].interface.as_deref(), Some("net2"));
        assert_eq!(sels[0].ips, vec!["172.17.0.20".to_owned()]);
        assert_eq!(sels[0].mac.as_deref(), Some("c2:b0:57:49:47:f1"));
        assert_eq!(sels[0].default_route, vec!["172.17.0.1".to_owned()]);
    }

    #[test]
    fn malformed_values_are_refused_naming_what_is_wrong() {
        let err = parse("a/b/c", "ns").expect_err("two slashes");
        assert!(err.to_string().contains("\"a/b/c\""), "{err}");
        assert!(err.to_string().contains("more than one '/'"), "{err}");
        let err = parse("Bad_Name", "ns").expect_err("not a label");
        assert!(err.to_string().contains("\"Bad_Name\""), "{err}");
        let err = parse("[{\"name\": 3}]", "ns").expect_err("bad JSON");
        assert!(matches!(err, NetworkSelectionError::Json { .. }), "{err}");
        let err = parse("a@averyveryverylongname", "ns").expect_err("long ifname");
        assert!(err.to_string().contains("averyveryverylongname"), "{err}");
    }

    #[test]
    fn providers_follow_kube_ovns_naming() {
        let sels = parse("default/attachnet, default/macvlan", "default").expect("parses");
        assert_eq!(
            provider(&sels, 0, NadKind::KubeOvn).as_deref(),
            Some("attachnet.default.ovn")
        );
        assert_eq!(
            provider(&sels, 1, NadKind::IpamOnly).as_deref(),
            Some("macvlan.default")
        );
        assert_eq!(provider(&sels, 2, NadKind::IpamOnly), None);
    }

    #[test]
    fn the_same_kube_ovn_nad_twice_gets_a_provider_per_interface() {
        let sels = parse("attachnet@net1,attachnet@net2", "default").expect("parses");
        assert_eq!(
            provider(&sels, 0, NadKind::KubeOvn).as_deref(),
            Some("attachnet.default.ovn.net1")
        );
        assert_eq!(
            provider(&sels, 1, NadKind::KubeOvn).as_deref(),
            Some("attachnet.default.ovn.net2")
        );
    }
}
