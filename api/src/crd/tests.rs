use kube::CustomResourceExt as _;
use serde_json::Value;

use super::*;

/// Every document of every file in `deploy/examples`.
fn examples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut docs = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the examples directory") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read_to_string(&path).expect("an example");
        docs.extend(serde_saphyr::from_multiple::<Value>(&text).expect("YAML"));
    }
    docs
}

#[test]
fn every_seed_subnet_parses_and_round_trips_without_gaining_fields() {
    let subnets: Vec<Value> = examples()
        .into_iter()
        .filter(|d| d["kind"] == "Subnet")
        .collect();
    assert!(
        subnets.len() >= 4,
        "the seeds have Subnets: {}",
        subnets.len()
    );
    for doc in subnets {
        let subnet: Subnet = serde_json::from_value(doc.clone()).expect("a Subnet");
        if doc["spec"]["cidrBlock"].is_null() {
            // The non-primary mode document writes `cidr` (kept as an unknown field; the
            // controller reads it when `cidrBlock` is absent).
            assert_eq!(subnet.spec.vpc, "vpc-secondary");
        } else if subnet.spec.cidr_block == "172.17.0.0/16" {
            // The attachnet documents.
            assert_eq!(subnet.spec.gateway, "172.17.0.1");
            assert_eq!(subnet.spec.protocol, "IPv4");
            assert_eq!(subnet.spec.exclude_ips.len(), 1);
        } else if subnet.spec.provider == "ovn-vpc-external-network.kube-system" {
            // The NAT gateway example's external network, as Kube-OVN's documents write it.
            assert_eq!(subnet.spec.cidr_block, "172.20.0.0/24");
            assert_eq!(subnet.spec.gateway, "172.20.0.1");
        } else {
            // The segmentation and multi-tenancy example's networks.
            assert!(
                subnet.spec.cidr_block.starts_with("10.11"),
                "{:?}",
                subnet.spec
            );
            assert_eq!(subnet.spec.protocol, "IPv4");
        }
        let back = serde_json::to_value(&subnet).expect("serialises");
        assert_eq!(back["spec"], doc["spec"], "no field gained or lost");
    }
}

#[test]
fn a_kube_ovn_subnet_with_fields_we_do_not_name_keeps_them() {
    let doc = serde_json::json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "s"},
        "spec": {"cidrBlock": "10.16.0.0/16", "enableDHCP": true, "logicalGateway": false,
                 "u2oInterconnection": true}
    });
    let subnet: Subnet = serde_json::from_value(doc.clone()).expect("a Subnet");
    assert_eq!(subnet.spec.enable_dhcp, Some(true));
    assert_eq!(
        serde_json::to_value(&subnet).expect("serialises")["spec"],
        doc["spec"]
    );
}

#[test]
fn the_crds_are_cluster_scoped_with_status_and_printer_columns() {
    for (crd, plural, status) in [
        (Subnet::crd(), "subnets", true),
        (IP::crd(), "ips", false),
        (Vpc::crd(), "vpcs", true),
        (VpcNatGateway::crd(), "vpc-nat-gateways", true),
        (IptablesEIP::crd(), "iptables-eips", true),
        (IptablesSnatRule::crd(), "iptables-snat-rules", true),
        (IptablesDnatRule::crd(), "iptables-dnat-rules", true),
        (IptablesFIPRule::crd(), "iptables-fip-rules", true),
        (IPPool::crd(), "ippools", false),
    ] {
        assert_eq!(crd.spec.group, "kubeovn.io");
        assert_eq!(crd.spec.scope, "Cluster", "{plural}");
        assert_eq!(crd.spec.names.plural, plural);
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1");
        assert_eq!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            status,
            "{plural}: status subresource"
        );
        assert!(
            version
                .additional_printer_columns
                .as_ref()
                .is_some_and(|c| !c.is_empty()),
            "{plural}: printer columns"
        );
    }
    let subnet = serde_json::to_value(Subnet::crd()).expect("serialises");
    let protocol = &subnet["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["protocol"];
    assert_eq!(protocol["pattern"], "^(IPv4|IPv6|Dual|Mac)?$");
}

#[test]
fn an_ip_resource_written_by_the_controller_parses() {
    let doc = serde_json::json!({
        "apiVersion": "kubeovn.io/v1", "kind": "IP",
        "metadata": {"name": "samplepod.default.attachnet.default.ovn"},
        "spec": {"podName": "samplepod", "namespace": "default", "subnet": "attachnet",
                 "attachSubnets": [], "nodeName": "node1", "ipAddress": "172.17.0.11",
                 "v4IpAddress": "172.17.0.11", "v6IpAddress": "", "attachIps": [],
                 "macAddress": "02:00:00:00:00:0b", "attachMacs": [], "containerID": "",
                 "podType": ""}
    });
    let ip: IP = serde_json::from_value(doc).expect("an IP");
    assert_eq!(ip.spec.v4_ip_address, "172.17.0.11");
    assert_eq!(ip.spec.mac_address, "02:00:00:00:00:0b");
}

/// Kubernetes' structural-schema rule: every node names its `type`, unless it keeps unknown
/// fields or is int-or-string; and only the formats the API server knows.
fn structural_violations(schema: &Value, path: &str, found: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        return;
    };
    let exempt = node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
        || node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if !exempt && node.get("type").is_none_or(Value::is_null) {
        found.push(format!("{path}: no type"));
    }
    if let Some(format) = node.get("format").and_then(Value::as_str) {
        const KNOWN: &[&str] = &[
            "int32",
            "int64",
            "float",
            "double",
            "byte",
            "date",
            "date-time",
            "password",
            "uuid",
            "ipv4",
            "ipv6",
            "cidr",
            "mac",
            "uri",
            "email",
            "hostname",
            "duration",
        ];
        if !KNOWN.contains(&format) {
            found.push(format!("{path}: format {format} unknown to the API server"));
        }
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_violations(child, &format!("{path}.{name}"), found);
        }
    }
    if let Some(items) = node.get("items") {
        structural_violations(items, &format!("{path}[]"), found);
    }
    if let Some(values) = node.get("additionalProperties") {
        structural_violations(values, &format!("{path}{{}}"), found);
    }
}

#[test]
fn every_crd_schema_is_structural_as_the_api_server_requires() {
    let mut found = Vec::new();
    for crd in [
        Subnet::crd(),
        Vpc::crd(),
        IP::crd(),
        IPPool::crd(),
        VpcNatGateway::crd(),
        IptablesEIP::crd(),
        IptablesSnatRule::crd(),
        IptablesDnatRule::crd(),
        IptablesFIPRule::crd(),
    ] {
        let crd = serde_json::to_value(crd).expect("a CRD serialises");
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        for version in crd["spec"]["versions"].as_array().into_iter().flatten() {
            structural_violations(&version["schema"]["openAPIV3Schema"], &name, &mut found);
        }
    }
    assert!(found.is_empty(), "not structural: {found:#?}");
}

#[test]
fn a_spec_field_of_the_wrong_type_is_named_with_its_path_and_value() {
    let err = SubnetSpec::from_value(&serde_json::json!({
        "cidrBlock": "10.30.0.0/24", "mtu": "1400"
    }))
    .expect_err("a string MTU");
    assert_eq!(err.path, "mtu");
    assert!(err.message.contains("\"1400\""), "{err}");
    let err = SubnetSpec::from_value(&serde_json::json!({"excludeIps": ["10.30.0.1", 7]}))
        .expect_err("a number in excludeIps");
    assert_eq!(err.path, "excludeIps[1]");
    assert_eq!(
        err.to_string(),
        format!("spec.excludeIps[1]: {}", err.message)
    );
}

#[test]
fn the_documents_cidr_field_and_unnamed_acls_are_read() {
    let spec = SubnetSpec::from_value(&serde_json::json!({
        "cidr": "10.30.0.0/24", "acls": [{"action": "drop"}], "someFutureField": {"x": 1}
    }))
    .expect("a spec");
    assert_eq!(spec.cidr(), "10.30.0.0/24");
    assert!(spec.has_acls());
    assert!(
        SubnetSpec::from_value(&Value::Null)
            .expect("null")
            .cidr()
            .is_empty()
    );
}
