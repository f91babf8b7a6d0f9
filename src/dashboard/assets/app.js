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

  /**
   * Follows `/api/events` (filtered by `query`, e.g. {device: 'dev-1'}) and
   * calls `onEvent(e)` for each event, and with {kind: 'open'} whenever the
   * stream (re)connects — events may have been missed then, so pages re-read
   * on every call. The header's indicator shows the connection state, and
   * `document.body.dataset.liveEvents` counts events received.
   */
  function live(query, onEvent) {
    const indicator = document.getElementById('live');
    const state = (s, text) => {
      if (!indicator) return;
      indicator.dataset.state = s;
      indicator.textContent = text;
    };
    const qs = new URLSearchParams(Object.entries(query || {}).filter(([, v]) => v)).toString();
    const es = new EventSource('/api/events' + (qs ? `?${qs}` : ''));
    let received = 0;
    state('connecting', 'connecting…');
    es.onopen = () => {
      state('live', 'live');
      onEvent({ kind: 'open' });
    };
    es.onmessage = (m) => {
      let e;
      try {
        e = JSON.parse(m.data);
      } catch (_) {
        e = { kind: 'lagged' };
      }
      received += 1;
      document.body.dataset.liveEvents = String(received);
      onEvent(e);
    };
    es.onerror = () => state('reconnecting', 'reconnecting…');
    window.addEventListener('pagehide', () => es.close());
    return es;
  }

  return {
    ApiError, api, h, fmtTime, fmtRelative, time, range, badge, deviceLink, opLabel, waitText,
    setRows, problem, refresher, live,
  };
})();
