// Shared by every dashboard page: JSON fetches with readable errors, the live
// event stream, time and status formatting, and a tiny element builder.
// A page script calls these through the global `LS` and renders its own
// data; nothing here knows about a particular page.
'use strict';

const LS = (() => {
  /** An API answer other than 2xx; `field` names the bad input, if any. */
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.error) || `HTTP ${status}`);
      this.status = status;
      this.field = body && body.field;
    }
  }

  /** Where to log in, coming back to this page afterwards. */
  function toLogin() {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
  }

  /**
   * GET (or POST with `body` as JSON) a dashboard API path; resolves to the
   * JSON answer. A 401 (no or no longer a valid token) goes to the login
   * page, unless `login` says this is the login itself.
   */
  async function api(path, { method = 'GET', body, login = false } = {}) {
    const opts = { method, headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401 && !login) toLogin();
    if (!r.ok) throw new ApiError(r.status, data);
    return data;
  }

  // The header's log-out button (on every page but the login).
  const logout = document.getElementById('logout');
  if (logout) {
    logout.addEventListener('click', async () => {
      await fetch('/api/logout', { method: 'POST' });
      location.assign('/login');
    });
  }

  /**
   * Builds an element: `h('td', {class: 'num', dataset: {block: 'a'}}, 'text', child)`.
   * Strings become text nodes (never HTML); null/false children are skipped.
   */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'dataset') Object.assign(el.dataset, v);
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  const pad = (n) => String(n).padStart(2, '0');

  /** `2025-11-24 14:03:07` in the viewer's time zone. */
  function fmtTime(ms) {
    if (!ms) return '—';
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  /** `in 5 min`, `3 h ago`. */
  function fmtRelative(ms, now = Date.now()) {
    const s = Math.round((ms - now) / 1000);
    const a = Math.abs(s);
    const [n, unit] = a < 60 ? [a, 's'] : a < 3600 ? [Math.round(a / 60), 'min']
      : a < 86400 ? [Math.round(a / 3600), 'h'] : [Math.round(a / 86400), 'd'];
    return s >= 0 ? `in ${n} ${unit}` : `${n} ${unit} ago`;
  }

  /** A `<time>` showing the local time, relative time on hover. */
  function time(ms) {
    if (!ms) return h('span', { class: 'muted' }, '—');
    return h('time', { datetime: new Date(ms).toISOString(), title: fmtRelative(ms) }, fmtTime(ms));
  }

  /** `start → end` of a window occurrence. */
  function range(o) {
    return h('span', {}, time(o.start_ms), ' → ', time(o.end_ms),
      h('span', { class: 'hint' }, ` (${fmtRelative(o.start_ms)})`));
  }

  /** A status pill, coloured by `.s-<status>` in app.css. */
  function badge(status) {
    return h('span', { class: `badge s-${status}`, dataset: { status } }, status.replace(/_/g, ' '));
  }

  /** `/devices/<id>` link. */
  function deviceLink(id) {
    return h('a', { href: `/devices/${encodeURIComponent(id)}` }, id);
  }

  /** An operation as `#12 reboot` or `#13 assign_release r2`. */
  function opLabel(op) {
    return `#${op.id} ${op.kind}${op.target ? ' ' + op.target : ''}`;
  }

  /** What a wait says in words: `a's lock — reboot`. */
  function waitText(w) {
    let s = `${w.block}'s lock — ${w.reason}`;
    if (w.because_of) s += ` (because ${w.because_of} restarts)`;
    if (w.handover) s += ', handover possible';
    return s;
  }

  /** Rollout progress segments, in the order a bar shows them. */
  const SEGMENTS = [
    ['succeeded', 'succeeded'], ['failed', 'failed'], ['cancelled', 'cancelled'],
    ['in_flight', 'in flight'], ['queued', 'queued'],
  ];

  /** `2 of 3 succeeded · 1 in flight` for rollout counts (zeros left out). */
  function countsText(c) {
    const rest = SEGMENTS.slice(1).filter(([k]) => c[k]).map(([k, label]) => `${c[k]} ${label}`);
    return [`${c.succeeded} of ${c.size} succeeded`, ...rest].join(' · ');
  }

  /**
   * A progress bar for rollout counts ({size, queued, in_flight, succeeded,
   * failed, cancelled}): one coloured segment per non-zero count, sized by
   * share; the counts are also its data attributes and accessible label.
   */
  function progressBar(c) {
    const dataset = {};
    for (const [k] of SEGMENTS) dataset[k] = String(c[k] || 0);
    const bar = h('div', { class: 'bar', role: 'img', 'aria-label': countsText(c), dataset });
    for (const [k, label] of SEGMENTS) {
      if (!c[k]) continue;
      const seg = h('span', { class: `seg seg-${k}`, title: `${c[k]} ${label}` });
      seg.style.flexGrow = String(c[k]);
      bar.append(seg);
    }
    return bar;
  }

  /** Replaces a tbody's rows; an empty list shows `emptyText` across `cols`. */
  function setRows(tbody, rows, emptyText, cols) {
    if (rows.length === 0) {
      tbody.replaceChildren(h('tr', {}, h('td', { class: 'empty', colspan: cols }, emptyText)));
    } else {
      tbody.replaceChildren(...rows);
    }
  }

  /** Shows an error in a `.problem` box inside `where` (or clears it with null). */
  function problem(where, err) {
    let box = where.querySelector(':scope > .problem');
    if (!err) {
      if (box) box.remove();
      return;
    }
    if (!box) {
      box = h('p', { class: 'problem', role: 'alert' });
      where.prepend(box);
    }
    box.textContent = err.message || String(err);
  }

  /**
   * Wraps an async `load` so that calls made while it runs collapse into one
   * more run afterwards, at most one run per `gapMs`. Returns `refresh()`.
   */
  function refresher(load, gapMs = 250) {
    let running = false;
    let again = false;
    let last = 0;
    async function refresh() {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        const wait = last + gapMs - Date.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        do {
          again = false;
          last = Date.now();
          await load();
        } while (again);
      } finally {
        running = false;
      }
    }
    return refresh;
  }

  /** The header's live indicator: `state` is idle, connecting, live, reconnecting or ended. */
  function indicate(state, text) {
    const indicator = document.getElementById('live');
    if (!indicator) return;
    indicator.dataset.state = state;
    indicator.textContent = text;
  }

  /**
   * Opens a server-sent event stream at `url` and shows its state in the
   * header. `onOpen()` runs whenever the stream (re)connects, `onMessage(data)`
   * for each unnamed event (parsed JSON, or null if unreadable), and
   * `handlers[name](data)` for each event named `name`.
   * `document.body.dataset.liveEvents` counts events received. Returns the
   * EventSource; `end(es, text)` closes it for good.
   */
  function follow(url, { onOpen, onMessage, handlers = {} } = {}) {
    const es = new EventSource(url);
    let received = 0;
    const parse = (m) => {
      received += 1;
      document.body.dataset.liveEvents = String(received);
      try {
        return JSON.parse(m.data);
      } catch (_) {
        return null;
      }
    };
    indicate('connecting', 'connecting…');
    es.onopen = () => {
      indicate('live', 'live');
      if (onOpen) onOpen();
    };
    es.onmessage = (m) => {
      const data = parse(m);
      if (onMessage) onMessage(data);
    };
    for (const [name, fn] of Object.entries(handlers)) {
      es.addEventListener(name, (m) => fn(parse(m)));
    }
    es.onerror = () => {
      if (es.readyState !== EventSource.CLOSED) indicate('reconnecting', 'reconnecting…');
      else indicate('ended', 'disconnected');
    };
    window.addEventListener('pagehide', () => es.close());
    return es;
  }

  /** Closes a stream from `follow` for good; the indicator says `text`. */
  function end(es, text) {
    es.close();
    indicate('ended', text);
  }

  /**
   * Follows `/api/events` (filtered by `query`, e.g. {device: 'dev-1'}) and
   * calls `onEvent(e)` for each event, and with {kind: 'open'} whenever the
   * stream (re)connects — events may have been missed then, so pages re-read
   * on every call.
   */
  function live(query, onEvent) {
    const qs = new URLSearchParams(Object.entries(query || {}).filter(([, v]) => v)).toString();
    return follow('/api/events' + (qs ? `?${qs}` : ''), {
      onOpen: () => onEvent({ kind: 'open' }),
      onMessage: (e) => onEvent(e || { kind: 'lagged' }),
    });
  }

  return {
    ApiError, api, h, fmtTime, fmtRelative, time, range, badge, deviceLink, opLabel, waitText,
    countsText, progressBar, setRows, problem, refresher, follow, end, live,
  };
})();
