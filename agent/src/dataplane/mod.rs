//! The agent's eBPF dataplane: loading, attaching, configuring and observing the TC programs
//! of `agent-ebpf`.
//!
//! - [`qos`]: per-attachment rate limits (`ingress_rate` / `egress_rate`).
//! - [`test_run`]: `BPF_PROG_TEST_RUN`, to exercise the programs on crafted packets.
//!
//! Everything the kernel holds is pinned under a bpffs directory, so an agent restart changes
//! nothing on the wire; the restarted agent adopts what it finds (see [`qos::QosDataplane::adopt`]).

mod bpffs;
pub mod fastpath;
mod object;
pub mod pairs;
pub mod ports;
pub mod qdisc;
pub mod qos;
pub mod routed;
pub mod test_run;

use std::{io, path::PathBuf};

use thiserror::Error;

use crate::netns::NetnsError;

/// What went wrong in the dataplane, naming the operation and the object.
#[derive(Debug, Error)]
pub enum DataplaneError {
    /// The agent was built without the eBPF object.
    #[error(
        "this agent was built without its eBPF object (AYA_BUILD_SKIP was set): rebuild after \
         `cargo xtask setup`, or with `cargo xtask build-ebpf`"
    )]
    NoObject,
    /// bpffs is not mounted and could not be mounted.
    #[error("mounting bpffs at {path}")]
    Bpffs {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// A pin directory or file operation failed.
    #[error("{op} {path}")]
    Pin {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A map pinned by an agent of another version, whose layout this one's programs cannot
    /// use.
    #[error(
        "the fast-path map {map} pinned at {path} was made by an agent of another version \
         ({found}; this agent's is {wanted}): drain the node's pods and remove {dir} before \
         starting this agent"
    )]
    StalePin {
        /// The map.
        map: &'static str,
        /// Its pin.
        path: PathBuf,
        /// The directory of the object's pins.
        dir: PathBuf,
        /// Its layout as pinned.
        found: String,
        /// This agent's layout.
        wanted: String,
    },
    /// The interface does not exist in the namespace.
    #[error("interface {ifname:?} not found in {netns}")]
    NoSuchInterface {
        /// The name asked for.
        ifname: String,
        /// The namespace, as given.
        netns: String,
    },
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// Loading the object or a program failed.
    #[error("loading the eBPF programs for {target}")]
    Load {
        /// The attachment.
        target: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Attaching a program to the interface failed.
    #[error("attaching {program} to the TC {hook} hook of {target}")]
    Attach {
        /// The program name.
        program: &'static str,
        /// `ingress` or `egress`.
        hook: &'static str,
        /// The attachment.
        target: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing a map failed.
    #[error("{op} map {map} of {target}")]
    Map {
        /// What was being done.
        op: &'static str,
        /// The map name.
        map: &'static str,
        /// The attachment.
        target: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The QoS spec is out of range.
    #[error("invalid QoS for {target}: {source}")]
    InvalidSpec {
        /// The attachment.
        target: String,
        /// What is wrong, naming the value.
        #[source]
        source: sidelane_api::annotations::AnnotationError,
    },
    /// Reading the root qdisc failed.
    #[error("reading the root qdisc of {target}")]
    Qdisc {
        /// The attachment.
        target: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A program test run failed.
    #[error("test run of {program}")]
    TestRun {
        /// The program.
        program: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Several steps of a best-effort teardown failed; all were attempted.
    #[error("tearing down {target}: {} step(s) failed: {}", .errors.len(), .errors.join("; "))]
    Teardown {
        /// The attachment.
        target: String,
        /// Every failure, in order.
        errors: Vec<String>,
    },
}

/// Boxes any error as the source of a [`DataplaneError`].
pub(crate) fn boxed<E: std::error::Error + Send + Sync + 'static>(
    e: E,
) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Loading `target`'s object or program failed.
pub(crate) fn load_error<E: std::error::Error + Send + Sync + 'static>(
    target: &str,
    e: E,
) -> DataplaneError {
    DataplaneError::Load {
        target: target.to_owned(),
        source: boxed(e),
    }
}

/// `op` on `map` of `target` failed.
pub(crate) fn map_error<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
    map: &'static str,
    target: &str,
    e: E,
) -> DataplaneError {
    DataplaneError::Map {
        op,
        map,
        target: target.to_owned(),
        source: boxed(e),
    }
}

/// Leaves a TC filter attached when the agent's handle on it goes. aya detaches a link when its
/// handle is dropped, but these filters belong to the node: they outlive the agent, and a
/// restarted agent adopts them. A netlink filter's handle holds no file descriptor, only the
/// device, hook, priority and handle numbers, so forgetting it leaks nothing.
fn leave_attached(link: aya::programs::tc::SchedClassifierLink) {
    std::mem::forget(link);
}
