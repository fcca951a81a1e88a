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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_namespace_file_counts_as_one() {
        // Readable without privileges: the test process's own namespaces.
        assert!(is_network_namespace(Path::new("/proc/self/ns/net")));
        assert!(!is_network_namespace(Path::new("/proc/self/ns/mnt")));
        assert!(!is_network_namespace(Path::new("/etc/hostname")));
        assert!(!is_network_namespace(Path::new("/nonexistent/netns")));
    }
}
