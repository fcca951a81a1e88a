//! Sidelane's OVSDB client (RFC 7047): `transact`, `monitor` and `echo` replies, which the
//! published `ovsdb-client` crate lacks (see `../shared/style.md`).
//!
//! Not built yet: the OVN topology issue brings it. The crate exists so the workspace has its
//! fixed layout from the start.
