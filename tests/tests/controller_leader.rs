//! Leader election between controller replicas over a Lease on a real API server, as the chart's controller
//! ServiceAccount (whose Role allows that one Lease only): one leader at a
//! time, and a new one after the leader stops renewing.

use std::time::Duration;

use sidelane_controller::leader::{self, LeaseConfig};
use sidelane_tests::control_plane::SidelaneCluster;
use tokio::{sync::watch, time::Instant};

fn fast(identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: Duration::from_millis(1500),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
        ..LeaseConfig::new("kube-system", "sidelane-controller", identity)
    }
}

#[test]
fn exactly_one_replica_leads_and_another_takes_over_when_it_stops() {
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let (tx_a, rx_a) = watch::channel(false);
        let (tx_b, rx_b) = watch::channel(false);
        let a = tokio::spawn(leader::run(
            api.controller_client().await,
            fast("replica-a"),
            tx_a,
        ));
        let b = tokio::spawn(leader::run(
            api.controller_client().await,
            fast("replica-b"),
            tx_b,
        ));
        // Within a few rounds one leads; sampled for 2 s, never both.
        let start = Instant::now();
        let mut led = (false, false);
        while start.elapsed() < Duration::from_secs(2) {
            let (x, y) = (*rx_a.borrow(), *rx_b.borrow());
            assert!(!(x && y), "two leaders at once");
            led = (led.0 || x, led.1 || y);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(led.0 ^ led.1, "exactly one replica led: {led:?}");
        let (stopped, rx_other, other_name) = if led.0 {
            (a, rx_b, "replica-b")
        } else {
            (b, rx_a, "replica-a")
        };
        stopped.abort();
        let start = Instant::now();
        while !*rx_other.borrow() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{other_name} never took over"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lease = api
            .get(
                "coordination.k8s.io/v1",
                "Lease",
                "kube-system",
                "sidelane-controller",
            )
            .expect("the lease");
        assert_eq!(lease["spec"]["holderIdentity"], other_name);
        assert_eq!(lease["spec"]["leaseTransitions"], 1);
    });
}
