//! The controller on a real control plane, under the chart's RBAC: the seeds' YAML (deploy/examples) gets the
//! annotations the seeds promise; conflicts become events; deletion releases; StatefulSet pods
//! keep their addresses; a restarted controller takes back what is allocated and never hands
//! an address out twice.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use sidelane_controller::{
    metrics::Metrics,
    run::{self, Options},
};
use sidelane_tests::{
    cluster::{example, networks_of, pods_made_by},
    control_plane::SidelaneCluster,
};
use tokio::{sync::watch, task::JoinHandle};

struct Controller {
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
    _leading: watch::Sender<bool>,
}

impl Controller {
    /// A controller that leads at once (leader election has its own test).
    fn start(api: &SidelaneCluster, runtime: &tokio::runtime::Runtime) -> Controller {
        let client = runtime.block_on(api.controller_client());
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = watch::channel(true);
        let opts = Options {
            gc_interval: Duration::from_millis(300),
            instance: "test".to_owned(),
            ..Options::default()
        };
        let task = runtime.spawn(run::lead(client, opts, Arc::clone(&metrics), rx));
        Controller {
            task,
            metrics,
            _leading: tx,
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod_annotations(api: &SidelaneCluster, name: &str) -> Value {
    api.get("v1", "Pod", "default", name)
        .map_or(Value::Null, |p| p["metadata"]["annotations"].clone())
}

/// Waits until `check` holds, failing with `what` after 20 s.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn allocated(api: &SidelaneCluster, pod: &str, prefix: &str) -> Option<String> {
    let a = pod_annotations(api, pod);
    (a[format!("{prefix}.kubernetes.io/allocated")] == "true")
        .then(|| {
            a[format!("{prefix}.kubernetes.io/ip_address")]
                .as_str()
                .map(str::to_owned)
        })
        .flatten()
}

fn seed_pod(api: &SidelaneCluster, name: &str, annotations: &Value) {
    api.seed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "alpine"}], "nodeName": "node1"}
    }))
    .expect("seeding a pod");
}

#[test]
fn the_multi_nic_ipam_seed_gets_the_annotations_it_promises() {
    let api = SidelaneCluster::with_controllers();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docs = example("multi-nic-ipam.yaml");
    api.apply(&docs);
    api.wait_for_pods("default", pods_made_by(&docs));
    let controller = Controller::start(&api, &runtime);
    let p = "macvlan.default";
    eventually("samplepod allocated", || {
        allocated(&api, "samplepod", p).is_some()
    });
    assert_eq!(
        allocated(&api, "samplepod", p).as_deref(),
        Some("172.17.0.11")
    );
    let a = pod_annotations(&api, "samplepod");
    assert_eq!(a[format!("{p}.kubernetes.io/cidr")], "172.17.0.0/16");
    assert_eq!(a[format!("{p}.kubernetes.io/gateway")], "172.17.0.1");
    assert_eq!(a[format!("{p}.kubernetes.io/logical_switch")], "macvlan");
    eventually("static-ip allocated", || {
        allocated(&api, "static-ip", p).is_some()
    });
    assert_eq!(
        allocated(&api, "static-ip", p).as_deref(),
        Some("172.17.0.100")
    );
    // The Deployment's replicas take the first free ip_pool entries.
    let replicas: Vec<String> = api
        .wait_for_pods("default", pods_made_by(&docs))
        .into_iter()
        .filter(|name| name.starts_with("static-workload-"))
        .collect();
    assert_eq!(replicas.len(), 2, "the Deployment's replicas: {replicas:?}");
    let mut pooled = BTreeSet::new();
    for name in &replicas {
        eventually("a replica allocated", || allocated(&api, name, p).is_some());
        pooled.insert(allocated(&api, name, p).unwrap_or_default());
    }
    assert_eq!(
        pooled,
        BTreeSet::from(["172.17.0.200".to_owned(), "172.17.0.201".to_owned()])
    );
    // One IP resource per attachment, named as Kube-OVN names it.
    let ip = api
        .get(
            "kubeovn.io/v1",
            "IP",
            "",
            "samplepod.default.macvlan.default",
        )
        .expect("the IP resource");
    assert_eq!(ip["spec"]["ipAddress"], "172.17.0.11");
    assert_eq!(ip["spec"]["subnet"], "macvlan");
    assert_eq!(
        ip["spec"]["macAddress"], "",
        "IPAM-only subnets give no MAC"
    );
    // The Subnet was defaulted and its status counts the four addresses.
    eventually("the subnet's status", || {
        api.get("kubeovn.io/v1", "Subnet", "", "macvlan")
            .is_some_and(|s| s["status"]["v4usingIPs"] == 4.0)
    });
    let subnet = api
        .get("kubeovn.io/v1", "Subnet", "", "macvlan")
        .expect("the subnet");
    assert_eq!(
        subnet["spec"]["excludeIps"],
        json!(["172.17.0.1..172.17.0.10"])
    );
    assert_eq!(subnet["status"]["conditions"][0]["type"], "Validated");
    assert_eq!(subnet["status"]["conditions"][0]["status"], "True");
    assert!(
        controller
            .metrics
            .render()
            .contains("sidelane_controller_allocations_total 4"),
        "{}",
        controller.metrics.render()
    );
}

#[test]
fn a_taken_static_address_is_an_event_naming_the_holder_and_allocates_nothing() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    let _controller = Controller::start(&api, &runtime);
    let p = "macvlan.default";
    seed_pod(
        &api,
        "first",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan",
        format!("{p}.kubernetes.io/ip_address"): "172.17.0.50"}),
    );
    eventually("first allocated", || allocated(&api, "first", p).is_some());
    seed_pod(
        &api,
        "second",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan",
        format!("{p}.kubernetes.io/ip_address"): "172.17.0.50"}),
    );
    eventually("an event on the second pod", || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| e["regarding"]["name"] == "second")
    });
    let events = api.list("events.k8s.io/v1", "Event", Some("default"));
    let event = events
        .iter()
        .find(|e| e["regarding"]["name"] == "second")
        .expect("the event");
    assert_eq!(event["reason"], "AcquireAddressFailed");
    assert_eq!(event["type"], "Warning");
    assert_eq!(
        event["note"],
        "default/macvlan (net1): 172.17.0.50 in subnet macvlan is already held by pod default/first"
    );
    assert_eq!(allocated(&api, "second", p), None);
    // The Subnet's status says which addresses are held and which are free, as Kube-OVN's.
    eventually("the Subnet's ranges", || {
        api.get("kubeovn.io/v1", "Subnet", "", "macvlan")
            .is_some_and(|s| s["status"]["v4usingIPrange"] == "172.17.0.50")
    });
    let status = api
        .get("kubeovn.io/v1", "Subnet", "", "macvlan")
        .map(|s| s["status"].clone())
        .unwrap_or_default();
    assert_eq!(
        status["v4availableIPrange"],
        "172.17.0.11-172.17.0.49,172.17.0.51-172.17.255.254"
    );
}

#[test]
fn deleting_a_pod_releases_its_address_and_ip_resource() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    let _controller = Controller::start(&api, &runtime);
    let p = "macvlan.default";
    seed_pod(
        &api,
        "gone",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
    );
    eventually("allocated", || allocated(&api, "gone", p).is_some());
    let name = "gone.default.macvlan.default";
    assert!(api.get("kubeovn.io/v1", "IP", "", name).is_some());
    runtime.block_on(async {
        let pods: Api<Pod> = Api::namespaced(api.client(), "default");
        pods.delete("gone", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleting the pod");
    });
    eventually("the IP resource deleted", || {
        api.get("kubeovn.io/v1", "IP", "", name).is_none()
    });
    // The released address is reused only after the never-used ones.
    seed_pod(
        &api,
        "next",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
    );
    eventually("next allocated", || allocated(&api, "next", p).is_some());
    assert_eq!(allocated(&api, "next", p).as_deref(), Some("172.17.0.12"));
}

#[test]
fn a_statefulset_pod_recreated_keeps_its_pool_entry() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    // No kube-controller-manager runs here: the test makes the StatefulSet's pods itself.
    let sts = api
        .seed(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}},
                              "spec": {"containers": [{"name": "c", "image": "alpine"}]}}}}))
        .expect("seeding the StatefulSet");
    let sts_uid = sts["metadata"]["uid"].clone();
    let _controller = Controller::start(&api, &runtime);
    let p = "macvlan.default";
    let sts_pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                     "uid": sts_uid, "controller": true}],
                "annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan",
                    format!("{p}.kubernetes.io/ip_pool"): "172.17.0.30,172.17.0.31"}},
            "spec": {"containers": [{"name": "c", "image": "alpine"}]}})
    };
    api.seed(sts_pod("db-1")).expect("db-1");
    api.seed(sts_pod("db-0")).expect("db-0");
    eventually("db-1 allocated", || allocated(&api, "db-1", p).is_some());
    eventually("db-0 allocated", || allocated(&api, "db-0", p).is_some());
    assert_eq!(allocated(&api, "db-0", p).as_deref(), Some("172.17.0.30"));
    assert_eq!(allocated(&api, "db-1", p).as_deref(), Some("172.17.0.31"));
    runtime.block_on(async {
        let pods: Api<Pod> = Api::namespaced(api.client(), "default");
        pods.delete("db-1", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleting db-1");
    });
    api.seed(sts_pod("db-1")).expect("db-1 again");
    eventually("db-1 allocated again", || {
        allocated(&api, "db-1", p).is_some()
    });
    assert_eq!(allocated(&api, "db-1", p).as_deref(), Some("172.17.0.31"));
    assert!(
        api.get("kubeovn.io/v1", "IP", "", "db-1.default.macvlan.default")
            .is_some(),
        "the slot's IP resource stays"
    );
}

#[test]
fn a_restarted_controller_keeps_every_address_and_hands_out_only_free_ones() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    let p = "macvlan.default";
    let first = Controller::start(&api, &runtime);
    for i in 0..20 {
        seed_pod(
            &api,
            &format!("p{i}"),
            &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
        );
    }
    for i in 0..20 {
        eventually("allocated", || {
            allocated(&api, &format!("p{i}"), p).is_some()
        });
    }
    drop(first);
    // While no controller runs: one pod goes away, one is created.
    runtime.block_on(async {
        let pods: Api<Pod> = Api::namespaced(api.client(), "default");
        pods.delete("p3", &DeleteParams::default().grace_period(0))
            .await
            .expect("deleting p3");
        // A user edit that must not change the allocation.
        pods.patch(
            "p4",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .expect("labelling p4");
    });
    seed_pod(
        &api,
        "late",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
    );
    let _second = Controller::start(&api, &runtime);
    eventually("late allocated", || allocated(&api, "late", p).is_some());
    eventually("p3's IP resource collected", || {
        api.get("kubeovn.io/v1", "IP", "", "p3.default.macvlan.default")
            .is_none()
    });
    let mut seen = BTreeSet::new();
    for name in (0..20)
        .filter(|i| *i != 3)
        .map(|i| format!("p{i}"))
        .chain(["late".to_owned()])
    {
        let ip = allocated(&api, &name, p).expect("allocated");
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    assert_eq!(
        allocated(&api, "late", p).as_deref(),
        Some("172.17.0.31"),
        "the next never-used address"
    );
}

#[test]
fn dual_stack_and_namespace_restricted_subnets_are_served_as_written() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for (name, config) in [
        (
            "dual",
            r#"{"cniVersion": "0.3.0", "type": "kube-ovn", "provider": "dual.default.ovn"}"#,
        ),
        (
            "team",
            r#"{"cniVersion": "0.3.0", "type": "macvlan", "ipam": {"type": "kube-ovn"}}"#,
        ),
    ] {
        api.seed(
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"config": config}}),
        )
        .expect("a NAD");
    }
    api.seed(
        json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "dual"},
        "spec": {"protocol": "Dual", "provider": "dual.default.ovn",
                 "cidrBlock": "10.66.0.0/24,fd00:66::/120"}}),
    )
    .expect("the dual-stack subnet");
    api.seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "team"},
        "spec": {"provider": "team.default", "cidrBlock": "10.77.0.0/24", "namespaces": ["team-a"]}}))
        .expect("the restricted subnet");
    let _controller = Controller::start(&api, &runtime);
    seed_pod(
        &api,
        "both",
        &json!({"k8s.v1.cni.cncf.io/networks": "dual, team"}),
    );
    eventually("the dual-stack attachment", || {
        allocated(&api, "both", "dual.default.ovn").is_some()
    });
    let a = pod_annotations(&api, "both");
    assert_eq!(
        a["dual.default.ovn.kubernetes.io/ip_address"],
        "10.66.0.2,fd00:66::2"
    );
    assert_eq!(
        a["dual.default.ovn.kubernetes.io/cidr"],
        "10.66.0.0/24,fd00:66::/120"
    );
    assert_eq!(
        a["dual.default.ovn.kubernetes.io/gateway"],
        "10.66.0.1,fd00:66::1"
    );
    assert!(
        a["dual.default.ovn.kubernetes.io/mac_address"].is_string(),
        "an OVN subnet gives a MAC"
    );
    // The restricted subnet does not serve namespace default: an event, and nothing else changes.
    eventually("the refusal event", || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| {
                e["note"].as_str().is_some_and(|n| {
                    n.contains("not bound to any subnet that serves namespace default")
                })
            })
    });
    assert_eq!(allocated(&api, "both", "team.default"), None);
}

/// Every seed scenario in `deploy/examples`, each in a cluster of its own: every pod (and every
/// replica of a Deployment) gets its attachment's allocation, within the Subnet, no address
/// twice; static addresses and pool entries as written.
#[test]
fn every_seed_scenario_gets_the_allocations_it_promises() {
    // (file, provider, pods with a known address)
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        (
            "macvlan-ipam.yaml",
            "macvlan.default",
            &[("static-ip", "172.17.0.100"), ("samplepod", "172.17.0.11")],
        ),
        (
            "macvlan-ovn-subnet.yaml",
            "macvlan.default",
            &[("samplepod", "172.17.0.11")],
        ),
        ("attachnet.yaml", "attachnet.default.ovn", &[]),
        (
            "attachnet-ovn-subnet.yaml",
            "attachnet.default.ovn",
            &[("samplepod", "172.17.0.11")],
        ),
    ];
    for (file, provider, fixed) in cases {
        let api = SidelaneCluster::with_controllers();
        let runtime = tokio::runtime::Runtime::new().expect("a runtime");
        let docs = example(file);
        api.apply(&docs);
        let _controller = Controller::start(&api, &runtime);
        let pods = api.wait_for_pods("default", pods_made_by(&docs));
        assert!(!pods.is_empty(), "{file}: no pods");
        let mut seen = BTreeSet::new();
        for pod in &pods {
            eventually(&format!("{file}: {pod} allocated"), || {
                allocated(&api, pod, provider).is_some()
            });
            let ip = allocated(&api, pod, provider).unwrap_or_default();
            assert!(ip.starts_with("172.17."), "{file}: {pod} got {ip}");
            assert!(seen.insert(ip.clone()), "{file}: {ip} twice");
        }
        for (pod, ip) in fixed {
            assert_eq!(
                allocated(&api, pod, provider).as_deref(),
                Some(*ip),
                "{file}: {pod}"
            );
        }
        let a = pod_annotations(&api, "samplepod");
        let ovn_subnet = file.contains("ovn-subnet") || file.starts_with("attachnet");
        assert_eq!(
            a[format!("{provider}.kubernetes.io/mac_address")].is_string(),
            ovn_subnet,
            "{file}: a MAC exactly when the Subnet is an OVN one"
        );
        if file == "macvlan-ipam.yaml" {
            let mut pool: Vec<String> = pods
                .iter()
                .filter(|p| p.starts_with("static-workload"))
                .filter_map(|p| allocated(&api, p, provider))
                .collect();
            pool.sort();
            assert_eq!(
                pool,
                ["172.17.0.200", "172.17.0.201"],
                "{file}: the ip_pool"
            );
        }
        if file == "attachnet.yaml" {
            let routes = &pod_annotations(&api, "custom-routes-attach")["attachnet.default.ovn.kubernetes.io/routes"];
            assert!(
                routes.as_str().is_some_and(|r| r.contains("172.17.0.254")),
                "routes kept"
            );
        }
    }
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("writing");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading");
    out
}

#[test]
fn metrics_and_probes_are_served_over_http() {
    let api = SidelaneCluster::with_controllers();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let docs = example("multi-nic-ipam.yaml");
    api.apply(&docs);
    api.wait_for_pods("default", pods_made_by(&docs));
    let controller = Controller::start(&api, &runtime);
    let listener = runtime
        .block_on(sidelane_api::probes::bind(
            "127.0.0.1:0".parse().expect("an address"),
        ))
        .expect("binding");
    let port = listener.local_addr().expect("the port").port();
    runtime.spawn(sidelane_api::probes::serve(
        listener,
        Arc::clone(&controller.metrics) as Arc<dyn sidelane_api::probes::Endpoints>,
    ));
    eventually("ready", || {
        http_get(port, "/readyz").starts_with("HTTP/1.1 200")
    });
    assert!(http_get(port, "/healthz").starts_with("HTTP/1.1 200"));
    eventually("allocations counted", || {
        http_get(port, "/metrics").contains("sidelane_controller_allocations_total 4")
    });
    let metrics = http_get(port, "/metrics");
    for name in [
        "sidelane_controller_subnet_used_ips{subnet=\"macvlan\",family=\"ipv4\"} 4",
        "sidelane_controller_reconcile_seconds_bucket",
        "sidelane_controller_leader 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(http_get(port, "/nope").starts_with("HTTP/1.1 404"));
}

#[test]
fn a_subnet_with_an_invalid_spec_allocates_nothing_and_says_why_on_its_status() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.seed(json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": {"config": r#"{"cniVersion": "0.3.0", "type": "macvlan", "ipam": {"type": "kube-ovn"}}"#}}))
        .expect("a NAD");
    // The gateway lies outside the CIDR block.
    api.seed(json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "broken"},
        "spec": {"provider": "broken.default", "cidrBlock": "10.88.0.0/24", "gateway": "10.99.0.1"}}))
        .expect("the invalid subnet");
    let _controller = Controller::start(&api, &runtime);
    seed_pod(
        &api,
        "victim",
        &json!({"k8s.v1.cni.cncf.io/networks": "broken"}),
    );
    eventually("the Subnet's Validated condition", || {
        api.get("kubeovn.io/v1", "Subnet", "", "broken")
            .is_some_and(|s| s["status"]["conditions"][0]["status"] == "False")
    });
    let subnet = api
        .get("kubeovn.io/v1", "Subnet", "", "broken")
        .expect("the subnet");
    let condition = &subnet["status"]["conditions"][0];
    assert_eq!(condition["type"], "Validated");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("10.99.0.1") && message.contains("10.88.0.0/24"),
        "the message names the gateway and the CIDR: {message:?}"
    );
    eventually("a Warning event on the pod", || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| e["regarding"]["name"] == "victim" && e["type"] == "Warning")
    });
    assert_eq!(allocated(&api, "victim", "broken.default"), None);
    assert!(
        api.list("kubeovn.io/v1", "IP", None).is_empty(),
        "no IP resource for a pod of an invalid Subnet"
    );
}

/// An IP resource as Kube-OVN writes one for a pod's attachment: no `sidelane.io/*`
/// annotations.
fn foreign_ip(pod: &str, provider: &str, subnet: &str, ip: &str) -> Value {
    json!({"apiVersion": "kubeovn.io/v1", "kind": "IP",
        "metadata": {"name": format!("{pod}.default.{provider}"),
            "labels": {"ovn.kubernetes.io/subnet": subnet}},
        "spec": {"podName": pod, "namespace": "default", "subnet": subnet, "nodeName": "node1",
            "ipAddress": ip, "v4IpAddress": ip, "macAddress": "", "attachIps": [],
            "attachMacs": [], "attachSubnets": [], "containerID": "", "podType": ""}})
}

#[test]
fn an_ip_resource_sidelane_did_not_write_holds_its_address_for_its_live_pod() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    let p = "macvlan.default";
    // Attached by someone else (Kube-OVN, or restored from a backup) before Sidelane starts.
    seed_pod(&api, "legacy", &json!({}));
    api.seed(foreign_ip("legacy", p, "macvlan", "172.17.0.50"))
        .expect("the foreign IP resource");
    let controller = Controller::start(&api, &runtime);
    seed_pod(
        &api,
        "wants-50",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan",
        format!("{p}.kubernetes.io/ip_address"): "172.17.0.50"}),
    );
    let warning = |pod: &str| {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .into_iter()
            .find(|e| e["regarding"]["name"] == pod && e["type"] == "Warning")
    };
    eventually("a Warning on wants-50", || warning("wants-50").is_some());
    assert_eq!(
        warning("wants-50").map(|e| e["note"].clone()),
        Some(json!(
            "default/macvlan (net1): 172.17.0.50 in subnet macvlan is already held by pod \
             default/legacy (IP resource legacy.default.macvlan.default, not written by Sidelane)"
        ))
    );
    assert_eq!(allocated(&api, "wants-50", p), None);
    // While running: one written after start-up holds its address too (from the next
    // collection on).
    seed_pod(&api, "legacy-2", &json!({}));
    api.seed(foreign_ip("legacy-2", p, "macvlan", "172.17.0.51"))
        .expect("the second foreign IP resource");
    eventually("the next collection holds both", || {
        controller
            .metrics
            .render()
            .contains("sidelane_controller_foreign_ips 2")
    });
    seed_pod(
        &api,
        "wants-51",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan",
        format!("{p}.kubernetes.io/ip_address"): "172.17.0.51"}),
    );
    eventually("a Warning on wants-51", || warning("wants-51").is_some());
    assert_eq!(allocated(&api, "wants-51", p), None);
    // Dynamic allocations go around both; the foreign resources are left as they were.
    seed_pod(
        &api,
        "dynamic",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
    );
    eventually("dynamic allocated", || {
        allocated(&api, "dynamic", p).is_some()
    });
    for (name, ip) in [("legacy", "172.17.0.50"), ("legacy-2", "172.17.0.51")] {
        let obj = api
            .get("kubeovn.io/v1", "IP", "", &format!("{name}.default.{p}"))
            .expect("the foreign IP resource is still there");
        assert_eq!(obj["spec"]["ipAddress"], ip);
        assert!(obj["metadata"]["annotations"]["sidelane.io/pod-uid"].is_null());
    }
}

/// The controller's ClusterRole with or without `patch` on pods (a write the API server
/// refuses, for real, until the permission is back).
fn allow_patching_pods(api: &SidelaneCluster, allowed: bool) {
    let verbs = if allowed {
        r#"["get","list","watch","patch"]"#
    } else {
        r#"["get","list","watch"]"#
    };
    api.plane()
        .kubectl_run(
            &[
                "patch",
                "clusterrole",
                "sidelane-controller",
                "--type=json",
                &format!(r#"-p=[{{"op":"replace","path":"/rules/0/verbs","value":{verbs}}}]"#),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_failed_allocation_write_is_retried_until_it_lands() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    let controller = Controller::start(&api, &runtime);
    allow_patching_pods(&api, false);
    seed_pod(
        &api,
        "patient",
        &json!({"k8s.v1.cni.cncf.io/networks": "macvlan"}),
    );
    eventually("a refused write, retried", || {
        controller.metrics.render().lines().any(|l| {
            l.starts_with("sidelane_controller_write_retries_total ") && !l.ends_with(" 0")
        })
    });
    assert_eq!(allocated(&api, "patient", "macvlan.default"), None);
    allow_patching_pods(&api, true);
    eventually("the allocation lands once the write is allowed", || {
        allocated(&api, "patient", "macvlan.default").is_some()
    });
}

#[test]
fn a_nad_deleted_while_the_watch_was_away_is_forgotten() {
    let mut api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    api.apply(&networks_of("multi-nic-ipam.yaml"));
    api.apply(&[
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "doomed", "namespace": "default"},
            "spec": {"config": r#"{"cniVersion": "0.3.1", "type": "macvlan", "master": "eth0", "ipam": {"type": "kube-ovn", "server_socket": "/run/openvswitch/kube-ovn-daemon.sock", "provider": "doomed.default"}}"#}}),
        json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": "doomed"},
            "spec": {"provider": "doomed.default", "cidrBlock": "10.77.0.0/24"}}),
    ]);
    let controller = Controller::start(&api, &runtime);
    seed_pod(
        &api,
        "before",
        &json!({"k8s.v1.cni.cncf.io/networks": "doomed"}),
    );
    eventually("before allocated", || {
        allocated(&api, "before", "doomed.default").is_some()
    });
    // The controller loses the API server; the NAD is deleted meanwhile, and its watch cannot
    // resume where it was (the API server restarted with a fresh watch cache): it re-lists.
    api.plane().disconnect();
    api.delete(
        "k8s.cni.cncf.io/v1",
        "NetworkAttachmentDefinition",
        "default",
        "doomed",
    )
    .expect("deleting the NAD");
    api.plane_mut()
        .restart_apiserver()
        .unwrap_or_else(|e| panic!("restarting kube-apiserver: {e:#}"));
    api.plane().reconnect();
    eventually("the controller's re-list found the NAD gone", || {
        controller
            .metrics
            .render()
            .contains("sidelane_controller_gone_while_away_total 1")
    });
    seed_pod(
        &api,
        "after",
        &json!({"k8s.v1.cni.cncf.io/networks": "doomed"}),
    );
    eventually("a Warning on after", || {
        api.list("events.k8s.io/v1", "Event", Some("default"))
            .iter()
            .any(|e| {
                e["regarding"]["name"] == "after"
                    && e["note"]
                        == "default/doomed: NetworkAttachmentDefinition default/doomed not found"
            })
    });
    assert_eq!(allocated(&api, "after", "doomed.default"), None);
}
