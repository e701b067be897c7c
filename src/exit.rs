//! Exit statuses, the contract with CI pipelines.

/// The experiment completed (or the command succeeded).
pub const COMPLETED: u8 = 0;
/// A stop condition stopped the experiment, or an alarm blocked its start.
pub const STOPPED: u8 = 1;
/// Invalid template, inventory or command line.
pub const INVALID: u8 = 2;
/// The experiment failed: no agents, an empty target, an action that failed.
pub const FAILED: u8 = 3;
/// Interrupted by Ctrl-C (128 + SIGINT).
pub const INTERRUPTED: u8 = 130;
/// Terminated by SIGTERM (128 + SIGTERM), after every fault was removed.
pub const TERMINATED: u8 = 143;
