//! Lockstep: decides when each edge device may receive each disruptive
//! operation, honouring per-block update locks, and tells lock holders why.
//!
//! The tree follows the layers (see ARCHITECTURE.md for the map):
//! `domain` decides (pure); `app` holds the use cases the edges share;
//! `background` runs the reconciler and the other loops; `store` is the
//! only code that speaks SQL; `edge` is gRPC, the dashboard and the server
//! around them; `agent` is the device side; `cli` the operator's client; `clock` and
//! `telemetry` are used across the shell.

pub mod agent;
pub mod app;
pub mod background;
pub mod cli;
pub mod clock;
pub mod domain;
pub mod edge;
pub mod loadgen;
pub mod pgtemp;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
