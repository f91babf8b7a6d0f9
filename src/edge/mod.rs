//! Where Lockstep meets the outside: the gRPC services and the web
//! dashboard (both only translate to and from `app` and the domain), the
//! server that assembles them, TLS, overload protection, limits,
//! credentials, and the live agent streams of this replica.

pub mod auth;
pub mod dashboard;
pub mod grpc;
pub mod hub;
pub mod limits;
pub mod overload;
pub mod server;
pub mod tls;
