//! The Kubernetes API double, driven by real clients: `kube::Client` with typed and dynamic
//! `Api`s, `kube::runtime::watcher`, `kubectl`, and raw HTTP. Each test starts its own server.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    pin::Pin,
    process::Command,
    time::Duration,
};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::{
    coordination::v1::{Lease, LeaseSpec},
    core::v1::{Namespace, Pod},
};
use kube::{
    Api, Client, Discovery, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, WatchEvent, WatchParams,
    },
    core::Status,
    runtime::watcher,
};
use serde_json::{Value, json};
use sidelane_tests::{
    apiserver::{ApiServer, Options},
    process,
};

/// How long any single event may take to arrive.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }))
    .expect("a valid Pod")
}

fn pod_on(name: &str, node: &str, labels: &Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
    }))
    .expect("a valid Pod")
}

fn namespace(name: &str) -> Namespace {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
    )
    .expect("a valid Namespace")
}

/// The `Status` of a failed request; panics on any other error.
fn status_of<T: std::fmt::Debug>(result: kube::Result<T>) -> Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error Status, got {other:?}"),
    }
}

fn version_of(object: &impl kube::Resource) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .expect("a resourceVersion")
        .parse()
        .expect("a numeric resourceVersion")
}

async fn next<T>(stream: &mut (impl Stream<Item = T> + Unpin)) -> T {
    tokio::time::timeout(EVENT_TIMEOUT, stream.next())
        .await
        .expect("an event within the timeout")
        .expect("the stream goes on")
}

type WatcherStream<K> =
    Pin<Box<dyn Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send>>;

/// The next watcher event, described as `Kind name`; errors are skipped (the watcher retries
/// them itself) but recorded as `Error`.
async fn next_watcher_event(stream: &mut WatcherStream<Pod>) -> String {
    match next(stream).await {
        Ok(watcher::Event::Init) => "Init".to_owned(),
        Ok(watcher::Event::InitApply(p)) => format!("InitApply {}", p.name_any()),
        Ok(watcher::Event::InitDone) => "InitDone".to_owned(),
        Ok(watcher::Event::Apply(p)) => format!("Apply {}", p.name_any()),
        Ok(watcher::Event::Delete(p)) => format!("Delete {}", p.name_any()),
        Err(error) => format!("Error {error}"),
    }
}

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn pods_are_created_read_listed_and_deleted_through_a_kube_client() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");

    let created = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    assert_eq!(created.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(created.metadata.uid.as_ref().map(String::len), Some(36));
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    let fetched = pods.get("web").await.expect("get");
    assert_eq!(fetched.metadata.uid, created.metadata.uid);
    assert_eq!(version_of(&fetched), version_of(&created));

    let list = pods.list(&ListParams::default()).await.expect("list");
    assert_eq!(names(&list.items), ["web"]);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string())
    );

    let deleted = pods
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let status = deleted
        .right()
        .expect("an immediate delete returns a Status");
    assert_eq!(status.details.map(|d| d.name), Some("web".to_owned()));

    let missing = status_of(pods.get("web").await);
    assert_eq!(
        (
            missing.code,
            missing.reason.as_str(),
            missing.message.as_str()
        ),
        (404, "NotFound", "pods \"web\" not found")
    );
}

#[tokio::test]
async fn a_write_with_a_stale_resource_version_is_a_409_conflict_and_a_duplicate_create_is_already_exists()
 {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let original = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");

    let mut first = original.clone();
    first
        .annotations_mut()
        .insert("writer".to_owned(), "first".to_owned());
    let replaced = pods
        .replace("web", &PostParams::default(), &first)
        .await
        .expect("a replace at the current resourceVersion succeeds");
    assert!(version_of(&replaced) > version_of(&original));

    let mut second = original.clone();
    second
        .annotations_mut()
        .insert("writer".to_owned(), "second".to_owned());
    let conflict = status_of(pods.replace("web", &PostParams::default(), &second).await);
    assert_eq!(
        (
            conflict.code,
            conflict.reason.as_str(),
            conflict.message.as_str()
        ),
        (
            409,
            "Conflict",
            "Operation cannot be fulfilled on pods \"web\": the object has been modified; please apply your changes to the latest version and try again"
        )
    );

    let stale_patch = Patch::Merge(json!({
        "metadata": {"resourceVersion": original.resource_version(), "labels": {"x": "y"}}
    }));
    let conflict = status_of(
        pods.patch("web", &PatchParams::default(), &stale_patch)
            .await,
    );
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));

    let exists = status_of(pods.create(&PostParams::default(), &pod("web")).await);
    assert_eq!(
        (exists.code, exists.reason.as_str(), exists.message.as_str()),
        (409, "AlreadyExists", "pods \"web\" already exists")
    );
    let stored = pods.get("web").await.expect("get");
    assert_eq!(
        stored.annotations().get("writer").map(String::as_str),
        Some("first")
    );
}

#[tokio::test]
async fn merge_and_json_patches_change_annotations_and_a_failed_json_patch_test_changes_nothing() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");

    let merged = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "ovn.kubernetes.io/logical_switch": "net1",
                "attachnet.default.ovn.kubernetes.io/ip_address": "10.1.0.5"
            }}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        merged
            .annotations()
            .get("ovn.kubernetes.io/logical_switch")
            .map(String::as_str),
        Some("net1")
    );
    assert_eq!(version_of(&merged), version_of(&created) + 1);
    assert_eq!(merged.metadata.generation, Some(1), "metadata is not spec");

    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": merged.resource_version()},
        {"op": "remove", "path": "/metadata/annotations/ovn.kubernetes.io~1logical_switch"},
        {"op": "add", "path": "/metadata/annotations/ovn.kubernetes.io~1allocated", "value": "true"}
    ]))
    .expect("a JSON patch");
    let patched = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(json_patch),
        )
        .await
        .expect("JSON patch");
    assert_eq!(
        patched
            .annotations()
            .clone()
            .into_iter()
            .collect::<Vec<_>>(),
        [
            (
                "attachnet.default.ovn.kubernetes.io/ip_address".to_owned(),
                "10.1.0.5".to_owned()
            ),
            ("ovn.kubernetes.io/allocated".to_owned(), "true".to_owned()),
        ]
    );

    let failed_test: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": merged.resource_version()},
        {"op": "add", "path": "/metadata/annotations/late", "value": "x"}
    ]))
    .expect("a JSON patch");
    let invalid = status_of(
        pods.patch(
            "web",
            &PatchParams::default(),
            &Patch::<()>::Json(failed_test),
        )
        .await,
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    let stored = pods.get("web").await.expect("get");
    assert_eq!(stored.annotations().get("late"), None);
    assert_eq!(version_of(&stored), version_of(&patched));
}

#[tokio::test]
async fn only_the_status_subresource_changes_a_pod_status_and_it_changes_nothing_else() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");

    let ignored = pods
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .expect("a status change through the main resource is accepted and ignored");
    assert_eq!(
        ignored.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    assert_eq!(
        version_of(&ignored),
        version_of(&created),
        "a no-op is not a write"
    );

    let running = pods
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"ignored": "by the status subresource"}},
                "status": {"phase": "Running", "podIP": "10.16.0.7"}
            })),
        )
        .await
        .expect("status patch");
    let status = running.status.as_ref().expect("status");
    assert_eq!(
        (status.phase.as_deref(), status.pod_ip.as_deref()),
        (Some("Running"), Some("10.16.0.7"))
    );
    assert_eq!(running.annotations().get("ignored"), None);
    assert_eq!(version_of(&running), version_of(&created) + 1);
    assert_eq!(running.metadata.generation, Some(1));
}

/// Pods `a`..`d` for the selector tests: `a`, `b`, `c` in `default`, `d` in `ns2`; `a`, `c`,
/// `d` on `node-1`; `c` is `Running`. Returns an `Api` over all namespaces.
async fn selector_fixture(server: &ApiServer) -> Api<Pod> {
    let client = server.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&PostParams::default(), &namespace("ns2"))
        .await
        .expect("namespace");
    let pp = PostParams::default();
    for (ns, name, node, labels) in [
        (
            "default",
            "a",
            "node-1",
            json!({"app": "web", "tier": "front"}),
        ),
        (
            "default",
            "b",
            "node-2",
            json!({"app": "web", "tier": "back"}),
        ),
        ("default", "c", "node-1", json!({"app": "db"})),
        ("ns2", "d", "node-1", json!({"app": "web"})),
    ] {
        Api::<Pod>::namespaced(client.clone(), ns)
            .create(&pp, &pod_on(name, node, &labels))
            .await
            .expect("create");
    }
    Api::<Pod>::namespaced(client.clone(), "default")
        .patch_status(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .expect("c runs");
    Api::all(client)
}

async fn listed(pods: &Api<Pod>, params: ListParams) -> Vec<String> {
    names(&pods.list(&params).await.expect("list").items)
}

#[tokio::test]
async fn label_selectors_filter_lists_with_every_operator() {
    let server = ApiServer::start();
    let all = selector_fixture(&server).await;
    let by_labels = |selector: &str| ListParams::default().labels(selector);
    assert_eq!(
        listed(&all, ListParams::default()).await,
        ["a", "b", "c", "d"]
    );
    assert_eq!(listed(&all, by_labels("app=web")).await, ["a", "b", "d"]);
    assert_eq!(listed(&all, by_labels("app!=web")).await, ["c"]);
    assert_eq!(
        listed(&all, by_labels("app==web,tier in (front, back)")).await,
        ["a", "b"]
    );
    assert_eq!(
        listed(&all, by_labels("tier notin (front)")).await,
        ["b", "c", "d"]
    );
    assert_eq!(listed(&all, by_labels("tier")).await, ["a", "b"]);
    assert_eq!(listed(&all, by_labels("!tier")).await, ["c", "d"]);

    let metadata = all
        .list_metadata(&ListParams::default().labels("app=db"))
        .await
        .expect("metadata-only list");
    assert_eq!(
        metadata
            .items
            .iter()
            .map(ResourceExt::name_any)
            .collect::<Vec<_>>(),
        ["c"]
    );
}

#[tokio::test]
async fn field_selectors_filter_lists_on_the_node_name_phase_and_namespace_and_refuse_other_fields()
{
    let server = ApiServer::start();
    let all = selector_fixture(&server).await;
    let by_fields = |selector: &str| ListParams::default().fields(selector);
    assert_eq!(
        listed(&all, by_fields("spec.nodeName=node-1")).await,
        ["a", "c", "d"]
    );
    assert_eq!(
        listed(
            &all,
            by_fields("spec.nodeName=node-1,metadata.namespace!=ns2")
        )
        .await,
        ["a", "c"]
    );
    assert_eq!(listed(&all, by_fields("status.phase=Running")).await, ["c"]);
    assert_eq!(listed(&all, by_fields("metadata.name=b")).await, ["b"]);
    assert_eq!(
        listed(
            &all,
            ListParams::default()
                .labels("app=web")
                .fields("spec.nodeName=node-1")
        )
        .await,
        ["a", "d"]
    );

    let unsupported = status_of(all.list(&by_fields("spec.containers=x")).await);
    assert_eq!(
        (
            unsupported.code,
            unsupported.reason.as_str(),
            unsupported.message.as_str()
        ),
        (
            400,
            "BadRequest",
            "field label not supported: spec.containers"
        )
    );
}

#[tokio::test]
async fn delete_collection_deletes_only_the_selected_objects() {
    let server = ApiServer::start();
    let all = selector_fixture(&server).await;
    let default_pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let deleted = default_pods
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("app=web"),
        )
        .await
        .expect("delete collection")
        .left()
        .expect("the deleted objects");
    assert_eq!(names(&deleted.items), ["a", "b"]);
    assert_eq!(listed(&all, ListParams::default()).await, ["c", "d"]);
}

#[tokio::test]
async fn concurrent_writers_that_retry_on_conflict_lose_no_update() {
    const WRITERS: u32 = 4;
    const INCREMENTS: u32 = 10;
    let server = ApiServer::start();
    let leases: Api<Lease> = Api::namespaced(server.client(), "default");
    leases
        .create(
            &PostParams::default(),
            &Lease {
                metadata: kube::api::ObjectMeta {
                    name: Some("counter".to_owned()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("create");
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        // Each writer has a client (and connection pool) of its own, as separate replicas do.
        let leases: Api<Lease> = Api::namespaced(server.client(), "default");
        writers.push(tokio::spawn(async move {
            let mut conflicts = 0_u32;
            for _ in 0..INCREMENTS {
                loop {
                    let mut lease = leases.get("counter").await.expect("get");
                    let spec = lease.spec.as_mut().expect("spec");
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    match leases
                        .replace("counter", &PostParams::default(), &lease)
                        .await
                    {
                        Ok(_) => break,
                        Err(kube::Error::Api(status)) if status.code == 409 => conflicts += 1,
                        Err(other) => panic!("replace failed: {other}"),
                    }
                }
            }
            conflicts
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }
    let counter = leases
        .get("counter")
        .await
        .expect("get")
        .spec
        .and_then(|s| s.lease_transitions);
    assert_eq!(
        counter,
        Some(i32::try_from(WRITERS * INCREMENTS).expect("small"))
    );
}

#[tokio::test]
async fn a_limited_list_pages_with_continue_tokens_at_one_resource_version() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        pods.create(&PostParams::default(), &pod(name))
            .await
            .expect("create");
    }
    let first = pods
        .list(&ListParams::default().limit(2))
        .await
        .expect("page 1");
    assert_eq!(names(&first.items), ["p1", "p2"]);
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let token = first.metadata.continue_.clone().expect("a continue token");

    pods.delete("p4", &DeleteParams::default())
        .await
        .expect("delete between pages");

    let second = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(
        names(&second.items),
        ["p3", "p4"],
        "read at the first page's version"
    );
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let token = second.metadata.continue_.clone().expect("a continue token");
    let third = pods
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .expect("page 3");
    assert_eq!(names(&third.items), ["p5"]);
    assert_eq!(third.metadata.continue_, None);

    server.compact();
    let expired = status_of(
        pods.list(&ListParams::default().limit(2).continue_token(&token))
            .await,
    );
    assert_eq!((expired.code, expired.reason.as_str()), (410, "Expired"));
}

#[tokio::test]
async fn a_raw_watch_streams_added_modified_deleted_in_order_from_a_resource_version() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let start = server.resource_version().to_string();
    let mut events = pods
        .watch(&WatchParams::default().disable_bookmarks(), &start)
        .await
        .expect("watch")
        .boxed();

    pods.create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"v": "2"}}})),
    )
    .await
    .expect("patch");
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete");

    let mut seen = Vec::new();
    for _ in 0..3 {
        match next(&mut events).await.expect("an event") {
            WatchEvent::Added(p) => seen.push(("ADDED", version_of(&p))),
            WatchEvent::Modified(p) => seen.push(("MODIFIED", version_of(&p))),
            WatchEvent::Deleted(p) => seen.push(("DELETED", version_of(&p))),
            other => panic!("unexpected {other:?}"),
        }
    }
    let base: u64 = start.parse().expect("numeric");
    assert_eq!(
        seen,
        [
            ("ADDED", base + 1),
            ("MODIFIED", base + 2),
            ("DELETED", base + 3)
        ]
    );
}

#[tokio::test]
async fn a_watcher_sees_changes_in_order_resumes_after_a_reconnect_and_relists_after_expiry() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    pods.create(&PostParams::default(), &pod("before"))
        .await
        .expect("create");
    let mut stream: WatcherStream<Pod> = watcher(pods.clone(), watcher::Config::default()).boxed();
    let mut initial = Vec::new();
    for _ in 0..3 {
        initial.push(next_watcher_event(&mut stream).await);
    }
    assert_eq!(initial, ["Init", "InitApply before", "InitDone"]);

    pods.create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"step": "2"}}})),
    )
    .await
    .expect("patch");
    pods.delete("web", &DeleteParams::default())
        .await
        .expect("delete");
    let mut changes = Vec::new();
    for _ in 0..3 {
        changes.push(next_watcher_event(&mut stream).await);
    }
    assert_eq!(changes, ["Apply web", "Apply web", "Delete web"]);

    // A dropped watch resumes from the last resourceVersion: the change made while it was
    // down arrives, and nothing is re-listed.
    server.close_watches();
    pods.create(&PostParams::default(), &pod("during"))
        .await
        .expect("create");
    assert_eq!(next_watcher_event(&mut stream).await, "Apply during");
    pods.create(&PostParams::default(), &pod("after"))
        .await
        .expect("create");
    assert_eq!(next_watcher_event(&mut stream).await, "Apply after");

    // A watcher that was down while the history it needs was compacted away gets 410 and
    // re-lists. (The watcher reconnects only when polled, so it is down until `next`.)
    server.close_watches();
    pods.create(&PostParams::default(), &pod("zz-late"))
        .await
        .expect("create");
    server.compact();
    let mut relist = Vec::new();
    for _ in 0..6 {
        relist.push(next_watcher_event(&mut stream).await);
    }
    assert_eq!(
        relist,
        [
            "Error error returned by apiserver during watch: too old resource version: 10 (11): Expired",
            "Init",
            "InitApply after",
            "InitApply before",
            "InitApply during",
            "InitApply zz-late"
        ]
    );
    assert_eq!(next_watcher_event(&mut stream).await, "InitDone");
}

#[tokio::test]
async fn bookmarks_arrive_with_the_latest_resource_version() {
    let server = ApiServer::start_with(Options {
        bookmark_interval: Duration::from_millis(100),
        ..Options::default()
    })
    .expect("server");
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let mut events = pods
        .watch(&WatchParams::default(), "0")
        .await
        .expect("watch")
        .boxed();
    let created = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    match next(&mut events).await.expect("an event") {
        WatchEvent::Added(p) => assert_eq!(p.name_any(), "web"),
        other => panic!("expected ADDED, got {other:?}"),
    }
    match next(&mut events).await.expect("an event") {
        WatchEvent::Bookmark(bookmark) => {
            assert_eq!(
                bookmark.metadata.resource_version,
                created.resource_version().expect("rv")
            );
            assert_eq!(
                (
                    bookmark.types.api_version.as_str(),
                    bookmark.types.kind.as_str()
                ),
                ("v1", "Pod")
            );
        }
        other => panic!("expected BOOKMARK, got {other:?}"),
    }
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_gets_a_410_expired_error_event() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let old = server.resource_version().to_string();
    pods.create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    server.compact();
    let mut events = pods
        .watch(&WatchParams::default(), &old)
        .await
        .expect("the watch itself starts")
        .boxed();
    match next(&mut events).await {
        Ok(WatchEvent::Error(status)) | Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
        }
        other => panic!("expected a 410 Expired error event, got {other:?}"),
    }
}

#[tokio::test]
async fn selectors_on_a_watch_turn_objects_leaving_the_selection_into_deleted_events() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let start = server.resource_version().to_string();
    let mut events = pods
        .watch(
            &WatchParams::default().labels("app=web").disable_bookmarks(),
            &start,
        )
        .await
        .expect("watch")
        .boxed();
    pods.create(
        &PostParams::default(),
        &pod_on("x", "n", &json!({"app": "db"})),
    )
    .await
    .expect("create");
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}})),
    )
    .await
    .expect("joins");
    pods.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "api"}}})),
    )
    .await
    .expect("leaves");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(match next(&mut events).await.expect("event") {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            other => panic!("unexpected {other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED", "DELETED"]);
}

#[tokio::test]
async fn finalizers_hold_a_deletion_until_the_last_one_is_removed() {
    let server = ApiServer::start();
    let pods: Api<Pod> = Api::namespaced(server.client(), "default");
    let mut held = pod("held");
    held.metadata.finalizers = Some(vec!["sidelane.io/ip-release".to_owned()]);
    pods.create(&PostParams::default(), &held)
        .await
        .expect("create");

    let pending = pods
        .delete("held", &DeleteParams::default())
        .await
        .expect("delete")
        .left()
        .expect("a held delete returns the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    let still_there = pods.get("held").await.expect("still stored");
    assert_eq!(
        still_there.metadata.finalizers,
        Some(vec!["sidelane.io/ip-release".to_owned()])
    );

    let added = status_of(
        pods.patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"finalizers": ["sidelane.io/ip-release", "other.io/x"]}}),
            ),
        )
        .await,
    );
    assert_eq!(
        (added.code, added.reason.as_str(), added.message.as_str()),
        (
            422,
            "Invalid",
            "Pod \"held\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted"
        )
    );

    let released = pods
        .patch(
            "held",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .expect("removing the finalizer");
    assert_eq!(released.metadata.finalizers, None);
    assert_eq!(status_of(pods.get("held").await).code, 404);
}

#[tokio::test]
async fn a_lease_is_taken_over_only_at_its_current_resource_version() {
    let server = ApiServer::start();
    let leases: Api<Lease> = Api::namespaced(server.client(), "kube-system");
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("sidelane-controller".to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("replica-a".to_owned()),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }),
    };
    let created = leases
        .create(&PostParams::default(), &lease)
        .await
        .expect("replica-a creates the lease");
    let again = status_of(leases.create(&PostParams::default(), &lease).await);
    assert_eq!((again.code, again.reason.as_str()), (409, "AlreadyExists"));

    // Both replicas read the same version; the first to write wins, the other gets 409.
    let mut by_b = created.clone();
    by_b.spec.as_mut().expect("spec").holder_identity = Some("replica-b".to_owned());
    let mut by_c = created.clone();
    by_c.spec.as_mut().expect("spec").holder_identity = Some("replica-c".to_owned());
    let taken = leases
        .replace("sidelane-controller", &PostParams::default(), &by_b)
        .await
        .expect("replica-b takes over");
    assert_eq!(version_of(&taken), version_of(&created) + 1);
    let lost = status_of(
        leases
            .replace("sidelane-controller", &PostParams::default(), &by_c)
            .await,
    );
    assert_eq!((lost.code, lost.reason.as_str()), (409, "Conflict"));
    let holder = leases
        .get("sidelane-controller")
        .await
        .expect("get")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-b"));
}

#[tokio::test]
async fn a_kubeovn_subnet_is_discovered_and_served_as_a_dynamic_object_with_a_status_subresource() {
    let server = ApiServer::start();
    let client = server.client();
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (resource, capabilities) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("kubeovn.io", "v1", "Subnet"))
        .expect("Subnet is discovered");
    assert_eq!(resource.plural, "subnets");
    assert_eq!(capabilities.scope, kube::discovery::Scope::Cluster);
    assert!(
        capabilities
            .subresources
            .iter()
            .any(|(r, _)| r.plural == "status")
    );

    let subnets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut subnet = DynamicObject::new("attachnet", &resource).data(json!({
        "spec": {"cidrBlock": "172.17.0.0/16", "provider": "attachnet.default.ovn", "protocol": "IPv4"},
        "status": {"v4availableIPs": 1},
    }));
    subnet.metadata.labels = Some([("sidelane.io/managed".to_owned(), "true".to_owned())].into());
    let created = subnets
        .create(&PostParams::default(), &subnet)
        .await
        .expect("create");
    assert_eq!(created.data.get("status"), None, "create drops the status");
    assert_eq!(created.data["spec"]["provider"], "attachnet.default.ovn");

    let with_status = subnets
        .patch_status(
            "attachnet",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"v4availableIPs": 65533, "v4usingIPs": 0,
                "conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .expect("status patch");
    assert_eq!(with_status.data["status"]["v4availableIPs"], 65533);
    assert_eq!(with_status.metadata.generation, Some(1));

    let respecified = subnets
        .patch(
            "attachnet",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"excludeIps": ["172.17.0.1"]}})),
        )
        .await
        .expect("spec patch");
    assert_eq!(respecified.metadata.generation, Some(2));
    assert_eq!(respecified.data["status"]["v4availableIPs"], 65533);

    let smp = status_of(
        subnets
            .patch(
                "attachnet",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"mtu": 1400}})),
            )
            .await,
    );
    assert_eq!(smp.code, 415, "custom resources refuse strategic merge");

    let ips_resource =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeovn.io", "v1", "IP"), "ips");
    let ips: Api<DynamicObject> = Api::all_with(client, &ips_resource);
    let ip = DynamicObject::new("web.default.attachnet.default.ovn", &ips_resource).data(
        json!({"spec": {"podName": "web", "namespace": "default", "subnet": "attachnet",
            "v4IpAddress": "172.17.0.2"}}),
    );
    ips.create(&PostParams::default(), &ip)
        .await
        .expect("an IP named <pod>.<ns>.<provider>");
    assert_eq!(
        server
            .list("kubeovn.io/v1", "IP", None)
            .iter()
            .map(|o| o["metadata"]["name"].clone())
            .collect::<Vec<_>>(),
        [json!("web.default.attachnet.default.ovn")]
    );
}

#[tokio::test]
async fn kube_event_recorder_creates_an_events_k8s_io_event_and_patches_its_series() {
    let server = ApiServer::start();
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let web = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .expect("create");
    let recorder = kube::runtime::events::Recorder::new(client, "sidelane-controller".into());
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Normal,
        reason: "AttachmentReady".to_owned(),
        note: Some("net1 attached".to_owned()),
        action: "Attach".to_owned(),
        secondary: None,
    };
    let reference = kube::Resource::object_ref(&web, &());
    recorder
        .publish(&event, &reference)
        .await
        .expect("first publish");
    recorder
        .publish(&event, &reference)
        .await
        .expect("second publish");
    let events = server.list("events.k8s.io/v1", "Event", Some("default"));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "AttachmentReady");
    assert_eq!(events[0]["regarding"]["name"], "web");
    assert_eq!(events[0]["series"]["count"], 2);
    assert!(
        server.list("v1", "Event", None).is_empty(),
        "core Events are stored apart"
    );
}

#[tokio::test]
async fn aggregated_discovery_lists_every_served_group() {
    let server = ApiServer::start();
    let discovery = Discovery::new(server.client())
        .run_aggregated()
        .await
        .expect("aggregated discovery");
    let mut groups: Vec<String> = discovery.groups().map(|g| g.name().to_owned()).collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            "",
            "apps",
            "coordination.k8s.io",
            "events.k8s.io",
            "k8s.cni.cncf.io",
            "kubeovn.io"
        ]
    );
    let (nad, _) = discovery
        .resolve_gvk(&GroupVersionKind::gvk(
            "k8s.cni.cncf.io",
            "v1",
            "NetworkAttachmentDefinition",
        ))
        .expect("NADs are discovered");
    assert_eq!(nad.plural, "network-attachment-definitions");
}

#[tokio::test]
async fn server_side_apply_creates_a_nad_and_then_merges_into_it() {
    let server = ApiServer::start();
    let nad_resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    );
    let nads: Api<DynamicObject> = Api::namespaced_with(server.client(), "default", &nad_resource);
    let config = r#"{"cniVersion":"0.3.0","type":"kube-ovn","server_socket":"/run/openvswitch/kube-ovn-daemon.sock","provider":"attachnet.default.ovn"}"#;
    let manifest = json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "attachnet", "namespace": "default"},
        "spec": {"config": config},
    });
    let apply = PatchParams::apply("sidelane-test").force();
    let created = nads
        .patch("attachnet", &apply, &Patch::Apply(&manifest))
        .await
        .expect("apply creates");
    assert_eq!(created.data["spec"]["config"], config);

    let missing_manager = status_of(
        nads.patch(
            "attachnet",
            &PatchParams::default(),
            &Patch::Apply(&manifest),
        )
        .await,
    );
    assert_eq!(
        (missing_manager.code, missing_manager.reason.as_str()),
        (422, "Invalid")
    );

    let labelled = nads
        .patch(
            "attachnet",
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": "attachnet", "labels": {"team": "net"}},
            })),
        )
        .await
        .expect("apply merges");
    assert_eq!(labelled.data["spec"]["config"], config);
    assert_eq!(
        labelled.labels().get("team").map(String::as_str),
        Some("net")
    );
}

#[tokio::test]
async fn a_kubeconfig_file_points_a_kube_client_at_the_server() {
    let server = ApiServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kubeconfig");
    server.kubeconfig(&path).expect("write kubeconfig");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    let client = Client::try_from(config).expect("client");
    let namespaces: Api<Namespace> = Api::all(client);
    let list = namespaces.list(&ListParams::default()).await.expect("list");
    assert_eq!(
        names(&list.items),
        ["default", "kube-node-lease", "kube-public", "kube-system"]
    );
}

#[test]
fn seeded_objects_keep_their_status_and_are_served_over_plain_http_to_any_client() {
    let server = ApiServer::start();
    let seeded = server
        .seed(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "namespace": "ns1"},
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running", "podIP": "10.16.0.9"},
        }))
        .expect("seed");
    assert_eq!(seeded["status"]["podIP"], "10.16.0.9");
    let namespace = server
        .get("v1", "Namespace", "", "ns1")
        .expect("the namespace is created with the pod");
    assert_eq!(namespace["status"]["phase"], "Active");
    let stored = server.get("v1", "Pod", "ns1", "web").expect("stored");
    assert_eq!(stored, seeded);

    let address = server.url().trim_start_matches("http://");
    let get = |path: &str| {
        let mut stream = TcpStream::connect(address).expect("connect");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
        let status_line = head.lines().next().unwrap_or_default().to_owned();
        let body: Value = serde_json::from_str(body).expect("a JSON body");
        (status_line, body)
    };
    let (status_line, body) = get("/api/v1/namespaces/ns1/pods/web");
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert_eq!(body["status"]["phase"], "Running");
    let (status_line, body) = get("/api/v1/namespaces/ns1/pods/gone");
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");
    assert_eq!(
        body,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "pods \"gone\" not found", "reason": "NotFound",
            "details": {"name": "gone", "kind": "pods"}, "code": 404,
        })
    );
}

#[test]
fn kubectl_lists_the_pods_of_all_namespaces_as_json() {
    let kubectl = Path::new("/usr/bin/kubectl");
    if !kubectl.exists() {
        eprintln!(
            "skipping kubectl_lists_the_pods_of_all_namespaces_as_json: /usr/bin/kubectl is not installed"
        );
        return;
    }
    let server = ApiServer::start();
    for (namespace, name) in [("default", "web"), ("ns1", "db")] {
        server
            .seed(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"containers": [{"name": "main", "image": "busybox"}]},
            }))
            .expect("seed");
    }
    let home = tempfile::tempdir().expect("tempdir");
    let cache = home.path().join("cache");
    let cache = cache.to_str().expect("a UTF-8 path");
    let output = process::run(
        Command::new(kubectl)
            .args(["--server", server.url(), "--cache-dir", cache])
            .args(["get", "pods", "-A", "-o", "json"])
            .env("HOME", home.path())
            .env_remove("KUBECONFIG"),
        None,
        Duration::from_mins(1),
    )
    .expect("running kubectl")
    .checked()
    .expect("kubectl succeeds");
    let list: Value = serde_json::from_str(&output).expect("kubectl prints JSON");
    let pods: Vec<(String, String)> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            (
                p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(
        pods,
        [
            ("default".to_owned(), "web".to_owned()),
            ("ns1".to_owned(), "db".to_owned())
        ]
    );

    // The same through a kubeconfig file, as processes started by a lab would use it.
    let kubeconfig = home.path().join("kubeconfig");
    server.kubeconfig(&kubeconfig).expect("kubeconfig");
    let names = process::run(
        Command::new(kubectl)
            .args(["--cache-dir", cache, "get", "namespaces", "-o", "name"])
            .env("HOME", home.path())
            .env("KUBECONFIG", &kubeconfig),
        None,
        Duration::from_mins(1),
    )
    .expect("running kubectl")
    .checked()
    .expect("kubectl succeeds");
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        [
            "namespace/default",
            "namespace/kube-node-lease",
            "namespace/kube-public",
            "namespace/kube-system",
            "namespace/ns1"
        ]
    );
}
