//! Live events for dashboards and customers: what just happened to which
//! device's operation (approval requested, blocked by a lock, deferred,
//! waiting for a window, applying, applied, failed, overdue, time-forced,
//! cancelled), to the device itself (a lock changed, its agent came online
//! or went offline) and to rollouts.
//!
//! The durable event log in the database is the source: every event is
//! appended in the transaction that causes it, on whichever replica. One
//! tail task per replica ([`run_tail`]) reads the log in order — woken by
//! this replica's own commits ([`Events::appended`]) and by other replicas'
//! notifications — and fans it out on an in-process broadcast. [`Watch`] is
//! the one filter (by fleet or device, within a token's scope) every watcher
//! goes through; it resumes from a cursor (`after` a sequence) by reading
//! the log, and a watcher that falls behind the broadcast re-reads the log
//! instead of losing events.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};

use crate::domain::{DeviceId, EventBody, FleetId, LoggedEvent, OperationId, RolloutId, Timestamp};
use crate::store::Store;

pub use crate::domain::EventKind;

/// Something that happened to a device or one of its operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its place in the event log: resume after it.
    pub seq: u64,
    pub at: Timestamp,
    pub fleet: FleetId,
    pub device: DeviceId,
    pub operation: Option<OperationId>,
    pub kind: EventKind,
}

/// Something happened to a rollout (a batch started, it soaked, paused,
/// resumed, aborted, completed): watchers re-read its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNotice {
    pub seq: u64,
    pub at: Timestamp,
    pub rollout: RolloutId,
    /// The rollout's fleet: who may be told (a token's scope, a page's
    /// fleet filter).
    pub fleet: FleetId,
    /// batch_started, soaking, paused, resumed, aborted, completed,
    /// superseded, devices_started, created.
    pub kind: String,
    pub message: String,
}

/// What the log holds, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged {
    Device(Event),
    Rollout(RolloutNotice),
}

impl Logged {
    /// The watcher's view of a log entry; `None` for one that names neither
    /// a device nor a rollout (never written).
    pub fn from_log(e: LoggedEvent) -> Option<Self> {
        let LoggedEvent { seq, at, event } = e;
        match event.body {
            EventBody::Device(kind) => Some(Logged::Device(Event {
                seq,
                at,
                fleet: event.fleet,
                device: event.device?,
                operation: event.operation,
                kind,
            })),
            EventBody::Rollout { kind, message } => Some(Logged::Rollout(RolloutNotice {
                seq,
                at,
                rollout: event.rollout?,
                fleet: event.fleet,
                kind,
                message,
            })),
        }
    }
}

/// The event bus of this replica. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    rollouts: broadcast::Sender<RolloutNotice>,
    /// Wakes the tail: something was appended to the log.
    appended: Arc<Notify>,
}

impl Default for Events {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl Events {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (rollouts, _) = broadcast::channel(capacity.max(1));
        Self {
            tx,
            rollouts,
            appended: Arc::new(Notify::new()),
        }
    }

    /// Tells the tail that this replica committed events: read them now.
    pub fn appended(&self) {
        self.appended.notify_one();
    }

    /// Hands an event read from the log to this replica's watchers.
    pub fn deliver(&self, e: Logged) {
        // No watcher is not an error.
        match e {
            Logged::Device(e) => {
                let _ = self.tx.send(e);
            }
            Logged::Rollout(n) => {
                let _ = self.rollouts.send(n);
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn subscribe_rollouts(&self) -> broadcast::Receiver<RolloutNotice> {
        self.rollouts.subscribe()
    }
}

/// Logs a rollout's notice (in its own transaction: what it reports is
/// already committed) and wakes the tail. A notice that cannot be written
/// is logged, not an error: the rollout's state is the truth.
pub async fn log_rollout_notice<S: Store>(
    store: &S,
    events: &Events,
    fleet: &FleetId,
    rollout: RolloutId,
    kind: &str,
    message: String,
) {
    let notice = crate::domain::NewEvent::rollout(fleet, rollout, kind, message);
    match store.append_events(&[notice], crate::clock::now()).await {
        Ok(()) => events.appended(),
        Err(e) => {
            tracing::warn!(rollout = %rollout, kind, error = %e, "cannot log a rollout notice")
        }
    }
}

/// Events read from the log per query.
const TAIL_BATCH: u32 = 1000;

/// How long the tail waits after being woken, so a burst of commits (on
/// any replica) is read with one query.
const TAIL_COALESCE: Duration = Duration::from_millis(20);

/// How often the tail reads the log without being woken: the safety net
/// for a lost notification.
pub const TAIL_POLL: Duration = Duration::from_secs(1);

/// Reads the event log in order from its end as of now, delivering each
/// event to this replica's watchers, until aborted. Woken by this
/// replica's commits, by other replicas' notifications
/// ([`Events::appended`]), and every [`TAIL_POLL`].
pub async fn run_tail<S: Store>(store: S, events: Events) {
    let mut last = loop {
        match store.last_event_seq().await {
            Ok(seq) => break seq,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log's end; retrying");
                tokio::time::sleep(TAIL_POLL).await;
            }
        }
    };
    loop {
        tokio::select! {
            // Many commits in a short while are read together.
            _ = events.appended.notified() => tokio::time::sleep(TAIL_COALESCE).await,
            _ = tokio::time::sleep(TAIL_POLL) => {}
        }
        loop {
            match store.events_after(last, TAIL_BATCH).await {
                Ok(batch) => {
                    let full = batch.len() == TAIL_BATCH as usize;
                    for e in batch {
                        last = e.seq;
                        if let Some(l) = Logged::from_log(e) {
                            events.deliver(l);
                        }
                    }
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event log");
                    break;
                }
            }
        }
    }
}

/// What a watcher receives next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Event(Event),
    /// Events were missed and cannot be re-read (they are older than the
    /// log's retention): re-read the state.
    Lagged(u64),
}

/// One watcher's view of the events: those of one fleet and/or one device
/// (all when neither is given), within a token's scope. Subscribed when
/// created, so nothing committed afterwards is missed; given a cursor, it
/// first replays the log after it.
pub struct Watch<S> {
    rx: broadcast::Receiver<Event>,
    store: S,
    fleet: Option<FleetId>,
    device: Option<DeviceId>,
    /// Only devices of these fleets (the watcher's token scope).
    within: Option<BTreeSet<FleetId>>,
    /// The last sequence delivered (or the cursor resumed from).
    last: Option<u64>,
    /// Read the log after `last` before the broadcast.
    catch_up: bool,
    backlog: VecDeque<Event>,
}

impl<S: Store> Watch<S> {
    /// A watch from now on, or resuming after sequence `after`.
    pub fn new(
        events: &Events,
        store: S,
        fleet: Option<FleetId>,
        device: Option<DeviceId>,
    ) -> Self {
        Self {
            rx: events.subscribe(),
            store,
            fleet,
            device,
            within: None,
            last: None,
            catch_up: false,
            backlog: VecDeque::new(),
        }
    }

    /// Resumes after sequence `after` (the `seq` of the last event seen):
    /// everything the log still holds after it comes first, in order.
    pub fn after(mut self, after: Option<u64>) -> Self {
        if let Some(a) = after {
            self.last = Some(a);
            self.catch_up = true;
        }
        self
    }

    /// Restricts the watch to devices of these fleets (a token's scope);
    /// `None` leaves it as it is.
    pub fn within(mut self, fleets: Option<BTreeSet<FleetId>>) -> Self {
        self.within = fleets;
        self
    }

    fn shows(&self, e: &Event) -> bool {
        self.device.as_ref().is_none_or(|d| *d == e.device)
            && self.fleet.as_ref().is_none_or(|f| *f == e.fleet)
            && self.within.as_ref().is_none_or(|w| w.contains(&e.fleet))
    }

    /// Reads the log after `last` into the backlog; false when caught up.
    async fn read_log(&mut self) -> Result<bool, Watched> {
        let after = self.last.unwrap_or(0);
        let batch = match self.store.events_after(after, TAIL_BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event log for a watcher");
                return Err(Watched::Lagged(0));
            }
        };
        let more = batch.len() == TAIL_BATCH as usize;
        for e in batch {
            self.last = Some(e.seq);
            if let Some(Logged::Device(e)) = Logged::from_log(e)
                && self.shows(&e)
            {
                self.backlog.push_back(e);
            }
        }
        Ok(more)
    }

    /// The next matching event; `None` once the bus is gone.
    pub async fn next(&mut self) -> Option<Watched> {
        loop {
            if let Some(e) = self.backlog.pop_front() {
                return Some(Watched::Event(e));
            }
            if self.catch_up {
                match self.read_log().await {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.catch_up = false;
                        continue;
                    }
                    Err(lagged) => {
                        self.catch_up = false;
                        return Some(lagged);
                    }
                }
            }
            let e = match self.rx.recv().await {
                Ok(e) => e,
                // Fell behind the broadcast: the log still has it.
                Err(broadcast::error::RecvError::Lagged(_)) if self.last.is_some() => {
                    self.catch_up = true;
                    continue;
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Watched::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if self.last.is_some_and(|l| e.seq <= l) {
                continue;
            }
            self.last = Some(e.seq);
            if self.shows(&e) {
                return Some(Watched::Event(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DeviceRecord, DeviceStatus, Fleet, NewEvent};
    use crate::store::ReplicaStore as _;

    fn event(seq: u64, fleet: &str, device: &str, kind: EventKind) -> Logged {
        Logged::Device(Event {
            seq,
            at: Timestamp(seq as i64),
            fleet: FleetId::new(fleet).unwrap(),
            device: DeviceId::new(device).unwrap(),
            operation: None,
            kind,
        })
    }

    fn kinds_of(w: Option<Watched>) -> (String, &'static str) {
        match w {
            Some(Watched::Event(e)) => (e.device.to_string(), e.kind.name()),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    async fn store_with_devices() -> (crate::store::SqliteStore, tempfile::TempDir) {
        let (store, dir) = crate::testkit::sqlite_store().await;
        for (f, d) in [("north", "n1"), ("south", "s1")] {
            let fleet = FleetId::new(f).unwrap();
            store
                .create_fleet(&Fleet {
                    id: fleet.clone(),
                    name: String::new(),
                    created: Timestamp(1),
                })
                .await
                .unwrap();
            store
                .register_device(
                    &DeviceRecord {
                        id: DeviceId::new(d).unwrap(),
                        fleet,
                        tags: Default::default(),
                        status: DeviceStatus::Unknown,
                        credential_revoked: false,
                        created: Timestamp(1),
                    },
                    "h",
                )
                .await
                .unwrap();
        }
        (store, dir)
    }

    #[tokio::test]
    async fn a_watch_sees_only_its_fleet_or_device_and_scope() {
        let (store, _dir) = store_with_devices().await;
        let events = Events::new(16);
        let mut by_fleet = Watch::new(
            &events,
            store.clone(),
            Some(FleetId::new("south").unwrap()),
            None,
        );
        let mut by_device = Watch::new(
            &events,
            store.clone(),
            None,
            Some(DeviceId::new("n1").unwrap()),
        );
        let mut scoped = Watch::new(&events, store.clone(), None, None)
            .within(Some([FleetId::new("south").unwrap()].into()));
        events.deliver(event(1, "north", "n1", EventKind::Online));
        events.deliver(event(2, "south", "s1", EventKind::Offline));
        assert_eq!(kinds_of(by_fleet.next().await), ("s1".into(), "offline"));
        assert_eq!(kinds_of(by_device.next().await), ("n1".into(), "online"));
        assert_eq!(kinds_of(scoped.next().await), ("s1".into(), "offline"));
        let mut nothing = Watch::new(&events, store, None, None).within(Some(BTreeSet::new()));
        events.deliver(event(3, "south", "s1", EventKind::Online));
        assert!(
            tokio::time::timeout(Duration::from_millis(200), nothing.next())
                .await
                .is_err(),
            "an empty scope sees nothing"
        );
    }

    #[tokio::test]
    async fn a_watch_resumes_from_its_cursor_through_the_log_then_follows_the_tail() {
        let (store, _dir) = store_with_devices().await;
        let events = Events::new(16);
        let tail = tokio::spawn(run_tail(store.clone(), events.clone()));
        let (north, n1) = (FleetId::new("north").unwrap(), DeviceId::new("n1").unwrap());
        let logged: Vec<NewEvent> = [EventKind::Online, EventKind::Applying, EventKind::Applied]
            .into_iter()
            .map(|k| NewEvent::device(&north, &n1, None, k))
            .collect();
        store.append_events(&logged, Timestamp(5)).await.unwrap();
        let first = store.events_after(0, 10).await.unwrap()[0].seq;
        // Resumes after the first: the other two, from the log, in order.
        let mut w = Watch::new(&events, store.clone(), None, None).after(Some(first));
        assert_eq!(kinds_of(w.next().await), ("n1".into(), "applying"));
        assert_eq!(kinds_of(w.next().await), ("n1".into(), "applied"));
        // Then what is appended later, through the tail, once.
        store
            .append_events(
                &[NewEvent::device(&north, &n1, None, EventKind::Offline)],
                Timestamp(6),
            )
            .await
            .unwrap();
        events.appended();
        let next = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap();
        assert_eq!(kinds_of(next), ("n1".into(), "offline"));
        tail.abort();
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_rereads_the_log_and_loses_nothing() {
        let (store, _dir) = store_with_devices().await;
        // A tiny broadcast: the watcher lags at once.
        let events = Events::new(2);
        let (north, n1) = (FleetId::new("north").unwrap(), DeviceId::new("n1").unwrap());
        let mut w = Watch::new(&events, store.clone(), None, None).after(Some(0));
        let mut all = Vec::new();
        for i in 0..10 {
            let kind = if i % 2 == 0 {
                EventKind::Online
            } else {
                EventKind::Offline
            };
            all.push(NewEvent::device(&north, &n1, None, kind));
        }
        store.append_events(&all, Timestamp(5)).await.unwrap();
        for e in store.events_after(0, 100).await.unwrap() {
            events.deliver(Logged::from_log(e).unwrap());
        }
        let mut seen = Vec::new();
        for _ in 0..10 {
            match w.next().await {
                Some(Watched::Event(e)) => seen.push(e.seq),
                other => panic!("expected an event, got {other:?}"),
            }
        }
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(seen, sorted, "in order, each once");
        assert_eq!(seen.len(), 10);
    }
}
