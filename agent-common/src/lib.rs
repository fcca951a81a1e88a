//! The eBPF ABI shared by Sidelane's TC programs (`agent-ebpf`) and the node agent.
//!
//! Everything here is `#![no_std]`, `#[repr(C)]` and `Copy`, with explicit padding, so the
//! layout the program sees is the layout user space writes. Map and program names are consts:
//! nothing else spells them. With the `user` feature, the value types implement `aya::Pod`.
//!
//! The rate-limiting arithmetic ([`qos`]) is pure and lives here too, so the very code the
//! program runs is unit- and property-tested on the host.
#![no_std]

pub mod fastpath;
pub mod qos;
