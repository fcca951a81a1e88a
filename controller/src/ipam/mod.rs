//! Attachment IPAM, pure: no I/O, no clock. The controller feeds it Subnets, pods and what the
//! cluster already records, and writes out what it decides.

pub mod pool;
