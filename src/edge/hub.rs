//! Live agent streams connected to this replica, and a way to wake a
//! device's stream when its outbox has something new, or to end it when a
//! newer session (here or on another replica) took the device over. Memory
//! holds only these handles: who is online is the database's
//! `agent_sessions`, and the outbox is in the database too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

use crate::domain::DeviceId;
use crate::telemetry::Metrics;

struct Conn {
    id: u64,
    /// The session epoch of the stream.
    epoch: u64,
    outbox: Arc<Notify>,
    superseded: watch::Sender<bool>,
}

/// The registry of connected agents. Cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {
    conns: Arc<Mutex<HashMap<DeviceId, Conn>>>,
    next_id: Arc<AtomicU64>,
    /// `lockstep.agents.connected` follows the registry's size.
    metrics: Metrics,
}

/// What a stream task holds while connected.
pub struct Registration {
    pub id: u64,
    /// Notified when the device's outbox has new intents.
    pub outbox: Arc<Notify>,
    /// Turns true when a newer stream for the same device takes over.
    pub superseded: watch::Receiver<bool>,
}

impl Hub {
    /// An empty registry that keeps `metrics` informed of its size.
    pub fn with_metrics(metrics: Metrics) -> Self {
        Self {
            metrics,
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Conn>> {
        // A panic while holding this lock leaves the map itself consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a stream of session `epoch` for `device`, superseding any
    /// earlier one here.
    pub fn register(&self, device: &DeviceId, epoch: u64) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let outbox = Arc::new(Notify::new());
        let (superseded, rx) = watch::channel(false);
        let old = self.lock().insert(
            device.clone(),
            Conn {
                id,
                epoch,
                outbox: Arc::clone(&outbox),
                superseded,
            },
        );
        match old {
            Some(old) => {
                let _ = old.superseded.send(true);
            }
            None => self.metrics.agents_connected(1),
        }
        Registration {
            id,
            outbox,
            superseded: rx,
        }
    }

    /// Removes the registration, unless a newer stream has replaced it.
    pub fn unregister(&self, device: &DeviceId, id: u64) {
        let mut conns = self.lock();
        if conns.get(device).is_some_and(|c| c.id == id) {
            conns.remove(device);
            self.metrics.agents_connected(-1);
        }
    }

    /// Ends this replica's stream for `device` if its session is older than
    /// `epoch` (a newer stream took over on another replica).
    pub fn supersede_older(&self, device: &DeviceId, epoch: u64) {
        let mut conns = self.lock();
        if conns.get(device).is_some_and(|c| c.epoch < epoch)
            && let Some(old) = conns.remove(device)
        {
            let _ = old.superseded.send(true);
            self.metrics.agents_connected(-1);
        }
    }

    /// Ends every stream (this replica's sessions were reaped: the agents
    /// reconnect and open new ones).
    pub fn supersede_all(&self) {
        let mut conns = self.lock();
        let n = conns.len();
        for (_, c) in conns.drain() {
            let _ = c.superseded.send(true);
        }
        self.metrics.agents_connected(-(n as i64));
    }

    pub fn is_connected(&self, device: &DeviceId) -> bool {
        self.lock().contains_key(device)
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    /// Wakes the device's stream to send what its outbox holds.
    pub fn notify(&self, device: &DeviceId) {
        if let Some(c) = self.lock().get(device) {
            c.outbox.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_stream_supersedes_the_first() {
        let hub = Hub::default();
        let d = DeviceId::new("d").unwrap();
        let first = hub.register(&d, 1);
        assert!(hub.is_connected(&d));
        let second = hub.register(&d, 1);
        assert!(*first.superseded.borrow());
        assert!(!*second.superseded.borrow());
        // The superseded stream leaving does not unregister the new one.
        hub.unregister(&d, first.id);
        assert!(hub.is_connected(&d));
        hub.unregister(&d, second.id);
        assert!(!hub.is_connected(&d));
        assert_eq!(hub.connected(), 0);
    }

    #[test]
    fn the_connected_agents_metric_follows_the_registry() {
        use crate::telemetry::{sample, scraped_metrics};
        let (metrics, scrape, _provider) = scraped_metrics();
        let connected = || sample(&scrape.render(), "lockstep_agents_connected", &[]);
        let hub = Hub::with_metrics(metrics);
        assert_eq!(connected(), Some(0.0));
        let (d, e) = (DeviceId::new("d").unwrap(), DeviceId::new("e").unwrap());
        let first = hub.register(&d, 1);
        hub.register(&e, 1);
        assert_eq!(connected(), Some(2.0));
        // A newer stream for d replaces the first: still two devices.
        let second = hub.register(&d, 1);
        assert_eq!(connected(), Some(2.0));
        hub.unregister(&d, first.id);
        assert_eq!(connected(), Some(2.0));
        hub.unregister(&d, second.id);
        assert_eq!(connected(), Some(1.0));
    }
}
