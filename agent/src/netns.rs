//! Running work inside another network namespace.
//!
//! A thread that calls `setns(CLONE_NEWNET)` changes only itself; tokio workers must never do it.
//! [`run_in`] therefore runs the closure on a fresh, short-lived OS thread that enters the
//! namespace, does the work (resolving interface names, attaching TC links, opening netlink
//! sockets that then stay bound to that namespace) and exits.

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    thread,
};

use nix::sched::{CloneFlags, setns};
use thiserror::Error;

/// A network namespace that could not be entered.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// The namespace file could not be opened.
    #[error("opening network namespace {path}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a network namespace.
    #[error("{path} is not a network namespace")]
    NotANamespace {
        /// The path given.
        path: PathBuf,
        /// The kernel's answer.
        #[source]
        source: nix::Error,
    },
    /// The worker thread could not be started or panicked.
    #[error("running in network namespace {path}: the worker thread failed")]
    Thread {
        /// The namespace.
        path: PathBuf,
    },
}

/// Identifies a network namespace: the inode number of its nsfs file.
pub fn namespace_id(netns: Option<&Path>) -> Result<u64, NetnsError> {
    let path = netns.unwrap_or_else(|| Path::new("/proc/thread-self/ns/net"));
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Runs `f` inside the network namespace at `netns` (or in the caller's own when `None`).
pub fn run_in<T, F>(netns: Option<&Path>, f: F) -> Result<T, NetnsError>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let Some(path) = netns else {
        return Ok(f());
    };
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    thread::scope(|scope| {
        let worker = thread::Builder::new()
            .name("sidelane-netns".to_owned())
            .spawn_scoped(scope, move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| NetnsError::NotANamespace {
                        path: path.to_owned(),
                        source,
                    })
                    .map(|()| f())
            })
            .map_err(|_| NetnsError::Thread {
                path: path.to_owned(),
            })?;
        worker.join().map_err(|_| NetnsError::Thread {
            path: path.to_owned(),
        })?
    })
}

/// `NS_GET_NSTYPE` from `linux/nsfs.h`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Whether `path` is a network namespace: an nsfs file (a bind mount under `/var/run/netns` or
/// `/proc/<pid>/ns/net`) whose namespace type is `CLONE_NEWNET`.
pub fn is_network_namespace(path: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the descriptor's namespace.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE) };
    kind == libc::CLONE_NEWNET
}

/// Where the runtime keeps pod network namespaces, unless the agent is told otherwise.
pub const DEFAULT_NETNS_DIRS: [&str; 3] = ["/var/run/netns", "/run/netns", "/proc"];

/// Which `net_ns` paths the agent accepts from a CNI call: files directly inside the runtime's
/// namespace directories (`/proc` stands for `/proc/<pid>/ns/net` and
/// `/proc/<pid>/task/<tid>/ns/net`), never the node's own namespace. A caller that can reach
/// the socket (root only) still cannot make the agent configure interfaces elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsPolicy {
    dirs: Vec<PathBuf>,
    /// Namespaces that are the node's own (the agent's, and the simulated host's).
    own: Vec<u64>,
    /// `/proc/self/ns/net` is accepted (tests only).
    accept_self: bool,
}

impl Default for NetnsPolicy {
    fn default() -> NetnsPolicy {
        NetnsPolicy::new(DEFAULT_NETNS_DIRS.iter().map(PathBuf::from).collect())
    }
}

fn is_pid(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

impl NetnsPolicy {
    /// Accepts namespaces directly inside `dirs`; the agent's own namespace is always refused.
    pub fn new(dirs: Vec<PathBuf>) -> NetnsPolicy {
        let own = namespace_id(Some(Path::new("/proc/self/ns/net")))
            .ok()
            .into_iter()
            .collect();
        NetnsPolicy {
            dirs,
            own,
            accept_self: false,
        }
    }

    /// Also refuses `netns` (the node's side of pod links, when it is a namespace of its own).
    #[must_use]
    pub fn refusing(mut self, netns: &Path) -> NetnsPolicy {
        if let Ok(id) = namespace_id(Some(netns)) {
            self.own.push(id);
        }
        self
    }

    /// Accepts the agent's own namespace under `/proc/<pid>/ns/net` and `/proc/self/ns/net`: for
    /// tests whose dataplane is a double, which point the runtime at the test's own namespace.
    /// Never on a node.
    #[must_use]
    pub fn accepting_own_namespace(mut self) -> NetnsPolicy {
        self.own.clear();
        self.accept_self = true;
        self
    }

    /// Why `path` may not be used, if it may not.
    pub fn refusal(&self, path: &Path) -> Option<&'static str> {
        use std::path::Component;
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Some("not an absolute path without `.` or `..`");
        }
        let parts: Vec<&str> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => s.to_str(),
                _ => None,
            })
            .collect();
        let own_self = self.accept_self && path == Path::new("/proc/self/ns/net");
        let in_dir = own_self
            || self.dirs.iter().any(|dir| {
                if dir == Path::new("/proc") {
                    matches!(parts.as_slice(), ["proc", pid, "ns", "net"] if is_pid(pid))
                        || matches!(
                            parts.as_slice(),
                            ["proc", pid, "task", tid, "ns", "net"] if is_pid(pid) && is_pid(tid)
                        )
                } else {
                    path.parent() == Some(dir.as_path())
                }
            });
        if !in_dir {
            return Some("outside the runtime's network namespace directories");
        }
        if !is_network_namespace(path) {
            return Some("not a network namespace");
        }
        if namespace_id(Some(path)).is_ok_and(|id| self.own.contains(&id)) {
            return Some("the node's own network namespace");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_takes_runtime_directories_and_refuses_everything_else() {
        let policy = NetnsPolicy::default();
        for (path, why) in [
            (
                "relative/ns",
                Some("not an absolute path without `.` or `..`"),
            ),
            (
                "/run/netns/../../etc/hostname",
                Some("not an absolute path without `.` or `..`"),
            ),
            (
                "/etc/hostname",
                Some("outside the runtime's network namespace directories"),
            ),
            (
                "/proc/self/ns/net",
                Some("outside the runtime's network namespace directories"),
            ),
            (
                "/proc/1/ns/mnt",
                Some("outside the runtime's network namespace directories"),
            ),
            (
                "/run/netns/sub/dir/x",
                Some("outside the runtime's network namespace directories"),
            ),
            (
                "/var/run/netns/no-such-pod",
                Some("not a network namespace"),
            ),
        ] {
            assert_eq!(policy.refusal(Path::new(path)), why, "{path}");
        }
        // The test's own namespace is the agent's own: refused even by a /proc path.
        let own = format!("/proc/{}/ns/net", std::process::id());
        assert_eq!(
            policy.refusal(Path::new(&own)),
            Some("the node's own network namespace")
        );
    }

    #[test]
    fn only_a_network_namespace_file_counts_as_one() {
        // Readable without privileges: the test process's own namespaces.
        assert!(is_network_namespace(Path::new("/proc/self/ns/net")));
        assert!(!is_network_namespace(Path::new("/proc/self/ns/mnt")));
        assert!(!is_network_namespace(Path::new("/etc/hostname")));
        assert!(!is_network_namespace(Path::new("/nonexistent/netns")));
    }
}
