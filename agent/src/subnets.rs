//! What the agent needs of Subnets (`kubeovn.io/v1`, read through the typed
//! [`SubnetSpec`]): whether a provider is bound to one, as Kube-OVN's daemon checks before it
//! waits, the MTU an OVN-backed interface gets, and whether the fast path may be used. Read over
//! the API server by [`crate::api_server::KubePods`] (a watch-fed cache).

use std::future::Future;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;
use sidelane_api::crd::SubnetSpec;
use tracing::warn;

use crate::pods::PodError;

/// What the agent needs of a Subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    /// Its name (the logical switch).
    pub name: String,
    /// `spec.provider` (`ovn` when empty, as Kube-OVN defaults it).
    pub provider: String,
    /// `spec.mtu`, when set.
    pub mtu: Option<u32>,
    /// Whether same-node traffic of its pods may take the fast path: yes unless the Subnet
    /// says `sidelane.io/fastpath: "false"` (annotation), or has ACLs (`spec.acls`), whose
    /// matches the fast path cannot prove. A private Subnet keeps it: same-switch traffic is
    /// what a private Subnet always admits.
    pub fastpath: bool,
    /// Whether traffic between its pods and other Subnets of its Vpc may be routed on the fast
    /// path, as far as the Subnet itself goes (the Vpc has its say in [`crate::routes`]).
    pub routing: Option<SubnetRouting>,
}

/// What routing on the fast path needs of a Subnet that allows it: an OVN overlay Subnet (no
/// `vlan`: an underlay Subnet's gateway is the physical router's) that is on the fast path and
/// not private (a private Subnet drops what other Subnets send it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetRouting {
    /// Its Vpc (`ovn-cluster` when it names none, as Kube-OVN defaults it).
    pub vpc: String,
    /// Its CIDRs (one per family).
    pub cidrs: Vec<ipnet::IpNet>,
}

/// The Vpc of an OVN Subnet that names none.
pub const DEFAULT_VPC: &str = "ovn-cluster";

/// Whether `provider` is an OVN-backed one (`ovn`, or `<name>.<namespace>.ovn`).
pub fn is_ovn_provider(provider: &str) -> bool {
    provider == "ovn"
        || provider
            .rsplit_once('.')
            .is_some_and(|(_, last)| last == "ovn")
}

/// The Subnet annotation that switches the fast path off (`"false"`).
pub const FASTPATH_ANNOTATION: &str = "sidelane.io/fastpath";

/// Reads Subnets. Implemented over the Kubernetes API by [`crate::api_server::KubePods`].
pub trait SubnetSource: Send + Sync + 'static {
    /// Every Subnet; `fresh` bypasses any cache.
    fn subnets(
        &self,
        fresh: bool,
    ) -> impl Future<Output = Result<Vec<SubnetInfo>, PodError>> + Send;
}

/// The Subnet that serves `provider` for interface `ifname`: `None` for the primary network
/// (`""`/`ovn`, which needs no Subnet check), else `Some(result)` with the first Subnet whose
/// provider equals `provider` without a trailing `.<ifname>`, as Kube-OVN matches it.
pub fn serving<'a>(
    subnets: &'a [SubnetInfo],
    provider: &str,
    ifname: &str,
) -> Option<Option<&'a SubnetInfo>> {
    if provider.is_empty() || provider == "ovn" {
        return None;
    }
    let base = provider
        .strip_suffix(ifname)
        .and_then(|p| p.strip_suffix('.'))
        .unwrap_or(provider);
    Some(subnets.iter().find(|s| s.provider == base))
}

/// The MTU of an OVN-backed interface: the allocated logical switch's `spec.mtu`, else that of
/// the Subnet serving the provider, else `default`.
pub fn mtu_for(
    subnets: &[SubnetInfo],
    logical_switch: Option<&str>,
    serving: Option<&SubnetInfo>,
    default: u32,
) -> u32 {
    logical_switch
        .and_then(|ls| subnets.iter().find(|s| s.name == ls))
        .or(serving)
        .and_then(|s| s.mtu)
        .unwrap_or(default)
}

/// The Subnet resource.
pub fn subnet_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "Subnet"),
        "subnets",
    )
}

/// What the agent needs of a Subnet object, read through the typed spec; one whose spec does
/// not read is skipped with a warning (the controller refuses it, naming the field).
pub fn info_of(obj: &DynamicObject) -> Option<SubnetInfo> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let spec = match SubnetSpec::from_value(obj.data.get("spec").unwrap_or(&Value::Null)) {
        Ok(spec) => spec,
        Err(e) => {
            warn!(subnet = %name, error = %e, "skipping a Subnet whose spec does not read");
            return None;
        }
    };
    let opted_out = obj
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(FASTPATH_ANNOTATION))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("false"));
    let provider = if spec.provider.is_empty() {
        "ovn".to_owned()
    } else {
        spec.provider.clone()
    };
    let fastpath = !(opted_out || spec.has_acls());
    Some(SubnetInfo {
        routing: routing_of(&name, &spec, &provider, fastpath),
        name,
        provider,
        mtu: spec.mtu.filter(|m| *m > 0),
        fastpath,
    })
}

/// The Subnet's side of routing on the fast path: `None` unless it is an OVN overlay Subnet on
/// the fast path, not private, whose CIDRs read.
fn routing_of(
    name: &str,
    spec: &SubnetSpec,
    provider: &str,
    fastpath: bool,
) -> Option<SubnetRouting> {
    if !fastpath || spec.private == Some(true) || !spec.vlan.is_empty() {
        return None;
    }
    if !is_ovn_provider(provider) {
        return None;
    }
    let cidrs: Result<Vec<ipnet::IpNet>, _> = spec
        .cidr()
        .split(',')
        .map(|c| c.trim().parse::<ipnet::IpNet>())
        .collect();
    let cidrs = match cidrs {
        Ok(c) if !c.is_empty() => c,
        _ => {
            warn!(subnet = %name, cidr = %spec.cidr(),
                  "a Subnet's CIDR does not read; it is not routed on the fast path");
            return None;
        }
    };
    Some(SubnetRouting {
        vpc: if spec.vpc.is_empty() {
            DEFAULT_VPC.to_owned()
        } else {
            spec.vpc.clone()
        },
        cidrs,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn subnet_object(annotations: &Value, spec: &Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
            "metadata": {"name": "s", "annotations": annotations}, "spec": spec,
        }))
        .expect("a Subnet object")
    }

    fn fastpath(obj: &DynamicObject) -> bool {
        info_of(obj).expect("a readable Subnet").fastpath
    }

    #[test]
    fn a_subnet_whose_spec_does_not_read_is_skipped() {
        assert_eq!(
            info_of(&subnet_object(&json!({}), &json!({"mtu": "1400"}))),
            None
        );
        let read = info_of(&subnet_object(&json!({}), &json!({"mtu": 1300}))).expect("read");
        assert_eq!((read.provider.as_str(), read.mtu), ("ovn", Some(1300)));
    }

    #[test]
    fn the_fast_path_is_on_unless_the_subnet_opts_out_or_has_acls_and_a_private_subnet_keeps_it() {
        assert!(fastpath(&subnet_object(&json!({}), &json!({}))));
        assert!(!fastpath(&subnet_object(
            &json!({"sidelane.io/fastpath": "false"}),
            &json!({})
        )));
        assert!(fastpath(&subnet_object(
            &json!({"sidelane.io/fastpath": "true"}),
            &json!({})
        )));
        assert!(!fastpath(&subnet_object(
            &json!({}),
            &json!({"acls": [{"action": "drop"}]})
        )));
        assert!(fastpath(&subnet_object(
            &json!({}),
            &json!({"private": true})
        )));
    }

    fn subnet(name: &str, provider: &str, mtu: Option<u32>) -> SubnetInfo {
        SubnetInfo {
            name: name.to_owned(),
            provider: provider.to_owned(),
            mtu,
            fastpath: true,
            routing: None,
        }
    }

    fn routing(spec: &Value) -> Option<SubnetRouting> {
        info_of(&subnet_object(&json!({}), spec))
            .expect("a readable Subnet")
            .routing
    }

    #[test]
    fn an_overlay_subnet_on_the_fast_path_may_be_routed_in_its_vpc() {
        let read = routing(&json!({
            "cidrBlock": "10.1.0.0/24,fd00:1::/64", "provider": "net-a.default.ovn", "vpc": "vpc-a"
        }))
        .expect("routed");
        assert_eq!(read.vpc, "vpc-a");
        assert_eq!(
            read.cidrs,
            [
                "10.1.0.0/24".parse().expect("a CIDR"),
                "fd00:1::/64".parse().expect("a CIDR")
            ]
        );
        let default = routing(&json!({"cidrBlock": "10.2.0.0/24"})).expect("routed");
        assert_eq!(default.vpc, DEFAULT_VPC);
    }

    #[test]
    fn private_underlay_macvlan_or_acl_subnets_and_unreadable_cidrs_are_never_routed() {
        for spec in [
            json!({"cidrBlock": "10.1.0.0/24", "private": true}),
            json!({"cidrBlock": "10.1.0.0/24", "vlan": "vlan10"}),
            json!({"cidrBlock": "10.1.0.0/24", "provider": "macvlan.default"}),
            json!({"cidrBlock": "10.1.0.0/24", "acls": [{"action": "drop"}]}),
            json!({"cidrBlock": "10.1.0.0/33"}),
            json!({}),
        ] {
            assert_eq!(routing(&spec), None, "{spec}");
        }
    }

    #[test]
    fn a_provider_is_served_by_the_subnet_with_that_provider_even_per_interface() {
        let subnets = [
            subnet("ovn-default", "ovn", None),
            subnet("attachnet", "attachnet.default.ovn", Some(1300)),
        ];
        assert_eq!(serving(&subnets, "ovn", "eth0"), None);
        assert_eq!(serving(&subnets, "", "eth0"), None);
        assert_eq!(
            serving(&subnets, "attachnet.default.ovn", "net1"),
            Some(Some(&subnets[1]))
        );
        assert_eq!(
            serving(&subnets, "attachnet.default.ovn.net2", "net2"),
            Some(Some(&subnets[1]))
        );
        assert_eq!(serving(&subnets, "macvlan.default", "net1"), Some(None));
    }

    #[test]
    fn the_mtu_comes_from_the_allocated_switch_then_the_serving_subnet_then_the_default() {
        let subnets = [
            subnet("a", "p.ns.ovn", Some(1300)),
            subnet("b", "p.ns.ovn", None),
            subnet("c", "p.ns.ovn", Some(9000)),
        ];
        assert_eq!(mtu_for(&subnets, Some("c"), Some(&subnets[0]), 1400), 9000);
        assert_eq!(mtu_for(&subnets, Some("b"), Some(&subnets[0]), 1400), 1400);
        assert_eq!(mtu_for(&subnets, None, Some(&subnets[0]), 1400), 1300);
        assert_eq!(mtu_for(&subnets, Some("gone"), None, 1400), 1400);
    }
}
