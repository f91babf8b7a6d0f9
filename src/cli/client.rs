//! The operator verbs' connection to `lockstep serve`: dials `--server`
//! once per invocation (over TLS for `https://`, trusting `--tls-ca`), with
//! bounded connect and call times, and stamps every request with the
//! `--token` bearer metadata when one is given.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::ClientOpts;
use super::error::CliError;
use super::parse;
use crate::grpc::pb::catalog_service_client::CatalogServiceClient;
use crate::grpc::pb::device_service_client::DeviceServiceClient;
use crate::grpc::pb::operation_service_client::OperationServiceClient;
use crate::grpc::pb::window_service_client::WindowServiceClient;
use crate::limits::MAX_MESSAGE_BYTES;
use crate::tls::ClientTls;

/// How long to wait for the TCP (and HTTP/2) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Validated connection settings; nothing is dialled until [`Target::connect`].
#[derive(Debug, Clone)]
pub struct Target {
    server: String,
    auth: Option<MetadataValue<Ascii>>,
    tls: Option<ClientTls>,
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
        let tls =
            ClientTls::load(opts.tls_ca.as_deref(), None, None).map_err(|e| CliError::Usage {
                message: e.to_string(),
            })?;
        Ok(Target { server, auth, tls })
    }

    pub async fn connect(&self) -> Result<Api, CliError> {
        let endpoint = crate::tls::endpoint(&self.server, self.tls.as_ref())
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
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn devices(&self) -> DeviceServiceClient<Channel> {
        DeviceServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn operations(&self) -> OperationServiceClient<Channel> {
        OperationServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn windows(&self) -> WindowServiceClient<Channel> {
        WindowServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
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
