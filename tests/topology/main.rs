//! The container topology (Docker).

#[path = "../common/mod.rs"]
mod common;

mod topology;
