//! faultline agent library: the wire protocol shared with the controller, the faults an
//! agent injects (each with its wire parameters and their ranges, which the controller's
//! validator reads too), and the small pieces both binaries use (ISO 8601 durations, log
//! set-up, the accept loop, signals).
//!
//! The agent binary (`src/main.rs`) adds the connection, the lease and the owner task.

pub mod auth;
pub mod duration;
pub mod faults;
pub mod holder;
pub mod limits;
pub mod logging;
pub mod net;
pub mod protocol;
pub mod proxy;
pub mod signals;
pub mod state;
