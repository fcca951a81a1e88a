//! Watches: newline-delimited JSON events streamed from the change history.
//!
//! A watch starts either from the current state (synthetic `ADDED` events for every selected
//! object, as for `resourceVersion=0` or unset) or after a given `resourceVersion`, replaying
//! the history from there; if the history no longer reaches back that far the stream carries
//! one `ERROR` event with a 410 `Expired` `Status` and ends, which is how a real server says
//! it (and what makes `kube::runtime::watcher` re-list). Selectors apply as a real server's
//! watch cache applies them: an object that starts matching arrives as `ADDED`, one that stops
//! matching as `DELETED`. With `allowWatchBookmarks=true`, a `BOOKMARK` carrying the latest
//! `resourceVersion` follows at every bookmark interval. The stream ends at `timeoutSeconds`,
//! when the client goes away, when the server stops, or on [`super::ApiServer::close_watches`].

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::{
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};

use super::{
    Shared,
    resources::{self, ResourceType},
    store::{Change, ChangeKind, ListQuery},
};

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From the current state: `ADDED` for every selected object first.
    CurrentState,
    /// From the current state, without the initial `ADDED` events.
    Now,
    /// After this `resourceVersion`.
    After(u64),
}

/// What a watch request asks for.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    /// The resource type watched.
    pub resource: &'static ResourceType,
    /// Namespace and selectors.
    pub query: ListQuery,
    /// Where to start.
    pub start: Start,
    /// Whether to end the initial events with a bookmark annotated
    /// `k8s.io/initial-events-end` (`sendInitialEvents=true`).
    pub initial_events_end: bool,
    /// Whether to send bookmarks.
    pub bookmarks: bool,
    /// When to end the stream.
    pub timeout: Option<Duration>,
    /// Whether objects are sent as `PartialObjectMetadata`.
    pub metadata_only: bool,
}

/// `object` as `PartialObjectMetadata`.
pub fn partial_metadata(object: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event_type, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

impl WatchRequest {
    fn selects(&self, change: &Change, object: &Value) -> bool {
        change.key.resource == resources::index_of(self.resource)
            && self
                .query
                .namespace
                .as_deref()
                .is_none_or(|namespace| change.key.namespace == namespace)
            && self.query.selects(object)
    }

    fn render(&self, object: &Value) -> Value {
        if self.metadata_only {
            partial_metadata(object)
        } else {
            object.clone()
        }
    }

    /// The event a change is for this watch, if any.
    fn event(&self, change: &Change) -> Option<Bytes> {
        let now = self.selects(change, &change.object);
        let before = change
            .old
            .as_ref()
            .is_some_and(|old| self.selects(change, old));
        let event_type = match change.kind {
            ChangeKind::Modified if before && now => "MODIFIED",
            ChangeKind::Added | ChangeKind::Modified if now => "ADDED",
            ChangeKind::Modified if before => "DELETED",
            ChangeKind::Deleted if before || now => "DELETED",
            _ => return None,
        };
        Some(event_line(event_type, &self.render(&change.object)))
    }

    fn bookmark(&self, resource_version: u64, initial_events_end: bool) -> Bytes {
        let (kind, api_version) = if self.metadata_only {
            (
                "PartialObjectMetadata".to_owned(),
                "meta.k8s.io/v1".to_owned(),
            )
        } else {
            (self.resource.kind.to_owned(), self.resource.api_version())
        };
        let mut metadata = json!({"resourceVersion": resource_version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        event_line(
            "BOOKMARK",
            &json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}),
        )
    }
}

/// Starts streaming `request`; the receiver yields the lines of the response body.
pub fn start(shared: Arc<Shared>, request: WatchRequest) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let resource = request.resource.qualified();
        tracing::debug!(%resource, start = ?request.start, "watch started");
        let end = run(&shared, &request, &tx).await;
        tracing::debug!(%resource, end, "watch ended");
    });
    rx
}

/// Streams until the watch ends; returns why it ended.
async fn run(shared: &Shared, request: &WatchRequest, tx: &mpsc::Sender<Bytes>) -> &'static str {
    // Subscribe before reading the state, so that no write falls between the two unseen.
    let mut changes = shared.changes.subscribe();
    let mut closes = shared.closes.subscribe();
    let deadline = request.timeout.map(|t| Instant::now() + t);
    let mut last = match request.start {
        Start::After(version) => version,
        Start::Now => shared.read(super::store::Store::resource_version),
        Start::CurrentState => {
            let (items, version) =
                shared.read(|store| store.snapshot(request.resource, &request.query));
            for item in &items {
                if tx
                    .send(event_line("ADDED", &request.render(item)))
                    .await
                    .is_err()
                {
                    return "client gone";
                }
            }
            if request.initial_events_end
                && request.bookmarks
                && tx.send(request.bookmark(version, true)).await.is_err()
            {
                return "client gone";
            }
            version
        }
    };
    let mut bookmarks = tokio::time::interval_at(
        Instant::now() + shared.bookmark_interval,
        shared.bookmark_interval,
    );
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut bookmark_due = false;
    loop {
        match shared.read(|store| store.changes_after(last)) {
            Err(expired) => {
                let _ = tx.send(event_line("ERROR", &expired.to_status())).await;
                return "expired";
            }
            Ok(pending) => {
                for change in pending {
                    last = change.resource_version;
                    if let Some(event) = request.event(&change)
                        && tx.send(event).await.is_err()
                    {
                        return "client gone";
                    }
                }
            }
        }
        if bookmark_due {
            bookmark_due = false;
            if tx.send(request.bookmark(last, false)).await.is_err() {
                return "client gone";
            }
        }
        let timeout = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        // Biased: a close or a timeout that is due wins over pending changes, so a closed
        // watch never delivers what was written after the close.
        tokio::select! {
            biased;
            _ = closes.changed() => return "closed by the server",
            () = timeout => return "timeout",
            () = tx.closed() => return "client gone",
            woken = changes.changed() => {
                if woken.is_err() {
                    return "server stopped";
                }
            }
            _ = bookmarks.tick(), if request.bookmarks => bookmark_due = true,
        }
    }
}
