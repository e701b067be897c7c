//! faultline agent library: the wire protocol shared with the controller, and the small
//! pieces both binaries use (ISO 8601 durations, log set-up, the accept loop, signals).
//!
//! The agent binary (`src/main.rs`) adds the faults, the lease and the state directory.

#![warn(missing_docs)]

pub mod auth;
pub mod duration;
pub mod limits;
pub mod logging;
pub mod net;
pub mod protocol;
pub mod signals;
