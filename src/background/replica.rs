//! This replica's life among the replicas sharing one database: it
//! registers with a lease and renews it, reaps replicas whose lease ran out
//! (their devices go offline, and whoever holds them next reconciles them),
//! listens for other replicas' notifications (wake-ups handed over, events
//! appended, sessions taken over), tails the event log for its watchers, and
//! on a clean shutdown releases its sessions. Each task only translates
//! what the store says into wake-ups; nothing here decides.

use std::time::Duration;

use crate::app::events::{self, Events};
use crate::background::scheduler::Wakeups;
use crate::clock;
use crate::domain::{DeviceId, ReplicaId, Timestamp};
use crate::edge::hub::Hub;
use crate::store::replicas::{CHANNEL_EVENTS, CHANNEL_SESSIONS, CHANNEL_WAKE};
use crate::store::{Notice, Store, StoreError};

/// How long a replica's lease runs: a replica silent this long is dead, and
/// its devices are offline until they reconnect elsewhere.
pub const LEASE: Duration = Duration::from_secs(15);

/// How often the lease is renewed and dead replicas reaped.
pub const RENEW_EVERY: Duration = Duration::from_secs(5);

/// How often old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A replica name for this process: the host's name and a random suffix.
pub fn default_replica_id() -> ReplicaId {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                .take(100)
                .collect::<String>()
        })
        .filter(|h| h.starts_with(|c: char| c.is_ascii_alphanumeric()))
        .unwrap_or_else(|| "lockstep".to_owned());
    let suffix: u32 = rand::random();
    ReplicaId::new(format!("{host}-{suffix:08x}"))
        .unwrap_or_else(|_| ReplicaId::new(format!("lockstep-{suffix:08x}")).expect("valid id"))
}

fn lease_from(now: Timestamp) -> Timestamp {
    Timestamp(now.0 + LEASE.as_millis() as i64)
}

/// The background tasks of this replica; aborted when dropped.
pub struct ReplicaTasks {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for ReplicaTasks {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What the replica tasks act on.
pub struct Replica<S> {
    pub store: S,
    pub id: ReplicaId,
    pub hub: Hub,
    pub wakeups: Wakeups,
    pub events: Events,
    /// Events older than this are pruned.
    pub event_retention: Duration,
}

impl<S: Store> Replica<S> {
    /// Registers this replica (closing sessions an earlier run left under
    /// its name) and starts its tasks.
    pub async fn start(self) -> Result<ReplicaTasks, StoreError> {
        let now = clock::now();
        let closed = self
            .store
            .register_replica(&self.id, now, lease_from(now))
            .await?;
        self.woken(&closed);
        tracing::info!(replica = %self.id, "replica registered");
        let mut tasks = vec![tokio::spawn(events::run_tail(
            self.store.clone(),
            self.events.clone(),
        ))];
        let this = std::sync::Arc::new(self);
        tasks.push(tokio::spawn(std::sync::Arc::clone(&this).heartbeat()));
        tasks.push(tokio::spawn(std::sync::Arc::clone(&this).listen()));
        tasks.push(tokio::spawn(std::sync::Arc::clone(&this).prune_events()));
        Ok(ReplicaTasks { tasks })
    }

    fn woken(&self, devices: &[DeviceId]) {
        for d in devices {
            self.wakeups.wake(d);
        }
        if !devices.is_empty() {
            self.events.appended();
        }
    }

    /// Renews the lease; reaps dead replicas.
    async fn heartbeat(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(RENEW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = clock::now();
            match self
                .store
                .renew_replica(&self.id, now, lease_from(now))
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Reaped while away (a pause longer than the lease): its
                    // sessions were closed; the agents reconnect and open new
                    // ones.
                    tracing::warn!(replica = %self.id, "this replica's lease had run out; ending its streams");
                    self.hub.supersede_all();
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew this replica's lease"),
            }
            match self.store.reap_replicas(now).await {
                Ok(devices) => self.woken(&devices),
                Err(e) => tracing::warn!(error = %e, "cannot reap dead replicas"),
            }
        }
    }

    /// Turns other replicas' notifications into local wake-ups.
    async fn listen(self: std::sync::Arc<Self>) {
        loop {
            let mut listener = match self.store.listen().await {
                Ok(Some(l)) => l,
                // One process (SQLite): nobody else to hear.
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other replicas; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            // What was sent before listening started is found by a sweep.
            self.wakeups.sweep_now();
            self.events.appended();
            loop {
                match listener.recv().await {
                    Ok(Notice::Channel { channel, payload }) => self.heard(&channel, &payload),
                    Ok(Notice::Reconnected) => {
                        self.wakeups.sweep_now();
                        self.events.appended();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listening for other replicas failed; reconnecting");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    fn heard(&self, channel: &str, payload: &str) {
        match channel {
            // Handed to this replica, or to every replica.
            CHANNEL_WAKE if payload.is_empty() || payload == self.id.as_str() => {
                self.wakeups.sweep_now()
            }
            CHANNEL_WAKE => {}
            CHANNEL_EVENTS => self.events.appended(),
            CHANNEL_SESSIONS => {
                if let Some((replica, device, epoch)) = parse_takeover(payload)
                    && replica == self.id.as_str()
                {
                    self.hub.supersede_older(&device, epoch);
                }
            }
            other => tracing::debug!(channel = other, "unexpected notification"),
        }
    }

    async fn prune_events(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            let retention = i64::try_from(self.event_retention.as_millis()).unwrap_or(i64::MAX);
            let before = Timestamp(clock::now().0.saturating_sub(retention));
            match self.store.prune_events(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(events = n, "old events pruned"),
                Err(e) => tracing::warn!(error = %e, "cannot prune old events"),
            }
        }
    }
}

/// Releases this replica's sessions (a clean shutdown): its devices are
/// offline until they reconnect, which they do at once, elsewhere.
pub async fn release<S: Store>(store: &S, replica: &ReplicaId) {
    match store.release_replica(replica, clock::now()).await {
        Ok(devices) => {
            tracing::info!(replica = %replica, sessions = devices.len(), "replica released its sessions")
        }
        Err(e) => {
            tracing::warn!(replica = %replica, error = %e, "cannot release this replica's sessions; the lease reaper will")
        }
    }
}

/// `replica device epoch` of a session takeover notification.
fn parse_takeover(payload: &str) -> Option<(&str, DeviceId, u64)> {
    let mut parts = payload.split(' ');
    let replica = parts.next()?;
    let device = DeviceId::new(parts.next()?).ok()?;
    let epoch = parts.next()?.parse().ok()?;
    Some((replica, device, epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_notifications_name_the_replica_device_and_epoch() {
        let (r, d, e) = parse_takeover("r1 dev-7 12").unwrap();
        assert_eq!((r, d.as_str(), e), ("r1", "dev-7", 12));
        assert!(parse_takeover("r1 dev-7").is_none());
        assert!(parse_takeover("r1 dev-7 x").is_none());
        assert!(parse_takeover("").is_none());
    }

    #[test]
    fn a_default_replica_id_is_valid_and_differs_between_processes() {
        let (a, b) = (default_replica_id(), default_replica_id());
        assert_ne!(a, b);
        assert!(ReplicaId::new(a.as_str()).is_ok());
    }
}
