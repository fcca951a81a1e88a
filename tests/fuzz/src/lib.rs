//! Sidelane's fuzz targets; see `harness.rs`.

pub mod harness;
