//! Making sure bpffs is mounted where the pins go.

use std::{fs, path::Path};

use nix::mount::{MsFlags, mount};

use super::DataplaneError;

/// The conventional bpffs mount point.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `<linux/magic.h>`.
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

/// Mounts bpffs at [`BPFFS`] if `pin_root` lies under it and it is not mounted yet, then creates
/// `pin_root`.
pub(crate) fn ensure(pin_root: &Path) -> Result<(), DataplaneError> {
    let mount_point = Path::new(BPFFS);
    if pin_root.starts_with(mount_point) && !is_bpffs(mount_point) {
        mount(
            Some("bpf"),
            mount_point,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|source| DataplaneError::Bpffs {
            path: mount_point.to_owned(),
            source,
        })?;
    }
    fs::create_dir_all(pin_root).map_err(|source| DataplaneError::Pin {
        op: "creating pin directory",
        path: pin_root.to_owned(),
        source,
    })
}

/// Whether `path` lies on a mounted bpffs.
pub(crate) fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}
