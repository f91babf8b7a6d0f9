//! Live events for dashboards and customers: what just happened to which
//! device's operation (approval requested, blocked by a lock, deferred,
//! waiting for a window, applying, applied, failed, overdue, time-forced,
//! cancelled) and to the device itself (a lock changed, its agent came online
//! or went offline). A bounded broadcast in this process; the database stays
//! the truth (the same facts are in operations, locks and the audit log), so
//! a watcher that lags is told so and re-reads state. [`Watch`] is the one
//! filter (by fleet or device) that every watcher — gRPC `WatchEvents`, the
//! dashboard's event stream — goes through.

use std::collections::{BTreeSet, HashMap};

use tokio::sync::broadcast;

use crate::domain::{DeviceId, FleetId, OperationId, RolloutId, Timestamp};
use crate::store::Store;

pub use crate::domain::EventKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub at: Timestamp,
    pub device: DeviceId,
    pub operation: Option<OperationId>,
    pub kind: EventKind,
}

/// Something happened to a rollout (a batch started, it soaked, paused,
/// resumed, aborted, completed): watchers re-read its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutNotice {
    pub at: Timestamp,
    pub rollout: RolloutId,
    /// The rollout's fleet: who may be told (a token's scope, a page's
    /// fleet filter).
    pub fleet: FleetId,
    /// batch_started, soaking, paused, resumed, aborted, completed,
    /// superseded, devices_started, created.
    pub kind: &'static str,
    pub message: String,
}

/// The event bus. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    rollouts: broadcast::Sender<RolloutNotice>,
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
        Self { tx, rollouts }
    }

    pub fn publish(&self, device: &DeviceId, operation: Option<OperationId>, kind: EventKind) {
        // No watcher is not an error.
        let _ = self.tx.send(Event {
            at: crate::clock::now(),
            device: device.clone(),
            operation,
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    pub fn publish_rollout(
        &self,
        rollout: RolloutId,
        fleet: &FleetId,
        kind: &'static str,
        message: String,
    ) {
        let _ = self.rollouts.send(RolloutNotice {
            at: crate::clock::now(),
            rollout,
            fleet: fleet.clone(),
            kind,
            message,
        });
    }

    pub fn subscribe_rollouts(&self) -> broadcast::Receiver<RolloutNotice> {
        self.rollouts.subscribe()
    }
}

/// What a watcher receives next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Event(Event),
    /// The watcher fell behind and this many events were dropped for it:
    /// re-read the state.
    Lagged(u64),
}

/// One watcher's view of the bus: the events of one fleet and/or one
/// device (all when neither is given). Subscribed when created, so nothing
/// published afterwards is missed unless the watcher lags.
pub struct Watch<S> {
    rx: broadcast::Receiver<Event>,
    store: S,
    fleet: Option<FleetId>,
    device: Option<DeviceId>,
    /// Only devices of these fleets (the watcher's token scope).
    within: Option<BTreeSet<FleetId>>,
    /// Device → fleet, looked up once per device seen.
    fleets: HashMap<DeviceId, FleetId>,
}

impl<S: Store> Watch<S> {
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
            fleets: HashMap::new(),
        }
    }

    /// Restricts the watch to devices of these fleets (a token's scope);
    /// `None` leaves it as it is.
    pub fn within(mut self, fleets: Option<BTreeSet<FleetId>>) -> Self {
        self.within = fleets;
        self
    }

    /// The next matching event, or how many were missed; `None` once the
    /// bus is gone. A device whose fleet cannot be looked up is skipped.
    pub async fn next(&mut self) -> Option<Watched> {
        loop {
            let e = match self.rx.recv().await {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => return Some(Watched::Lagged(n)),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if self.device.as_ref().is_some_and(|d| *d != e.device) {
                continue;
            }
            if self.fleet.is_some() || self.within.is_some() {
                if !self.fleets.contains_key(&e.device) {
                    match self.store.get_device(&e.device).await {
                        Ok(d) => {
                            self.fleets.insert(e.device.clone(), d.fleet);
                        }
                        Err(_) => continue,
                    }
                }
                let fleet = self.fleets.get(&e.device);
                if self.fleet.is_some() && fleet != self.fleet.as_ref() {
                    continue;
                }
                if let Some(w) = &self.within
                    && !fleet.is_some_and(|f| w.contains(f))
                {
                    continue;
                }
            }
            return Some(Watched::Event(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_see_what_is_published_after_they_subscribe() {
        let events = Events::new(4);
        let d = DeviceId::new("d").unwrap();
        events.publish(&d, None, EventKind::Applying);
        let mut rx = events.subscribe();
        events.publish(&d, Some(OperationId(1)), EventKind::Applied);
        let e = rx.recv().await.unwrap();
        assert_eq!(
            (e.kind.name(), e.operation),
            ("applied", Some(OperationId(1)))
        );
        for _ in 0..10 {
            events.publish(&d, None, EventKind::Applying);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use crate::domain::{DeviceRecord, DeviceStatus, Fleet};

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

    fn kinds_of(w: Option<Watched>) -> (String, &'static str) {
        match w {
            Some(Watched::Event(e)) => (e.device.to_string(), e.kind.name()),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_watch_sees_only_its_fleet_or_device_and_is_told_when_it_lags() {
        let (store, _dir) = store_with_devices().await;
        let events = Events::new(4);
        let n1 = DeviceId::new("n1").unwrap();
        let s1 = DeviceId::new("s1").unwrap();
        let mut by_fleet = Watch::new(
            &events,
            store.clone(),
            Some(FleetId::new("south").unwrap()),
            None,
        );
        let mut by_device = Watch::new(&events, store.clone(), None, Some(n1.clone()));
        events.publish(&n1, None, EventKind::Online);
        events.publish(&s1, None, EventKind::Offline);
        assert_eq!(kinds_of(by_fleet.next().await), ("s1".into(), "offline"));
        assert_eq!(kinds_of(by_device.next().await), ("n1".into(), "online"));
        for _ in 0..10 {
            events.publish(&s1, None, EventKind::Applying);
        }
        assert!(matches!(by_fleet.next().await, Some(Watched::Lagged(_))));
    }

    #[tokio::test]
    async fn a_watch_within_a_scope_sees_only_the_scopes_devices() {
        let (store, _dir) = store_with_devices().await;
        let events = Events::new(16);
        let mut scoped = Watch::new(&events, store.clone(), None, None)
            .within(Some([FleetId::new("south").unwrap()].into()));
        for d in ["n1", "s1"] {
            events.publish(&DeviceId::new(d).unwrap(), None, EventKind::Online);
        }
        assert_eq!(kinds_of(scoped.next().await), ("s1".into(), "online"));
        let mut nothing = Watch::new(&events, store, None, None).within(Some(BTreeSet::new()));
        events.publish(&DeviceId::new("s1").unwrap(), None, EventKind::Offline);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), nothing.next())
                .await
                .is_err(),
            "an empty scope sees nothing"
        );
    }
}
