//! Lockstep: decides when each edge device may receive each disruptive
//! operation, honouring per-block update locks, and tells lock holders why.
//!
//! See ARCHITECTURE.md for the map.

pub mod access;
pub mod agent;
pub mod app;
pub mod approvals;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod dashboard;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod hub;
pub mod ingest;
pub mod intents;
pub mod limits;
pub mod loadgen;
pub mod overload;
pub mod pgtemp;
pub mod rollouts;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod testkit;
pub mod tls;
