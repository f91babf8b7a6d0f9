//! The gRPC edge: generated protobuf types, conversions to and from the
//! domain, and the services. Proto types never leave this module.

pub mod convert;

/// Generated from `proto/lockstep/v1/*.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod pb {
    tonic::include_proto!("lockstep.v1");
}

/// The encoded descriptor set of our protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/lockstep_descriptor.bin"));
