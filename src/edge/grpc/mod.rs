//! The gRPC edge: generated protobuf types, conversions to and from the
//! domain, and the services. Proto types never leave this module. Every
//! status message sent is bounded (`status::BoundedStatus`).

pub mod access;
pub mod agent;
pub mod audit;
pub mod catalog;
pub mod convert;
pub mod device;
pub mod operation;
pub mod rollout;
pub mod status;
pub mod token;
pub mod window;

use crate::store::StoreError;

/// Maps store errors to gRPC statuses, the same way for every service: a
/// user's mistake is never a bare `INTERNAL`.
pub fn status_from_store(e: StoreError) -> tonic::Status {
    use tonic::Status;
    status::capped(match &e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        StoreError::Conflict { .. } | StoreError::Precondition { .. } => {
            Status::failed_precondition(e.to_string())
        }
        StoreError::Unavailable { .. } => {
            tracing::warn!(error = %e, "database unavailable");
            Status::unavailable("database unavailable; retry later")
        }
        StoreError::Corrupt { .. }
        | StoreError::SchemaTooNew { .. }
        | StoreError::Database { .. }
        | StoreError::Migrate { .. } => {
            tracing::error!(error = %e, "store error");
            Status::internal("internal error; see the server log")
        }
    })
}

/// Generated from `proto/lockstep/v1/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("lockstep.v1");
}

/// The encoded descriptor set of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_descriptor.bin"));
