//! The lock-report ingest path: callers (agent streams) submit reports and
//! wait; one task gathers submissions into batches (up to `max_batch` reports
//! or `max_wait`, whichever comes first) and commits each batch in one store
//! transaction — group commit. A submission is acknowledged only after its
//! batch has committed, so an acknowledged report survives a crash. The
//! queue is bounded: when the database is slow, submitters wait. A batch that
//! fails (for anything but an unavailable database) is committed again one
//! submission at a time: one device's bad report never fails another's.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::clock;
use crate::domain::{LockReport, NewEvent};
use crate::store::Store;
use crate::telemetry::Metrics;

/// Why a submission was not committed. Lock reports are idempotent, so the
/// caller may simply resend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("the ingest task has stopped")]
    Closed,
    #[error("committing lock reports failed: {message}")]
    Store { message: String, unavailable: bool },
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Most reports per transaction.
    pub max_batch: usize,
    /// Longest a report waits for others to share its transaction. Zero
    /// (the default): none — a batch is what queued up while the previous
    /// transaction committed, so an idle server commits a report at once and
    /// a busy one still shares each commit among many.
    pub max_wait: Duration,
    /// Most submissions queued before submitters wait.
    pub queue: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_batch: 2_000,
            max_wait: Duration::ZERO,
            queue: 1_024,
        }
    }
}

struct Submission {
    reports: Vec<LockReport>,
    /// Logged with the reports (a lock changed hands).
    events: Vec<NewEvent>,
    done: oneshot::Sender<Result<(), IngestError>>,
}

/// A handle for submitting lock reports. Cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Submission>,
}

impl Ingestor {
    /// Starts the batching task. It ends when every `Ingestor` is dropped.
    pub fn spawn<S: Store>(store: S, config: IngestConfig) -> (Self, JoinHandle<()>) {
        Self::spawn_with_metrics(store, config, Metrics::default())
    }

    /// As [`Ingestor::spawn`], recording each batch's size in `metrics`.
    pub fn spawn_with_metrics<S: Store>(
        store: S,
        config: IngestConfig,
        metrics: Metrics,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let task = tokio::spawn(run(store, config, rx, metrics));
        (Self { tx }, task)
    }

    /// Submits reports and waits until they are committed (or dropped as
    /// stale by the fence, which is also final).
    pub async fn submit(&self, reports: Vec<LockReport>) -> Result<(), IngestError> {
        self.submit_logged(reports, Vec::new()).await
    }

    /// As [`Ingestor::submit`], with events committed in the same batch.
    pub async fn submit_logged(
        &self,
        reports: Vec<LockReport>,
        events: Vec<NewEvent>,
    ) -> Result<(), IngestError> {
        if reports.is_empty() {
            return Ok(());
        }
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Submission {
                reports,
                events,
                done,
            })
            .await
            .map_err(|_| IngestError::Closed)?;
        wait.await.map_err(|_| IngestError::Closed)?
    }
}

/// One batch: every submission's reports and events side by side (moved,
/// not copied), and where each submission's part is.
#[derive(Default)]
struct Batch {
    reports: Vec<LockReport>,
    events: Vec<NewEvent>,
    parts: Vec<Part>,
}

struct Part {
    reports: std::ops::Range<usize>,
    events: std::ops::Range<usize>,
    done: oneshot::Sender<Result<(), IngestError>>,
}

impl Batch {
    fn push(&mut self, s: Submission) {
        let (r0, e0) = (self.reports.len(), self.events.len());
        self.reports.extend(s.reports);
        self.events.extend(s.events);
        self.parts.push(Part {
            reports: r0..self.reports.len(),
            events: e0..self.events.len(),
            done: s.done,
        });
    }
}

async fn run<S: Store>(
    store: S,
    config: IngestConfig,
    mut rx: mpsc::Receiver<Submission>,
    metrics: Metrics,
) {
    while let Some(first) = rx.recv().await {
        // Gather.
        let mut batch = Batch::default();
        batch.push(first);
        // What queued up while the previous batch committed joins at once;
        // with a `max_wait`, later arrivals may join until it passes.
        while batch.reports.len() < config.max_batch {
            match rx.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + config.max_wait;
        while !config.max_wait.is_zero() && batch.reports.len() < config.max_batch {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        commit(&store, batch, &metrics).await;
    }
}

/// Commits a batch in one transaction and answers every submitter. A batch
/// that fails for anything but an unavailable database is committed again
/// submission by submission, so only the offender's submitter gets the
/// error and every other report is committed (reports are validated before
/// they are submitted; this is the safety net).
async fn commit<S: Store>(store: &S, batch: Batch, metrics: &Metrics) {
    metrics.ingest_batch(batch.reports.len());
    let result = commit_one(store, &batch.reports, &batch.events).await;
    let isolate = batch.parts.len() > 1
        && matches!(
            result,
            Err(IngestError::Store {
                unavailable: false,
                ..
            })
        );
    if !isolate {
        for part in batch.parts {
            // A submitter that gave up no longer needs the answer.
            let _ = part.done.send(result.clone());
        }
        return;
    }
    tracing::warn!(
        submissions = batch.parts.len(),
        "a lock report batch failed; committing its submissions one by one"
    );
    for part in batch.parts {
        let reports = &batch.reports[part.reports];
        metrics.ingest_batch(reports.len());
        let result = commit_one(store, reports, &batch.events[part.events]).await;
        let _ = part.done.send(result);
    }
}

async fn commit_one<S: Store>(
    store: &S,
    reports: &[LockReport],
    events: &[NewEvent],
) -> Result<(), IngestError> {
    store
        .ingest_lock_reports_logged(reports, events, clock::now())
        .await
        .map(|outcome| {
            tracing::debug!(
                reports = reports.len(),
                applied = outcome.applied,
                dropped = outcome.dropped,
                "lock reports committed"
            );
        })
        .map_err(|e| {
            tracing::warn!(error = %e, reports = reports.len(), "lock report batch failed");
            IngestError::Store {
                unavailable: e.is_unavailable(),
                message: e.to_string(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        BlockName, DeviceId, DeviceRecord, DeviceStatus, Fleet, FleetId, Generation, LockState,
        Timestamp,
    };

    /// A store with fleet `f` and devices `d0`…`d{n-1}`.
    async fn store_with_devices(n: usize) -> (crate::store::SqliteStore, tempfile::TempDir) {
        let (store, dir) = crate::testkit::sqlite_store().await;
        store
            .create_fleet(&Fleet {
                id: FleetId::new("f").unwrap(),
                name: String::new(),
                created: Timestamp(0),
            })
            .await
            .unwrap();
        for d in 0..n {
            store
                .register_device(
                    &DeviceRecord {
                        id: DeviceId::new(format!("d{d}")).unwrap(),
                        fleet: FleetId::new("f").unwrap(),
                        tags: Default::default(),
                        status: DeviceStatus::Unknown,
                        credential_revoked: false,
                        created: Timestamp(0),
                    },
                    "h",
                )
                .await
                .unwrap();
        }
        (store, dir)
    }

    #[tokio::test]
    async fn concurrent_submissions_share_batches_and_are_all_committed() {
        let (store, _dir) = store_with_devices(20).await;
        let (ingestor, task) = Ingestor::spawn(
            store.clone(),
            IngestConfig {
                max_batch: 7,
                max_wait: Duration::from_millis(5),
                queue: 4,
            },
        );
        let mut joins = Vec::new();
        for d in 0..20 {
            let ing = ingestor.clone();
            joins.push(tokio::spawn(async move {
                for g in 1..=3u64 {
                    ing.submit(vec![LockReport {
                        device: DeviceId::new(format!("d{d}")).unwrap(),
                        block: BlockName::new("a").unwrap(),
                        state: LockState {
                            held: g == 3,
                            generation: Generation(g),
                            since: Timestamp(0),
                        },
                    }])
                    .await
                    .unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        for d in 0..20 {
            let locks = store
                .device_locks(&DeviceId::new(format!("d{d}")).unwrap())
                .await
                .unwrap();
            let a = locks[&BlockName::new("a").unwrap()];
            assert_eq!((a.held, a.generation), (true, Generation(3)));
        }
        drop(ingestor);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn batch_sizes_are_recorded_for_every_transaction() {
        use crate::telemetry::{sample, scraped_metrics};
        let (store, _dir) = crate::testkit::sqlite_store().await;
        let (metrics, scrape, _provider) = scraped_metrics();
        let (ingestor, task) =
            Ingestor::spawn_with_metrics(store.clone(), IngestConfig::default(), metrics);
        let report = |block: &str| LockReport {
            device: DeviceId::new("unknown").unwrap(),
            block: BlockName::new(block).unwrap(),
            state: LockState::UNREPORTED,
        };
        ingestor
            .submit(vec![report("a"), report("b"), report("c")])
            .await
            .unwrap();
        ingestor.submit(vec![report("a")]).await.unwrap();
        drop(ingestor);
        task.await.unwrap();
        let text = scrape.render();
        assert_eq!(
            sample(&text, "lockstep_ingest_batch_size_count", &[]),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "lockstep_ingest_batch_size_sum", &[]),
            Some(4.0)
        );
    }

    #[tokio::test]
    async fn one_bad_report_in_a_batch_fails_only_its_submitter() {
        let (store, _dir) = store_with_devices(6).await;
        // A long wait, so every submission shares the first batch.
        use crate::telemetry::{sample, scraped_metrics};
        let (metrics, scrape, _provider) = scraped_metrics();
        let config = IngestConfig {
            max_batch: 100,
            max_wait: Duration::from_millis(300),
            queue: 16,
        };
        let (ingestor, task) = Ingestor::spawn_with_metrics(store.clone(), config.clone(), metrics);
        let report = |d: usize, g: u64| LockReport {
            device: DeviceId::new(format!("d{d}")).unwrap(),
            block: BlockName::new("a").unwrap(),
            state: LockState {
                held: true,
                generation: Generation(g),
                since: Timestamp(1),
            },
        };
        let mut joins = Vec::new();
        for d in 0..6 {
            let ingestor = ingestor.clone();
            // d3 slipped past validation with a generation no database holds.
            let g = if d == 3 { u64::MAX } else { 5 };
            joins.push(tokio::spawn(async move {
                ingestor.submit(vec![report(d, g)]).await
            }));
        }
        for (d, j) in joins.into_iter().enumerate() {
            let result = j.await.unwrap();
            assert_eq!(result.is_err(), d == 3, "d{d}: {result:?}");
        }
        for d in [0usize, 1, 2, 4, 5] {
            let locks = store
                .device_locks(&DeviceId::new(format!("d{d}")).unwrap())
                .await
                .unwrap();
            let a = &locks[&BlockName::new("a").unwrap()];
            assert_eq!(a.generation, Generation(5), "d{d}");
        }
        // The shared batch, then each submission alone.
        drop(ingestor);
        task.await.unwrap();
        let text = scrape.render();
        assert_eq!(
            sample(&text, "lockstep_ingest_batch_size_count", &[]),
            Some(7.0)
        );

        // Good submissions sharing a batch commit once; a lone bad one is
        // not committed a second time.
        let (metrics, scrape, _provider) = scraped_metrics();
        let (ingestor, task) = Ingestor::spawn_with_metrics(store.clone(), config, metrics);
        let mut joins = Vec::new();
        for d in [0usize, 1, 2] {
            let ingestor = ingestor.clone();
            joins.push(tokio::spawn(async move {
                ingestor.submit(vec![report(d, 6)]).await
            }));
        }
        for j in joins {
            j.await.unwrap().unwrap();
        }
        assert!(ingestor.submit(vec![report(3, u64::MAX)]).await.is_err());
        drop(ingestor);
        task.await.unwrap();
        let text = scrape.render();
        assert_eq!(
            sample(&text, "lockstep_ingest_batch_size_count", &[]),
            Some(2.0),
            "one shared batch, one lone bad one: {text}"
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_reported_to_every_submitter() {
        let (store, _dir) = crate::testkit::sqlite_store().await;
        let (ingestor, _task) = Ingestor::spawn(store.clone(), IngestConfig::default());
        store.pool().close().await;
        let err = ingestor
            .submit(vec![LockReport {
                device: DeviceId::new("d").unwrap(),
                block: BlockName::new("a").unwrap(),
                state: LockState::UNREPORTED,
            }])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::Store {
                    unavailable: true,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
