//! faultline: a chaos engineering experiment runner.
//!
//! Templates are validated ([`template`]), their targets resolved and timed ([`plan`]),
//! then run by the [`engine`] against agents connected to the controller ([`server`]),
//! journaled ([`journal`]), shown as they go ([`live`]) and reported ([`report`]).

pub mod actions;
pub mod alarms;
pub mod controller;
pub mod demo;
pub mod diagnostic;
pub mod effect;
pub mod exit;
pub mod fleet;
pub mod journal;
pub mod live;
pub mod plan;
pub mod platform;
pub mod report;
pub mod run;
pub mod serve;
pub mod table;
pub mod template;
pub mod tls;
pub mod token;
pub mod topology;

pub use faultline_agent::{duration, logging};
