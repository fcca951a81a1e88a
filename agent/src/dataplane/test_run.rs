//! `BPF_PROG_TEST_RUN` for the TC programs: run a program on a crafted packet, optionally many
//! times, and read back its verdict, the (possibly rewritten) `__sk_buff` and the time per run.

use std::{mem, time::Duration};

use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions};

use super::{DataplaneError, boxed};

/// The uapi `struct __sk_buff` (192 bytes on Linux >= 5.18), as `BPF_PROG_TEST_RUN` takes it.
/// Only the fields the kernel accepts as input may be non-zero: `mark`, `priority`, `ifindex`,
/// `cb`, `tstamp`, `wire_len`, `gso_segs`, `gso_size`, `hwtstamp`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkBuffCtx {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    pub flow_keys: u64,
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    pub sk: u64,
    pub gso_size: u32,
    pub tstamp_type: u8,
    pub reserved: [u8; 3],
    pub hwtstamp: u64,
}

const _: () = assert!(size_of::<SkBuffCtx>() == 192);

/// What one test run returned.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The program's return value (TC verdict as an unsigned int: `u32::MAX` is `TC_ACT_UNSPEC`).
    pub verdict: i32,
    /// Mean time per run as the kernel measured it.
    pub per_run: Duration,
    /// The context after the last run.
    pub ctx: SkBuffCtx,
    /// The packet as the last run left it (rewritten headers show here).
    pub data: Vec<u8>,
}

/// Runs `prog` on `packet` (an Ethernet frame) `repeat` times with `ctx` as input.
pub fn run(
    prog: &SchedClassifier,
    name: &'static str,
    packet: &[u8],
    ctx: &SkBuffCtx,
    repeat: u32,
) -> Result<RunResult, DataplaneError> {
    let ctx_in = as_bytes(ctx);
    let mut ctx_out = [0u8; size_of::<SkBuffCtx>()];
    let mut data_out = vec![0u8; packet.len() + 256];
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat,
            ..TestRunOptions::default()
        })
        .map_err(|e| DataplaneError::TestRun {
            program: name,
            source: boxed(e),
        })?;
    data_out.truncate(usize::try_from(result.data_size_out).unwrap_or(usize::MAX));
    Ok(RunResult {
        verdict: result.return_value.cast_signed(),
        per_run: result.duration,
        ctx: from_bytes(&ctx_out),
        data: data_out,
    })
}

fn as_bytes(ctx: &SkBuffCtx) -> [u8; size_of::<SkBuffCtx>()] {
    // SAFETY: SkBuffCtx is repr(C) with explicit padding fields and only integer fields.
    unsafe { mem::transmute_copy(ctx) }
}

fn from_bytes(bytes: &[u8; size_of::<SkBuffCtx>()]) -> SkBuffCtx {
    // SAFETY: every bit pattern is a valid SkBuffCtx (integers only).
    unsafe { mem::transmute_copy(bytes) }
}

/// A minimal Ethernet + IPv4 + UDP frame of `frame_len` bytes (at least 42).
pub fn ipv4_udp_frame(frame_len: usize) -> Vec<u8> {
    let frame_len = frame_len.max(42);
    let mut f = vec![0u8; frame_len];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = u16::try_from(frame_len - 14).unwrap_or(u16::MAX);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[10, 0, 0, 1]);
    f[30..34].copy_from_slice(&[10, 0, 0, 2]);
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&5201u16.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f
}

/// A minimal Ethernet + IPv4 + TCP frame carrying `payload` bytes, with a 32-byte TCP header
/// (timestamps), as a GSO super-packet's first segment would start.
pub fn ipv4_tcp_frame(payload: usize) -> Vec<u8> {
    let frame_len = 14 + 20 + 32 + payload;
    let mut f = ipv4_udp_frame(frame_len);
    f[23] = 6;
    f[34 + 12] = 8 << 4; // data offset: 8 words = 32 bytes
    f
}

/// An ARP request frame.
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f
}

/// The cost of the `BPF_PROG_TEST_RUN` loop itself, per run: the time it takes to run a
/// classifier that only returns `TC_ACT_UNSPEC` on `packet`, `repeat` times.
///
/// Each test run pays for more than the program (bottom halves disabled and re-enabled, an
/// indirect call that retpolines make slow); subtracting this from a program's time per run
/// leaves what the program itself costs. Loaded with a raw `BPF_PROG_LOAD`: two instructions, no
/// maps, nothing to ship in the object.
pub fn harness_baseline(packet: &[u8], repeat: u32) -> Result<Duration, DataplaneError> {
    use std::{
        io, mem,
        os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    };

    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_type};

    fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
        // SAFETY: `attr` is a valid bpf_attr for `cmd`, of the size passed.
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
    let err = |e: io::Error| DataplaneError::TestRun {
        program: "harness baseline",
        source: boxed(e),
    };

    // r0 = -1 (TC_ACT_UNSPEC); exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"Apache-2.0";
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing plain fields of the PROG_LOAD member.
    unsafe {
        let load = &mut attr.__bindgen_anon_3;
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS as u32;
        load.insn_cnt = 2;
        load.insns = insns.as_ptr() as u64;
        load.license = license.as_ptr() as u64;
    }
    let fd = sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map_err(err)?;
    let fd = i32::try_from(fd).map_err(|e| err(io::Error::other(e)))?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    let ctx = as_bytes(&SkBuffCtx::default());
    // SAFETY: all-zero is a valid bpf_attr.
    let mut attr: bpf_attr = unsafe { mem::zeroed() };
    // SAFETY: writing plain fields of the TEST_RUN member; the buffers outlive the call.
    unsafe {
        let test = &mut attr.test;
        test.prog_fd = u32::try_from(fd.as_raw_fd()).map_err(|e| err(io::Error::other(e)))?;
        test.data_in = packet.as_ptr() as u64;
        test.data_size_in = u32::try_from(packet.len()).map_err(|e| err(io::Error::other(e)))?;
        test.ctx_in = ctx.as_ptr() as u64;
        test.ctx_size_in = u32::try_from(ctx.len()).map_err(|e| err(io::Error::other(e)))?;
        test.repeat = repeat;
    }
    sys_bpf(bpf_cmd::BPF_PROG_TEST_RUN, &mut attr).map_err(err)?;
    // SAFETY: the kernel filled the TEST_RUN member.
    Ok(Duration::from_nanos(u64::from(unsafe {
        attr.test.duration
    })))
}
