//! The operator verbs' connection to `lockstep serve`: dials `--server`
//! once per invocation (over TLS for `https://`, trusting `--tls-ca`), with
//! bounded connect and call times, and stamps every request with the API
//! token as bearer metadata: `--token`, else the `--token-file`, else
//! `./lockstep-data/admin.token` if there is one. The call time bounds a
//! call until its answer starts: a server stream (`rollout watch`) then
//! flows for as long as the server sends.

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use super::ClientOpts;
use super::error::CliError;
use super::parse;
use crate::edge::grpc::pb::audit_service_client::AuditServiceClient;
use crate::edge::grpc::pb::catalog_service_client::CatalogServiceClient;
use crate::edge::grpc::pb::device_service_client::DeviceServiceClient;
use crate::edge::grpc::pb::operation_service_client::OperationServiceClient;
use crate::edge::grpc::pb::rollout_service_client::RolloutServiceClient;
use crate::edge::grpc::pb::token_service_client::TokenServiceClient;
use crate::edge::grpc::pb::window_service_client::WindowServiceClient;
use crate::edge::limits::MAX_MESSAGE_BYTES;
use crate::edge::tls::ClientTls;

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
        let auth = match token(opts)? {
            None => None,
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
        let endpoint = crate::edge::tls::endpoint(&self.server, self.tls.as_ref())
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

/// Where a local `lockstep serve` (default data directory) writes its
/// bootstrap admin token, relative to the working directory.
pub const LOCAL_TOKEN_FILE: &str = "lockstep-data/admin.token";

/// The token to send: `--token`, else `--token-file`, else the local
/// server's bootstrap token file if it exists; `None` sends no token.
fn token(opts: &ClientOpts) -> Result<Option<String>, CliError> {
    if let Some(t) = opts
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(t.to_owned()));
    }
    let (path, explicit) = match &opts.token_file {
        Some(p) => (p.clone(), true),
        None => (std::path::PathBuf::from(LOCAL_TOKEN_FILE), false),
    };
    match crate::app::tokens::read_token_file(&path) {
        Ok(t) if !t.is_empty() => Ok(Some(t)),
        Ok(_) if explicit => Err(CliError::TokenFile {
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"),
        }),
        Err(source) if explicit => Err(CliError::TokenFile { path, source }),
        _ => Ok(None),
    }
}

/// Stamps every request with `authorization: Bearer <token>` unless it
/// carries an authorization already: for clients built on a channel
/// (`lockstep demo`, tests) rather than through [`Api::req`].
#[derive(Debug, Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    /// `None` if the token cannot be sent as metadata.
    pub fn new(token: &str) -> Option<Self> {
        MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .ok()
            .map(Bearer)
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if !req.metadata().contains_key("authorization") {
            req.metadata_mut().insert("authorization", self.0.clone());
        }
        Ok(req)
    }
}

/// A channel whose requests carry a token.
pub type AuthChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

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

    pub fn rollouts(&self) -> RolloutServiceClient<Channel> {
        RolloutServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn audit(&self) -> AuditServiceClient<Channel> {
        AuditServiceClient::new(self.channel.clone())
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
