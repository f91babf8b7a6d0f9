//! The operator verbs' connection to `lockstep serve`: dials `--server`
//! once per invocation, with bounded connect and call times, and stamps every
//! request with the `--token` bearer metadata when one is given. The call
//! time bounds a call until its answer starts: a server stream (`rollout
//! watch`) then flows for as long as the server sends.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::ClientOpts;
use super::error::CliError;
use super::parse;
use crate::grpc::pb::catalog_service_client::CatalogServiceClient;
use crate::grpc::pb::device_service_client::DeviceServiceClient;
use crate::grpc::pb::operation_service_client::OperationServiceClient;
use crate::grpc::pb::rollout_service_client::RolloutServiceClient;
use crate::grpc::pb::window_service_client::WindowServiceClient;

/// How long to wait for the TCP (and HTTP/2) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Validated connection settings; nothing is dialled until [`Target::connect`].
#[derive(Debug, Clone)]
pub struct Target {
    server: String,
    auth: Option<MetadataValue<Ascii>>,
}

impl Target {
    pub fn new(opts: &ClientOpts) -> Result<Self, CliError> {
        let server = parse::server_url(&opts.server).map_err(|reason| CliError::BadServer {
            server: opts.server.clone(),
            reason,
        })?;
        let auth = match opts.token.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| CliError::BadToken)?,
            ),
        };
        Ok(Target { server, auth })
    }

    pub async fn connect(&self) -> Result<Api, CliError> {
        let endpoint = Endpoint::from_shared(self.server.clone())
            .map_err(|e| CliError::BadServer {
                server: self.server.clone(),
                reason: error_chain(&e),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let channel = endpoint.connect().await.map_err(|e| CliError::Connect {
            server: self.server.clone(),
            reason: error_chain(&e),
        })?;
        Ok(Api {
            channel,
            auth: self.auth.clone(),
        })
    }
}

/// A connected server.
pub struct Api {
    channel: Channel,
    auth: Option<MetadataValue<Ascii>>,
}

impl Api {
    /// A request carrying the bearer token, if any.
    pub fn req<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(a) = &self.auth {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r
    }

    pub fn catalog(&self) -> CatalogServiceClient<Channel> {
        CatalogServiceClient::new(self.channel.clone())
    }

    pub fn devices(&self) -> DeviceServiceClient<Channel> {
        DeviceServiceClient::new(self.channel.clone())
    }

    pub fn operations(&self) -> OperationServiceClient<Channel> {
        OperationServiceClient::new(self.channel.clone())
    }

    pub fn windows(&self) -> WindowServiceClient<Channel> {
        WindowServiceClient::new(self.channel.clone())
    }

    pub fn rollouts(&self) -> RolloutServiceClient<Channel> {
        RolloutServiceClient::new(self.channel.clone())
    }
}

/// An error and its sources on one line, without repeats
/// (`transport error: tcp connect error: Connection refused (os error 111)`).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
