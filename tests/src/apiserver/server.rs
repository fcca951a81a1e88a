//! The HTTP/1.1 front: routes Kubernetes API paths to the store, negotiates the
//! representation (`Accept`), and turns failures into `Status` responses.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, Method, Request, Response, StatusCode,
    header::{ACCEPT, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};

use super::{
    Shared,
    patch::PatchType,
    resources::{self, ResourceType},
    selectors::{FieldSelector, LabelSelector},
    status::ApiError,
    store::{Deletion, ListQuery, Preconditions},
    watch::{self, Start, WatchRequest, partial_metadata},
};

/// A response body: a whole JSON document, or the lines of a watch.
#[derive(Debug)]
pub enum ResponseBody {
    /// The whole body (taken when sent).
    Full(Option<Bytes>),
    /// A stream of chunks, ended when the sender is dropped.
    Stream(mpsc::Receiver<Bytes>),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Self::Stream(rx) => rx
                .poll_recv(cx)
                .map(|chunk| chunk.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}

const JSON: &str = "application/json";
const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

fn respond(code: u16, content_type: &str, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Some(body)));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn json_response(code: u16, value: &Value) -> Response<ResponseBody> {
    respond(code, JSON, Bytes::from(value.to_string()))
}

fn error_response(error: &ApiError) -> Response<ResponseBody> {
    json_response(error.code(), &error.to_status())
}

/// The representation the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Representation {
    /// The objects themselves.
    Full,
    /// `PartialObjectMetadata(List)`.
    MetadataOnly,
    /// Aggregated discovery (`APIGroupDiscoveryList`), only on `/api` and `/apis`.
    AggregatedDiscovery,
}

/// The first representation in `Accept` that the double serves; `None` if there is none.
/// Tables and protobuf are not served; clients that ask for them also accept JSON.
fn negotiate(headers: &HeaderMap) -> Option<Representation> {
    let Some(accept) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Some(Representation::Full);
    };
    if accept.trim().is_empty() {
        return Some(Representation::Full);
    }
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media_type = parts.next().unwrap_or_default().to_ascii_lowercase();
        if !matches!(
            media_type.as_str(),
            "application/json" | "application/*" | "*/*"
        ) {
            continue;
        }
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        match params.get("as").copied() {
            None => return Some(Representation::Full),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") => {
                return Some(Representation::MetadataOnly);
            }
            Some("APIGroupDiscoveryList") => return Some(Representation::AggregatedDiscovery),
            Some(_) => {}
        }
    }
    None
}

/// The query string, decoded; the last value of a repeated key wins.
fn query_params(query: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params.get(name).is_some_and(|v| v == "true" || v == "1")
}

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse().map_err(|_| ApiError::BadRequest {
                message: format!("{name}: invalid value {v:?}: not a non-negative integer"),
            })
        })
        .transpose()
}

/// What a resource path names.
#[derive(Debug)]
struct Target {
    resource: &'static ResourceType,
    /// The namespace in the path (empty if none).
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn resource_target(
    group: &str,
    version: &str,
    rest: &[&str],
    path: &str,
) -> Result<Target, ApiError> {
    let no_route = || ApiError::NoRoute {
        path: path.to_owned(),
    };
    let namespaced_path =
        rest.len() >= 3 && rest[0] == "namespaces" && !(rest.len() == 3 && rest[2] == "status");
    let (namespace, rest) = if namespaced_path {
        (rest[1].to_owned(), &rest[2..])
    } else {
        (String::new(), rest)
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, subresource] => (*plural, Some(*name), Some(*subresource)),
        _ => return Err(no_route()),
    };
    let resource = resources::by_plural(group, version, plural).ok_or_else(no_route)?;
    if resource.namespaced == namespace.is_empty() && (name.is_some() || !resource.namespaced) {
        return Err(no_route());
    }
    let status = match subresource {
        None => false,
        Some("status") if resource.status_subresource => true,
        Some(_) => return Err(no_route()),
    };
    if name.is_some_and(str::is_empty) {
        return Err(no_route());
    }
    Ok(Target {
        resource,
        namespace,
        name: name.map(str::to_owned),
        status,
    })
}

fn list_query(target: &Target, params: &HashMap<String, String>) -> Result<ListQuery, ApiError> {
    let labels = LabelSelector::parse(params.get("labelSelector").map_or("", String::as_str))?;
    let mut fields = FieldSelector::parse(
        params.get("fieldSelector").map_or("", String::as_str),
        target.resource,
    )?;
    if let Some(name) = &target.name {
        fields = fields.and(FieldSelector::name(name));
    }
    let limit = number(params, "limit")?.unwrap_or(0);
    let exact_version = if params.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
        number(params, "resourceVersion")?
    } else {
        None
    };
    Ok(ListQuery {
        namespace: (!target.namespace.is_empty()).then(|| target.namespace.clone()),
        labels,
        fields,
        limit: usize::try_from(limit).unwrap_or(usize::MAX),
        continue_token: params.get("continue").filter(|c| !c.is_empty()).cloned(),
        exact_version,
    })
}

fn render(representation: Representation, object: &Value) -> Value {
    if representation == Representation::MetadataOnly {
        partial_metadata(object)
    } else {
        object.clone()
    }
}

/// The request body as JSON; `Content-Type`, when sent, must be JSON.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    if let Some(content_type) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(JSON) && media_type != "*/*" {
            return Err(ApiError::UnsupportedMediaType {
                content_type: content_type.to_owned(),
                accepted: JSON.to_owned(),
            });
        }
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("the request body is not valid JSON: {e}"),
    })
}

fn preconditions(body: &[u8]) -> Result<Preconditions, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Preconditions::default());
    }
    let options: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("the DeleteOptions body is not valid JSON: {e}"),
    })?;
    if options
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty())
    {
        return Err(dry_run_unsupported());
    }
    let field = |name: &str| {
        options
            .pointer(&format!("/preconditions/{name}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Ok(Preconditions {
        uid: field("uid"),
        resource_version: field("resourceVersion"),
    })
}

fn dry_run_unsupported() -> ApiError {
    ApiError::BadRequest {
        message: "dryRun is not supported by the Kubernetes API double".to_owned(),
    }
}

/// One parsed request.
struct Call<'a> {
    shared: &'a Arc<Shared>,
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    params: HashMap<String, String>,
    body: Bytes,
    representation: Representation,
}

impl Call<'_> {
    fn discovery(&self, segments: &[&str]) -> Result<Response<ResponseBody>, ApiError> {
        if self.method != Method::GET {
            return Err(ApiError::MethodNotAllowed {
                method: self.method.to_string(),
            });
        }
        let aggregated = self.representation == Representation::AggregatedDiscovery;
        let no_route = || ApiError::NoRoute {
            path: self.path.to_owned(),
        };
        let document = match segments {
            ["api"] if aggregated => {
                return Ok(respond(
                    200,
                    AGGREGATED_CONTENT_TYPE,
                    Bytes::from(resources::aggregated(true).to_string()),
                ));
            }
            ["apis"] if aggregated => {
                return Ok(respond(
                    200,
                    AGGREGATED_CONTENT_TYPE,
                    Bytes::from(resources::aggregated(false).to_string()),
                ));
            }
            ["api"] => resources::core_versions(&self.shared.address.to_string()),
            ["apis"] => resources::api_group_list(),
            ["api", version] => resources::api_resource_list("", version).ok_or_else(no_route)?,
            ["apis", group] => resources::api_group(group).ok_or_else(no_route)?,
            ["apis", group, version] => {
                resources::api_resource_list(group, version).ok_or_else(no_route)?
            }
            _ => return Err(no_route()),
        };
        Ok(json_response(200, &document))
    }

    fn watch(&self, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
        let query = list_query(target, &self.params)?;
        let version = self
            .params
            .get("resourceVersion")
            .map_or("", String::as_str);
        let send_initial_events = self.params.get("sendInitialEvents").map(String::as_str);
        let start = match (version, send_initial_events) {
            (_, Some("true")) | ("" | "0", None) => Start::CurrentState,
            ("", Some(_)) => Start::Now,
            (version, _) => Start::After(version.parse().map_err(|_| ApiError::BadRequest {
                message: format!("resourceVersion: invalid value {version:?}"),
            })?),
        };
        let request = WatchRequest {
            resource: target.resource,
            query,
            start,
            initial_events_end: send_initial_events == Some("true"),
            bookmarks: flag(&self.params, "allowWatchBookmarks"),
            timeout: number(&self.params, "timeoutSeconds")?.map(Duration::from_secs),
            metadata_only: self.representation == Representation::MetadataOnly,
        };
        let rx = watch::start(Arc::clone(self.shared), request);
        let mut response = Response::new(ResponseBody::Stream(rx));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(JSON));
        Ok(response)
    }

    fn list(&self, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
        let query = list_query(target, &self.params)?;
        let page = self
            .shared
            .read(|store| store.list(target.resource, &query))?;
        let mut metadata = json!({"resourceVersion": page.resource_version.to_string()});
        if let Some(token) = page.continue_token {
            metadata["continue"] = json!(token);
        }
        if let Some(remaining) = page.remaining {
            metadata["remainingItemCount"] = json!(remaining);
        }
        let items: Vec<Value> = page
            .items
            .iter()
            .map(|item| render(self.representation, item))
            .collect();
        let (kind, api_version) = if self.representation == Representation::MetadataOnly {
            (
                "PartialObjectMetadataList".to_owned(),
                "meta.k8s.io/v1".to_owned(),
            )
        } else {
            (target.resource.list_kind(), target.resource.api_version())
        };
        Ok(json_response(
            200,
            &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata, "items": items}),
        ))
    }

    fn collection(&self, target: &Target) -> Result<Response<ResponseBody>, ApiError> {
        match *self.method {
            Method::GET if flag(&self.params, "watch") => self.watch(target),
            Method::GET => self.list(target),
            Method::POST => {
                let object = json_body(self.headers, &self.body)?;
                let created = self
                    .shared
                    .write(|store| store.create(target.resource, &target.namespace, object))?;
                Ok(json_response(201, &render(self.representation, &created)))
            }
            Method::DELETE => {
                preconditions(&self.body)?;
                let query = list_query(target, &self.params)?;
                let deleted = self
                    .shared
                    .write(|store| store.delete_collection(target.resource, &query));
                let version = self.shared.read(super::store::Store::resource_version);
                let items: Vec<Value> = deleted
                    .iter()
                    .map(|item| render(self.representation, item))
                    .collect();
                Ok(json_response(
                    200,
                    &json!({
                        "kind": target.resource.list_kind(),
                        "apiVersion": target.resource.api_version(),
                        "metadata": {"resourceVersion": version.to_string()},
                        "items": items,
                    }),
                ))
            }
            _ => Err(ApiError::MethodNotAllowed {
                method: self.method.to_string(),
            }),
        }
    }

    fn object(&self, target: &Target, name: &str) -> Result<Response<ResponseBody>, ApiError> {
        let resource = target.resource;
        let namespace = target.namespace.as_str();
        match *self.method {
            Method::GET if flag(&self.params, "watch") => self.watch(target),
            Method::GET => {
                let object = self
                    .shared
                    .read(|store| store.get(resource, namespace, name))?;
                Ok(json_response(200, &render(self.representation, &object)))
            }
            Method::PUT => {
                let object = json_body(self.headers, &self.body)?;
                let updated = self.shared.write(|store| {
                    store.update(resource, namespace, name, target.status, object)
                })?;
                Ok(json_response(200, &render(self.representation, &updated)))
            }
            Method::PATCH => {
                let content_type = self
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let patch_type = PatchType::from_content_type(content_type)?;
                let field_manager = self.params.get("fieldManager").map(String::as_str);
                let (patched, created) = self.shared.write(|store| {
                    store.patch(
                        resource,
                        namespace,
                        name,
                        target.status,
                        patch_type,
                        &self.body,
                        field_manager,
                    )
                })?;
                let code = if created { 201 } else { 200 };
                Ok(json_response(code, &render(self.representation, &patched)))
            }
            Method::DELETE if !target.status => {
                let preconditions = preconditions(&self.body)?;
                let deletion = self
                    .shared
                    .write(|store| store.delete(resource, namespace, name, &preconditions))?;
                Ok(match deletion {
                    Deletion::Deleted(status) => json_response(200, &status),
                    Deletion::Pending(object) => {
                        json_response(202, &render(self.representation, &object))
                    }
                })
            }
            _ => Err(ApiError::MethodNotAllowed {
                method: self.method.to_string(),
            }),
        }
    }

    fn dispatch(&self) -> Result<Response<ResponseBody>, ApiError> {
        let segments: Vec<&str> = self
            .path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .split('/')
            .collect();
        match segments.as_slice() {
            ["version"] => Ok(json_response(
                200,
                &json!({
                    "major": "1",
                    "minor": "34",
                    "gitVersion": "v1.34.0-sidelane-apidouble",
                    "gitCommit": "",
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "none",
                    "compiler": "none",
                    "platform": "linux/amd64",
                }),
            )),
            ["healthz" | "readyz" | "livez"] => {
                Ok(respond(200, "text/plain", Bytes::from_static(b"ok")))
            }
            ["api" | "apis"] | ["api" | "apis", _] | ["apis", _, _] => self.discovery(&segments),
            ["api", version, rest @ ..] => self.resource("", version, rest),
            ["apis", group, version, rest @ ..] => self.resource(group, version, rest),
            _ => Err(ApiError::NoRoute {
                path: self.path.to_owned(),
            }),
        }
    }

    fn resource(
        &self,
        group: &str,
        version: &str,
        rest: &[&str],
    ) -> Result<Response<ResponseBody>, ApiError> {
        if self.params.get("dryRun").is_some_and(|d| !d.is_empty()) {
            return Err(dry_run_unsupported());
        }
        if self.representation == Representation::AggregatedDiscovery {
            return Err(ApiError::NotAcceptable {
                accept: "APIGroupDiscoveryList".to_owned(),
            });
        }
        let target = resource_target(group, version, rest, self.path)?;
        match &target.name {
            None if target.status => Err(ApiError::NoRoute {
                path: self.path.to_owned(),
            }),
            None => self.collection(&target),
            Some(name) => self.object(&target, name),
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let response = match body.collect().await {
        Err(error) => error_response(&ApiError::BadRequest {
            message: format!("reading the request body: {error}"),
        }),
        Ok(collected) => match negotiate(&parts.headers) {
            None => error_response(&ApiError::NotAcceptable {
                accept: parts
                    .headers
                    .get(ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
            }),
            Some(representation) => {
                let call = Call {
                    shared: &shared,
                    method: &parts.method,
                    path: &path,
                    headers: &parts.headers,
                    params: query_params(parts.uri.query()),
                    body: collected.to_bytes(),
                    representation,
                };
                call.dispatch()
                    .unwrap_or_else(|error| error_response(&error))
            }
        },
    };
    tracing::debug!(
        method = %parts.method,
        path = %path,
        query = parts.uri.query().unwrap_or_default(),
        status = response.status().as_u16(),
        "request"
    );
    Ok(response)
}

/// Serves connections from `listener` until `shutdown` changes.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&shared), request));
                    if let Err(error) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, accept.parse().expect("header value"));
        headers
    }

    #[test]
    fn kube_metadata_requests_get_partial_object_metadata() {
        assert_eq!(
            negotiate(&headers(
                "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
            )),
            Some(Representation::MetadataOnly)
        );
    }

    #[test]
    fn a_table_request_with_a_json_fallback_gets_json_and_without_one_nothing() {
        assert_eq!(
            negotiate(&headers(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
            )),
            Some(Representation::Full)
        );
        assert_eq!(
            negotiate(&headers("application/json;as=Table;v=v1;g=meta.k8s.io")),
            None
        );
        assert_eq!(negotiate(&HeaderMap::new()), Some(Representation::Full));
    }

    #[test]
    fn namespaced_and_cluster_paths_name_their_targets() {
        let pod = resource_target(
            "",
            "v1",
            &["namespaces", "ns1", "pods", "web", "status"],
            "/",
        )
        .expect("pod status");
        assert_eq!(
            (
                pod.resource.plural,
                pod.namespace.as_str(),
                pod.name.as_deref(),
                pod.status
            ),
            ("pods", "ns1", Some("web"), true)
        );
        let ns_status = resource_target("", "v1", &["namespaces", "ns1", "status"], "/")
            .expect("namespace status");
        assert_eq!(
            (
                ns_status.resource.plural,
                ns_status.name.as_deref(),
                ns_status.status
            ),
            ("namespaces", Some("ns1"), true)
        );
        let all_pods = resource_target("", "v1", &["pods"], "/").expect("all pods");
        assert_eq!((all_pods.namespace.as_str(), all_pods.name), ("", None));
        assert!(resource_target("", "v1", &["pods", "web"], "/").is_err());
        assert!(resource_target("kubeovn.io", "v1", &["namespaces", "x", "subnets"], "/").is_err());
        assert!(resource_target("kubeovn.io", "v1", &["ips", "a", "status"], "/").is_err());
    }
}
