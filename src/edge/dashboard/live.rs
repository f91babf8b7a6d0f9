//! Server-sent event streams. A token sees only what its role and fleets
//! allow: the stream is refused (403) otherwise.
//!
//! `/api/events`: the live event bus, filtered by fleet or device through
//! the same [`Watch`] as gRPC `WatchEvents`, plus rollout notices (kind
//! `rollout`) unless filtered by device. Each event is a `data:` line
//! holding a JSON [`EventView`]; its `kind` says what happened, and `lagged`
//! says events were dropped for this page, which then re-reads everything.
//! Pages treat these events as "re-read now", never as state. A token sees
//! only its fleets' devices' events and rollout notices.
//!
//! `/api/rollouts/{id}/events`: one rollout's status (a JSON
//! [`RolloutStatusView`]) now and whenever it changes, through the same
//! [`RolloutWatch`] as gRPC `WatchRollout`; the stream ends after the final
//! status of a rollout that is no longer active. A failed read is sent as an
//! event named `problem` (`{"error": ...}`) and ends the stream, so the
//! browser reconnects and starts over. It needs a token that may read the
//! rollout's fleet.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::Path;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use super::api::{device_id, fleet_id, params, rollout_id};
use super::auth::{Authed, check, within};
use super::views::{EventView, RolloutStatusView};
use super::{Dashboard, DashboardError};
use crate::app::events::{RolloutNotice, Watch, Watched};
use crate::app::rollouts::RolloutWatch;
use crate::domain::{Action, FleetId};
use crate::store::Store;

/// GET /api/events?fleet=&device=. Each device event carries its log
/// sequence as the SSE `id`; a browser reconnecting with `Last-Event-ID`
/// gets what it missed first, in order.
pub async fn events<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    headers: axum::http::HeaderMap,
    q: Result<Query<std::collections::BTreeMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, DashboardError> {
    // A malformed id is ignored (the stream starts from now), as a browser
    // only sends back what it was given.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let q = params(q, &["fleet", "device"])?;
    let fleet = q
        .get("fleet")
        .filter(|s| !s.is_empty())
        .map(|s| fleet_id("fleet", s))
        .transpose()?;
    let device = q
        .get("device")
        .filter(|s| !s.is_empty())
        .map(|s| device_id("device", s))
        .transpose()?;
    let scope = match &fleet {
        Some(f) => check(&p, Action::ReadDevices, Some(f)).map(|()| None)?,
        None => within(&p, Action::ReadDevices)?,
    };
    if let Some(f) = &fleet {
        d.store.get_fleet(f).await?;
    }
    if let Some(dev) = &device {
        let record = d.store.get_device(dev).await?;
        check(&p, Action::ReadDevices, Some(&record.fleet))?;
    }
    // Subscribed before the response starts: nothing published after the
    // page sees the stream open is missed.
    // Rollouts belong to no device: a device's page is not told of them;
    // other pages hear of the rollouts of the fleets they may read.
    let notices = device.is_none().then(|| Notices {
        rx: d.events.subscribe_rollouts(),
        fleet: fleet.clone(),
        within: scope.clone(),
    });
    let watch = Watch::new(&d.events, d.store.clone(), fleet, device)
        .within(scope)
        .after(resume);
    let events = stream(watch, notices, d.stopping.clone());
    Ok(
        Sse::new(while_token_usable(events, d.store.clone(), p.token))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

/// Rollout notices for one page: those of its fleet filter, if any, and of
/// the token's fleets.
struct Notices {
    rx: broadcast::Receiver<RolloutNotice>,
    fleet: Option<FleetId>,
    /// `None`: every fleet.
    within: Option<BTreeSet<FleetId>>,
}

impl Notices {
    fn shows(&self, n: &RolloutNotice) -> bool {
        self.fleet.as_ref().is_none_or(|f| *f == n.fleet)
            && self.within.as_ref().is_none_or(|w| w.contains(&n.fleet))
    }
}

/// The next rollout notice this page may see, or never without a
/// subscription.
async fn notice(notices: &mut Option<Notices>) -> Result<RolloutNotice, RecvError> {
    match notices {
        Some(n) => loop {
            let next = n.rx.recv().await?;
            if n.shows(&next) {
                return Ok(next);
            }
        },
        None => std::future::pending().await,
    }
}

/// The watcher's events (and rollout notices) as SSE events, until the bus
/// closes or the server stops.
fn stream<S: Store>(
    watch: Watch<S>,
    notices: Option<Notices>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold(
        (watch, notices, stopping),
        |(mut watch, mut notices, mut stopping)| async move {
            let (view, seq) = tokio::select! {
                w = watch.next() => match w? {
                    Watched::Event(e) => (EventView::from(&e), Some(e.seq)),
                    Watched::Lagged(n) => (EventView::lagged(n, crate::clock::now()), None),
                },
                n = notice(&mut notices) => match n {
                    Ok(n) => (EventView::from(&n), None),
                    Err(RecvError::Lagged(n)) => (EventView::lagged(n, crate::clock::now()), None),
                    Err(RecvError::Closed) => return None,
                },
                _ = stopping.wait_for(|s| *s) => return None,
            };
            let mut event = SseEvent::default()
                .json_data(&view)
                .unwrap_or_else(|_| SseEvent::default().data("{\"kind\":\"lagged\"}"));
            if let Some(seq) = seq {
                event = event.id(seq.to_string());
            }
            Some((Ok(event), (watch, notices, stopping)))
        },
    )
}

/// GET /api/rollouts/{id}/events: the rollout's status now, then on every
/// change (at most about 5 a second, and re-read every few seconds so a
/// soak's end shows), until it is no longer active or the server stops.
pub async fn rollout<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    id: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, DashboardError> {
    let id = rollout_id(id)?;
    // An unknown rollout is a 404 here, and one of another fleet a 403,
    // before the stream starts.
    let r = d.store.get_rollout(id).await?;
    check(&p, Action::ReadRollouts, Some(&r.fleet))?;
    let watch = d.rollouts.watch(id).await?;
    let statuses = rollout_stream(watch, d.stopping.clone());
    Ok(
        Sse::new(while_token_usable(statuses, d.store.clone(), p.token))
            .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))),
    )
}

/// `inner` until the token that opened the page's stream can no longer be
/// used (revoked, expired); then one `problem` event saying so, and the
/// end. The browser reconnects and is refused (401).
fn while_token_usable<S: Store>(
    inner: impl Stream<Item = Result<SseEvent, Infallible>>,
    store: S,
    token: crate::domain::TokenId,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    use futures::StreamExt as _;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unusable = async move {
        let e = crate::app::tokens::until_unusable(store, token, crate::app::tokens::RECHECK_EVERY)
            .await;
        let _ = tx.send(e.to_string());
    };
    let last = futures::stream::once(rx).filter_map(|e| async move {
        let error = e.ok()?;
        Some(Ok(SseEvent::default()
            .event("problem")
            .json_data(serde_json::json!({ "error": error }))
            .unwrap_or_else(|_| SseEvent::default().event("problem"))))
    });
    inner.take_until(unusable).chain(last)
}

fn rollout_stream<S: Store>(
    watch: RolloutWatch<S>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold((watch, stopping), |(mut watch, mut stopping)| async move {
        let next = tokio::select! {
            next = watch.next() => next?,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        let event = match next {
            Ok(status) => {
                SseEvent::default().json_data(RolloutStatusView::new(&status, crate::clock::now()))
            }
            Err(e) => {
                let e = DashboardError::from(e);
                SseEvent::default()
                    .event("problem")
                    .json_data(serde_json::json!({ "error": e.to_string() }))
            }
        }
        .unwrap_or_else(|_| {
            SseEvent::default()
                .event("problem")
                .data("{\"error\":\"unreadable status\"}")
        });
        Some((Ok(event), (watch, stopping)))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::app::events::{EventKind, Events};
    use crate::domain::DeviceId;

    #[tokio::test]
    async fn a_lagging_page_is_sent_a_lagged_event_and_the_stream_ends_when_the_server_stops() {
        let (store, _dir) = crate::testkit::sqlite_store().await;
        let events = Events::new(2);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let watch = Watch::new(&events, store, None, None);
        let mut s = Box::pin(stream(watch, None, stopping));
        let d = DeviceId::new("d").unwrap();
        for seq in 1..=5 {
            events.deliver(crate::app::events::Logged::Device(
                crate::app::events::Event {
                    seq,
                    at: crate::domain::Timestamp(1),
                    fleet: crate::domain::FleetId::new("f").unwrap(),
                    device: d.clone(),
                    operation: None,
                    kind: EventKind::Applying,
                },
            ));
        }
        let first = s.next().await.expect("an event").unwrap();
        let text = format!("{first:?}");
        assert!(text.contains("lagged"), "{text}");
        stop.send(true).unwrap();
        // What is still buffered may come first; then the stream ends.
        let rest = tokio::time::timeout(Duration::from_secs(5), s.collect::<Vec<_>>())
            .await
            .expect("the stream ends once the server stops");
        assert!(rest.len() <= 2, "{}", rest.len());
    }
}
