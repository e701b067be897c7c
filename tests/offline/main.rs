//! Offline: the faultline binary alone (validate, plan, schema, catalog, report), no agents.

#[path = "../common/mod.rs"]
mod common;

mod catalog;
mod cli;
mod plan;
mod report;
mod validate;
