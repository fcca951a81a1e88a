//! Teardown carries on past a failure. DEL of an OVN-backed attachment whose OVS unplug fails
//! still deletes the veth pair (and reports the unplug failure by name); GC of several
//! attachments where one fails still collects the others and names the one that failed.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use sidelane_agent::{
    api_server::KubePods,
    attach::{AttachError, Attacher},
    link,
    ovs::{Datapath, OvsError, PortBinding, PortPlug},
    records::{AttachmentKind, AttachmentRecord, Records},
};
use sidelane_api::daemon::{CniRequest, GcRequest, ValidAttachment};
use sidelane_tests::{control_plane::SidelaneCluster, netns::NetNs, privilege, sidelane::NoQos};

/// An integration bridge whose unplug fails for ports of `broken` (a container ID prefix).
struct FailingBridge {
    broken: String,
    unplugs: AtomicUsize,
}

impl PortPlug for FailingBridge {
    fn plug<'a>(&'a self, _: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(async { Ok(()) })
    }
    fn wait_bound<'a>(&'a self, _: &'a PortBinding) -> BoxFuture<'a, Result<(), OvsError>> {
        Box::pin(async { Ok(()) })
    }
    fn unplug<'a>(&'a self, port: &'a str) -> BoxFuture<'a, Result<(), OvsError>> {
        self.unplugs.fetch_add(1, Ordering::SeqCst);
        let broken = port.starts_with(&self.broken);
        Box::pin(async move {
            if broken {
                Err(OvsError::NoBridge {
                    port: port.to_owned(),
                    bridge: "br-int".to_owned(),
                })
            } else {
                Ok(())
            }
        })
    }
    fn datapath(&self) -> Datapath {
        Datapath::Netdev
    }
}

/// An attachment's record, with its host end made in `node` (its pod is long gone).
fn record(container_id: &str, node: &NetNs) -> AttachmentRecord {
    let host = link::veth_name(container_id, "net1", link::VethEnd::Host).expect("a veth name");
    let peer = format!("{}x", &container_id[..6]);
    node.exec(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
    ])
    .expect("the attachment's host end");
    AttachmentRecord {
        container_id: container_id.to_owned(),
        ifname: "net1".to_owned(),
        netns: PathBuf::from("/var/run/netns/gone"),
        pod_namespace: "default".to_owned(),
        pod_name: format!("pod-{container_id}"),
        provider: "attachnet.default.ovn".to_owned(),
        kind: AttachmentKind::Ovn { host_ifname: host },
        security_groups: Vec::new(),
    }
}

fn links(node: &NetNs) -> String {
    node.exec(&["ip", "-o", "link"]).expect("ip link")
}

#[test]
fn a_failed_ovs_unplug_does_not_keep_the_veth_and_gc_carries_on_past_one_failure() {
    if !privilege::require_privileges(
        "a_failed_ovs_unplug_does_not_keep_the_veth_and_gc_carries_on_past_one_failure",
    ) {
        return;
    }
    let api = SidelaneCluster::start();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let node = NetNs::new().expect("the node's namespace");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let records = Records::open(dir.path().join("records")).expect("the records");
    let bridge = Arc::new(FailingBridge {
        broken: "badbad".to_owned(),
        unplugs: AtomicUsize::new(0),
    });
    let client = runtime.block_on(api.agent_client());
    let attacher = Attacher::new(
        KubePods::new(client),
        NoQos,
        records,
        Duration::from_secs(1),
    )
    .with_host_netns(node.path())
    .with_ovs(Arc::clone(&bridge) as Arc<dyn PortPlug>);
    let (bad, good) = ("badbad0000000001", "goodgood00000002");
    for r in [record(bad, &node), record(good, &node)] {
        attacher.records().put(&r).expect("recorded");
    }
    let host_of =
        |cid: &str| link::veth_name(cid, "net1", link::VethEnd::Host).expect("a veth name");

    // DEL of the attachment whose unplug fails: the veth goes all the same, and the error
    // names the unplug.
    let del = CniRequest {
        cni_type: "kube-ovn".to_owned(),
        pod_name: format!("pod-{bad}"),
        pod_namespace: "default".to_owned(),
        container_id: bad.to_owned(),
        if_name: "net1".to_owned(),
        provider: "attachnet.default.ovn".to_owned(),
        ..CniRequest::default()
    };
    let err = runtime
        .block_on(attacher.del(&del))
        .expect_err("the unplug failed");
    assert!(matches!(err, AttachError::Teardown { .. }), "{err}");
    assert!(err.to_string().contains("unplugging"), "{err}");
    assert!(
        !links(&node).contains(&host_of(bad)),
        "the veth was deleted: {}",
        links(&node)
    );
    assert_eq!(
        bridge.unplugs.load(Ordering::SeqCst),
        2,
        "both ports were tried"
    );

    // GC with neither listed: the good one is collected although the bad one fails again.
    let gc = GcRequest {
        provider: "attachnet.default.ovn".to_owned(),
        valid_attachments: Vec::<ValidAttachment>::new(),
    };
    let err = runtime
        .block_on(attacher.gc(&gc))
        .expect_err("one teardown failed");
    assert!(err.to_string().contains(bad), "names the failed one: {err}");
    assert!(!links(&node).contains(&host_of(good)), "{}", links(&node));
    let left: Vec<String> = attacher
        .records()
        .list()
        .expect("the records")
        .records
        .into_iter()
        .map(|r| r.container_id)
        .collect();
    assert_eq!(
        left,
        [bad],
        "the failed one's record stays for the next pass"
    );
}
