//! `lockstep agent`: the reference device agent. The device, not the cloud,
//! is the authority on locks: blocks take `flock`s, the agent observes them
//! without taking them, reports them with generations, and takes every
//! impacted lock atomically before applying an operation.

pub mod action;
pub mod api;
pub mod locks;
pub mod run;
pub mod runtime;
pub mod state;
