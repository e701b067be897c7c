//! Network faults in network namespaces made for the test (root): blackouts, subnet cuts, port blackholes, packet loss.

#[path = "../common/mod.rs"]
mod common;

mod blackout;
mod netfaults;
