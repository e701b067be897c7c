//! faultline agent library: the wire protocol shared with the controller.
//!
//! The agent binary (`src/main.rs`) adds the faults, the lease and the state directory.

pub mod protocol;
