//! The worlds faultline breaks, and where their hosts come from: `faultline demo`'s hosts as
//! local processes on loopback addresses ([`demo`]), and the multi-AZ topology of
//! containers from `agents/compose.yaml` ([`topology`]). The platforms that stop, start and
//! replace their hosts are in [`crate::platform`] (`local`, `docker`).

pub mod demo;
pub mod topology;
