//! The agent as the DaemonSet runs it: in the node's own network namespace (`hostNetwork`), with
//! no `--host-netns`, so every target names no namespace. The programs it attaches there stay
//! attached after the call returns: the filter belongs to the kernel, not to the handle aya
//! gives back (dropping that handle detaches it). Found on the lab's real node, where the QoS
//! and fast-path filters were gone as soon as they were attached; the tests that pass
//! `--host-netns` never saw it, since the handle's detach then ran in the wrong namespace.

use sidelane_agent::{
    dataplane::{
        fastpath::{FastpathDataplane, FastpathPort},
        qos::{Placement, QosDataplane, QosTarget},
    },
    netns,
};
use sidelane_api::qos::Direction;
use sidelane_tests::{
    privilege,
    sidelane::{PinRoot, spec},
    topology::PodLink,
};

/// The TC filters on `ifname`'s ingress and egress hooks in the link's host namespace.
fn filters(link: &PodLink) -> String {
    ["ingress", "egress"]
        .iter()
        .map(|hook| {
            link.host()
                .exec(&["tc", "filter", "show", "dev", link.host_if(), hook])
                .unwrap_or_default()
        })
        .collect()
}

/// Runs `attach` (given the pin root and the host end's name) as the DaemonSet's agent would:
/// from inside the node's namespace (the link's host side), naming no namespace; then the
/// filters left on the host end.
fn attached_in_the_node(attach: impl FnOnce(&std::path::Path, String) + Send) -> String {
    let link = PodLink::new().expect("a pod link");
    let pins = PinRoot::new("sidelane-test");
    let ifname = link.host_if().to_owned();
    netns::run_in(Some(&link.host().path()), || attach(pins.path(), ifname))
        .expect("entering the node's namespace");
    filters(&link)
}

#[test]
fn qos_programs_attached_in_the_agents_own_namespace_stay_attached() {
    if !privilege::require_privileges(
        "qos_programs_attached_in_the_agents_own_namespace_stay_attached",
    ) {
        return;
    }
    let filters = attached_in_the_node(|pins, ifname| {
        let dp = QosDataplane::new(pins).expect("opening the dataplane");
        let target = QosTarget {
            netns: None,
            ifname,
            placement: Placement::HostPeer,
        };
        dp.apply(&target, &spec(Direction::Egress, 30))
            .expect("applying QoS");
    });
    assert!(
        filters.contains("sl_qos"),
        "no QoS filter left: {filters:?}"
    );
}

#[test]
fn the_fast_path_program_attached_in_the_agents_own_namespace_stays_attached() {
    if !privilege::require_privileges(
        "the_fast_path_program_attached_in_the_agents_own_namespace_stays_attached",
    ) {
        return;
    }
    let filters = attached_in_the_node(|pins, ifname| {
        let mut fp = FastpathDataplane::open(pins).expect("opening the fast path");
        fp.attach(&FastpathPort {
            netns: None,
            host_ifname: ifname,
            ovs_ifname: None,
            switch: 7,
            mac: [0x02, 0, 0, 0, 0, 0x01],
            ips: vec!["10.0.0.1".parse().expect("an address")],
            policed: false,
            published: true,
            groups: Vec::new(),
        })
        .expect("putting the port on the fast path");
    });
    assert!(
        filters.contains("sl_fastpath"),
        "no fast-path filter left: {filters:?}"
    );
}
