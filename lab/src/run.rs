//! Runs one scenario: its files applied as a user would, its pods observed as their nodes set
//! them up, every probe, then everything deleted as a user would (unless it is kept up).

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{
    check::Checks,
    interrupt,
    pod::{self, NAMESPACE, Pod},
    probe::{addressing, cli, exec, fastpath, isolation, outside, qos, reach},
    report::ScenarioReport,
    rig::Rig,
    scenario::{self, Scenario},
};

/// Runs `sc` on the rig; with `keep_up`, its pods stay up (in the report) for the user.
pub fn scenario(rig: &Rig, sc: &Scenario, keep_up: bool) -> anyhow::Result<ScenarioReport> {
    let start = Instant::now();
    let docs = sc.objects()?;
    // The seeds' files verbatim, with validation on; then the lab's own objects.
    for path in sc.files() {
        rig.api
            .plane()
            .kubectl_run(
                &[
                    "apply",
                    "--validate=strict",
                    "-f",
                    &path.display().to_string(),
                ],
                None,
            )
            .with_context(|| format!("kubectl apply -f {}", path.display()))?;
    }
    let names = rig
        .api
        .wait_for_pods(NAMESPACE, scenario::pods_made_by(&docs));
    let mut checks = Checks::default();
    let mut pods = Vec::new();
    for name in &names {
        interrupt::check()?;
        let pod = pod::observe(rig, name, &mut checks)?;
        eprintln!("    {name} on node{}", pod.node + 1);
        pods.push(pod);
    }
    addressing::check(&pods, &docs, &mut checks);
    let matrix = reach::check(&rig.api, &pods, &mut checks);
    let isolation = isolation::check(&pods, &sc.matrix, &mut checks);
    let outside = sc
        .outside
        .as_ref()
        .map(|o| outside::check(&rig.api, &rig.outside, &pods, o, &mut checks));
    let qos = qos::check(&pods, &mut checks);
    let fastpath_hits = fastpath::check(rig, &pods, &matrix.endpoints, &mut checks);
    let cli = cli::check(rig, &docs, &pods, &mut checks);
    let exec = exec::check(rig, &pods, &matrix, &mut checks);
    checks.require_shown(&sc.shows);
    if !keep_up {
        clean_up(rig, sc, &pods);
    }
    Ok(ScenarioReport {
        name: sc.name.clone(),
        files: sc.seeds.iter().chain(&sc.extra).cloned().collect(),
        pods,
        checks,
        matrix,
        isolation,
        outside,
        qos,
        fastpath_hits,
        cli,
        exec,
        took: start.elapsed(),
    })
}

/// Deletes the scenario as a user would: the Deployments' pods go before their ReplicaSets
/// (foreground), each torn down by its node through Multus; then waits until the controller
/// has released what the pods held, since the next scenario reuses names.
fn clean_up(rig: &Rig, sc: &Scenario, pods: &[Pod]) {
    for path in sc.files().iter().rev() {
        if let Err(error) = rig.api.plane().kubectl_run(
            &[
                "delete",
                "--cascade=foreground",
                "--wait=true",
                "--timeout=100s",
                "--ignore-not-found",
                "-f",
                &path.display().to_string(),
            ],
            None,
        ) {
            eprintln!("    {error:#}");
        }
    }
    for pod in pods {
        pod::remove(rig, &pod.name);
    }
    let start = Instant::now();
    while !rig.api.list("kubeovn.io/v1", "IP", None).is_empty()
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
}
