//! The OVN-backed attachment: a veth pair whose pod end is configured as allocated and whose
//! host end is plugged into OVS's integration bridge (through a second pair when OVS runs the
//! userspace datapath beside the fast path), with the fast path on the host end.

use std::{path::PathBuf, sync::Arc};

use sidelane_api::{
    allocation::Allocation,
    annotations::{AnnotationError, key},
    daemon::{CniRequest, CniResponse, Route},
};

use super::{
    AttachError, Node, QosPort,
    answer::{ovn_plan, response_ips},
    blocking,
    kind::{Attachment, Creating, Made},
    timing::{AddStep, AddTimes},
    undo::Undo,
};
use crate::{
    dataplane::{
        DataplaneError,
        fastpath::{FastpathPort, SWITCH_OFF, switch_id},
        qos::{Placement, QosTarget},
    },
    link::{self, LinkError, PodInterfacePlan, VethEnd},
    ovs::PortBinding,
    records::{AttachmentKind, AttachmentRecord},
};

/// An OVN-backed attachment on `node`, with its rate limits through `qos`.
pub(crate) struct OvnVeth<'a, Q> {
    pub(crate) node: &'a Node,
    pub(crate) qos: &'a Arc<Q>,
    pub(crate) times: &'a AddTimes,
}

/// The names of one attachment's veth ends.
#[derive(Clone)]
struct Ends {
    host: String,
    temp: String,
    ovs_side: String,
    ovs_port: String,
}

impl Ends {
    fn of(req: &CniRequest) -> Result<Ends, AttachError> {
        let name = |end| {
            link::veth_name(&req.container_id, &req.if_name, end).map_err(|source| {
                AttachError::Link {
                    pod: req.pod_key(),
                    ifname: req.if_name.clone(),
                    source: Box::new(source),
                }
            })
        };
        Ok(Ends {
            host: name(VethEnd::Host)?,
            temp: name(VethEnd::PodTemporary)?,
            ovs_side: name(VethEnd::OvsSide)?,
            ovs_port: name(VethEnd::OvsPort)?,
        })
    }
}

fn link_err(req: &CniRequest) -> impl Fn(LinkError) -> AttachError + '_ {
    |source| AttachError::Link {
        pod: req.pod_key(),
        ifname: req.if_name.clone(),
        source: Box::new(source),
    }
}

impl<Q: QosPort> OvnVeth<'_, Q> {
    /// Whether OVS reads a pair of its own: its userspace datapath with the fast path on.
    fn split(&self) -> bool {
        self.netdev() && self.node.fastpath.is_some()
    }

    /// Whether OVS runs the userspace datapath (which needs frames checksummed in software).
    fn netdev(&self) -> bool {
        self.node
            .ovs
            .as_ref()
            .is_some_and(|o| o.datapath().needs_tx_checksum_off())
    }

    /// Creates the veth pair(s); registers their deletion first.
    async fn create_links(
        &self,
        req: &CniRequest,
        ends: &Ends,
        plan: &PodInterfacePlan,
        undo: &mut Undo,
    ) -> Result<(), AttachError> {
        let (links, ns) = (Arc::clone(&self.node.links), self.node.host_netns.clone());
        let (split, netdev) = (self.split(), self.netdev());
        {
            let (links, ns, ends) = (Arc::clone(&links), ns.clone(), ends.clone());
            undo.push_blocking(format!("deleting {}", ends.host), move || {
                let ns = ns.as_deref();
                let side = links.delete(ns, &ends.ovs_side).map(drop);
                let host = links.delete(ns, &ends.host).map(drop);
                side.and(host).map_err(|e| e.to_string())
            });
        }
        let (ends, plan, pod_netns) = (ends.clone(), plan.clone(), PathBuf::from(&req.net_ns));
        undo.blocking(move || {
            let ns = ns.as_deref();
            links.create(ns, &ends.host, &pod_netns, &ends.temp, &plan)?;
            if split {
                // Frames for OVS are checksummed (and segmented) in software as they are
                // redirected out of this end: the userspace datapath needs them whole.
                links.create_host_pair(ns, &ends.ovs_side, &ends.ovs_port, plan.mtu)?;
                links.disable_tx_checksum(ns, &ends.ovs_side)
            } else if netdev {
                links.disable_tx_checksum(ns, &ends.host)?;
                links.disable_tx_checksum(Some(&pod_netns), &plan.ifname)
            } else {
                Ok(())
            }
        })
        .await
        .map_err(link_err(req))
    }

    /// Puts the host end on the fast path (when the Subnet allows it, or OVS reads a pair of
    /// its own and frames must be redirected to it); registers taking it off first.
    async fn join_fastpath(
        &self,
        cx: &Creating<'_>,
        ends: &Ends,
        mac: [u8; 6],
        undo: &mut Undo,
    ) -> Result<(), AttachError> {
        let split = self.split();
        let Some(fastpath) = &self.node.fastpath else {
            return Ok(());
        };
        let wish = &cx.fastpath;
        if !(split || wish.on) {
            return Ok(());
        }
        let port = FastpathPort {
            netns: self.node.host_netns.clone(),
            host_ifname: ends.host.clone(),
            ovs_ifname: split.then(|| ends.ovs_side.clone()),
            switch: if wish.on {
                switch_id(&wish.switch)
            } else {
                SWITCH_OFF
            },
            mac,
            ips: cx.alloc.ips.iter().map(|ip| ip.address).collect(),
            policed: wish.policed,
            published: wish.on,
            groups: wish.groups.clone(),
        };
        {
            let (fastpath, ns, host) = (
                Arc::clone(fastpath),
                self.node.host_netns.clone(),
                ends.host.clone(),
            );
            undo.push_blocking(format!("taking {host} off the fast path"), move || {
                fastpath
                    .detach(ns.as_deref(), &host)
                    .map_err(|e| e.to_string())
            });
        }
        let fastpath = Arc::clone(fastpath);
        undo.blocking(move || fastpath.attach(&port))
            .await
            .map_err(|source| AttachError::Fastpath {
                pod: cx.req.pod_key(),
                ifname: cx.req.if_name.clone(),
                source: Box::new(source),
            })
    }

    /// The port OVS reads, bound to the pod's logical port.
    fn binding(&self, req: &CniRequest, alloc: &Allocation, ends: &Ends) -> PortBinding {
        PortBinding {
            port: if self.split() {
                ends.ovs_port.clone()
            } else {
                ends.host.clone()
            },
            iface_id: format!("{}.{}.{}", req.pod_name, req.pod_namespace, alloc.prefix),
            pod_name: req.pod_name.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_netns: req.net_ns.clone(),
            ip: alloc
                .ips
                .iter()
                .map(|ip| ip.address.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }
}

impl<Q: QosPort> Attachment for OvnVeth<'_, Q> {
    async fn create(&self, cx: &Creating<'_>, undo: &mut Undo) -> Result<Made, AttachError> {
        let (req, alloc) = (cx.req, cx.alloc);
        let mac_text = alloc.mac.clone().ok_or_else(|| AttachError::Annotation {
            pod: req.pod_key(),
            source: AnnotationError::Invalid {
                key: key(&alloc.prefix, "mac_address"),
                value: String::new(),
                reason: "an OVN-backed attachment needs the MAC its logical port has".to_owned(),
            },
        })?;
        let plan = ovn_plan(req, alloc, Some(&mac_text), cx.mtu)?;
        let mac = plan.mac.unwrap_or_default();
        let ends = Ends::of(req)?;
        self.times
            .timed(AddStep::Links, self.create_links(req, &ends, &plan, undo))
            .await?;
        self.times
            .timed(AddStep::Fastpath, self.join_fastpath(cx, &ends, mac, undo))
            .await?;
        if let Some(ovs) = &self.node.ovs {
            let ovs_err = |source| AttachError::Ovs {
                pod: req.pod_key(),
                ifname: req.if_name.clone(),
                source: Box::new(source),
            };
            let binding = self.binding(req, alloc, &ends);
            {
                let (ovs, port) = (Arc::clone(ovs), binding.port.clone());
                undo.push(format!("unplugging {port} from OVS"), move || async move {
                    ovs.unplug(&port).await.map_err(|e| e.to_string())
                });
            }
            self.times
                .timed(AddStep::OvsPort, ovs.plug(&binding))
                .await
                .map_err(ovs_err)?;
            self.times
                .timed(AddStep::OvnInstalled, ovs.wait_bound(&binding))
                .await
                .map_err(ovs_err)?;
        }
        let response = CniResponse {
            ips: response_ips(req, alloc),
            mac_address: mac_text,
            routes: plan
                .routes
                .iter()
                .map(|(dst, gw)| Route {
                    destination: dst.to_string(),
                    gateway: gw.map(|g| g.to_string()).unwrap_or_default(),
                })
                .collect(),
            mtu: cx.mtu,
            nicname: req.if_name.clone(),
            dns: req.dns.clone(),
            ..CniResponse::default()
        };
        Ok(Made {
            qos_target: QosTarget {
                netns: self.node.host_netns.clone(),
                ifname: ends.host,
                placement: Placement::HostPeer,
            },
            response,
        })
    }

    async fn remove(&self, req: &CniRequest) -> Vec<String> {
        let ends = match Ends::of(req) {
            Ok(ends) => ends,
            Err(e) => return vec![e.to_string()],
        };
        let mut failures = Vec::new();
        let ns = self.node.host_netns.clone();
        // Off the fast path first: nothing is redirected to it once DEL returns.
        if let Some(fastpath) = &self.node.fastpath {
            let (fastpath, ns, host) = (Arc::clone(fastpath), ns.clone(), ends.host.clone());
            if let Err(e) = blocking(move || fastpath.detach(ns.as_deref(), &host)).await {
                failures.push(format!("taking {} off the fast path: {e}", ends.host));
            }
        }
        if let Some(ovs) = &self.node.ovs {
            for port in [&ends.host, &ends.ovs_port] {
                if let Err(e) = ovs.unplug(port).await {
                    failures.push(format!("unplugging {port} from OVS: {e}"));
                }
            }
        }
        let (links, qos) = (Arc::clone(&self.node.links), Arc::clone(self.qos));
        let target = QosTarget {
            netns: ns.clone(),
            ifname: ends.host.clone(),
            placement: Placement::HostPeer,
        };
        let side = ends.ovs_side.clone();
        let steps = blocking(move || {
            let ns = ns.as_deref();
            let side_deleted = links
                .delete(ns, &side)
                .map(drop)
                .map_err(|e| format!("deleting {side}: {e}"));
            let detached = match qos.detach(&target) {
                Ok(()) | Err(DataplaneError::NoSuchInterface { .. }) => Ok(()),
                Err(e) => Err(format!("removing the limits of {}: {e}", target.ifname)),
            };
            let deleted = links
                .delete(ns, &target.ifname)
                .map(drop)
                .map_err(|e| format!("deleting {}: {e}", target.ifname));
            [side_deleted, detached, deleted]
        })
        .await;
        failures.extend(steps.into_iter().filter_map(Result::err));
        failures
    }

    async fn verify(
        &self,
        req: &CniRequest,
        alloc: &Allocation,
        mtu: u32,
    ) -> Result<Vec<String>, AttachError> {
        let plan = ovn_plan(req, alloc, alloc.mac.as_deref(), mtu)?;
        let (links, pod_netns) = (Arc::clone(&self.node.links), PathBuf::from(&req.net_ns));
        blocking(move || links.verify(&pod_netns, &plan))
            .await
            .map_err(link_err(req))
    }

    async fn in_place(&self, record: &AttachmentRecord) -> bool {
        let AttachmentKind::Ovn { host_ifname } = &record.kind else {
            return false;
        };
        let (links, ns, host) = (
            Arc::clone(&self.node.links),
            self.node.host_netns.clone(),
            host_ifname.clone(),
        );
        blocking(move || links.exists(ns.as_deref(), &host)).await
    }
}
