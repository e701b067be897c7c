//! faultline: a chaos engineering experiment runner.
//!
//! Templates are validated ([`template`]), their targets resolved and timed ([`plan`]),
//! then run by the [`engine`] against agents connected to the controller ([`server`]),
//! watched by [`alarms`], and reported ([`report`]).

pub mod duration;
pub mod exit;
pub mod logging;
pub mod plan;
pub mod template;
