//! `CatalogService`: blocks, block versions, releases and release diffs over
//! the store. Handlers convert, call the domain for validation and diffs, and
//! map errors; they decide nothing themselves. Blocks and block versions
//! are the global catalog (no fleet); a release belongs to its fleet.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::{check, principal, within};
use super::convert::{self, ConvertError, at_most, block_name, count_at_most};
use super::pb::{self, catalog_service_server::CatalogService};
use super::status_from_store;
use crate::clock;
use crate::domain::{self, Action, BlockVersion, EnvContext, FleetId, Release, ReleaseId, shown};
use crate::edge::limits::{MAX_DESCRIPTION_BYTES, MAX_RELEASE_BLOCKS, MAX_VERSION_BYTES};
use crate::store::{PageRequest, Store};

pub struct Catalog<S> {
    store: S,
}

impl<S: Store> Catalog<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

fn release_id(field: &str, s: &str) -> Result<ReleaseId, Status> {
    ReleaseId::new(s).map_err(|e| ConvertError::new(field, e).into())
}

#[tonic::async_trait]
impl<S: Store> CatalogService for Catalog<S> {
    async fn create_block(
        &self,
        req: Request<pb::CreateBlockRequest>,
    ) -> Result<Response<pb::CreateBlockResponse>, Status> {
        check(&principal(&req)?, Action::WriteCatalog, None)?;
        let req = req.into_inner();
        let name = block_name("name", &req.name)?;
        at_most("description", &req.description, MAX_DESCRIPTION_BYTES)?;
        self.store
            .create_block(&name, &req.description, clock::now())
            .await
            .map_err(status_from_store)?;
        tracing::info!(block = %name, "block created");
        Ok(Response::new(pb::CreateBlockResponse {}))
    }

    async fn create_block_version(
        &self,
        req: Request<pb::CreateBlockVersionRequest>,
    ) -> Result<Response<pb::CreateBlockVersionResponse>, Status> {
        check(&principal(&req)?, Action::WriteCatalog, None)?;
        let m = req
            .into_inner()
            .block_version
            .ok_or_else(|| ConvertError::new("block_version", "required"))?;
        let bv = BlockVersion::try_from(m).map_err(|e| e.within("block_version"))?;
        self.store
            .create_block_version(&bv, clock::now())
            .await
            .map_err(status_from_store)?;
        tracing::info!(block = %bv.name, version = %bv.version, "block version created");
        Ok(Response::new(pb::CreateBlockVersionResponse {
            block_version: Some((&bv).into()),
        }))
    }

    async fn list_block_versions(
        &self,
        req: Request<pb::ListBlockVersionsRequest>,
    ) -> Result<Response<pb::ListBlockVersionsResponse>, Status> {
        check(&principal(&req)?, Action::ReadCatalog, None)?;
        let block = block_name("block", &req.into_inner().block)?;
        let versions = self
            .store
            .list_block_versions(&block)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListBlockVersionsResponse {
            block_versions: versions.iter().map(Into::into).collect(),
        }))
    }

    async fn create_release(
        &self,
        req: Request<pb::CreateReleaseRequest>,
    ) -> Result<Response<pb::CreateReleaseResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let id = release_id("id", &req.id)?;
        let fleet = FleetId::new(&req.fleet).map_err(|e| ConvertError::new("fleet", e))?;
        check(&p, Action::WriteReleases, Some(&fleet))?;
        if req.blocks.is_empty() {
            return Err(ConvertError::new("blocks", "a release needs at least one block").into());
        }
        count_at_most("blocks", req.blocks.len(), MAX_RELEASE_BLOCKS)?;
        let refs = req
            .blocks
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let name = block_name(&format!("blocks[{i}].block"), &r.block)?;
                at_most(
                    format!("blocks[{i}].version"),
                    &r.version,
                    MAX_VERSION_BYTES,
                )?;
                let version = semver::Version::parse(&r.version).map_err(|e| {
                    ConvertError::new(
                        format!("blocks[{i}].version"),
                        format!("{}: {e}", shown(&r.version)),
                    )
                })?;
                Ok((name, version))
            })
            .collect::<Result<Vec<_>, ConvertError>>()?;
        let env = convert::env_from_pb("env", req.env)?;
        let versions = self
            .store
            .get_block_versions(&refs)
            .await
            .map_err(status_from_store)?;
        let release = Release::new(id, fleet, versions.into_iter().map(Arc::new).collect(), env)
            .map_err(|e| ConvertError::new("blocks", e))?;
        self.store
            .create_release(&release, clock::now())
            .await
            .map_err(status_from_store)?;
        tracing::info!(release = %release.id(), fleet = %release.fleet(), blocks = release.blocks().len(), "release created");
        Ok(Response::new(pb::CreateReleaseResponse {
            release: Some((&release).into()),
        }))
    }

    async fn get_release(
        &self,
        req: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::GetReleaseResponse>, Status> {
        let p = principal(&req)?;
        let id = release_id("id", &req.into_inner().id)?;
        let release = self
            .store
            .get_release(&id)
            .await
            .map_err(status_from_store)?;
        check(&p, Action::ReadReleases, Some(release.fleet()))?;
        Ok(Response::new(pb::GetReleaseResponse {
            release: Some((&release).into()),
        }))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let fleet = if req.fleet.is_empty() {
            None
        } else {
            Some(FleetId::new(&req.fleet).map_err(|e| ConvertError::new("fleet", e))?)
        };
        // A fleet asked for must be in scope; without one, the token's fleets.
        let within = match &fleet {
            Some(f) => check(&p, Action::ReadReleases, Some(f)).map(|()| None)?,
            None => within(&p, Action::ReadReleases)?,
        };
        let page = PageRequest {
            size: req.page_size,
            token: (!req.page_token.is_empty()).then_some(req.page_token),
        };
        let page = self
            .store
            .list_releases(fleet.as_ref(), within.as_ref(), &page)
            .await
            .map_err(status_from_store)?;
        Ok(Response::new(pb::ListReleasesResponse {
            releases: page
                .items
                .iter()
                .map(|r| pb::ReleaseSummary {
                    id: r.id.to_string(),
                    fleet: r.fleet.to_string(),
                    block_count: u32::try_from(r.blocks).unwrap_or(u32::MAX),
                    created_unix_ms: r.created.0,
                })
                .collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn diff_releases(
        &self,
        req: Request<pb::DiffReleasesRequest>,
    ) -> Result<Response<pb::DiffReleasesResponse>, Status> {
        let p = principal(&req)?;
        let req = req.into_inner();
        let from_id = release_id("from", &req.from)?;
        let to_id = release_id("to", &req.to)?;
        let from = Arc::new(
            self.store
                .get_release(&from_id)
                .await
                .map_err(status_from_store)?,
        );
        let to = Arc::new(
            self.store
                .get_release(&to_id)
                .await
                .map_err(status_from_store)?,
        );
        check(&p, Action::ReadReleases, Some(from.fleet()))?;
        check(&p, Action::ReadReleases, Some(to.fleet()))?;
        // Releases alone, without any device's operator env.
        let diff = domain::diff_releases(&from, &to, &EnvContext::default());
        let version = |r: &Release, b: &domain::BlockName| {
            r.blocks()
                .get(b)
                .map(|bv| bv.version.to_string())
                .unwrap_or_default()
        };
        let blocks = diff
            .deltas
            .iter()
            .map(|(block, delta)| pb::BlockDiff {
                block: block.to_string(),
                from_version: version(&from, block),
                to_version: version(&to, block),
                delta: Some(convert::delta_to_pb(block, delta)),
                disturbance: diff
                    .impact
                    .disturbed
                    .get(block)
                    .map(|d| convert::disturbance_to_pb(block, d)),
            })
            .collect();
        Ok(Response::new(pb::DiffReleasesResponse { blocks }))
    }
}
