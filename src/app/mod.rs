//! Use cases that more than one edge calls (gRPC, the dashboard, the rollout
//! controller): each takes typed input, asks the domain, and writes through
//! the store in one transaction. Edges only translate to and from these.

pub mod approvals;
pub mod create;
pub mod events;
pub mod operations;
pub mod rollouts;
pub mod tokens;
