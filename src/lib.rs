//! faultline: a chaos engineering experiment runner.
//!
//! Templates are validated ([`template`], against the action catalog [`actions`]), their
//! targets resolved and timed ([`plan`]), then run ([`run`]) by a [`controller`] against the
//! agents of its [`fleet`] and the [`platform`]s that run the hosts, while the [`alarms`]
//! are watched; journaled ([`journal`]), shown as they go ([`live`]) and reported
//! ([`report`]). [`serve`] keeps a controller up for game days; [`world`] builds the worlds
//! faultline breaks. docs/architecture.md has the layers.

pub mod actions;
pub mod alarms;
pub mod controller;
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
pub mod signals;
pub mod table;
pub mod template;
pub mod tls;
pub mod token;
pub mod world;

pub use faultline_agent::{duration, logging};
