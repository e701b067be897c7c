//! `faultline serve`: the API, schedules, the lever, PostgreSQL, and the dashboard in a real browser.

#[path = "../common/mod.rs"]
mod common;

mod dashboard;
mod serve;
mod serve_postgres;
