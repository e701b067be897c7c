//! Offline: the faultline binary alone (validate, plan, schema, catalog, report, compose
//! rendering), no agents.

#[path = "../common/mod.rs"]
mod common;

mod catalog;
mod cli;
mod compose;
mod plan;
mod report;
mod validate;
