//! Which interface a pinned TCX link is attached to (aya's `LinkInfo` does not expose it).

use std::{
    ffi::CString,
    io, mem,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_link_info};

fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<libc::c_long> {
    // SAFETY: the caller built `attr` for `cmd`; the kernel reads and writes at most
    // `size_of::<bpf_attr>()` bytes of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// The ifindex the TCX link pinned at `pin` is attached to; 0 once its device is gone (the
/// link is then defunct).
pub(crate) fn pinned_tcx_ifindex(pin: &Path) -> io::Result<u32> {
    let path = CString::new(pin.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.__bindgen_anon_4.pathname = path.as_ptr() as u64;
    let fd = sys_bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: all-zero is a valid value of both plain C types.
    let mut info: bpf_link_info = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    attr.info.bpf_fd = u32::try_from(fd.as_raw_fd()).map_err(io::Error::other)?;
    attr.info.info_len = u32::try_from(size_of::<bpf_link_info>()).map_err(io::Error::other)?;
    attr.info.info = (&raw mut info) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    // SAFETY: the kernel filled the `tcx` member for a TCX link; for other kinds the caller gets
    // whatever integer sits there, which it only compares.
    Ok(unsafe { info.__bindgen_anon_1.tcx.ifindex })
}
