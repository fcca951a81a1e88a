//! The eBPF objects, embedded at build time by `agent/build.rs`.

use aya::include_bytes_aligned;

use super::DataplaneError;

static QOS_OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sidelane-qos"));
static FASTPATH_OBJECT: &[u8] =
    include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sidelane-fastpath"));

/// The QoS object's bytes, or [`DataplaneError::NoObject`] when built with `AYA_BUILD_SKIP`.
pub(crate) fn qos() -> Result<&'static [u8], DataplaneError> {
    if QOS_OBJECT.is_empty() {
        Err(DataplaneError::NoObject)
    } else {
        Ok(QOS_OBJECT)
    }
}

/// The fast-path object's bytes, or [`DataplaneError::NoObject`] when built with
/// `AYA_BUILD_SKIP`.
pub(crate) fn fastpath() -> Result<&'static [u8], DataplaneError> {
    if FASTPATH_OBJECT.is_empty() {
        Err(DataplaneError::NoObject)
    } else {
        Ok(FASTPATH_OBJECT)
    }
}
