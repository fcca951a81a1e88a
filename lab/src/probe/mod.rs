//! What the lab checks on a scenario's running pods, one file per kind of probe; each records
//! typed checks and returns what the report shows.

pub mod addressing;
pub mod cli;
pub mod exec;
pub mod fastpath;
pub mod isolation;
pub mod outside;
pub mod qos;
pub mod reach;
