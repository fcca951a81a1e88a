//! Two `sidelane-controller` processes with a Lease, on a real API server under the chart's RBAC, the leader killed (`SIGKILL`) again and again (and
//! restarted, as its Deployment would) while 1,000 pods come and go: afterwards every live pod
//! has exactly one address, no address is held twice, and no IP resource is left without its
//! pod.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};
use serde_json::{Value, json};
use sidelane_tests::{
    control_plane::{SIDELANE_NAMESPACE, SidelaneCluster},
    process::Background,
};

fn replica(kubeconfig: &Path, identity: &str) -> Background {
    let mut cmd = Command::new(sidelane_tests::process::workspace_binary(
        "sidelane-controller",
    ));
    cmd.args([
        "--identity",
        identity,
        "--lease-namespace",
        SIDELANE_NAMESPACE,
        "--lease-duration",
        "2",
        "--gc-interval",
        "1",
        "--metrics-addr",
        "127.0.0.1:0",
    ])
    .env("KUBECONFIG", kubeconfig)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    Background::spawn(&mut cmd).expect("starting a controller replica")
}

fn leader(api: &SidelaneCluster) -> Option<String> {
    api.get(
        "coordination.k8s.io/v1",
        "Lease",
        SIDELANE_NAMESPACE,
        "sidelane-controller",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_owned))
}

const PROVIDERS: [&str; 2] = ["macvlan.default", "attachnet.default.ovn"];

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: set up, churn with kills, audit"
)]
fn killing_the_leader_during_pod_churn_leaves_no_duplicate_and_no_leak() {
    let api = SidelaneCluster::start();
    // The replicas run as the chart's controller ServiceAccount.
    let kubeconfig = api.controller_kubeconfig().to_owned();
    for (name, config) in [
        (
            "macvlan",
            r#"{"cniVersion": "0.3.0", "type": "macvlan", "ipam": {"type": "kube-ovn"}}"#,
        ),
        (
            "attachnet",
            r#"{"cniVersion": "0.3.0", "type": "kube-ovn"}"#,
        ),
    ] {
        api.seed(
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "default"}, "spec": {"config": config}}),
        )
        .expect("a NAD");
    }
    for (name, provider, cidr) in [
        ("macvlan", "macvlan.default", "172.17.0.0/16"),
        ("attachnet", "attachnet.default.ovn", "172.18.0.0/16"),
    ] {
        api.seed(
            json!({"apiVersion": "kubeovn.io/v1", "kind": "Subnet", "metadata": {"name": name},
            "spec": {"provider": provider, "cidrBlock": cidr}}),
        )
        .expect("a Subnet");
    }
    let mut replicas: BTreeMap<String, Background> = ["a", "b"]
        .into_iter()
        .map(|id| (id.to_owned(), replica(&kubeconfig, id)))
        .collect();

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let pods: Api<Pod> = runtime.block_on(async { Api::namespaced(api.client(), "default") });
    let mut kills = 0;
    let mut last_kill = Instant::now();
    let mut deleted = BTreeSet::new();
    for i in 0..1000u32 {
        let name = format!("churn-{i}");
        api.seed(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                "annotations": {"k8s.v1.cni.cncf.io/networks": "macvlan, attachnet"}},
            "spec": {"containers": [{"name": "c", "image": "alpine"}]}}))
            .expect("a pod");
        // Every third pod goes away a little later.
        if i % 3 == 2 {
            let victim = format!("churn-{}", i - 2);
            runtime
                .block_on(pods.delete(&victim, &DeleteParams::default()))
                .expect("deleting a pod");
            deleted.insert(victim);
        }
        std::thread::sleep(Duration::from_millis(8));
        if last_kill.elapsed() > Duration::from_millis(1500)
            && let Some(id) = leader(&api)
            && let Some(process) = replicas.get_mut(&id)
        {
            let _ = process.child_mut().kill();
            let _ = process.child_mut().wait();
            replicas.insert(id.clone(), replica(&kubeconfig, &id));
            kills += 1;
            last_kill = Instant::now();
        }
    }
    assert!(kills >= 4, "the leader was killed {kills} times");
    eprintln!("killed the leader {kills} times during the churn of 1,000 pods");

    // Converged: every live pod allocated on both networks, the IP resources exactly theirs.
    let live: Vec<String> = (0..1000)
        .map(|i| format!("churn-{i}"))
        .filter(|n| !deleted.contains(n))
        .collect();
    let audit = || -> Result<(), String> {
        let mut held = BTreeMap::new();
        for name in &live {
            let pod = api
                .get("v1", "Pod", "default", name)
                .ok_or(format!("{name} is missing"))?;
            let a = &pod["metadata"]["annotations"];
            for p in PROVIDERS {
                if a[format!("{p}.kubernetes.io/allocated")] != "true" {
                    return Err(format!("{name} has no {p} allocation yet"));
                }
                let ip = a[format!("{p}.kubernetes.io/ip_address")]
                    .as_str()
                    .unwrap_or_default();
                if let Some(other) = held.insert(ip.to_owned(), name.clone()) {
                    return Err(format!("{ip} is held by {name} and {other}"));
                }
            }
        }
        let ips: Vec<Value> = api.list("kubeovn.io/v1", "IP", None);
        let names: BTreeSet<String> = ips
            .iter()
            .filter_map(|ip| ip["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        let expected: BTreeSet<String> = live
            .iter()
            .flat_map(|n| PROVIDERS.map(|p| format!("{n}.default.{p}")))
            .collect();
        if names != expected {
            let leaked: Vec<_> = names.difference(&expected).take(5).collect();
            let missing: Vec<_> = expected.difference(&names).take(5).collect();
            return Err(format!(
                "IP resources differ: {} leaked (e.g. {leaked:?}), {} missing (e.g. {missing:?})",
                names.difference(&expected).count(),
                expected.difference(&names).count()
            ));
        }
        for ip in &ips {
            let pod = ip["spec"]["podName"].as_str().unwrap_or_default();
            let annotated = api
                .get("v1", "Pod", "default", pod)
                .map_or(Value::Null, |p| p["metadata"]["annotations"].clone());
            let provider = ip["metadata"]["annotations"]["sidelane.io/provider"]
                .as_str()
                .unwrap_or_default();
            if annotated[format!("{provider}.kubernetes.io/ip_address")] != ip["spec"]["ipAddress"]
            {
                return Err(format!(
                    "IP {} disagrees with its pod",
                    ip["metadata"]["name"]
                ));
            }
        }
        Ok(())
    };
    let start = Instant::now();
    loop {
        match audit() {
            Ok(()) => break,
            Err(e) if start.elapsed() > Duration::from_mins(1) => {
                panic!("not converged a minute after the churn: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
