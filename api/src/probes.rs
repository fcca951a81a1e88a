//! The one metrics and probe server of the controller and the agent: plain HTTP/1.1 on a TCP
//! listener, `/healthz` answered here (the process serves), every other path by the binary's
//! [`Endpoints`] (`/metrics`, `/readyz`, `/attachments`), off the async workers because some
//! answers read eBPF maps inside namespaces.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// What a binary answers beside `/healthz`.
pub trait Endpoints: Send + Sync + 'static {
    /// The status and text body for `path`; `None`: no such path (404). May block.
    fn answer(&self, path: &str) -> Option<(u16, String)>;
}

/// Binds the metrics address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `endpoints` on `listener` forever.
pub async fn serve(listener: TcpListener, endpoints: Arc<dyn Endpoints>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection");
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let endpoints = Arc::clone(&endpoints);
                async move { Ok::<_, Infallible>(route(endpoints, req.uri().path()).await) }
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

async fn route(endpoints: Arc<dyn Endpoints>, path: &str) -> Response<Full<Bytes>> {
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n".to_owned());
    }
    let owned = path.to_owned();
    let answer = tokio::task::spawn_blocking(move || endpoints.answer(&owned)).await;
    match answer {
        Ok(Some((status, body))) => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        ),
        Ok(None) => text(StatusCode::NOT_FOUND, format!("no such path: {path}\n")),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("answering {path}: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    struct Loading;

    impl Endpoints for Loading {
        fn answer(&self, path: &str) -> Option<(u16, String)> {
            (path == "/readyz").then(|| (503, "loading the cluster\n".to_owned()))
        }
    }

    fn get(port: u16, path: &str) -> String {
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthz_is_answered_here_and_every_other_path_by_the_binary() {
        let listener = bind("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("binding");
        let port = listener.local_addr().expect("the port").port();
        tokio::spawn(serve(listener, Arc::new(Loading)));
        let answers = tokio::task::spawn_blocking(move || {
            ["/healthz", "/readyz", "/nope"].map(|p| get(port, p))
        })
        .await
        .expect("the client");
        assert!(answers[0].starts_with("HTTP/1.1 200") && answers[0].ends_with("ok\n"));
        assert!(
            answers[1].starts_with("HTTP/1.1 503") && answers[1].ends_with("loading the cluster\n")
        );
        assert!(
            answers[2].starts_with("HTTP/1.1 404") && answers[2].contains("no such path: /nope")
        );
    }
}
