//! The real control plane the tests, the lab and the benchmarks run on: it starts, serves the
//! seeds' YAML with validation on, enforces the chart's RBAC with `Node,RBAC`, and the harness
//! makes its faults for real (API server and etcd restarts, compaction, cut connections).

use std::time::{Duration, Instant};

use serde_json::json;
use sidelane_tests::control_plane::{ControlPlane, Options, SIDELANE_NAMESPACE};

fn started() -> ControlPlane {
    let plane = ControlPlane::start(Options::default())
        .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    plane
        .install_sidelane()
        .unwrap_or_else(|e| panic!("installing Sidelane's CRDs and RBAC: {e:#}"));
    plane
}

fn subnet() -> serde_json::Value {
    json!({
        "apiVersion": "kubeovn.io/v1", "kind": "Subnet",
        "metadata": {"name": "attachnet"},
        "spec": {"protocol": "IPv4", "provider": "attachnet.default.ovn", "cidrBlock": "172.17.0.0/16"}
    })
}

/// `kubectl --kubeconfig <kubeconfig> <args>`: its outcome and what it printed.
fn kubectl_as(plane: &ControlPlane, kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut cmd = plane.kubectl();
    // The admin kubeconfig argument comes first; a later one wins.
    cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args);
    let finished = sidelane_tests::process::run(&mut cmd, None, Duration::from_mins(1))
        .unwrap_or_else(|e| panic!("running kubectl: {e:#}"));
    (
        finished.status.success(),
        format!("{}{}", finished.stdout, finished.stderr),
    )
}

#[test]
fn the_agent_may_read_subnets_but_patching_one_is_forbidden() {
    let plane = started();
    plane
        .apply(&[subnet()])
        .unwrap_or_else(|e| panic!("creating a Subnet as admin: {e:#}"));
    let agent = plane
        .service_account_kubeconfig(SIDELANE_NAMESPACE, "sidelane-agent")
        .unwrap_or_else(|e| panic!("a token for the agent: {e:#}"));
    let (ok, out) = kubectl_as(
        &plane,
        &agent,
        &["get", "subnet", "attachnet", "-o", "name"],
    );
    assert!(ok, "the agent reads Subnets: {out}");
    let (ok, out) = kubectl_as(
        &plane,
        &agent,
        &[
            "patch",
            "subnet",
            "attachnet",
            "--type=merge",
            "-p",
            r#"{"spec":{"excludeIps":["172.17.0.5"]}}"#,
        ],
    );
    assert!(!ok, "the agent must not patch a Subnet: {out}");
    assert!(
        out.contains("Forbidden")
            && out.contains("system:serviceaccount:kube-system:sidelane-agent"),
        "refused by RBAC, naming the agent's identity: {out}"
    );
    let controller = plane
        .service_account_kubeconfig(SIDELANE_NAMESPACE, "sidelane-controller")
        .unwrap_or_else(|e| panic!("a token for the controller: {e:#}"));
    let (ok, out) = kubectl_as(
        &plane,
        &controller,
        &[
            "patch",
            "subnet",
            "attachnet",
            "--type=merge",
            "-p",
            r#"{"spec":{"excludeIps":["172.17.0.5"]}}"#,
        ],
    );
    assert!(ok, "the controller writes the defaulted Subnet spec: {out}");
    let (ok, out) = kubectl_as(&plane, &controller, &["delete", "subnet", "attachnet"]);
    assert!(!ok, "the controller must not delete Subnets: {out}");
    let (ok, out) = kubectl_as(
        &plane,
        &controller,
        &["get", "secrets", "-n", SIDELANE_NAMESPACE],
    );
    assert!(!ok, "the controller must not read Secrets: {out}");
}

#[test]
fn the_seed_yaml_is_applied_verbatim_with_validation_on() {
    let plane = started();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap_or_else(|e| panic!("listing {}: {e}", examples.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the seeds' examples: {files:?}");
    for file in &files {
        // Each example was written for a cluster of its own: apply, then remove.
        let path = file.display().to_string();
        let applied = plane
            .kubectl_run(&["apply", "--validate=strict", "-f", &path], None)
            .unwrap_or_else(|e| panic!("kubectl apply --validate=strict -f {path}: {e:#}"));
        assert!(applied.contains("created"), "{path}: {applied}");
        plane
            .kubectl_run(
                &[
                    "delete",
                    "--wait=false",
                    "--grace-period=0",
                    "--force",
                    "-f",
                    &path,
                ],
                None,
            )
            .unwrap_or_else(|e| panic!("kubectl delete -f {path}: {e:#}"));
    }
    // Validation is really on: an IPPool with a misspelt field is refused by the CRD schema.
    // (Subnets keep fields they do not name, as Kube-OVN's have more than Sidelane reads.)
    let bad = json!({
        "apiVersion": "kubeovn.io/v1", "kind": "IPPool",
        "metadata": {"name": "bad"},
        "spec": {"subnet": "attachnet", "ipz": ["172.17.0.5"]}
    })
    .to_string();
    let refused = plane.kubectl_run(
        &["apply", "--validate=strict", "-f", "-"],
        Some(bad.as_bytes()),
    );
    let message = format!("{:#}", refused.expect_err("a misspelt field is refused"));
    assert!(
        message.contains("ipz"),
        "the refusal names the field: {message}"
    );
}

#[test]
fn faults_are_real_restarts_compaction_and_cut_connections() {
    let mut plane = started();
    plane.apply(&[subnet()]).unwrap_or_else(|e| panic!("{e:#}"));
    let objects = sidelane_tests::control_plane::Objects::connect(plane.admin_kubeconfig())
        .unwrap_or_else(|e| panic!("{e:#}"));

    // A restarted API server serves what etcd holds.
    let started = Instant::now();
    plane
        .restart_apiserver()
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "kube-apiserver restarted in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        objects
            .get("kubeovn.io/v1", "Subnet", "", "attachnet")
            .is_some()
    );

    // So does one whose etcd restarted under it.
    plane.restart_etcd().unwrap_or_else(|e| panic!("{e:#}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while objects
        .get("kubeovn.io/v1", "Subnet", "", "attachnet")
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the Subnet is back after an etcd restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Compaction: a watch from an old resourceVersion is answered 410 Gone.
    let old = objects
        .get("kubeovn.io/v1", "Subnet", "", "attachnet")
        .and_then(|s| s["metadata"]["resourceVersion"].as_str().map(str::to_owned))
        .expect("the Subnet's resourceVersion");
    for i in 0..3 {
        plane
            .kubectl_run(
                &[
                    "annotate",
                    "subnet",
                    "attachnet",
                    "--overwrite",
                    &format!("touch={i}"),
                ],
                None,
            )
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    plane
        .compact()
        .unwrap_or_else(|e| panic!("compacting etcd: {e:#}"));
    let watch = plane
        .kubectl_run(
            &[
                "get",
                &format!("--raw=/apis/kubeovn.io/v1/subnets?watch=true&resourceVersion={old}&timeoutSeconds=1"),
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        watch.contains("\"code\":410") || watch.contains("too old resource version"),
        "a watch from before the compaction is 410 Gone: {watch}"
    );

    // Cut connections: a watch through the proxy ends, and the next request gets through.
    let agent = plane
        .service_account_kubeconfig(SIDELANE_NAMESPACE, "sidelane-agent")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let printed = plane.dir().join("watch.out");
    let mut watcher = plane.kubectl();
    watcher
        .arg(format!("--kubeconfig={}", agent.display()))
        .args(["get", "subnets", "--watch", "-o", "name"])
        .stdout(std::fs::File::create(&printed).expect("kubectl's output file"))
        .stderr(std::process::Stdio::null());
    let mut watcher = sidelane_tests::process::Background::spawn(&mut watcher)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Once kubectl has listed (and so is watching), cut whatever is open until its watch ends.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&printed)
        .is_ok_and(|o| o.contains("subnet.kubeovn.io/attachnet"))
    {
        assert!(Instant::now() < deadline, "kubectl listed the Subnets");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cut = 0;
    while watcher.is_running() {
        assert!(
            Instant::now() < deadline,
            "kubectl's watch ended when its connections were cut ({cut} cut)"
        );
        std::thread::sleep(Duration::from_millis(200));
        cut += plane.cut_connections();
    }
    assert!(cut > 0, "the watch went through the proxy");
    let (ok, out) = kubectl_as(
        &plane,
        &agent,
        &["get", "subnet", "attachnet", "-o", "name"],
    );
    assert!(ok, "a new connection gets through: {out}");
}
