//! `lockstep device register|get|list|state`: devices, their one-time
//! credential (printed, or written to a 0600 file), and what they report.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Ctx;
use super::error::{Call as _, CliError};
use super::parse;
use super::view::{DeviceList, DeviceStateView, DeviceView, RegisteredView, emit};
use crate::edge::grpc::pb;

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Registers a device; its credential is shown once (or written to
    /// --credential-out, mode 0600).
    Register {
        /// The device's id (e.g. inv-0042).
        id: String,
        #[arg(long)]
        fleet: String,
        /// A tag (repeatable).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Write the credential to this new file (mode 0600) instead of
        /// printing it; an existing file is never overwritten.
        #[arg(long, value_name = "FILE")]
        credential_out: Option<PathBuf>,
    },
    /// Shows a device.
    Get {
        /// The device's id.
        id: String,
    },
    /// Lists devices (every page), optionally filtered.
    List {
        #[arg(long)]
        fleet: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        /// unknown, in_sync, pending, waiting_lock, offline, applying, done,
        /// failed, ...
        #[arg(long, value_parser = parse::device_status)]
        status: Option<pb::DeviceStatus>,
    },
    /// What the device reports it runs, and its locks.
    State {
        /// The device's id.
        id: String,
    },
}

pub(super) async fn run(ctx: &Ctx, cmd: DeviceCommand) -> Result<(), CliError> {
    match cmd {
        DeviceCommand::Register {
            id,
            fleet,
            tags,
            credential_out,
        } => register(ctx, id, fleet, tags, credential_out).await,
        DeviceCommand::Get { id } => {
            let api = ctx.connect().await?;
            const CALL: &str = "GetDevice";
            let device = api
                .devices()
                .get_device(api.req(pb::GetDeviceRequest { id }))
                .await
                .during(CALL)?
                .device
                .ok_or(CliError::Malformed {
                    call: CALL,
                    field: "device",
                })?;
            emit(ctx.output, &DeviceView::from(device))
        }
        DeviceCommand::List { fleet, tag, status } => {
            let api = ctx.connect().await?;
            const CALL: &str = "ListDevices";
            let mut client = api.devices();
            let mut devices = Vec::new();
            let mut token = String::new();
            loop {
                let page = client
                    .list_devices(api.req(pb::ListDevicesRequest {
                        fleet: fleet.clone().unwrap_or_default(),
                        tag: tag.clone().unwrap_or_default(),
                        status: status.unwrap_or(pb::DeviceStatus::Unspecified).into(),
                        page_size: 1000,
                        page_token: token.clone(),
                    }))
                    .await
                    .during(CALL)?;
                devices.extend(page.devices.into_iter().map(Into::into));
                if page.next_page_token.is_empty() {
                    break;
                }
                if page.next_page_token == token {
                    return Err(CliError::Malformed {
                        call: CALL,
                        field: "new next_page_token (it repeated the last one)",
                    });
                }
                token = page.next_page_token;
            }
            emit(ctx.output, &DeviceList { devices })
        }
        DeviceCommand::State { id } => {
            let api = ctx.connect().await?;
            let state = api
                .devices()
                .get_device_state(api.req(pb::GetDeviceStateRequest { id }))
                .await
                .during("GetDeviceState")?;
            emit(ctx.output, &DeviceStateView::from(state))
        }
    }
}

async fn register(
    ctx: &Ctx,
    id: String,
    fleet: String,
    tags: Vec<String>,
    credential_out: Option<PathBuf>,
) -> Result<(), CliError> {
    // Create the file first: a credential is shown once, so learn that it
    // cannot be stored before the device exists.
    let file = match &credential_out {
        Some(path) => Some(create_private(path)?),
        None => None,
    };
    let remove_file = |path: &Option<PathBuf>| {
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
    };
    let answer = async {
        let api = ctx.connect().await?;
        const CALL: &str = "RegisterDevice";
        let r = api
            .devices()
            .register_device(api.req(pb::RegisterDeviceRequest { id, fleet, tags }))
            .await
            .during(CALL)?;
        let device = r.device.ok_or(CliError::Malformed {
            call: CALL,
            field: "device",
        })?;
        Ok::<_, CliError>((device, r.credential))
    }
    .await;
    let (device, credential) = match answer {
        Ok(a) => a,
        Err(e) => {
            remove_file(&credential_out);
            return Err(e);
        }
    };
    let mut view = RegisteredView {
        device: device.into(),
        credential: None,
        credential_file: None,
    };
    match (file, &credential_out) {
        (Some(file), Some(path)) => {
            if let Err(source) = write_secret(file, &credential) {
                remove_file(&credential_out);
                // The only copy: print it rather than lose it.
                view.credential = Some(credential);
                emit(ctx.output, &view)?;
                return Err(CliError::WriteOutput {
                    action: "writing the credential to",
                    path: path.clone(),
                    source,
                });
            }
            view.credential_file = Some(path.display().to_string());
        }
        _ => view.credential = Some(credential),
    }
    emit(ctx.output, &view)
}

/// A new file only its owner can read or write.
pub(super) fn create_private(path: &Path) -> Result<std::fs::File, CliError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| CliError::WriteOutput {
            action: "creating the file",
            path: path.to_owned(),
            source,
        })
}

pub(super) fn write_secret(mut file: std::fs::File, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    // The umask can only narrow the mode; make it exactly 0600.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}
