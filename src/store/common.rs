//! The body of [`Store`](super::Store) shared by both backends. The SQL here is
//! portable (`$N` parameters, `ON CONFLICT`, `RETURNING` work on Postgres and
//! SQLite alike); the macro compiles it once per driver. What differs — the
//! batched lock ingest, transaction start, connection setup — lives in
//! `pg.rs` and `sqlite.rs`.

/// Expands to `impl Store for $store` over a `pool` field of driver `$db`.
/// The backend type must provide `begin()` (a write transaction) and
/// `ingest_batch(&self, tx, batch, now)`.
macro_rules! impl_store {
    ($store:ty, $db:ty, $backend:expr) => {
        impl $crate::store::Store for $store {
            fn backend(&self) -> $crate::store::Backend {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn create_fleet(&self, fleet: &Fleet) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO fleets (id, name, created_ms) VALUES ($1, $2, $3)")
                    .bind(fleet.id.as_str())
                    .bind(&fleet.name)
                    .bind(fleet.created.0)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::on_write("fleet", &fleet.id, "fleet"))?;
                Ok(())
            }

            async fn get_fleet(&self, id: &FleetId) -> Result<Fleet, StoreError> {
                let row = sqlx::query("SELECT id, name, created_ms FROM fleets WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "fleet",
                        key: id.to_string(),
                    })?;
                fleet_from_row(&row)
            }

            async fn list_fleets(&self) -> Result<Vec<Fleet>, StoreError> {
                let rows = sqlx::query("SELECT id, name, created_ms FROM fleets ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter().map(fleet_from_row).collect()
            }

            async fn create_block(
                &self,
                name: &BlockName,
                description: &str,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO blocks (name, description, created_ms) VALUES ($1, $2, $3)")
                    .bind(name.as_str())
                    .bind(description)
                    .bind(now.0)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::on_write("block", name, "block"))?;
                Ok(())
            }

            async fn create_block_version(
                &self,
                bv: &BlockVersion,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let cols = codec::block_version_columns(bv);
                let key = format!("{}@{}", bv.name, bv.version);
                sqlx::query(
                    "INSERT INTO block_versions \
                     (block, version, image_digest, config_json, env_json, depends_on_json, strategy_json, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(bv.name.as_str())
                .bind(bv.version.to_string())
                .bind(bv.image_digest.as_str())
                .bind(&cols.config)
                .bind(&cols.env)
                .bind(&cols.depends_on)
                .bind(&cols.strategy)
                .bind(now.0)
                .execute(&self.pool)
                .await
                .map_err(|e| match StoreError::on_write("block version", &key, "block")(e) {
                    StoreError::NotFound { .. } => StoreError::NotFound {
                        entity: "block",
                        key: bv.name.to_string(),
                    },
                    other => other,
                })?;
                Ok(())
            }

            async fn get_block_versions(
                &self,
                refs: &[(BlockName, semver::Version)],
            ) -> Result<Vec<BlockVersion>, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let mut out = Vec::with_capacity(refs.len());
                for (block, version) in refs {
                    let row = sqlx::query(BLOCK_VERSION_SELECT_ONE)
                        .bind(block.as_str())
                        .bind(version.to_string())
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(StoreError::from_sqlx)?
                        .ok_or_else(|| StoreError::NotFound {
                            entity: "block version",
                            key: format!("{block}@{version}"),
                        })?;
                    out.push(block_version_from_row(&row)?);
                }
                Ok(out)
            }

            async fn list_block_versions(
                &self,
                block: &BlockName,
            ) -> Result<Vec<BlockVersion>, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let exists = sqlx::query("SELECT 1 FROM blocks WHERE name = $1")
                    .bind(block.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if exists.is_none() {
                    return Err(StoreError::NotFound {
                        entity: "block",
                        key: block.to_string(),
                    });
                }
                let rows = sqlx::query(BLOCK_VERSION_SELECT_ALL)
                    .bind(block.as_str())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let mut out = rows
                    .iter()
                    .map(block_version_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                out.sort_by(|a, b| a.version.cmp(&b.version));
                Ok(out)
            }

            async fn create_release(&self, release: &Release, now: Timestamp) -> Result<(), StoreError> {
                let mut tx = self.begin().await?;
                let fleet = sqlx::query("SELECT 1 FROM fleets WHERE id = $1")
                    .bind(release.fleet().as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if fleet.is_none() {
                    return Err(StoreError::NotFound {
                        entity: "fleet",
                        key: release.fleet().to_string(),
                    });
                }
                sqlx::query("INSERT INTO releases (id, fleet, env_json, created_ms) VALUES ($1, $2, $3, $4)")
                    .bind(release.id().as_str())
                    .bind(release.fleet().as_str())
                    .bind(codec::env_to_json(release.env()))
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::on_write("release", release.id(), "fleet"))?;
                for bv in release.blocks().values() {
                    let key = format!("{}@{}", bv.name, bv.version);
                    sqlx::query("INSERT INTO release_blocks (release_id, block, version) VALUES ($1, $2, $3)")
                        .bind(release.id().as_str())
                        .bind(bv.name.as_str())
                        .bind(bv.version.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| match StoreError::on_write("release block", &key, "block version")(e) {
                            StoreError::NotFound { .. } => StoreError::NotFound {
                                entity: "block version",
                                key: key.clone(),
                            },
                            other => other,
                        })?;
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn get_release(&self, id: &ReleaseId) -> Result<Release, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let row = sqlx::query("SELECT id, fleet, env_json FROM releases WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "release",
                        key: id.to_string(),
                    })?;
                let fleet: String = get(&row, "fleet")?;
                let env_json: String = get(&row, "env_json")?;
                let rows = sqlx::query(
                    "SELECT bv.block, bv.version, bv.image_digest, bv.config_json, bv.env_json, \
                     bv.depends_on_json, bv.strategy_json \
                     FROM release_blocks rb JOIN block_versions bv \
                       ON bv.block = rb.block AND bv.version = rb.version \
                     WHERE rb.release_id = $1 ORDER BY rb.block",
                )
                .bind(id.as_str())
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                let blocks = rows
                    .iter()
                    .map(|r| block_version_from_row(r).map(std::sync::Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                let fleet = FleetId::new(fleet).map_err(|e| codec::corrupt("release", id, e))?;
                let env = codec::env_from_json("release", id.as_str(), &env_json)?;
                Release::new(id.clone(), fleet, blocks, env)
                    .map_err(|e| codec::corrupt("release", id, e))
            }

            async fn list_releases(
                &self,
                fleet: Option<&FleetId>,
                within: Option<&std::collections::BTreeSet<FleetId>>,
                page: &PageRequest,
            ) -> Result<Page<ReleaseSummary>, StoreError> {
                let limit = page.limit();
                let sql = format!(
                    "SELECT r.id, r.fleet, r.created_ms, \
                       (SELECT COUNT(*) FROM release_blocks rb WHERE rb.release_id = r.id) AS blocks \
                     FROM releases r \
                     WHERE ($1 IS NULL OR r.fleet = $1) AND ($2 IS NULL OR r.id > $2){} \
                     ORDER BY r.id LIMIT $3",
                    within_clause("r.fleet", within, 4),
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(fleet.map(FleetId::as_str))
                    .bind(page.token.as_deref())
                    .bind(limit + 1);
                for f in within.into_iter().flatten() {
                    q = q.bind(f.as_str());
                }
                let rows = q
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let mut items = rows
                    .iter()
                    .map(|r| {
                        let id: String = get(r, "id")?;
                        let fleet: String = get(r, "fleet")?;
                        let blocks: i64 = get(r, "blocks")?;
                        Ok(ReleaseSummary {
                            id: ReleaseId::new(&id).map_err(|e| codec::corrupt("release", &id, e))?,
                            fleet: FleetId::new(fleet).map_err(|e| codec::corrupt("release", &id, e))?,
                            blocks: usize::try_from(blocks).unwrap_or(0),
                            created: Timestamp(get(r, "created_ms")?),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(paginate(&mut items, limit, |r| r.id.to_string()))
            }

            async fn register_device(
                &self,
                device: &DeviceRecord,
                credential_hash: &str,
            ) -> Result<(), StoreError> {
                let mut tx = self.begin().await?;
                let fleet = sqlx::query("SELECT 1 FROM fleets WHERE id = $1")
                    .bind(device.fleet.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if fleet.is_none() {
                    return Err(StoreError::NotFound {
                        entity: "fleet",
                        key: device.fleet.to_string(),
                    });
                }
                sqlx::query(
                    "INSERT INTO devices (id, fleet, credential_hash, credential_revoked, status, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(device.id.as_str())
                .bind(device.fleet.as_str())
                .bind(credential_hash)
                .bind(device.credential_revoked)
                .bind(device.status.as_str())
                .bind(device.created.0)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::on_write("device", &device.id, "fleet"))?;
                for tag in &device.tags {
                    sqlx::query("INSERT INTO device_tags (device_id, tag) VALUES ($1, $2)")
                        .bind(device.id.as_str())
                        .bind(tag.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn get_device(&self, id: &DeviceId) -> Result<DeviceRecord, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let row = sqlx::query(
                    "SELECT id, fleet, status, credential_revoked, created_ms FROM devices WHERE id = $1",
                )
                .bind(id.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?
                .ok_or_else(|| StoreError::NotFound {
                    entity: "device",
                    key: id.to_string(),
                })?;
                let tags = sqlx::query("SELECT device_id, tag FROM device_tags WHERE device_id = $1 ORDER BY tag")
                    .bind(id.as_str())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let mut device = device_from_row(&row)?;
                for t in &tags {
                    device.tags.insert(tag_from_row(t)?.1);
                }
                Ok(device)
            }

            async fn device_credential(&self, id: &DeviceId) -> Result<(String, bool), StoreError> {
                let row = sqlx::query("SELECT credential_hash, credential_revoked FROM devices WHERE id = $1")
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "device",
                        key: id.to_string(),
                    })?;
                Ok((get(&row, "credential_hash")?, get(&row, "credential_revoked")?))
            }

            async fn revoke_device_credential(&self, id: &DeviceId) -> Result<(), StoreError> {
                let done = sqlx::query("UPDATE devices SET credential_revoked = $2 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(true)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound {
                        entity: "device",
                        key: id.to_string(),
                    });
                }
                Ok(())
            }

            async fn list_devices(
                &self,
                filter: &DeviceFilter,
                page: &PageRequest,
            ) -> Result<Page<DeviceRecord>, StoreError> {
                let limit = page.limit();
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let sql = format!(
                    "SELECT d.id, d.fleet, d.status, d.credential_revoked, d.created_ms FROM devices d \
                     WHERE ($1 IS NULL OR d.fleet = $1) \
                       AND ($2 IS NULL OR EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = $2)) \
                       AND ($3 IS NULL OR d.status = $3) \
                       AND ($4 IS NULL OR d.id > $4){} \
                     ORDER BY d.id LIMIT $5",
                    within_clause("d.fleet", filter.within.as_ref(), 6),
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(filter.fleet.as_ref().map(FleetId::as_str))
                    .bind(filter.tag.as_ref().map(Tag::as_str))
                    .bind(filter.status.map(DeviceStatus::as_str))
                    .bind(page.token.as_deref())
                    .bind(limit + 1);
                for f in filter.within.iter().flatten() {
                    q = q.bind(f.as_str());
                }
                let rows = q
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut items = rows.iter().map(device_from_row).collect::<Result<Vec<_>, _>>()?;
                let next = paginate(&mut items, limit, |d| d.id.to_string());
                // Tags of the page, in one query over its id range.
                if let (Some(first), Some(last)) = (next.items.first(), next.items.last()) {
                    let tags = sqlx::query(
                        "SELECT device_id, tag FROM device_tags WHERE device_id >= $1 AND device_id <= $2",
                    )
                    .bind(first.id.as_str())
                    .bind(last.id.as_str())
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                    let mut by_device: std::collections::BTreeMap<DeviceId, Vec<Tag>> = Default::default();
                    for t in &tags {
                        let (d, tag) = tag_from_row(t)?;
                        by_device.entry(d).or_default().push(tag);
                    }
                    let mut next = next;
                    for d in &mut next.items {
                        if let Some(ts) = by_device.remove(&d.id) {
                            d.tags.extend(ts);
                        }
                    }
                    return Ok(next);
                }
                Ok(next)
            }

            async fn set_device_status(&self, id: &DeviceId, status: DeviceStatus) -> Result<(), StoreError> {
                let done = sqlx::query("UPDATE devices SET status = $2 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(status.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound {
                        entity: "device",
                        key: id.to_string(),
                    });
                }
                Ok(())
            }

            async fn device_status_counts(
                &self,
            ) -> Result<std::collections::BTreeMap<FleetId, std::collections::BTreeMap<DeviceStatus, u64>>, StoreError> {
                let rows = sqlx::query("SELECT fleet, status, COUNT(*) AS n FROM devices GROUP BY fleet, status")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let mut out: std::collections::BTreeMap<FleetId, std::collections::BTreeMap<DeviceStatus, u64>> =
                    Default::default();
                for r in &rows {
                    let fleet: String = get(r, "fleet")?;
                    let status: String = get(r, "status")?;
                    let key = format!("{fleet}/{status}");
                    let fleet = FleetId::new(fleet).map_err(|e| codec::corrupt("device", &key, e))?;
                    let status = DeviceStatus::parse(&status)
                        .ok_or_else(|| codec::corrupt("device", &key, "unknown status"))?;
                    let n = codec::to_u64("device count", &key, get(r, "n")?)?;
                    *out.entry(fleet).or_default().entry(status).or_default() += n;
                }
                Ok(out)
            }

            async fn set_env(&self, owner: &EnvOwner, vars: &[EnvVar], now: Timestamp) -> Result<(), StoreError> {
                let mut tx = self.begin().await?;
                ensure_owner(&mut *tx, owner).await?;
                for var in vars {
                    for block in scope_blocks(&var.scope) {
                        sqlx::query(
                            "INSERT INTO env_vars (level, owner, name, block, value, updated_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (level, owner, name, block) \
                             DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms",
                        )
                        .bind(owner.level())
                        .bind(owner.key())
                        .bind(var.name.as_str())
                        .bind(block)
                        .bind(&var.value)
                        .bind(now.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                    }
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn unset_env(&self, owner: &EnvOwner, names: &[(EnvName, EnvScope)]) -> Result<u64, StoreError> {
                let mut tx = self.begin().await?;
                ensure_owner(&mut *tx, owner).await?;
                let mut removed = 0;
                for (name, scope) in names {
                    for block in scope_blocks(scope) {
                        removed += sqlx::query(
                            "DELETE FROM env_vars WHERE level = $1 AND owner = $2 AND name = $3 AND block = $4",
                        )
                        .bind(owner.level())
                        .bind(owner.key())
                        .bind(name.as_str())
                        .bind(block)
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::from_sqlx)?
                        .rows_affected();
                    }
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(removed)
            }

            async fn env_layer(&self, owner: &EnvOwner) -> Result<EnvLayer, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                ensure_owner(&mut *conn, owner).await?;
                let rows = sqlx::query(
                    "SELECT name, block, value FROM env_vars WHERE level = $1 AND owner = $2 ORDER BY name, block",
                )
                .bind(owner.level())
                .bind(owner.key())
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut layer = EnvLayer::default();
                for r in &rows {
                    let name: String = get(r, "name")?;
                    let block: String = get(r, "block")?;
                    let value: String = get(r, "value")?;
                    let key = format!("{}:{name}", owner.key());
                    let name = EnvName::new(name).map_err(|e| codec::corrupt("env var", &key, e))?;
                    if block.is_empty() {
                        layer.wide.insert(name, value);
                    } else {
                        let block = BlockName::new(block).map_err(|e| codec::corrupt("env var", &key, e))?;
                        layer.scoped.entry(block).or_default().insert(name, value);
                    }
                }
                Ok(layer)
            }

            async fn record_device_report(&self, device: &DeviceId, report: &DeviceReport) -> Result<(), StoreError> {
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO device_reports (device_id, agent_version, current_release, os_version, last_intent_seq, reported_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (device_id) DO UPDATE SET agent_version = excluded.agent_version, \
                       current_release = excluded.current_release, os_version = excluded.os_version, \
                       last_intent_seq = excluded.last_intent_seq, reported_ms = excluded.reported_ms",
                )
                .bind(device.as_str())
                .bind(&report.agent_version)
                .bind(report.current_release.as_ref().map(ReleaseId::as_str))
                .bind(report.os_version.as_deref())
                .bind(codec::to_i64("intent sequence", report.last_intent_seq.0)?)
                .bind(report.reported.0)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::on_write("device report", device, "device"))?;
                sqlx::query("DELETE FROM device_blocks WHERE device_id = $1")
                    .bind(device.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                for (block, rb) in &report.blocks {
                    sqlx::query(
                        "INSERT INTO device_blocks (device_id, block, version, env_fingerprint) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(device.as_str())
                    .bind(block.as_str())
                    .bind(rb.version.to_string())
                    .bind(rb.env_fingerprint.to_hex())
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn device_report(&self, device: &DeviceId) -> Result<Option<DeviceReport>, StoreError> {
                let mut conn = self.pool.acquire().await.map_err(StoreError::from_sqlx)?;
                let Some(row) = sqlx::query(
                    "SELECT agent_version, current_release, os_version, last_intent_seq, reported_ms \
                     FROM device_reports WHERE device_id = $1",
                )
                .bind(device.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?
                else {
                    return Ok(None);
                };
                let key = device.as_str();
                let current_release: Option<String> = get(&row, "current_release")?;
                let blocks = sqlx::query(
                    "SELECT block, version, env_fingerprint FROM device_blocks WHERE device_id = $1 ORDER BY block",
                )
                .bind(device.as_str())
                .fetch_all(&mut *conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut report = DeviceReport {
                    agent_version: get(&row, "agent_version")?,
                    current_release: current_release
                        .map(|r| ReleaseId::new(r).map_err(|e| codec::corrupt("device report", key, e)))
                        .transpose()?,
                    os_version: get(&row, "os_version")?,
                    blocks: Default::default(),
                    last_intent_seq: IntentSeq(codec::to_u64("device report", key, get(&row, "last_intent_seq")?)?),
                    reported: Timestamp(get(&row, "reported_ms")?),
                };
                for b in &blocks {
                    let block: String = get(b, "block")?;
                    let version: String = get(b, "version")?;
                    let fp: String = get(b, "env_fingerprint")?;
                    report.blocks.insert(
                        BlockName::new(block).map_err(|e| codec::corrupt("device report", key, e))?,
                        ReportedBlock {
                            version: semver::Version::parse(&version)
                                .map_err(|e| codec::corrupt("device report", key, e))?,
                            env_fingerprint: codec::fingerprint_from_hex("device report", key, &fp)?,
                        },
                    );
                }
                Ok(Some(report))
            }

            async fn device_locks(
                &self,
                device: &DeviceId,
            ) -> Result<std::collections::BTreeMap<BlockName, LockState>, StoreError> {
                let rows = sqlx::query(
                    "SELECT block, held, generation, since_ms FROM device_locks WHERE device_id = $1 ORDER BY block",
                )
                .bind(device.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let block: String = get(r, "block")?;
                        let key = format!("{device}/{block}");
                        Ok((
                            BlockName::new(block).map_err(|e| codec::corrupt("lock", &key, e))?,
                            lock_from_row(r, &key)?,
                        ))
                    })
                    .collect()
            }

            async fn ingest_lock_reports_logged(
                &self,
                batch: &[LockReport],
                events: &[$crate::domain::NewEvent],
                now: Timestamp,
            ) -> Result<IngestOutcome, StoreError> {
                if batch.is_empty() {
                    return Ok(IngestOutcome::default());
                }
                let newest = newest_per_lock(batch);
                let mut tx = self.begin().await?;
                let applied = self.ingest_batch(&mut tx, &newest, now).await?;
                append_events_tx(&mut tx, events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(IngestOutcome {
                    applied,
                    dropped: batch.len() as u64 - applied,
                })
            }

            async fn lock_history(&self, device: &DeviceId, block: &BlockName) -> Result<Vec<LockState>, StoreError> {
                let rows = sqlx::query(
                    "SELECT held, generation, since_ms FROM lock_history \
                     WHERE device_id = $1 AND block = $2 ORDER BY generation",
                )
                .bind(device.as_str())
                .bind(block.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                let key = format!("{device}/{block}");
                rows.iter().map(|r| lock_from_row(r, &key)).collect()
            }

            async fn prune_lock_history(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query("DELETE FROM lock_history WHERE recorded_ms < $1")
                    .bind(before.0)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .rows_affected())
            }

            async fn append_intents(
                &self,
                device: &DeviceId,
                intents: &[NewIntent],
                now: Timestamp,
            ) -> Result<Vec<IntentSeq>, StoreError> {
                if intents.is_empty() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin().await?;
                let seqs = append_intents_tx(&mut tx, device, intents, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(seqs)
            }

            async fn create_operation(
                &self,
                device: &DeviceId,
                spec: &OperationSpec,
                force: Option<&Force>,
                now: Timestamp,
            ) -> Result<OperationRecord, StoreError> {
                let mut tx = self.begin().await?;
                let op = create_operation_tx(&mut tx, device, spec, force, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(op)
            }

            async fn create_operations(
                &self,
                new: &[$crate::store::NewOperation],
                now: Timestamp,
            ) -> Result<Vec<Result<OperationRecord, StoreError>>, StoreError> {
                let mut tx = self.begin().await?;
                let mut results = Vec::with_capacity(new.len());
                for n in new {
                    sqlx::raw_sql("SAVEPOINT new_operation").execute(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    let created = async {
                        let op = create_operation_tx(&mut tx, &n.device, &n.spec, n.force.as_ref(), now).await?;
                        if let Some(audit) = &n.audit {
                            let audit = AuditEntry {
                                at: now,
                                subject: format!("device {} operation {}", n.device, op.id),
                                ..audit.clone()
                            };
                            append_audit_tx(&mut tx, &audit).await?;
                        }
                        Ok::<_, StoreError>(op)
                    }
                    .await;
                    if created.is_err() {
                        sqlx::raw_sql("ROLLBACK TO SAVEPOINT new_operation")
                            .execute(&mut *tx)
                            .await
                            .map_err(StoreError::from_sqlx)?;
                    }
                    sqlx::raw_sql("RELEASE SAVEPOINT new_operation").execute(&mut *tx).await.map_err(StoreError::from_sqlx)?;
                    results.push(created);
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(results)
            }

            async fn get_operation(&self, id: OperationId) -> Result<OperationRecord, StoreError> {
                let row = sqlx::query(OPERATION_SELECT_BY_ID)
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "operation",
                        key: id.to_string(),
                    })?;
                operation_from_row(&row)
            }

            async fn list_operations(&self, device: &DeviceId) -> Result<Vec<OperationRecord>, StoreError> {
                let rows = sqlx::query(OPERATION_SELECT_BY_DEVICE)
                    .bind(device.as_str())
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter().map(operation_from_row).collect()
            }

            async fn devices_with_active_operations(&self) -> Result<Vec<DeviceId>, StoreError> {
                let sql = format!(
                    "SELECT DISTINCT device_id FROM operations WHERE status IN {} ORDER BY device_id",
                    $crate::store::plans::placeholders(1, OpStatus::ACTIVE.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for st in $crate::store::plans::status_names(&OpStatus::ACTIVE) {
                    q = q.bind(st);
                }
                let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let d: String = get(r, "device_id")?;
                        DeviceId::new(&d).map_err(|e| codec::corrupt("operation", &d, e))
                    })
                    .collect()
            }

            async fn operation_status_counts(&self) -> Result<Vec<(OpStatus, u64)>, StoreError> {
                let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM operations GROUP BY status ORDER BY status")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let status: String = get(r, "status")?;
                        let parsed = OpStatus::parse(&status)
                            .ok_or_else(|| codec::corrupt("operation", &status, "unknown status"))?;
                        Ok((parsed, codec::to_u64("operation count", &status, get(r, "n")?)?))
                    })
                    .collect()
            }

            async fn record_step(
                &self,
                op: &OperationRecord,
                intents: &[NewIntent],
                now: Timestamp,
            ) -> Result<Vec<IntentSeq>, StoreError> {
                let mut tx = self.begin().await?;
                let done = sqlx::query(
                    "UPDATE operations SET status = $2, status_json = $3, updated_ms = $4, generation = generation + 1 \
                     WHERE id = $1 AND generation = $5",
                )
                .bind(op.id.0)
                .bind(op.status.as_str())
                .bind(codec::progress_to_json(&op.progress))
                .bind(now.0)
                .bind(codec::to_i64("operation generation", op.generation)?)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict {
                        entity: "operation",
                        key: op.id.to_string(),
                        message: format!("it changed since generation {}", op.generation),
                    });
                }
                let seqs = if intents.is_empty() {
                    Vec::new()
                } else {
                    append_intents_tx(&mut tx, &op.device, intents, now).await?
                };
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(seqs)
            }

            async fn rollout_candidates(
                &self,
                fleet: &FleetId,
                selector: Option<&Tag>,
                target: &$crate::domain::RolloutTarget,
            ) -> Result<Vec<$crate::domain::PlanDevice>, StoreError> {
                use $crate::domain::RolloutTarget;
                let (column, value) = match target {
                    RolloutTarget::Release(r) => ("current_release", r.to_string()),
                    RolloutTarget::OsVersion(v) => ("os_version", v.clone()),
                };
                let sql = format!(
                    "SELECT d.id, (r.{column} IS NOT NULL AND r.{column} = $2) AS at_target FROM devices d \
                     LEFT JOIN device_reports r ON r.device_id = d.id \
                     WHERE d.fleet = $1 AND ($3 IS NULL OR EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = $3)) \
                     ORDER BY d.id"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(fleet.as_str())
                    .bind(value)
                    .bind(selector.map(Tag::as_str))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let id: String = get(r, "id")?;
                        let at_target: Option<bool> = get(r, "at_target")?;
                        Ok($crate::domain::PlanDevice {
                            id: DeviceId::new(&id).map_err(|e| codec::corrupt("device", &id, e))?,
                            at_target: at_target.unwrap_or(false),
                        })
                    })
                    .collect()
            }

            async fn create_rollout(
                &self,
                rollout: &$crate::store::NewRollout,
                plan: &$crate::domain::Plan,
                supersede: bool,
                now: Timestamp,
            ) -> Result<$crate::domain::Rollout, StoreError> {
                use $crate::domain::{RolloutProgress, RolloutTarget};
                let kind = rollout.target.kind().as_str();
                let target = match &rollout.target {
                    RolloutTarget::Release(r) => r.to_string(),
                    RolloutTarget::OsVersion(v) => v.clone(),
                };
                let mut tx = self.begin().await?;
                let active = sqlx::query(
                    "SELECT id FROM rollouts WHERE fleet = $1 AND kind = $2 AND state IN ('running', 'paused')",
                )
                .bind(rollout.fleet.as_str())
                .bind(kind)
                .fetch_optional(&mut *tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                if let Some(row) = active {
                    let old: i64 = get(&row, "id")?;
                    if !supersede {
                        return Err(StoreError::Precondition {
                            message: format!(
                                "rollout {old} ({kind}) is still active for fleet {}; abort it, or create the new one with supersede",
                                rollout.fleet
                            ),
                        });
                    }
                    sqlx::query(
                        "UPDATE rollouts SET state = 'superseded', message = 'superseded by a newer rollout', updated_ms = $2 WHERE id = $1",
                    )
                    .bind(old)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                }
                let devices: u64 = plan.batches.iter().map(|b| b.len() as u64).sum();
                let row = sqlx::query(
                    "INSERT INTO rollouts (fleet, selector_tag, kind, target, strategy_json, seed, state, current_batch, \
                     errors_acknowledged, devices, skipped, message, created_by, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'running', 0, 0, $7, $8, '', $9, $10, $10) RETURNING id",
                )
                .bind(rollout.fleet.as_str())
                .bind(rollout.selector.as_ref().map(Tag::as_str))
                .bind(kind)
                .bind(&target)
                .bind(codec::strategy_to_json(&rollout.strategy))
                .bind(rollout.seed as i64)
                .bind(devices as i64)
                .bind(plan.skipped.len() as i64)
                .bind(&rollout.created_by)
                .bind(now.0)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::on_write("rollout", &rollout.fleet, "fleet"))?;
                let id: i64 = get(&row, "id")?;
                let members: Vec<(u32, &DeviceId)> = plan
                    .batches
                    .iter()
                    .enumerate()
                    .flat_map(|(b, devs)| devs.iter().map(move |d| (b as u32, d)))
                    .collect();
                let mut position: i64 = 0;
                for chunk in members.chunks(1000) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO rollout_members (rollout_id, device_id, batch, position) ",
                    );
                    q.push_values(chunk, |mut b, (batch, device)| {
                        b.push_bind(id)
                            .push_bind(device.to_string())
                            .push_bind(i64::from(*batch))
                            .push_bind(position);
                        position += 1;
                    });
                    q.build()
                        .execute(&mut *tx)
                        .await
                        .map_err(StoreError::on_write("rollout member", id, "device"))?;
                }
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok($crate::domain::Rollout {
                    id: $crate::domain::RolloutId(id),
                    fleet: rollout.fleet.clone(),
                    selector: rollout.selector.clone(),
                    target: rollout.target.clone(),
                    strategy: rollout.strategy.clone(),
                    seed: rollout.seed,
                    progress: RolloutProgress::started(),
                    devices,
                    skipped: plan.skipped.len() as u64,
                    message: String::new(),
                    created_by: rollout.created_by.clone(),
                    created: now,
                    updated: now,
                })
            }

            async fn get_rollout(&self, id: $crate::domain::RolloutId) -> Result<$crate::domain::Rollout, StoreError> {
                rollout_in(&self.pool, id).await
            }

            async fn step_rollout<T, F>(
                &self,
                id: $crate::domain::RolloutId,
                now: Timestamp,
                decide: F,
            ) -> Result<Option<(T, Vec<OperationRecord>)>, StoreError>
            where
                T: Send,
                F: FnOnce(&$crate::domain::Rollout, &[$crate::domain::BatchCounts]) -> ($crate::store::RolloutStepWrite, T) + Send,
            {
                let mut tx = self.begin().await?;
                // The rollout's row lock, held to the commit: one step of a
                // rollout at a time, whichever replica takes it.
                let locked = sqlx::query("UPDATE rollouts SET updated_ms = $2 WHERE id = $1 AND state = $3 RETURNING id")
                    .bind(id.0)
                    .bind(now.0)
                    .bind($crate::domain::RolloutState::Running.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if locked.is_none() {
                    return Ok(None);
                }
                let rollout = rollout_in(&mut *tx, id).await?;
                // In flight recounted under the lock.
                let counts = batch_counts_in(&mut *tx, id).await?;
                let (write, out) = decide(&rollout, &counts);
                if let Some((progress, message)) = &write.progress {
                    sqlx::query(
                        "UPDATE rollouts SET state = $2, current_batch = $3, batch_met_ms = $4, errors_acknowledged = $5, \
                         message = COALESCE($6, message), updated_ms = $7 WHERE id = $1",
                    )
                    .bind(id.0)
                    .bind(progress.state.as_str())
                    .bind(i64::from(progress.current_batch))
                    .bind(progress.batch_met_at.map(|t| t.0))
                    .bind(progress.errors_acknowledged as i64)
                    .bind(message.as_deref())
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                }
                let mut started = Vec::new();
                let mut events = write.events;
                for (batch, n) in &write.start {
                    let ops = start_members_tx(&mut tx, id, *batch, *n, now).await?;
                    if !ops.is_empty() {
                        events.push($crate::domain::NewEvent::rollout(
                            &rollout.fleet,
                            id,
                            "devices_started",
                            $crate::domain::rollout::devices_started_message(*batch, ops.len()),
                        ));
                    }
                    started.extend(ops);
                }
                for audit in &write.audits {
                    append_audit_tx(&mut tx, audit).await?;
                }
                append_events_tx(&mut tx, &events, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(Some((out, started)))
            }

            async fn list_rollouts(&self, fleet: Option<&FleetId>) -> Result<Vec<$crate::domain::Rollout>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE ($1 IS NULL OR fleet = $1) ORDER BY id DESC LIMIT 1000"
                )))
                .bind(fleet.map(FleetId::as_str))
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter().map(rollout_from_row).collect()
            }

            async fn active_rollouts(&self) -> Result<Vec<$crate::domain::RolloutId>, StoreError> {
                let rows = sqlx::query("SELECT id FROM rollouts WHERE state IN ('running', 'paused') ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter().map(|r| Ok($crate::domain::RolloutId(get(r, "id")?))).collect()
            }

            async fn rollout_batch_counts(
                &self,
                id: $crate::domain::RolloutId,
            ) -> Result<Vec<$crate::domain::BatchCounts>, StoreError> {
                batch_counts_in(&self.pool, id).await
            }

            async fn rollout_device_statuses(
                &self,
                id: $crate::domain::RolloutId,
            ) -> Result<std::collections::BTreeMap<DeviceStatus, u64>, StoreError> {
                let rows = sqlx::query(
                    "SELECT d.status AS status, COUNT(*) AS n FROM rollout_members m JOIN devices d ON d.id = m.device_id \
                     WHERE m.rollout_id = $1 GROUP BY d.status",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut out = std::collections::BTreeMap::new();
                for r in &rows {
                    let status: String = get(r, "status")?;
                    let n: i64 = get(r, "n")?;
                    let status = DeviceStatus::parse(&status)
                        .ok_or_else(|| codec::corrupt("device", id, format!("unknown status {status:?}")))?;
                    *out.entry(status).or_insert(0) += n as u64;
                }
                Ok(out)
            }

            async fn rollout_active_operations(
                &self,
                id: $crate::domain::RolloutId,
            ) -> Result<Vec<OperationRecord>, StoreError> {
                let sql = format!(
                    "SELECT o.id, o.device_id, o.kind, o.spec_json, o.force_json, o.status, o.status_json, o.created_ms, o.updated_ms, o.generation \
                     FROM rollout_members m JOIN operations o ON o.id = m.operation_id \
                     WHERE m.rollout_id = $1 AND o.status IN {} \
                     ORDER BY o.id",
                    $crate::store::plans::placeholders(2, OpStatus::ACTIVE.len())
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id.0);
                for st in $crate::store::plans::status_names(&OpStatus::ACTIVE) {
                    q = q.bind(st);
                }
                let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter().map(operation_from_row).collect()
            }

            async fn update_rollout(
                &self,
                id: $crate::domain::RolloutId,
                expected: $crate::domain::RolloutState,
                progress: &$crate::domain::RolloutProgress,
                message: Option<&str>,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE rollouts SET state = $3, current_batch = $4, batch_met_ms = $5, errors_acknowledged = $6, \
                     message = COALESCE($7, message), updated_ms = $8 WHERE id = $1 AND state = $2",
                )
                .bind(id.0)
                .bind(expected.as_str())
                .bind(progress.state.as_str())
                .bind(i64::from(progress.current_batch))
                .bind(progress.batch_met_at.map(|t| t.0))
                .bind(progress.errors_acknowledged as i64)
                .bind(message)
                .bind(now.0)
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 1 {
                    return Ok(());
                }
                let current = self.get_rollout(id).await?;
                Err(StoreError::Conflict {
                    entity: "rollout",
                    key: id.to_string(),
                    message: format!(
                        "is {}, not {}",
                        current.progress.state.as_str(),
                        expected.as_str()
                    ),
                })
            }

            async fn start_rollout_members(
                &self,
                id: $crate::domain::RolloutId,
                batch: u32,
                n: u64,
                now: Timestamp,
            ) -> Result<Vec<OperationRecord>, StoreError> {
                let mut tx = self.begin().await?;
                let ops = start_members_tx(&mut tx, id, batch, n, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(ops)
            }

            async fn set_fleet_policy(&self, fleet: &FleetId, policy: &FleetPolicy, now: Timestamp) -> Result<(), StoreError> {
                write_fleet_policy(&self.pool, fleet, policy, now).await
            }

            async fn update_fleet_policy(
                &self,
                fleet: &FleetId,
                update: &$crate::domain::PolicyUpdate,
                now: Timestamp,
            ) -> Result<FleetPolicy, StoreError> {
                let mut tx = self.begin().await?;
                // The fleet's row lock, held to the commit: updates of one
                // fleet's policy apply one after another, each to what the
                // one before wrote. No row: no such fleet.
                let locked = sqlx::query("UPDATE fleets SET name = name WHERE id = $1 RETURNING id")
                    .bind(fleet.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if locked.is_none() {
                    return Err(StoreError::NotFound { entity: "fleet", key: fleet.to_string() });
                }
                let current = fleet_policy_in(&mut *tx, fleet).await?;
                let next = update.apply(&current);
                write_fleet_policy(&mut *tx, fleet, &next, now).await?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(next)
            }

            async fn fleet_policy(&self, fleet: &FleetId) -> Result<FleetPolicy, StoreError> {
                fleet_policy_in(&self.pool, fleet).await
            }

            async fn create_approval(&self, op: OperationId, now: Timestamp) -> Result<Approval, StoreError> {
                let row = sqlx::query(
                    "INSERT INTO approvals (operation_id, status, created_ms) VALUES ($1, $2, $3) RETURNING id",
                )
                .bind(op.0)
                .bind(ApprovalStatus::Requested.as_str())
                .bind(now.0)
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::on_write("approval", op, "operation"))?;
                Ok(Approval {
                    id: get(&row, "id")?,
                    operation: op,
                    status: ApprovalStatus::Requested,
                    occurrence: None,
                    decided_by: None,
                    message: None,
                })
            }

            async fn latest_approval(&self, op: OperationId) -> Result<Option<Approval>, StoreError> {
                let row = sqlx::query(
                    "SELECT id, operation_id, status, occurrence_start, occurrence_end, decided_by, message \
                     FROM approvals WHERE operation_id = $1 ORDER BY id DESC LIMIT 1",
                )
                .bind(op.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                row.as_ref().map(approval_from_row).transpose()
            }

            async fn get_approval(&self, id: i64) -> Result<Approval, StoreError> {
                let row = sqlx::query(
                    "SELECT id, operation_id, status, occurrence_start, occurrence_end, decided_by, message \
                     FROM approvals WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?
                .ok_or_else(|| StoreError::NotFound { entity: "approval", key: id.to_string() })?;
                approval_from_row(&row)
            }

            async fn list_approvals(&self, status: Option<ApprovalStatus>) -> Result<Vec<Approval>, StoreError> {
                let rows = sqlx::query(
                    "SELECT id, operation_id, status, occurrence_start, occurrence_end, decided_by, message \
                     FROM approvals WHERE ($1 IS NULL OR status = $1) ORDER BY id",
                )
                .bind(status.map(ApprovalStatus::as_str))
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter().map(approval_from_row).collect()
            }

            async fn decide_approval(
                &self,
                id: i64,
                expected: ApprovalStatus,
                decision: &Approval,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let done = sqlx::query(
                    "UPDATE approvals SET status = $2, occurrence_start = $3, occurrence_end = $4, \
                       decided_by = $5, message = $6, decided_ms = $7 \
                     WHERE id = $1 AND status = $8",
                )
                .bind(id)
                .bind(decision.status.as_str())
                .bind(decision.occurrence.map(|o| o.start.0))
                .bind(decision.occurrence.map(|o| o.end.0))
                .bind(decision.decided_by.as_deref())
                .bind(decision.message.as_deref())
                .bind(now.0)
                .bind(expected.as_str())
                .execute(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    // Distinguish a missing approval from one already decided.
                    let current = self.get_approval(id).await?;
                    return Err(StoreError::Conflict {
                        entity: "approval",
                        key: id.to_string(),
                        message: format!("it is {}, not {}", current.status.as_str(), expected.as_str()),
                    });
                }
                Ok(())
            }

            async fn create_window(&self, scope: &WindowScope, rule: &WindowRule, now: Timestamp) -> Result<Window, StoreError> {
                let (kind, key) = scope_columns(scope);
                // The fleet or device must exist, checked in the statement
                // that writes (a tag needs no device yet).
                let (exists, missing) = match scope {
                    WindowScope::Fleet(_) => ("EXISTS (SELECT 1 FROM fleets WHERE id = $2)", "fleet"),
                    WindowScope::Device(_) => ("EXISTS (SELECT 1 FROM devices WHERE id = $2)", "device"),
                    WindowScope::Tag(_) => ("1 = 1", "tag"),
                };
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO maintenance_windows (scope_kind, scope, spec_json, created_ms) \
                     SELECT $1, $2, $3, $4 WHERE {exists} RETURNING id"
                )))
                .bind(kind)
                .bind(&key)
                .bind(codec::rule_to_json(rule))
                .bind(now.0)
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?
                .ok_or_else(|| StoreError::NotFound { entity: missing, key: key.clone() })?;
                Ok(Window { id: get(&row, "id")?, scope: scope.clone(), rule: rule.clone() })
            }

            async fn list_windows(&self) -> Result<Vec<Window>, StoreError> {
                let rows = sqlx::query("SELECT id, scope_kind, scope, spec_json FROM maintenance_windows ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter().map(window_from_row).collect()
            }

            async fn delete_window(&self, id: i64) -> Result<(), StoreError> {
                let done = sqlx::query("DELETE FROM maintenance_windows WHERE id = $1")
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound { entity: "window", key: id.to_string() });
                }
                Ok(())
            }

            async fn windows_for_device(&self, device: &DeviceId) -> Result<Vec<Window>, StoreError> {
                let rows = sqlx::query(
                    "SELECT w.id, w.scope_kind, w.scope, w.spec_json FROM maintenance_windows w, devices d \
                     WHERE d.id = $1 AND ( \
                       (w.scope_kind = 'device' AND w.scope = d.id) \
                       OR (w.scope_kind = 'fleet' AND w.scope = d.fleet) \
                       OR (w.scope_kind = 'tag' AND EXISTS (SELECT 1 FROM device_tags t WHERE t.device_id = d.id AND t.tag = w.scope))) \
                     ORDER BY w.id",
                )
                .bind(device.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter().map(window_from_row).collect()
            }

            async fn device_timeline(
                &self,
                device: &DeviceId,
                limit: u32,
            ) -> Result<Vec<crate::domain::TimelineEntry>, StoreError> {
                use crate::domain::{TimelineEntry, TimelineEvent};
                let limit = i64::from(limit.clamp(1, 1000));
                // Each side bounded by the limit first, then merged newest first;
                // an answer sorts after the intent it answers.
                let rows = sqlx::query(
                    "SELECT entry, seq, kind, body_json, operation_id, at_ms, ack_id FROM ( \
                       SELECT * FROM (SELECT CAST(0 AS BIGINT) AS entry, seq, kind, body_json, operation_id, \
                              created_ms AS at_ms, CAST(0 AS BIGINT) AS ack_id \
                         FROM intents WHERE device_id = $1 ORDER BY seq DESC LIMIT $2) AS sent \
                       UNION ALL \
                       SELECT * FROM (SELECT CAST(1 AS BIGINT) AS entry, a.seq, a.kind, a.body_json, i.operation_id, \
                              a.received_ms AS at_ms, a.id AS ack_id \
                         FROM intent_acks a JOIN intents i ON i.device_id = a.device_id AND i.seq = a.seq \
                        WHERE a.device_id = $1 ORDER BY a.id DESC LIMIT $2) AS acked \
                     ) AS t ORDER BY at_ms DESC, seq DESC, entry DESC, ack_id DESC LIMIT $2",
                )
                .bind(device.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let key = device.as_str();
                        let entry: i64 = get(r, "entry")?;
                        let kind: String = get(r, "kind")?;
                        let body: String = get(r, "body_json")?;
                        let op: Option<i64> = get(r, "operation_id")?;
                        let event = if entry == 0 {
                            TimelineEvent::Sent {
                                kind: IntentKind::parse(&kind).ok_or_else(|| {
                                    codec::corrupt("intent", key, format!("unknown kind {kind:?}"))
                                })?,
                                body,
                            }
                        } else {
                            TimelineEvent::Acked { answer: kind, body }
                        };
                        Ok(TimelineEntry {
                            at: Timestamp(get(r, "at_ms")?),
                            seq: IntentSeq(codec::to_u64("intent", key, get(r, "seq")?)?),
                            operation: op.map(OperationId),
                            event,
                        })
                    })
                    .collect()
            }

            async fn intent_info(
                &self,
                device: &DeviceId,
                seq: IntentSeq,
            ) -> Result<Option<(Option<OperationId>, IntentKind)>, StoreError> {
                let row = sqlx::query("SELECT operation_id, kind FROM intents WHERE device_id = $1 AND seq = $2")
                    .bind(device.as_str())
                    .bind(codec::to_i64("intent sequence", seq.0)?)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                let Some(row) = row else { return Ok(None) };
                let op: Option<i64> = get(&row, "operation_id")?;
                let kind: String = get(&row, "kind")?;
                let kind = IntentKind::parse(&kind)
                    .ok_or_else(|| codec::corrupt("intent", device.as_str(), format!("unknown kind {kind:?}")))?;
                Ok(Some((op.map(OperationId), kind)))
            }

            async fn unacked_intents(&self, device: &DeviceId) -> Result<Vec<StoredIntent>, StoreError> {
                let rows = sqlx::query(
                    "SELECT seq, kind, body_json, operation_id, created_ms, acked_ms FROM intents \
                     WHERE device_id = $1 AND acked_ms IS NULL ORDER BY seq",
                )
                .bind(device.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let key = device.as_str();
                        let kind: String = get(r, "kind")?;
                        let op: Option<i64> = get(r, "operation_id")?;
                        let acked: Option<i64> = get(r, "acked_ms")?;
                        Ok(StoredIntent {
                            device: device.clone(),
                            seq: IntentSeq(codec::to_u64("intent", key, get(r, "seq")?)?),
                            kind: IntentKind::parse(&kind)
                                .ok_or_else(|| codec::corrupt("intent", key, format!("unknown kind {kind:?}")))?,
                            body: get(r, "body_json")?,
                            operation: op.map(OperationId),
                            created: Timestamp(get(r, "created_ms")?),
                            acked: acked.map(Timestamp),
                        })
                    })
                    .collect()
            }

            async fn ack_intent(
                &self,
                device: &DeviceId,
                seq: IntentSeq,
                kind: &str,
                body: &str,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                let seq_i = codec::to_i64("intent sequence", seq.0)?;
                let mut tx = self.begin().await?;
                sqlx::query(
                    "INSERT INTO intent_acks (device_id, seq, kind, body_json, received_ms) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(device.as_str())
                .bind(seq_i)
                .bind(kind)
                .bind(body)
                .bind(now.0)
                .execute(&mut *tx)
                .await
                .map_err(|e| match StoreError::on_write("intent ack", format!("{device}{seq}"), "intent")(e) {
                    StoreError::NotFound { .. } => StoreError::NotFound {
                        entity: "intent",
                        key: format!("{device}{seq}"),
                    },
                    other => other,
                })?;
                sqlx::query("UPDATE intents SET acked_ms = $3 WHERE device_id = $1 AND seq = $2 AND acked_ms IS NULL")
                    .bind(device.as_str())
                    .bind(seq_i)
                    .bind(now.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                Ok(())
            }

            async fn append_audit(&self, entry: &AuditEntry) -> Result<i64, StoreError> {
                let row = sqlx::query(
                    "INSERT INTO audit_log (at_ms, actor, action, subject, reason, details_json, fleet) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                )
                .bind(entry.at.0)
                .bind(&entry.actor)
                .bind(&entry.action)
                .bind(&entry.subject)
                .bind(&entry.reason)
                .bind(&entry.details)
                .bind(entry.fleet.as_ref().map(FleetId::as_str))
                .fetch_one(&self.pool)
                .await
                .map_err(StoreError::from_sqlx)?;
                get(&row, "id")
            }

            async fn list_audit(
                &self,
                filter: &$crate::store::AuditFilter,
            ) -> Result<Vec<(i64, AuditEntry)>, StoreError> {
                let sql = format!(
                    "SELECT id, at_ms, actor, action, subject, reason, details_json, fleet FROM audit_log \
                     WHERE id > $1 \
                       AND ($3 IS NULL OR action = $3) \
                       AND ($4 IS NULL OR subject = $4 OR substr(subject, 1, length($4) + 1) = $4 || ' ') \
                       AND ($5 IS NULL OR fleet = $5){} \
                     ORDER BY id LIMIT $2",
                    within_clause("fleet", filter.within.as_ref(), 6),
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(filter.after)
                    .bind(i64::from(filter.limit.clamp(1, 10_000)))
                    .bind(filter.action.as_deref())
                    .bind(filter.subject.as_deref())
                    .bind(filter.fleet.as_ref().map(FleetId::as_str));
                for f in filter.within.iter().flatten() {
                    q = q.bind(f.as_str());
                }
                let rows = q.fetch_all(&self.pool).await.map_err(StoreError::from_sqlx)?;
                rows.iter()
                    .map(|r| {
                        let id: i64 = get(r, "id")?;
                        let fleet: Option<String> = get(r, "fleet")?;
                        Ok((
                            id,
                            AuditEntry {
                                at: Timestamp(get(r, "at_ms")?),
                                actor: get(r, "actor")?,
                                action: get(r, "action")?,
                                subject: get(r, "subject")?,
                                fleet: fleet
                                    .map(|f| FleetId::new(f).map_err(|e| codec::corrupt("audit entry", id, e)))
                                    .transpose()?,
                                reason: get(r, "reason")?,
                                details: get(r, "details_json")?,
                            },
                        ))
                    })
                    .collect()
            }

            async fn create_token(
                &self,
                token: &$crate::domain::ApiToken,
                token_hash: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO api_tokens (id, name, role, fleets_json, secret_hash, created_by, created_ms, expires_ms, revoked_ms, revoked_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(token.id.as_str())
                .bind(&token.name)
                .bind(token.role.as_str())
                .bind(codec::token_scope_to_json(&token.scope))
                .bind(token_hash)
                .bind(&token.created_by)
                .bind(token.created.0)
                .bind(token.expires.map(|t| t.0))
                .bind(token.revoked.map(|t| t.0))
                .bind(token.revoked_by.as_deref())
                .execute(&self.pool)
                .await
                .map_err(StoreError::on_write("api token", &token.id, "api token"))?;
                Ok(())
            }

            async fn create_token_unless_admin(
                &self,
                token: &$crate::domain::ApiToken,
                token_hash: &str,
                now: Timestamp,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO api_tokens (id, name, role, fleets_json, secret_hash, created_by, created_ms, expires_ms, revoked_ms, revoked_by) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL \
                     WHERE NOT EXISTS (SELECT 1 FROM api_tokens WHERE role = 'admin' AND revoked_ms IS NULL \
                                       AND (expires_ms IS NULL OR expires_ms > $9))",
                )
                .bind(token.id.as_str())
                .bind(&token.name)
                .bind(token.role.as_str())
                .bind(codec::token_scope_to_json(&token.scope))
                .bind(token_hash)
                .bind(&token.created_by)
                .bind(token.created.0)
                .bind(token.expires.map(|t| t.0))
                .bind(now.0)
                .execute(&self.pool)
                .await
                .map_err(StoreError::on_write("api token", &token.id, "api token"))?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_token(
                &self,
                id: &$crate::domain::TokenId,
            ) -> Result<($crate::domain::ApiToken, String), StoreError> {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TOKEN_COLUMNS}, secret_hash FROM api_tokens WHERE id = $1")))
                    .bind(id.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "api token",
                        key: id.to_string(),
                    })?;
                Ok((token_from_row(&row)?, get(&row, "secret_hash")?))
            }

            async fn list_tokens(&self) -> Result<Vec<$crate::domain::ApiToken>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_ms, id")))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                rows.iter().map(token_from_row).collect()
            }

            async fn revoke_token(
                &self,
                id: &$crate::domain::TokenId,
                by: &str,
                now: Timestamp,
            ) -> Result<$crate::domain::ApiToken, StoreError> {
                let mut tx = self.begin().await?;
                let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = $1")))
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "api token",
                        key: id.to_string(),
                    })?;
                let mut token = token_from_row(&row)?;
                if token.revoked.is_some() {
                    return Err(StoreError::Conflict {
                        entity: "api token",
                        key: id.to_string(),
                        message: "it is already revoked".into(),
                    });
                }
                sqlx::query("UPDATE api_tokens SET revoked_ms = $2, revoked_by = $3 WHERE id = $1 AND revoked_ms IS NULL")
                    .bind(id.as_str())
                    .bind(now.0)
                    .bind(by)
                    .execute(&mut *tx)
                    .await
                    .map_err(StoreError::from_sqlx)?;
                tx.commit().await.map_err(StoreError::from_sqlx)?;
                token.revoked = Some(now);
                token.revoked_by = Some(by.to_owned());
                Ok(token)
            }
        }

        const TOKEN_COLUMNS: &str =
            "id, name, role, fleets_json, created_by, created_ms, expires_ms, revoked_ms, revoked_by";

        fn token_from_row(r: &DbRow) -> Result<$crate::domain::ApiToken, StoreError> {
            let id: String = get(r, "id")?;
            let role: String = get(r, "role")?;
            let fleets: String = get(r, "fleets_json")?;
            let expires: Option<i64> = get(r, "expires_ms")?;
            let revoked: Option<i64> = get(r, "revoked_ms")?;
            Ok($crate::domain::ApiToken {
                id: $crate::domain::TokenId::new(&id).map_err(|e| codec::corrupt("api token", &id, e))?,
                name: get(r, "name")?,
                role: $crate::domain::Role::parse(&role)
                    .ok_or_else(|| codec::corrupt("api token", &id, format!("unknown role {role:?}")))?,
                scope: codec::token_scope_from_json(&id, &fleets)?,
                created_by: get(r, "created_by")?,
                created: Timestamp(get(r, "created_ms")?),
                expires: expires.map(Timestamp),
                revoked: revoked.map(Timestamp),
                revoked_by: get(r, "revoked_by")?,
            })
        }

        async fn create_operation_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            device: &DeviceId,
            spec: &OperationSpec,
            force: Option<&Force>,
            now: Timestamp,
        ) -> Result<OperationRecord, StoreError> {
                let (kind, arg) = codec::spec_columns(spec);
                let progress = OpProgress::default();
                if matches!(spec, OperationSpec::ApplyEnv(_)) && force.is_none() {
                    // An env change merges into a pending one about exactly
                    // the same blocks: that one applies the env as stored.
                    let sql = format!(
                        "SELECT {OPERATION_COLUMNS_SQL} FROM operations WHERE device_id = $1 AND kind = $2 \
                         AND spec_json = $3 AND force_json IS NULL AND status IN {} ORDER BY id LIMIT 1",
                        $crate::store::plans::placeholders(4, OpStatus::NOT_STARTED.len())
                    );
                    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(device.as_str())
                        .bind(kind)
                        .bind(&arg);
                    for st in $crate::store::plans::status_names(&OpStatus::NOT_STARTED) {
                        q = q.bind(st);
                    }
                    let pending = q.fetch_optional(&mut **tx).await.map_err(StoreError::from_sqlx)?;
                    if let Some(row) = pending {
                        return operation_from_row(&row);
                    }
                }
                let row = sqlx::query(
                    "INSERT INTO operations (device_id, kind, spec_json, force_json, status, status_json, created_ms, updated_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
                )
                .bind(device.as_str())
                .bind(kind)
                .bind(&arg)
                .bind(codec::force_to_json(force))
                .bind(OpStatus::Pending.as_str())
                .bind(codec::progress_to_json(&progress))
                .bind(now.0)
                .fetch_one(&mut **tx)
                .await
                .map_err(StoreError::on_write("operation", device, "device"))?;
                let id: i64 = get(&row, "id")?;
                Ok(OperationRecord {
                    id: OperationId(id),
                    device: device.clone(),
                    spec: spec.clone(),
                    force: force.cloned(),
                    status: OpStatus::Pending,
                    progress,
                    created: now,
                    updated: now,
                    generation: 0,
                })
        }

        async fn append_intents_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            device: &DeviceId,
            intents: &[NewIntent],
            now: Timestamp,
        ) -> Result<Vec<IntentSeq>, StoreError> {
                let n = intents.len() as i64;
                // The device row is the per-device sequence: bumping it takes
                // the row lock, so concurrent writers for one device queue here.
                let row = sqlx::query("UPDATE devices SET intent_seq = intent_seq + $2 WHERE id = $1 RETURNING intent_seq")
                    .bind(device.as_str())
                    .bind(n)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(StoreError::from_sqlx)?
                    .ok_or_else(|| StoreError::NotFound {
                        entity: "device",
                        key: device.to_string(),
                    })?;
                let last: i64 = get(&row, "intent_seq")?;
                let mut seqs = Vec::with_capacity(intents.len());
                for (i, intent) in intents.iter().enumerate() {
                    let seq = last - n + 1 + i as i64;
                    sqlx::query(
                        "INSERT INTO intents (device_id, seq, kind, body_json, operation_id, created_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(device.as_str())
                    .bind(seq)
                    .bind(intent.kind.as_str())
                    .bind(&intent.body)
                    .bind(intent.operation.map(|o| o.0))
                    .bind(now.0)
                    .execute(&mut **tx)
                    .await
                    .map_err(StoreError::on_write("intent", format!("{device}{seq}"), "operation"))?;
                    seqs.push(IntentSeq(codec::to_u64("intent", device.as_str(), seq)?));
                }
                Ok(seqs)
        }

        const BLOCK_VERSION_COLUMNS: &str =
            "block, version, image_digest, config_json, env_json, depends_on_json, strategy_json";
        const BLOCK_VERSION_SELECT_ONE: &str = "SELECT block, version, image_digest, config_json, env_json, depends_on_json, strategy_json \
             FROM block_versions WHERE block = $1 AND version = $2";
        const BLOCK_VERSION_SELECT_ALL: &str = "SELECT block, version, image_digest, config_json, env_json, depends_on_json, strategy_json \
             FROM block_versions WHERE block = $1";
        const _: &str = BLOCK_VERSION_COLUMNS;

        const OPERATION_COLUMNS_SQL: &str = "id, device_id, kind, spec_json, force_json, status, status_json, created_ms, updated_ms, generation";
        const OPERATION_SELECT_BY_ID: &str = "SELECT id, device_id, kind, spec_json, force_json, status, status_json, created_ms, updated_ms, generation FROM operations WHERE id = $1";
        const OPERATION_SELECT_BY_DEVICE: &str = "SELECT id, device_id, kind, spec_json, force_json, status, status_json, created_ms, updated_ms, generation FROM operations WHERE device_id = $1 ORDER BY id DESC";
        const _: &str = OPERATION_COLUMNS_SQL;

        type DbRow = <$db as sqlx::Database>::Row;

        fn approval_from_row(r: &DbRow) -> Result<Approval, StoreError> {
            let id: i64 = get(r, "id")?;
            let status: String = get(r, "status")?;
            let start: Option<i64> = get(r, "occurrence_start")?;
            let end: Option<i64> = get(r, "occurrence_end")?;
            Ok(Approval {
                id,
                operation: OperationId(get(r, "operation_id")?),
                status: ApprovalStatus::parse(&status)
                    .ok_or_else(|| codec::corrupt("approval", id, format!("unknown status {status:?}")))?,
                occurrence: match (start, end) {
                    (Some(s), Some(e)) => Some(crate::domain::Occurrence { start: Timestamp(s), end: Timestamp(e) }),
                    _ => None,
                },
                decided_by: get(r, "decided_by")?,
                message: get(r, "message")?,
            })
        }

        fn window_from_row(r: &DbRow) -> Result<Window, StoreError> {
            let id: i64 = get(r, "id")?;
            let key = format!("window {id}");
            let kind: String = get(r, "scope_kind")?;
            let scope: String = get(r, "scope")?;
            let spec: String = get(r, "spec_json")?;
            let bad = |e: crate::domain::IdError| codec::corrupt("window", &key, e);
            let scope = match kind.as_str() {
                "fleet" => WindowScope::Fleet(FleetId::new(scope).map_err(bad)?),
                "tag" => WindowScope::Tag(Tag::new(scope).map_err(bad)?),
                "device" => WindowScope::Device(DeviceId::new(scope).map_err(bad)?),
                other => return Err(codec::corrupt("window", &key, format!("unknown scope kind {other:?}"))),
            };
            Ok(Window { id, scope, rule: codec::rule_from_json(&key, &spec)? })
        }

        const ROLLOUT_COLUMNS: &str = "id, fleet, selector_tag, kind, target, strategy_json, seed, state, current_batch, \
            batch_met_ms, errors_acknowledged, devices, skipped, message, created_by, created_ms, updated_ms";

        fn rollout_from_row(r: &DbRow) -> Result<$crate::domain::Rollout, StoreError> {
            use $crate::domain::{RolloutId, RolloutProgress, RolloutState, RolloutTarget};
            let id: i64 = get(r, "id")?;
            let key = id.to_string();
            let bad = |e: $crate::domain::IdError| codec::corrupt("rollout", &key, e);
            let fleet: String = get(r, "fleet")?;
            let selector: Option<String> = get(r, "selector_tag")?;
            let kind: String = get(r, "kind")?;
            let target: String = get(r, "target")?;
            let state: String = get(r, "state")?;
            let current_batch: i64 = get(r, "current_batch")?;
            let errors: i64 = get(r, "errors_acknowledged")?;
            let devices: i64 = get(r, "devices")?;
            let skipped: i64 = get(r, "skipped")?;
            let seed: i64 = get(r, "seed")?;
            let strategy: String = get(r, "strategy_json")?;
            let batch_met: Option<i64> = get(r, "batch_met_ms")?;
            Ok($crate::domain::Rollout {
                id: RolloutId(id),
                fleet: FleetId::new(fleet).map_err(bad)?,
                selector: selector.map(Tag::new).transpose().map_err(bad)?,
                target: match kind.as_str() {
                    "release" => RolloutTarget::Release(ReleaseId::new(target).map_err(bad)?),
                    "os" => RolloutTarget::OsVersion(target),
                    other => return Err(codec::corrupt("rollout", &key, format!("unknown kind {other:?}"))),
                },
                strategy: codec::strategy_from_json(&key, &strategy)?,
                seed: seed as u64,
                progress: RolloutProgress {
                    state: RolloutState::parse(&state)
                        .ok_or_else(|| codec::corrupt("rollout", &key, format!("unknown state {state:?}")))?,
                    current_batch: u32::try_from(current_batch)
                        .map_err(|_| codec::corrupt("rollout", &key, "current_batch out of range"))?,
                    batch_met_at: batch_met.map(Timestamp),
                    errors_acknowledged: errors as u64,
                },
                devices: devices as u64,
                skipped: skipped as u64,
                message: get(r, "message")?,
                created_by: get(r, "created_by")?,
                created: Timestamp(get(r, "created_ms")?),
                updated: Timestamp(get(r, "updated_ms")?),
            })
        }

        fn operation_from_row(r: &DbRow) -> Result<OperationRecord, StoreError> {
            let id: i64 = get(r, "id")?;
            let key = format!("op-{id}");
            let device: String = get(r, "device_id")?;
            let kind: String = get(r, "kind")?;
            let arg: String = get(r, "spec_json")?;
            let force: Option<String> = get(r, "force_json")?;
            let status: String = get(r, "status")?;
            let progress: String = get(r, "status_json")?;
            Ok(OperationRecord {
                id: OperationId(id),
                device: DeviceId::new(device).map_err(|e| codec::corrupt("operation", &key, e))?,
                spec: codec::spec_from_columns(&key, &kind, &arg)?,
                force: codec::force_from_json(&key, force.as_deref())?,
                status: OpStatus::parse(&status)
                    .ok_or_else(|| codec::corrupt("operation", &key, format!("unknown status {status:?}")))?,
                progress: codec::progress_from_json(&key, &progress)?,
                created: Timestamp(get(r, "created_ms")?),
                updated: Timestamp(get(r, "updated_ms")?),
                generation: codec::to_u64("operation", &key, get(r, "generation")?)?,
            })
        }

        /// Starts up to `n` queued members of `batch` (their operations
        /// created) inside `tx`, unless the rollout is no longer running.
        async fn start_members_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            id: $crate::domain::RolloutId,
            batch: u32,
            n: u64,
            now: Timestamp,
        ) -> Result<Vec<OperationRecord>, StoreError> {
                // Takes the rollout's row lock, and starts nothing unless it is
                // still running (a pause or abort in between wins).
                let row = sqlx::query(
                    "UPDATE rollouts SET updated_ms = $2 WHERE id = $1 AND state = 'running' RETURNING kind, target",
                )
                .bind(id.0)
                .bind(now.0)
                .fetch_optional(&mut **tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let Some(row) = row else {
                    return Ok(Vec::new());
                };
                let kind: String = get(&row, "kind")?;
                let target: String = get(&row, "target")?;
                let spec = match kind.as_str() {
                    "release" => OperationSpec::AssignRelease(
                        ReleaseId::new(&target).map_err(|e| codec::corrupt("rollout", id, e))?,
                    ),
                    "os" => OperationSpec::OsUpdate(target),
                    other => return Err(codec::corrupt("rollout", id, format!("unknown kind {other:?}"))),
                };
                let rows = sqlx::query(
                    "SELECT device_id FROM rollout_members WHERE rollout_id = $1 AND batch = $2 AND operation_id IS NULL \
                     ORDER BY position LIMIT $3",
                )
                .bind(id.0)
                .bind(i64::from(batch))
                .bind(i64::try_from(n).unwrap_or(i64::MAX))
                .fetch_all(&mut **tx)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut ops = Vec::with_capacity(rows.len());
                for r in &rows {
                    let device: String = get(r, "device_id")?;
                    let device = DeviceId::new(&device).map_err(|e| codec::corrupt("rollout member", id, e))?;
                    let op = create_operation_tx(tx, &device, &spec, None, now).await?;
                    sqlx::query("UPDATE rollout_members SET operation_id = $3 WHERE rollout_id = $1 AND device_id = $2")
                        .bind(id.0)
                        .bind(device.as_str())
                        .bind(op.id.0)
                        .execute(&mut **tx)
                        .await
                        .map_err(StoreError::from_sqlx)?;
                    ops.push(op);
                }
                Ok(ops)
        }

        /// Members' states per batch, read through `ex`.
        async fn batch_counts_in<'e, E: sqlx::Executor<'e, Database = $db>>(
            ex: E,
            id: $crate::domain::RolloutId,
        ) -> Result<Vec<$crate::domain::BatchCounts>, StoreError> {
            use $crate::domain::{BatchCounts, MemberState};
            let rows = sqlx::query(
                    "SELECT m.batch AS batch, o.status AS status, COUNT(*) AS n FROM rollout_members m \
                     LEFT JOIN operations o ON o.id = m.operation_id \
                     WHERE m.rollout_id = $1 GROUP BY m.batch, o.status ORDER BY m.batch",
                )
                .bind(id.0)
                .fetch_all(ex)
                .await
                .map_err(StoreError::from_sqlx)?;
                let mut out: Vec<BatchCounts> = Vec::new();
                for r in &rows {
                    let batch: i64 = get(r, "batch")?;
                    let status: Option<String> = get(r, "status")?;
                    let n: i64 = get(r, "n")?;
                    let state = match status {
                        None => MemberState::Queued,
                        Some(s) => MemberState::of(OpStatus::parse(&s).ok_or_else(|| {
                            codec::corrupt("rollout", id, format!("member operation has unknown status {s:?}"))
                        })?),
                    };
                    let batch = usize::try_from(batch)
                        .map_err(|_| codec::corrupt("rollout", id, format!("negative batch {batch}")))?;
                    if out.len() <= batch {
                        out.resize(batch + 1, BatchCounts::default());
                    }
                    out[batch].add(state, n as u64);
                }
                Ok(out)
            }

        /// A rollout, read through `ex`.
        async fn rollout_in<'e, E: sqlx::Executor<'e, Database = $db>>(
            ex: E,
            id: $crate::domain::RolloutId,
        ) -> Result<$crate::domain::Rollout, StoreError> {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = $1")))
                .bind(id.0)
                .fetch_optional(ex)
                .await
                .map_err(StoreError::from_sqlx)?
                .ok_or_else(|| StoreError::NotFound { entity: "rollout", key: id.to_string() })?;
            rollout_from_row(&row)
        }

        async fn write_fleet_policy<'e, E: sqlx::Executor<'e, Database = $db>>(
            conn: E,
            fleet: &FleetId,
            policy: &FleetPolicy,
            now: Timestamp,
        ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO fleet_policies (fleet, needs_window_json, max_deferral_ms, on_deferral_expiry, updated_ms, needs_approval_json, release_mode, on_missed_occurrence) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (fleet) DO UPDATE SET needs_window_json = excluded.needs_window_json, \
                       needs_approval_json = excluded.needs_approval_json, release_mode = excluded.release_mode, \
                       on_missed_occurrence = excluded.on_missed_occurrence, \
                       max_deferral_ms = excluded.max_deferral_ms, on_deferral_expiry = excluded.on_deferral_expiry, \
                       updated_ms = excluded.updated_ms",
                )
                .bind(fleet.as_str())
                .bind(codec::kinds_to_json(&policy.needs_window))
                .bind(policy.max_deferral_ms)
                .bind(policy.on_deferral_expiry.as_str())
                .bind(now.0)
                .bind(codec::kinds_to_json(&policy.needs_approval))
                .bind(if policy.partial_releases { "partial" } else { "atomic" })
                .bind(if policy.missed_moves_to_next { "next" } else { "ask" })
                .execute(conn)
                .await
                .map_err(StoreError::on_write("fleet policy", fleet, "fleet"))?;
                Ok(())
            }

        async fn fleet_policy_in<'e, E: sqlx::Executor<'e, Database = $db>>(
            conn: E,
            fleet: &FleetId,
        ) -> Result<FleetPolicy, StoreError> {
                let row = sqlx::query(
                    "SELECT needs_window_json, needs_approval_json, max_deferral_ms, on_deferral_expiry, release_mode, on_missed_occurrence FROM fleet_policies WHERE fleet = $1",
                )
                .bind(fleet.as_str())
                .fetch_optional(conn)
                .await
                .map_err(StoreError::from_sqlx)?;
                let Some(r) = row else {
                    return Ok(FleetPolicy::default());
                };
                let json: String = get(&r, "needs_window_json")?;
                let max: Option<i64> = get(&r, "max_deferral_ms")?;
                let expiry: Option<String> = get(&r, "on_deferral_expiry")?;
                let on_deferral_expiry = match expiry {
                    None => crate::domain::DeferralExpiry::Notify,
                    Some(e) => crate::domain::DeferralExpiry::parse(&e).ok_or_else(|| {
                        codec::corrupt("fleet policy", fleet.as_str(), format!("unknown deferral expiry {e:?}"))
                    })?,
                };
                let approval: Option<String> = get(&r, "needs_approval_json")?;
                let mode: Option<String> = get(&r, "release_mode")?;
                let missed: Option<String> = get(&r, "on_missed_occurrence")?;
                Ok(FleetPolicy {
                    needs_window: codec::kinds_from_json(fleet.as_str(), &json)?,
                    needs_approval: match approval {
                        Some(j) => codec::kinds_from_json(fleet.as_str(), &j)?,
                        None => FleetPolicy::default().needs_approval,
                    },
                    max_deferral_ms: max.unwrap_or(FleetPolicy::DEFAULT_MAX_DEFERRAL_MS),
                    partial_releases: mode.as_deref() == Some("partial"),
                    missed_moves_to_next: missed.as_deref() == Some("next"),
                    on_deferral_expiry,
                })
            }

        async fn append_audit_tx(
            tx: &mut sqlx::Transaction<'static, $db>,
            entry: &AuditEntry,
        ) -> Result<i64, StoreError> {
            let row = sqlx::query(
                "INSERT INTO audit_log (at_ms, actor, action, subject, reason, details_json, fleet) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(entry.at.0)
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.subject)
            .bind(&entry.reason)
            .bind(&entry.details)
            .bind(entry.fleet.as_ref().map(|f| f.as_str()))
            .fetch_one(&mut **tx)
            .await
            .map_err(StoreError::from_sqlx)?;
            get(&row, "id")
        }

        fn get<'r, T>(row: &'r DbRow, col: &str) -> Result<T, StoreError>
        where
            T: sqlx::Decode<'r, $db> + sqlx::Type<$db>,
        {
            use sqlx::Row as _;
            row.try_get(col).map_err(StoreError::from_sqlx)
        }

        fn fleet_from_row(r: &DbRow) -> Result<Fleet, StoreError> {
            let id: String = get(r, "id")?;
            Ok(Fleet {
                id: FleetId::new(&id).map_err(|e| codec::corrupt("fleet", &id, e))?,
                name: get(r, "name")?,
                created: Timestamp(get(r, "created_ms")?),
            })
        }

        fn block_version_from_row(r: &DbRow) -> Result<BlockVersion, StoreError> {
            codec::block_version_from_row(codec::BlockVersionRow {
                block: get(r, "block")?,
                version: get(r, "version")?,
                image_digest: get(r, "image_digest")?,
                columns: codec::BlockVersionColumns {
                    config: get(r, "config_json")?,
                    env: get(r, "env_json")?,
                    depends_on: get(r, "depends_on_json")?,
                    strategy: get(r, "strategy_json")?,
                },
            })
        }

        fn device_from_row(r: &DbRow) -> Result<DeviceRecord, StoreError> {
            let id: String = get(r, "id")?;
            let fleet: String = get(r, "fleet")?;
            let status: String = get(r, "status")?;
            Ok(DeviceRecord {
                id: DeviceId::new(&id).map_err(|e| codec::corrupt("device", &id, e))?,
                fleet: FleetId::new(fleet).map_err(|e| codec::corrupt("device", &id, e))?,
                tags: Default::default(),
                status: DeviceStatus::parse(&status)
                    .ok_or_else(|| codec::corrupt("device", &id, format!("unknown status {status:?}")))?,
                credential_revoked: get(r, "credential_revoked")?,
                created: Timestamp(get(r, "created_ms")?),
            })
        }

        fn tag_from_row(r: &DbRow) -> Result<(DeviceId, Tag), StoreError> {
            let d: String = get(r, "device_id")?;
            let t: String = get(r, "tag")?;
            Ok((
                DeviceId::new(&d).map_err(|e| codec::corrupt("device tag", &d, e))?,
                Tag::new(t).map_err(|e| codec::corrupt("device tag", &d, e))?,
            ))
        }

        fn lock_from_row(r: &DbRow, key: &str) -> Result<LockState, StoreError> {
            Ok(LockState {
                held: get(r, "held")?,
                generation: Generation(codec::to_u64("lock", key, get(r, "generation")?)?),
                since: Timestamp(get(r, "since_ms")?),
            })
        }

        async fn ensure_owner<'c, E>(conn: E, owner: &EnvOwner) -> Result<(), StoreError>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let (sql, entity) = match owner {
                EnvOwner::Fleet(_) => ("SELECT 1 FROM fleets WHERE id = $1", "fleet"),
                EnvOwner::Device(_) => ("SELECT 1 FROM devices WHERE id = $1", "device"),
            };
            let found = sqlx::query(sql)
                .bind(owner.key())
                .fetch_optional(conn)
                .await
                .map_err(StoreError::from_sqlx)?;
            match found {
                Some(_) => Ok(()),
                None => Err(StoreError::NotFound {
                    entity,
                    key: owner.key().to_owned(),
                }),
            }
        }
    };
}

pub(crate) use impl_store;

use super::Page;

/// (scope_kind, scope) columns of a window scope.
pub(crate) fn scope_columns(scope: &crate::domain::WindowScope) -> (&'static str, String) {
    use crate::domain::WindowScope;
    match scope {
        WindowScope::Fleet(f) => ("fleet", f.to_string()),
        WindowScope::Tag(t) => ("tag", t.to_string()),
        WindowScope::Device(d) => ("device", d.to_string()),
    }
}

/// Stored block keys for a scope: `""` for device-wide, else one per block.
pub(crate) fn scope_blocks(scope: &crate::domain::EnvScope) -> Vec<&str> {
    match scope {
        crate::domain::EnvScope::Device => vec![""],
        crate::domain::EnvScope::Blocks(bs) => bs.iter().map(|b| b.as_str()).collect(),
    }
}

/// ` AND <column> IN ($first, $first+1, ...)`, one placeholder per fleet
/// of a scope (bound by the caller in order); nothing for `None`, and a
/// clause that matches nothing for an empty set.
pub(crate) fn within_clause(
    column: &str,
    within: Option<&std::collections::BTreeSet<crate::domain::FleetId>>,
    first: usize,
) -> String {
    match within {
        None => String::new(),
        Some(set) if set.is_empty() => " AND 1 = 0".to_owned(),
        Some(set) => {
            let params: Vec<String> = (first..first + set.len())
                .map(|n| format!("${n}"))
                .collect();
            format!(" AND {column} IN ({})", params.join(", "))
        }
    }
}

/// Trims a result fetched with `limit + 1` rows into a page and its token.
pub(crate) fn paginate<T>(items: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(key) } else { None };
    Page {
        items: std::mem::take(items),
        next,
    }
}
