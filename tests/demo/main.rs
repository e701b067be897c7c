//! `faultline demo`'s world of local processes, one at a time (it always takes the same loopback addresses).

#[path = "../common/mod.rs"]
mod common;

mod demo;
mod fis;
mod instances;
mod serve_demo;
