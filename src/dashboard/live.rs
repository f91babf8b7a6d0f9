//! `/api/events`: the live event bus as server-sent events, filtered by
//! fleet or device through the same [`Watch`] as gRPC `WatchEvents`. Each
//! event is a `data:` line holding a JSON [`EventView`]; its `kind` says what
//! happened, and `lagged` says events were dropped for this page, which then
//! re-reads everything. Pages treat events as "re-read now", never as state.
//! A token sees only its fleets' devices' events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;

use super::api::{device_id, fleet_id, params};
use super::auth::{Authed, check, within};
use super::views::EventView;
use super::{Dashboard, DashboardError};
use crate::domain::Action;
use crate::events::{Watch, Watched};
use crate::store::Store;

/// GET /api/events?fleet=&device=
pub async fn events<S: Store>(
    State(d): State<Dashboard<S>>,
    Authed(p): Authed,
    q: Result<Query<std::collections::BTreeMap<String, String>>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, DashboardError> {
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
    let watch = Watch::new(&d.events, d.store.clone(), fleet, device).within(scope);
    Ok(Sse::new(stream(watch, d.stopping.clone()))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The watcher's events as SSE events, until the bus closes or the server stops.
fn stream<S: Store>(
    watch: Watch<S>,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    futures::stream::unfold((watch, stopping), |(mut watch, mut stopping)| async move {
        let next = tokio::select! {
            w = watch.next() => w?,
            _ = stopping.wait_for(|s| *s) => return None,
        };
        let view = match &next {
            Watched::Event(e) => EventView::from(e),
            Watched::Lagged(n) => EventView::lagged(*n, crate::clock::now()),
        };
        let event = SseEvent::default()
            .json_data(&view)
            .unwrap_or_else(|_| SseEvent::default().data("{\"kind\":\"lagged\"}"));
        Some((Ok(event), (watch, stopping)))
    })
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;
    use crate::domain::DeviceId;
    use crate::events::{EventKind, Events};

    #[tokio::test]
    async fn a_lagging_page_is_sent_a_lagged_event_and_the_stream_ends_when_the_server_stops() {
        let (store, _dir) = crate::testkit::sqlite_store().await;
        let events = Events::new(2);
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let watch = Watch::new(&events, store, None, None);
        let mut s = Box::pin(stream(watch, stopping));
        let d = DeviceId::new("d").unwrap();
        for _ in 0..5 {
            events.publish(&d, None, EventKind::Applying);
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
