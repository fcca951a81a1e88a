//! The CNI socket: Kube-OVN's protocol ([`sidelane_api::daemon`]) as HTTP/1.1 on a unix
//! socket, mode 0600, serving root (and the agent's own user) only. Each connection is served on
//! a task of its own, so one pod's wait for its allocation never blocks another's; headers must
//! arrive within [`HEADER_DEADLINE`] and bodies within [`BODY_DEADLINE`], bodies are bounded, every request has a deadline, and at
//! most [`MAX_CONNECTIONS`] are served at once.

use std::{
    convert::Infallible, fs, io, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use sidelane_api::cni::ErrorCode;
use sidelane_api::daemon::{
    CniRequest, CniResponse, GcRequest, PATH_ADD, PATH_CHECK, PATH_DEL, PATH_GC, PATH_STATUS,
};
use thiserror::Error;
use tokio::net::UnixListener;
use tracing::{debug, warn};

use crate::{
    attach::{AttachError, Attacher, QosPort, Readiness},
    pods::PodSource,
    subnets::SubnetSource,
};

pub use sidelane_api::daemon::MAX_REQUEST_BYTES;
/// No request may take longer (the allocation wait is shorter).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(90);
/// A client must send a request's headers within this (a connection that trickles bytes
/// cannot hold a task forever).
pub const HEADER_DEADLINE: Duration = Duration::from_secs(10);
/// A request's body must arrive within this.
pub const BODY_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// Setting up the socket failed.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Binding or securing the socket failed.
    #[error("{op} the CNI socket {path}: {source}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds `path` (replacing a stale socket left by a previous agent), mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |op| {
        let path = path.display().to_string();
        move |source| ServerError::Socket { op, path, source }
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err("creating the directory of"))?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing the stale")(e)),
    }
    let listener = UnixListener::bind(path).map_err(err("binding"))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err("securing"))?;
    Ok(listener)
}

/// Serves `listener` until the task is dropped.
pub async fn serve<P: PodSource + SubnetSource, Q: QosPort>(
    listener: UnixListener,
    attacher: Arc<Attacher<P, Q>>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let own_uid = nix::unistd::Uid::effective().as_raw();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "accepting a CNI connection failed");
                continue;
            }
        };
        // The socket is mode 0600; the peer's credentials are checked too.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 || cred.uid() == own_uid => {}
            Ok(cred) => {
                warn!(
                    uid = cred.uid(),
                    "refused a CNI connection from an unprivileged user"
                );
                continue;
            }
            Err(e) => {
                warn!(error = %e, "reading a CNI connection's credentials failed");
                continue;
            }
        }
        let attacher = Arc::clone(&attacher);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let attacher = Arc::clone(&attacher);
                async move { Ok::<_, Infallible>(handle(&attacher, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_DEADLINE)
                // A client that shuts its side after the request still gets the answer.
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "CNI connection ended with an error");
            }
        });
    }
}

async fn handle<P: PodSource + SubnetSource, Q: QosPort>(
    attacher: &Attacher<P, Q>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match tokio::time::timeout(REQUEST_DEADLINE, route(attacher, req)).await {
        Ok(resp) => resp,
        Err(_) => failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request took longer than {REQUEST_DEADLINE:?}"),
        ),
    }
}

async fn route<P: PodSource + SubnetSource, Q: QosPort>(
    attacher: &Attacher<P, Q>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::POST {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} {}: only POST is served", req.method(), req.uri().path()),
        );
    }
    let path = req.uri().path().to_owned();
    let body = match tokio::time::timeout(
        BODY_DEADLINE,
        Limited::new(req.into_body(), MAX_REQUEST_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            // Sending it again cannot help: the network configuration makes it this large.
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                &CniResponse::failure_with_code(
                    format!(
                        "{path}: the body is larger than the agent's limit of {MAX_REQUEST_BYTES} bytes"
                    ),
                    ErrorCode::InvalidConfig as u32,
                ),
            );
        }
        Ok(Err(e)) => {
            return failure(
                StatusCode::BAD_REQUEST,
                format!("{path}: reading the body: {e}"),
            );
        }
        Err(_) => {
            return failure(
                StatusCode::REQUEST_TIMEOUT,
                format!("{path}: the body did not arrive within {BODY_DEADLINE:?}"),
            );
        }
    };
    match path.as_str() {
        PATH_ADD => match decode::<CniRequest>(&path, &body) {
            Ok(r) => match attacher.add(&r).await {
                Ok(resp) => json(StatusCode::OK, &resp),
                Err(e) => attach_failure(&e),
            },
            Err(msg) => failure(StatusCode::BAD_REQUEST, msg),
        },
        PATH_DEL => match decode::<CniRequest>(&path, &body) {
            Ok(r) => match attacher.del(&r).await {
                Ok(()) => empty(),
                Err(e) => attach_failure(&e),
            },
            Err(msg) => failure(StatusCode::BAD_REQUEST, msg),
        },
        PATH_CHECK => match decode::<CniRequest>(&path, &body) {
            Ok(r) => match attacher.check(&r).await {
                Ok(()) => empty(),
                Err(e) => attach_failure(&e),
            },
            Err(msg) => failure(StatusCode::BAD_REQUEST, msg),
        },
        PATH_GC => match decode::<GcRequest>(&path, &body) {
            Ok(r) => match attacher.gc(&r).await {
                Ok(_) => empty(),
                Err(e) => attach_failure(&e),
            },
            Err(msg) => failure(StatusCode::BAD_REQUEST, msg),
        },
        PATH_STATUS => match attacher.status().await {
            Readiness::Ready => empty(),
            Readiness::NotReady(reasons) => {
                let error = format!("the agent cannot serve ADD: {}", reasons.join("; "));
                warn!(%error, "STATUS: not ready");
                json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &CniResponse::failure_with_code(error, ErrorCode::NotAvailable as u32),
                )
            }
        },
        other => failure(StatusCode::NOT_FOUND, format!("no such path: {other}")),
    }
}

fn decode<T: DeserializeOwned>(path: &str, body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("{path}: the body is not a valid request: {e}"))
}

fn attach_failure(e: &AttachError) -> Response<Full<Bytes>> {
    warn!(error = %e, "CNI request failed");
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(
        status,
        &CniResponse::failure_with_code(e.to_string(), e.cni_code() as u32),
    )
}

fn failure(status: StatusCode, error: String) -> Response<Full<Bytes>> {
    json(status, &CniResponse::failure(error))
}

fn json(status: StatusCode, value: &CniResponse) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value)
        .unwrap_or_else(|e| format!("{{\"error\":\"encoding the response: {e}\"}}").into_bytes());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn empty() -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}
