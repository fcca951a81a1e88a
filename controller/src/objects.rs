//! Between Kubernetes objects and the engine's types: pods, StatefulSets, NADs, Subnets, IPPools
//! and IP resources in; IP resources out (the Subnet status is `status`'s). Custom resources are read as JSON
//! (`DynamicObject`), field by field, so a Subnet written for Kube-OVN is read as Kube-OVN reads
//! it and unknown fields never get in the way.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};
use sidelane_api::crd::{SpecError, SubnetSpec};

use crate::{
    attachments::{PodView, PoolSpec, parse_ip_pool},
    engine::IpRecord,
    subnet::SubnetInput,
};

/// Where Sidelane keeps what Kube-OVN's IP resource has no field for.
pub const POD_UID_ANNOTATION: &str = "sidelane.io/pod-uid";
/// The attachment's provider on an IP resource.
pub const PROVIDER_ANNOTATION: &str = "sidelane.io/provider";
/// The attachment's interface on an IP resource.
pub const IFNAME_ANNOTATION: &str = "sidelane.io/ifname";

/// `kubeovn.io/v1` `Subnet`.
pub fn subnet_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "Subnet"),
        "subnets",
    )
}

/// `kubeovn.io/v1` `IP`.
pub fn ip_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeovn.io", "v1", "IP"), "ips")
}

/// `kubeovn.io/v1` `IPPool`.
pub fn ip_pool_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "IPPool"),
        "ippools",
    )
}

/// `kubeovn.io/v1` `SecurityGroup`.
pub fn security_group_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubeovn.io", "v1", "SecurityGroup"),
        "security-groups",
    )
}

/// `kubeovn.io/v1` `Vpc`.
pub fn vpc_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeovn.io", "v1", "Vpc"), "vpcs")
}

/// A Vpc's name and its part in the OVN topology (`spec.staticRoutes`; entries without a
/// CIDR or next hop are skipped).
pub fn vpc_input(obj: &DynamicObject) -> (String, crate::ovn::VpcInput) {
    let routes = obj
        .data
        .pointer("/spec/staticRoutes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = |r: &Value, k: &str| {
        r.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let static_routes = routes
        .iter()
        .map(|r| crate::ovn::StaticRoute {
            ip_prefix: text(r, "cidr"),
            nexthop: text(r, "nextHopIP"),
            policy: crate::ovn::route_policy(&text(r, "policy")).to_owned(),
        })
        .filter(|r| !r.ip_prefix.is_empty() && !r.nexthop.is_empty())
        .collect();
    (
        kube::ResourceExt::name_any(obj),
        crate::ovn::VpcInput { static_routes },
    )
}

/// `k8s.cni.cncf.io/v1` `NetworkAttachmentDefinition`.
pub fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

/// The engine's view of a pod.
pub fn pod_view(pod: &Pod) -> PodView {
    let meta = &pod.metadata;
    PodView {
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        statefulset: meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "StatefulSet" && o.controller == Some(true))
            .map(|o| o.name.clone()),
    }
}

/// Whether a pod no longer needs its addresses: being deleted, or finished for good
/// (Succeeded, or Failed and never restarted), as Kube-OVN decides.
pub fn is_gone(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let restart = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always");
    matches!(
        (phase, restart),
        (Some("Succeeded"), "Never" | "OnFailure") | (Some("Failed"), "Never")
    )
}

/// A StatefulSet's replica count (1 when unset, as Kubernetes defaults it).
pub fn replicas(sts: &StatefulSet) -> u32 {
    sts.spec
        .replicas
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(1)
}

fn str_at<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field).and_then(Value::as_str).unwrap_or_default()
}

fn strings_at(v: &Value, field: &str) -> Vec<String> {
    v.get(field)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A NAD's `spec.config` (`None` when the spec has none).
pub fn nad_config(obj: &DynamicObject) -> Option<String> {
    obj.data
        .get("spec")
        .and_then(|s| s.get("config"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The Subnet fields the controller reads, through the typed spec; a field of the wrong type
/// is an error naming it (the Subnet is refused, keeping what it had).
pub fn subnet_input(obj: &DynamicObject) -> Result<SubnetInput, SpecError> {
    let spec = SubnetSpec::from_value(obj.data.get("spec").unwrap_or(&Value::Null))?;
    Ok(SubnetInput {
        name: obj.metadata.name.clone().unwrap_or_default(),
        cidr_block: spec.cidr().to_owned(),
        gateway: spec.gateway,
        exclude_ips: spec.exclude_ips,
        provider: spec.provider,
        protocol: spec.protocol,
        vpc: spec.vpc,
        namespaces: spec.namespaces,
        mtu: spec.mtu,
    })
}

/// An IPPool's name and entries (`spec.ips`: addresses, ranges are not expanded).
pub fn ip_pool(obj: &DynamicObject) -> (String, Vec<Vec<IpAddr>>) {
    let spec = obj.data.get("spec").cloned().unwrap_or(Value::Null);
    let entries = match parse_ip_pool(&strings_at(&spec, "ips").join(",")) {
        PoolSpec::Entries(e) => e,
        PoolSpec::Named(_) => Vec::new(),
    };
    (obj.metadata.name.clone().unwrap_or_default(), entries)
}

/// The record an IP resource holds; `None` for one Sidelane did not write (no attachment
/// annotations) or without addresses.
pub fn ip_record(obj: &DynamicObject) -> Option<IpRecord> {
    let spec = obj.data.get("spec")?;
    let annotations = obj.metadata.annotations.as_ref()?;
    let ips: Vec<IpAddr> = str_at(spec, "ipAddress")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if ips.is_empty() {
        return None;
    }
    let mac = str_at(spec, "macAddress");
    Some(IpRecord {
        name: obj.metadata.name.clone()?,
        pod_name: str_at(spec, "podName").to_owned(),
        namespace: str_at(spec, "namespace").to_owned(),
        pod_uid: annotations.get(POD_UID_ANNOTATION)?.clone(),
        subnet: str_at(spec, "subnet").to_owned(),
        ips,
        mac: (!mac.is_empty()).then(|| mac.to_owned()),
        provider: annotations.get(PROVIDER_ANNOTATION)?.clone(),
        ifname: annotations.get(IFNAME_ANNOTATION)?.clone(),
        pod_type: str_at(spec, "podType").to_owned(),
    })
}

/// Whether Sidelane wrote this IP resource (it carries the attachment's annotations).
pub fn is_ours(obj: &DynamicObject) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(POD_UID_ANNOTATION))
}

/// The pod (`namespace`, `name`) an IP resource names in its spec.
pub fn ip_pod(obj: &DynamicObject) -> Option<(String, String)> {
    let spec = obj.data.get("spec")?;
    let (ns, pod) = (str_at(spec, "namespace"), str_at(spec, "podName"));
    (!ns.is_empty() && !pod.is_empty()).then(|| (ns.to_owned(), pod.to_owned()))
}

/// The record of an IP resource Sidelane did not write, for its live pod `pod_uid`: the
/// provider from its name as Kube-OVN names them (`<pod>.<namespace>` for the default
/// network, `ovn`; `<pod>.<namespace>.<provider>` for an attachment). `None` without
/// addresses, pod or Subnet.
pub fn foreign_ip_record(obj: &DynamicObject, pod_uid: &str) -> Option<IpRecord> {
    let spec = obj.data.get("spec")?;
    let (namespace, pod_name) = ip_pod(obj)?;
    let name = obj.metadata.name.clone()?;
    let ips: Vec<IpAddr> = str_at(spec, "ipAddress")
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let subnet = str_at(spec, "subnet");
    if ips.is_empty() || subnet.is_empty() {
        return None;
    }
    let provider = name
        .strip_prefix(&format!("{pod_name}.{namespace}."))
        .unwrap_or("ovn")
        .to_owned();
    Some(IpRecord {
        name,
        pod_name,
        namespace,
        pod_uid: pod_uid.to_owned(),
        subnet: subnet.to_owned(),
        ips,
        mac: None,
        provider,
        ifname: String::new(),
        pod_type: String::new(),
    })
}

/// The IP resource for `record`, with Kube-OVN's fields and labels.
pub fn ip_object(record: &IpRecord, node_name: &str) -> Value {
    let join = |v: Vec<String>| v.join(",");
    let of = |v4: bool| {
        join(
            record
                .ips
                .iter()
                .filter(|ip| ip.is_ipv4() == v4)
                .map(ToString::to_string)
                .collect(),
        )
    };
    let labels: BTreeMap<String, String> = [
        ("ovn.kubernetes.io/subnet".to_owned(), record.subnet.clone()),
        (
            "ovn.kubernetes.io/node-name".to_owned(),
            node_name.to_owned(),
        ),
        (record.subnet.clone(), String::new()),
        (
            "ovn.kubernetes.io/ip_reserved".to_owned(),
            "false".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    json!({
        "apiVersion": "kubeovn.io/v1",
        "kind": "IP",
        "metadata": {
            "name": record.name,
            "labels": labels,
            "annotations": {
                POD_UID_ANNOTATION: record.pod_uid,
                PROVIDER_ANNOTATION: record.provider,
                IFNAME_ANNOTATION: record.ifname,
            },
        },
        "spec": {
            "podName": record.pod_name,
            "namespace": record.namespace,
            "subnet": record.subnet,
            "attachSubnets": [],
            "nodeName": node_name,
            "ipAddress": join(record.ips.iter().map(ToString::to_string).collect()),
            "v4IpAddress": of(true),
            "v6IpAddress": of(false),
            "attachIps": [],
            "macAddress": record.mac.clone().unwrap_or_default(),
            "attachMacs": [],
            "containerID": "",
            "podType": record.pod_type,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamic(value: Value) -> DynamicObject {
        serde_json::from_value(value).expect("a dynamic object")
    }

    #[test]
    fn a_subnet_is_read_through_the_typed_spec_and_a_mistyped_field_is_named() {
        let obj = |spec: Value| {
            dynamic(json!({
                "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
                "metadata": {"name": "attachnet"}, "spec": spec,
            }))
        };
        let input = subnet_input(&obj(json!({
            "cidr": "10.30.0.0/24", "provider": "attachnet.default.ovn", "mtu": 1300,
            "excludeIps": ["10.30.0.1"], "aFieldKubeOvnAddsLater": true
        })))
        .expect("a Subnet");
        assert_eq!(input.cidr_block, "10.30.0.0/24");
        assert_eq!(input.mtu, Some(1300));
        assert_eq!(input.exclude_ips, ["10.30.0.1"]);
        let err = subnet_input(&obj(
            json!({"cidrBlock": "10.30.0.0/24", "namespaces": "default"}),
        ))
        .expect_err("a string where a list belongs");
        assert_eq!(err.path, "namespaces");
        assert!(err.to_string().starts_with("spec.namespaces: "), "{err}");
    }

    #[test]
    fn an_ip_resource_kube_ovn_wrote_is_read_for_its_live_pod() {
        let obj = dynamic(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": {"name": "legacy.default.macvlan.default"},
            "spec": {"podName": "legacy", "namespace": "default", "subnet": "macvlan",
                     "ipAddress": "172.17.0.50", "macAddress": "00:00:00:53:6B:BB"}
        }));
        assert!(!is_ours(&obj));
        assert_eq!(ip_record(&obj), None, "not read as one of ours");
        let record = foreign_ip_record(&obj, "uid-1").expect("a record");
        assert_eq!(record.provider, "macvlan.default");
        assert_eq!(record.pod_uid, "uid-1");
        assert_eq!(
            record.ips,
            ["172.17.0.50".parse::<IpAddr>().expect("an address")]
        );
        let primary = dynamic(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "IP",
            "metadata": {"name": "legacy.default"},
            "spec": {"podName": "legacy", "namespace": "default", "subnet": "ovn-default",
                     "ipAddress": "10.16.0.9"}
        }));
        assert_eq!(
            foreign_ip_record(&primary, "uid-1").map(|r| r.provider),
            Some("ovn".to_owned())
        );
    }

    #[test]
    fn the_seeds_subnet_is_read_with_its_unknown_fields_kept_aside() {
        let obj = dynamic(json!({
            "apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "macvlan"},
            "spec": {"protocol": "IPv4", "provider": "macvlan.default", "cidrBlock": "172.17.0.0/16",
                     "gateway": "172.17.0.1", "excludeIps": ["172.17.0.0..172.17.0.10"],
                     "natOutgoing": true, "unknownField": 3}
        }));
        let input = subnet_input(&obj).expect("the seed's Subnet");
        assert_eq!(input.name, "macvlan");
        assert_eq!(input.cidr_block, "172.17.0.0/16");
        assert_eq!(input.exclude_ips, ["172.17.0.0..172.17.0.10"]);
        assert_eq!(input.provider, "macvlan.default");
    }

    #[test]
    fn an_ip_resource_round_trips_through_its_json() {
        let record = IpRecord {
            name: "samplepod.default.attachnet.default.ovn".to_owned(),
            pod_name: "samplepod".to_owned(),
            namespace: "default".to_owned(),
            pod_uid: "u1".to_owned(),
            subnet: "attachnet".to_owned(),
            ips: vec![
                "172.18.0.11".parse().expect("ip"),
                "fd00::b".parse().expect("ip"),
            ],
            mac: Some("02:00:00:00:00:0b".to_owned()),
            provider: "attachnet.default.ovn".to_owned(),
            ifname: "net1".to_owned(),
            pod_type: String::new(),
        };
        let obj = ip_object(&record, "node1");
        assert_eq!(obj["spec"]["ipAddress"], "172.18.0.11,fd00::b");
        assert_eq!(obj["spec"]["v4IpAddress"], "172.18.0.11");
        assert_eq!(obj["spec"]["v6IpAddress"], "fd00::b");
        assert_eq!(
            obj["metadata"]["labels"]["ovn.kubernetes.io/subnet"],
            "attachnet"
        );
        assert_eq!(ip_record(&dynamic(obj)), Some(record));
    }
}
