//! A controller and real agents on loopback: each fault, its holders, crashes, the wire and its trust, signals, alarms.

#[path = "../common/mod.rs"]
mod common;

mod alarms;
mod crash;
mod disk;
mod faults;
mod holders;
mod lost_apply;
mod pause;
mod run_signals;
mod trust_wire;
mod wire;
