//! ADD's one rollback: each step that changes the node registers how to undo itself *before* it
//! runs (every undo is idempotent: removing what is not there is success), and the guard runs
//! the registered undos in reverse order when ADD fails. When ADD is dropped half-way (the
//! socket's deadline, a client that went away), the guard's `Drop` runs them in a task of its
//! own, after any blocking step still in flight, and holds the attachment's lock until done:
//! a DEL that follows finds nothing half made.

use std::{future::Future, sync::Arc};

use futures::future::BoxFuture;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{debug, warn};

type UndoFn = Box<dyn FnOnce() -> BoxFuture<'static, Result<(), String>> + Send>;

/// One registered undo.
struct Step {
    /// What it undoes, for the log.
    what: String,
    run: UndoFn,
}

/// The rollback of one ADD; see the module's documentation.
pub(crate) struct Undo {
    /// `namespace/name` and interface, for the log.
    attachment: String,
    steps: Vec<Step>,
    /// Held by each blocking step while it runs; the rollback waits for it.
    busy: Arc<Mutex<()>>,
    /// The attachment's lock, released once the ADD is done or undone.
    lock: Option<OwnedMutexGuard<()>>,
}

impl Undo {
    /// The rollback of the ADD of `attachment`, which holds `lock`.
    pub(crate) fn new(attachment: String, lock: OwnedMutexGuard<()>) -> Undo {
        Undo {
            attachment,
            steps: Vec::new(),
            busy: Arc::new(Mutex::new(())),
            lock: Some(lock),
        }
    }

    /// Registers `undo` (what it undoes: `what`).
    pub(crate) fn push<F, Fut>(&mut self, what: impl Into<String>, undo: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.steps.push(Step {
            what: what.into(),
            run: Box::new(move || Box::pin(undo())),
        });
    }

    /// Registers a blocking `undo` (netlink, eBPF maps, files).
    pub(crate) fn push_blocking<F>(&mut self, what: impl Into<String>, undo: F)
    where
        F: FnOnce() -> Result<(), String> + Send + 'static,
    {
        self.push(what, move || super::blocking(undo));
    }

    /// Runs a blocking step off the async workers; a rollback (even one started because this
    /// ADD was dropped meanwhile) waits until it has finished.
    pub(crate) fn blocking<T: Send + 'static>(
        &self,
        step: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let busy = Arc::clone(&self.busy);
        async move {
            let busy = busy.lock_owned().await;
            super::blocking(move || {
                let value = step();
                drop(busy);
                value
            })
            .await
        }
    }

    /// The ADD succeeded: nothing is undone.
    pub(crate) fn commit(mut self) {
        self.steps.clear();
    }

    /// The ADD failed: undoes every registered step, last first.
    pub(crate) async fn rollback(mut self) {
        let steps = std::mem::take(&mut self.steps);
        let (busy, lock) = (Arc::clone(&self.busy), self.lock.take());
        run(self.attachment.clone(), steps, busy, lock).await;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.steps.is_empty() {
            return;
        }
        let steps = std::mem::take(&mut self.steps);
        let (busy, lock) = (Arc::clone(&self.busy), self.lock.take());
        let attachment = self.attachment.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            warn!(attachment = %attachment, steps = steps.len(),
                  "an ADD was abandoned half-way; undoing what it did");
            runtime.spawn(run(attachment, steps, busy, lock));
        } else {
            warn!(attachment = %attachment, steps = steps.len(),
                  "an ADD was abandoned outside a runtime; GC or the next start removes what it left");
        }
    }
}

async fn run(
    attachment: String,
    steps: Vec<Step>,
    busy: Arc<Mutex<()>>,
    lock: Option<OwnedMutexGuard<()>>,
) {
    let _idle = busy.lock().await;
    for step in steps.into_iter().rev() {
        match (step.run)().await {
            Ok(()) => debug!(attachment = %attachment, step = %step.what, "undone"),
            Err(e) => warn!(attachment = %attachment, step = %step.what, error = %e,
                            "undoing a failed ADD; GC or the next start tries again"),
        }
    }
    drop(lock);
}
