//! `DeviceService`: fleets, device registration, env variables and what
//! devices report, over the store. Each request is checked against the
//! fleet it touches: the fleet named, or the device's.

use std::collections::BTreeSet;

use tonic::{Request, Response, Status};

use super::access::{check, principal, within};
use super::convert::{ConvertError, at_most, block_name, count_at_most};
use super::pb::{self, device_service_server::DeviceService};
use super::status_from_store;
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{
    Action, DeviceId, DeviceRecord, DeviceStatus, EnvName, EnvScope, EnvVar, Fleet, FleetId, Tag,
};
use crate::edge::auth;
use crate::edge::limits::{
    MAX_ENV_VALUE_BYTES as MAX_ENV_VALUE, MAX_ENV_VARS, MAX_FLEET_NAME_BYTES, MAX_SCOPE_BLOCKS,
    MAX_TAGS,
};
use crate::store::{DeviceFilter, EnvEdit, EnvOwner, PageRequest, Store};

pub struct Devices<S> {
    store: S,
    wakeups: Wakeups,
}

impl<S: Store> Devices<S> {
    pub fn new(store: S, wakeups: Wakeups) -> Self {
        Self { store, wakeups }
    }

    /// The fleet whose env an owner's variables are: the fleet's, or the
    /// device's.
    async fn owner_fleet(&self, owner: &EnvOwner) -> Result<FleetId, Status> {
        match owner {
            EnvOwner::Fleet(f) => Ok(f.clone()),
            EnvOwner::Device(d) => Ok(self
                .store
                .get_device(d)
                .await
                .map_err(status_from_store)?
                .fleet),
        }
    }

    /// Edits env variables: the store records the edit and the `apply_env`
    /// operation of every affected device in one transaction; the
    /// reconciler is woken for each. Returns the operations' ids.
    async fn edit_env(&self, owner: &EnvOwner, edit: EnvEdit) -> Result<(u64, Vec<u64>), Status> {
        let scopes = edit
            .set
            .iter()
            .map(|v| &v.scope)
            .chain(edit.unset.iter().map(|(_, s)| s));
        let target = crate::domain::EnvTarget::of_scopes(scopes);
        let changed = self
            .store
            .change_env(owner, &edit, &target, clock::now())
            .await
            .map_err(status_from_store)?;
        let mut ids = Vec::with_capacity(changed.operations.len());
        for op in &changed.operations {
            self.wakeups.wake(&op.device);
            ids.push(u64::try_from(op.id.0).unwrap_or(0));
        }
        Ok((changed.removed, ids))
    }
}

/// The device a call names, recorded on the call's span.
fn device_id(field: &str, s: &str) -> Result<DeviceId, ConvertError> {
    let id = DeviceId::new(s).map_err(|e| ConvertError::new(field, e))?;
    crate::telemetry::record_device(&id);
    Ok(id)
}

fn fleet_id(field: &str, s: &str) -> Result<FleetId, ConvertError> {
    FleetId::new(s).map_err(|e| ConvertError::new(field, e))
}

pub(crate) fn status_to_pb(s: DeviceStatus) -> pb::DeviceStatus {
    match s {
        DeviceStatus::Unknown => pb::DeviceStatus::Unknown,
        DeviceStatus::InSync => pb::DeviceStatus::InSync,
        DeviceStatus::Pending => pb::DeviceStatus::Pending,
        DeviceStatus::WaitingApproval => pb::DeviceStatus::WaitingApproval,
        DeviceStatus::WaitingWindow => pb::DeviceStatus::WaitingWindow,
        DeviceStatus::WaitingLock => pb::DeviceStatus::WaitingLock,
        DeviceStatus::Overdue => pb::DeviceStatus::Overdue,
        DeviceStatus::Offline => pb::DeviceStatus::Offline,
        DeviceStatus::Applying => pb::DeviceStatus::Applying,
        DeviceStatus::PartiallyApplied => pb::DeviceStatus::PartiallyApplied,
        DeviceStatus::Done => pb::DeviceStatus::Done,
        DeviceStatus::Failed => pb::DeviceStatus::Failed,
    }
}

/// `None` for unspecified (no filter).
fn status_from_pb(field: &str, v: i32) -> Result<Option<DeviceStatus>, ConvertError> {
    let s = pb::DeviceStatus::try_from(v)
        .map_err(|_| ConvertError::new(field, format!("unknown device status {v}")))?;
    Ok(DeviceStatus::ALL
        .into_iter()
        .find(|d| status_to_pb(*d) == s))
}

fn device_to_pb(d: &DeviceRecord) -> pb::Device {
    pb::Device {
        id: d.id.to_string(),
        fleet: d.fleet.to_string(),
        tags: d.tags.iter().map(ToString::to_string).collect(),
        status: status_to_pb(d.status).into(),
        credential_revoked: d.credential_revoked,
        created_unix_ms: d.created.0,
    }
}

fn fleet_to_pb(f: &Fleet) -> pb::Fleet {
    pb::Fleet {
        id: f.id.to_string(),
        name: f.name.clone(),
        created_unix_ms: f.created.0,
    }
}

fn owner_from_pb(m: Option<pb::EnvOwner>) -> Result<EnvOwner, ConvertError> {
    use pb::env_owner::Owner;
    match m.and_then(|o| o.owner) {
        Some(Owner::Fleet(f)) => Ok(EnvOwner::Fleet(fleet_id("owner.fleet", &f)?)),
        Some(Owner::Device(d)) => Ok(EnvOwner::Device(device_id("owner.device", &d)?)),
        None => Err(ConvertError::new(
            "owner",
            "a fleet or a device is required",
        )),
    }
}

fn scope_from_blocks(field: &str, blocks: &[String]) -> Result<EnvScope, ConvertError> {
    if blocks.is_empty() {
        return Ok(EnvScope::Device);
    }
    count_at_most(field, blocks.len(), MAX_SCOPE_BLOCKS)?;
    let set = blocks
        .iter()
        .enumerate()
        .map(|(i, b)| block_name(&format!("{field}[{i}]"), b))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(EnvScope::Blocks(set))
}

#[tonic::async_trait]
impl<S: Store> DeviceService for Devices<S> {
    async fn create_fleet(
        &self,
        req: Request<pb::CreateFleetRequest>,
    ) -> Result<Response<pb::CreateFleetResponse>, Status> {
        check(&principal(&req)?, Action::CreateFleet, None)?;
        let req = req.into_inner();
        at_most("name", &req.name, MAX_FLEET_NAME_BYTES)?;
        let fleet = Fleet {
            id: fleet_id("id", &req.id)?,
            name: req.name,
            created: clock::now(),
        };
        self.store
            .create_fleet(&fleet)
            .await
            .map_err(status_from_store)?;
        tracing::info!(fleet = %fleet.id, "fleet created");
        Ok(Response::new(pb::CreateFleetResponse {
            fleet: Some(fleet_to_pb(&fleet)),
        }))
    }

    async fn list_fleets(
        &self,
        req: Request<pb::ListFleetsRequest>,
    ) -> Result<Response<pb::ListFleetsResponse>, Status> {
        let p = principal(&req)?;
        let within = within(&p, Action::ReadFleets)?;
        let fleets = self.store.list_fleets().await.map_err(status_from_store)?;
        Ok(Response::new(pb::ListFleetsResponse {
            fleets: fleets
                .iter()
                .filter(|f| within.as_ref().is_none_or(|w| w.contains(&f.id)))
                .map(fleet_to_pb)
                .collect(),
        }))
    }

    async fn register_device(
        &self,
        req: Request<pb::RegisterDeviceRequest>,
    ) -> Result<Response<pb::RegisterDeviceResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        if req.tags.len() > MAX_TAGS {
            return Err(ConvertError::new("tags", format!("at most {MAX_TAGS} tags")).into());
        }
        let tags = req
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| Tag::new(t).map_err(|e| ConvertError::new(format!("tags[{i}]"), e)))
            .collect::<Result<BTreeSet<_>, _>>()?;
        let device = DeviceRecord {
            id: device_id("id", &req.id)?,
            fleet: fleet_id("fleet", &req.fleet)?,
            tags,
            status: DeviceStatus::Unknown,
            credential_revoked: false,
            created: clock::now(),
        };
        check(&p, Action::RegisterDevices, Some(&device.fleet))?;
        let (credential, hash) = auth::new_device_credential();
        self.store
            .register_device(&device, &hash)
            .await
            .map_err(status_from_store)?;
        tracing::info!(device = %device.id, fleet = %device.fleet, "device registered");
        Ok(Response::new(pb::RegisterDeviceResponse {
            device: Some(device_to_pb(&device)),
            credential,
        }))
    }

    async fn get_device(
        &self,
        req: Request<pb::GetDeviceRequest>,
    ) -> Result<Response<pb::GetDeviceResponse>, Status> {
        let p = principal(&req)?;
        let id = device_id("id", &req.into_inner().id)?;
        let d = self
            .store
            .get_device(&id)
            .await
            .map_err(status_from_store)?;
        check(&p, Action::ReadDevices, Some(&d.fleet))?;
        Ok(Response::new(pb::GetDeviceResponse {
            device: Some(device_to_pb(&d)),
        }))
    }

    async fn list_devices(
        &self,
        req: Request<pb::ListDevicesRequest>,
    ) -> Result<Response<pb::ListDevicesResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let mut filter = DeviceFilter {
            fleet: (!req.fleet.is_empty())
                .then(|| fleet_id("fleet", &req.fleet))
                .transpose()?,
            tag: (!req.tag.is_empty())
                .then(|| Tag::new(&req.tag).map_err(|e| ConvertError::new("tag", e)))
                .transpose()?,
            status: status_from_pb("status", req.status)?,
            within: None,
        };
        // A fleet asked for must be in scope; without one, the token's fleets.
        match &filter.fleet {
            Some(f) => check(&p, Action::ReadDevices, Some(f))?,
            None => filter.within = within(&p, Action::ReadDevices)?,
        }
        let page = PageRequest {
            size: req.page_size,
            token: (!req.page_token.is_empty()).then_some(req.page_token),
        };
        let page = self
            .store
            .list_devices(&filter, &page)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListDevicesResponse {
            devices: page.items.iter().map(device_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn set_env(
        &self,
        req: Request<pb::SetEnvRequest>,
    ) -> Result<Response<pb::SetEnvResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let owner = owner_from_pb(req.owner)?;
        check(&p, Action::WriteEnv, Some(&self.owner_fleet(&owner).await?))?;
        if req.vars.is_empty() || req.vars.len() > MAX_ENV_VARS {
            return Err(ConvertError::new(
                "vars",
                format!("between 1 and {MAX_ENV_VARS} variables"),
            )
            .into());
        }
        let vars = req
            .vars
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                at_most(format!("vars[{i}].value"), &v.value, MAX_ENV_VALUE)?;
                EnvVar::try_from(v).map_err(|e| e.within(format!("vars[{i}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let count = vars.len();
        let (_, operations) = self
            .edit_env(
                &owner,
                EnvEdit {
                    set: vars,
                    unset: Vec::new(),
                },
            )
            .await?;
        tracing::info!(
            owner = owner.key_for_logs(),
            count,
            devices = operations.len(),
            "env variables set"
        );
        Ok(Response::new(pb::SetEnvResponse { operations }))
    }

    async fn unset_env(
        &self,
        req: Request<pb::UnsetEnvRequest>,
    ) -> Result<Response<pb::UnsetEnvResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let owner = owner_from_pb(req.owner)?;
        check(&p, Action::WriteEnv, Some(&self.owner_fleet(&owner).await?))?;
        if req.keys.is_empty() || req.keys.len() > MAX_ENV_VARS {
            return Err(
                ConvertError::new("keys", format!("between 1 and {MAX_ENV_VARS} keys")).into(),
            );
        }
        let keys = req
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let name = EnvName::new(&k.name)
                    .map_err(|e| ConvertError::new(format!("keys[{i}].name"), e))?;
                Ok((
                    name,
                    scope_from_blocks(&format!("keys[{i}].blocks"), &k.blocks)?,
                ))
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let (removed, operations) = self
            .edit_env(
                &owner,
                EnvEdit {
                    set: Vec::new(),
                    unset: keys,
                },
            )
            .await?;
        Ok(Response::new(pb::UnsetEnvResponse {
            removed,
            operations,
        }))
    }

    async fn list_env(
        &self,
        req: Request<pb::ListEnvRequest>,
    ) -> Result<Response<pb::ListEnvResponse>, Status> {
        let p = principal(&req)?;
        let owner = owner_from_pb(req.into_inner().owner)?;
        check(&p, Action::ReadEnv, Some(&self.owner_fleet(&owner).await?))?;
        let layer = self
            .store
            .env_layer(&owner)
            .await
            .map_err(status_from_store)?;
        let mut vars: Vec<pb::EnvVar> = layer
            .wide
            .iter()
            .map(|(k, v)| pb::EnvVar {
                name: k.to_string(),
                value: v.clone(),
                blocks: vec![],
            })
            .collect();
        for (block, env) in &layer.scoped {
            vars.extend(env.iter().map(|(k, v)| pb::EnvVar {
                name: k.to_string(),
                value: v.clone(),
                blocks: vec![block.to_string()],
            }));
        }
        Ok(Response::new(pb::ListEnvResponse { vars }))
    }

    async fn get_device_state(
        &self,
        req: Request<pb::GetDeviceStateRequest>,
    ) -> Result<Response<pb::GetDeviceStateResponse>, Status> {
        let p = principal(&req)?;
        let id = device_id("id", &req.into_inner().id)?;
        let device = self
            .store
            .get_device(&id)
            .await
            .map_err(status_from_store)?;
        check(&p, Action::ReadDevices, Some(&device.fleet))?;
        let report = self
            .store
            .device_report(&id)
            .await
            .map_err(status_from_store)?;
        let locks = self
            .store
            .device_locks(&id)
            .await
            .map_err(status_from_store)?;
        let mut resp = pb::GetDeviceStateResponse {
            device: Some(device_to_pb(&device)),
            locks: locks
                .iter()
                .map(|(b, l)| pb::BlockLock {
                    block: b.to_string(),
                    held: l.held,
                    generation: l.generation.0,
                    since_unix_ms: l.since.0,
                })
                .collect(),
            ..Default::default()
        };
        if let Some(r) = report {
            resp.reported = true;
            resp.agent_version = r.agent_version;
            resp.current_release = r.current_release.map(|r| r.to_string()).unwrap_or_default();
            resp.os_version = r.os_version.unwrap_or_default();
            resp.blocks = r
                .blocks
                .iter()
                .map(|(b, rb)| pb::ReportedBlock {
                    block: b.to_string(),
                    version: rb.version.to_string(),
                    env_fingerprint: rb.env_fingerprint.to_hex(),
                })
                .collect();
            resp.last_intent_seq = r.last_intent_seq.0;
            resp.reported_unix_ms = r.reported.0;
        }
        Ok(Response::new(resp))
    }
}
