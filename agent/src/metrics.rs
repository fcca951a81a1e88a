//! The agent's metrics (Prometheus text format) on one HTTP port: `/metrics` and `/healthz`.
//!
//! Per OVN-backed attachment (labels `namespace`, `pod`, `interface` in the pod, `host_interface`),
//! read from the fast path's per-CPU counters at each scrape:
//! `sidelane_agent_fastpath_hits_total`, `..._hit_bytes_total`, `..._misses_total` (handed to
//! OVS) and `..._spoofed_total` (for a local pod but not from the sender's own MAC and address:
//! never fast-pathed).

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::counter::ConstCounter,
    registry::Registry,
};
use sidelane_agent_common::fastpath::FastpathCounters;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::{
    dataplane::fastpath::FastpathDataplane,
    records::{AttachmentKind, Records},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachmentLabels {
    namespace: String,
    pod: String,
    interface: String,
    host_interface: String,
}

/// Reads the fast path's counters of every recorded OVN-backed attachment at each scrape.
pub struct FastpathCollector {
    records: Records,
    fastpath: Arc<Mutex<FastpathDataplane>>,
    host_netns: Option<PathBuf>,
}

impl std::fmt::Debug for FastpathCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastpathCollector")
            .field("records", &self.records.dir())
            .finish_non_exhaustive()
    }
}

impl FastpathCollector {
    /// A collector over these records and fast path.
    pub fn new(
        records: Records,
        fastpath: Arc<Mutex<FastpathDataplane>>,
        host_netns: Option<PathBuf>,
    ) -> FastpathCollector {
        FastpathCollector {
            records,
            fastpath,
            host_netns,
        }
    }

    fn samples(&self) -> Vec<(AttachmentLabels, FastpathCounters)> {
        let Ok(listing) = self.records.list() else {
            return Vec::new();
        };
        let fastpath = self
            .fastpath
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        listing
            .records
            .into_iter()
            .filter_map(|r| {
                let AttachmentKind::Ovn { host_ifname } = &r.kind else {
                    return None;
                };
                let counters = fastpath
                    .counters(self.host_netns.as_deref(), host_ifname)
                    .ok()?;
                Some((
                    AttachmentLabels {
                        namespace: r.pod_namespace.clone(),
                        pod: r.pod_name.clone(),
                        interface: r.ifname.clone(),
                        host_interface: host_ifname.clone(),
                    },
                    counters,
                ))
            })
            .collect()
    }
}

impl Collector for FastpathCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        type Field = fn(&FastpathCounters) -> u64;
        let samples = self.samples();
        let families: [(&str, &str, Field); 4] = [
            ("fastpath_hits", "Frames forwarded on the fast path", |c| {
                c.hits
            }),
            (
                "fastpath_hit_bytes",
                "Bytes forwarded on the fast path",
                |c| c.hit_bytes,
            ),
            ("fastpath_misses", "Frames handed to OVS", |c| c.misses),
            (
                "fastpath_spoofed",
                "Frames for a local pod whose source MAC or IP was not the sender's own (never fast-pathed)",
                |c| c.spoofed,
            ),
        ];
        for (name, help, field) in families {
            let probe = ConstCounter::new(0u64);
            let mut family = encoder.encode_descriptor(name, help, None, probe.metric_type())?;
            for (labels, counters) in &samples {
                ConstCounter::new(field(counters)).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The agent's registry.
pub fn registry(collector: Option<FastpathCollector>) -> Registry {
    let mut registry = Registry::with_prefix("sidelane_agent");
    if let Some(c) = collector {
        registry.register_collector(Box::new(c));
    }
    registry
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

/// The text exposition of `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = encode(&mut out, registry) {
        warn!(error = %e, "encoding metrics");
    }
    out
}

/// Serves `/metrics` and `/healthz` on `listener` forever.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection");
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let registry = Arc::clone(&registry);
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => {
                            // Reading the maps enters namespaces: off the async threads.
                            let body = tokio::task::spawn_blocking(move || render(&registry))
                                .await
                                .unwrap_or_default();
                            text(StatusCode::OK, body)
                        }
                        "/healthz" => text(StatusCode::OK, "ok\n".to_owned()),
                        other => text(StatusCode::NOT_FOUND, format!("no such path: {other}\n")),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
