//! `lockstep debug ingest-load`: drives the real ingest path with synthetic
//! lock reports and prints each acknowledgement. Used to measure ingest by
//! hand and by the crash test, which kills the process mid-stream and checks
//! that nothing acknowledged was lost.

use std::io::Write as _;

use crate::background::ingest::{IngestConfig, IngestError, Ingestor};
use crate::clock;
use crate::domain::{
    BlockName, DeviceId, DeviceRecord, DeviceStatus, Fleet, FleetId, Generation, LockReport,
    LockState,
};
use crate::store::{Store, StoreError};

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub fleet: FleetId,
    pub devices: usize,
    pub blocks: usize,
    pub rounds: u64,
    /// Devices per submission.
    pub chunk: usize,
    /// Concurrent submitters.
    pub writers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("setting up devices: {0}")]
    Setup(#[source] StoreError),
    #[error("ingest failed: {0}")]
    Ingest(#[source] IngestError),
    #[error("invalid load spec: {0}")]
    Spec(String),
}

fn device_id(i: usize) -> Result<DeviceId, LoadError> {
    DeviceId::new(format!("load-{i:07}")).map_err(|e| LoadError::Spec(e.to_string()))
}

fn block_name(i: usize) -> Result<BlockName, LoadError> {
    BlockName::new(format!("b{i:02}")).map_err(|e| LoadError::Spec(e.to_string()))
}

/// Registers the fleet and devices that are missing (idempotent).
pub async fn ensure_devices<S: Store>(store: &S, spec: &LoadSpec) -> Result<(), LoadError> {
    let now = clock::now();
    match store
        .create_fleet(&Fleet {
            id: spec.fleet.clone(),
            name: "load".into(),
            created: now,
        })
        .await
    {
        Ok(()) | Err(StoreError::AlreadyExists { .. }) => {}
        Err(e) => return Err(LoadError::Setup(e)),
    }
    for i in 0..spec.devices {
        let record = DeviceRecord {
            id: device_id(i)?,
            fleet: spec.fleet.clone(),
            tags: Default::default(),
            status: DeviceStatus::Unknown,
            credential_revoked: false,
            created: now,
        };
        match store.register_device(&record, "load-generator").await {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(LoadError::Setup(e)),
        }
    }
    Ok(())
}

/// Sends `rounds` generations of reports for every (device, block), printing
/// `acked g=<generation> devices=<first>..<last>` (inclusive indices) on
/// stdout after each submission commits.
pub async fn run<S: Store>(store: S, spec: LoadSpec) -> Result<(), LoadError> {
    if spec.chunk == 0 || spec.writers == 0 || spec.blocks == 0 {
        return Err(LoadError::Spec(
            "chunk, writers and blocks must be positive".into(),
        ));
    }
    ensure_devices(&store, &spec).await?;
    let (ingestor, task) = Ingestor::spawn(store, IngestConfig::default());
    for g in 1..=spec.rounds {
        let chunks: Vec<(usize, usize)> = (0..spec.devices)
            .step_by(spec.chunk)
            .map(|first| (first, (first + spec.chunk).min(spec.devices) - 1))
            .collect();
        let mut lanes: Vec<Vec<(usize, usize)>> = vec![Vec::new(); spec.writers];
        for (i, c) in chunks.into_iter().enumerate() {
            lanes[i % spec.writers].push(c);
        }
        let mut joins = Vec::new();
        for lane in lanes {
            let ing = ingestor.clone();
            let blocks = spec.blocks;
            joins.push(tokio::spawn(async move {
                for (first, last) in lane {
                    let mut reports = Vec::with_capacity((last - first + 1) * blocks);
                    for d in first..=last {
                        for b in 0..blocks {
                            reports.push(LockReport {
                                device: device_id(d)?,
                                block: block_name(b)?,
                                state: LockState {
                                    held: g % 2 == 1,
                                    generation: Generation(g),
                                    since: clock::now(),
                                },
                            });
                        }
                    }
                    ing.submit(reports).await.map_err(LoadError::Ingest)?;
                    let mut out = std::io::stdout().lock();
                    // The line is the acknowledgement: write it whole, then flush.
                    let _ = writeln!(out, "acked g={g} devices={first}..{last}");
                    let _ = out.flush();
                }
                Ok::<(), LoadError>(())
            }));
        }
        for j in joins {
            j.await
                .map_err(|e| LoadError::Spec(format!("writer task failed: {e}")))??;
        }
    }
    drop(ingestor);
    let _ = task.await;
    Ok(())
}
