// One rollout, live: header (target, state, message), facts, overall and
// per-batch progress bars, the blocks whose locks hold devices up (and why),
// members by device status, and pause / resume / abort with a reason. The
// status comes from /api/rollouts/<id>/events, which sends it on every change
// and ends after the final one; the page then closes the stream. The
// logged-in token acts (and is recorded); "on behalf of" adds a name beside
// it. A token that may not act on the rollout's fleet sees no buttons.
'use strict';

(() => {
  const { api, h, time, badge, countsText, progressBar, setRows, problem, follow, end } = LS;
  const id = document.body.dataset.rollout;
  const acts = document.body.dataset.acts === 'yes';
  const main = document.getElementById('main');
  const actor = document.getElementById('actor');
  const reason = document.getElementById('reason');
  const result = document.getElementById('action-result');
  const buttons = {
    pause: document.getElementById('pause'),
    resume: document.getElementById('resume'),
    abort: document.getElementById('abort'),
  };
  if (!acts) {
    document.getElementById('actions').hidden = true;
    document.getElementById('read-only').hidden = false;
  }
  actor.value = localStorage.getItem('lockstep.actor') || '';
  actor.addEventListener('change', () => localStorage.setItem('lockstep.actor', actor.value.trim()));
  document.getElementById('crumb-id').textContent = `#${id}`;

  let state = null;
  let busy = false;

  function amounts(s) {
    const parts = [];
    if (s.canary) parts.push(`canary of ${s.canary}`);
    parts.push(s.batches.length ? `batches of ${s.batches.join(', ')}` : 'then everyone left');
    if (s.max_in_flight) parts.push(`at most ${s.max_in_flight} in flight`);
    if (s.soak_seconds) parts.push(`soak ${s.soak_seconds} s`);
    parts.push(`next batch at ${s.success_threshold_percent}% succeeded`);
    parts.push(`${s.on_error} at ${s.error_threshold} failed`);
    return parts.join('; ');
  }

  function batchName(b, r) {
    return b.index === 0 && r.strategy.canary ? 'Canary' : `Batch ${b.index + 1}`;
  }

  function renderButtons() {
    const running = state === 'running';
    const paused = state === 'paused';
    buttons.pause.disabled = !acts || busy || !running;
    buttons.resume.disabled = !acts || busy || !paused;
    buttons.abort.disabled = !acts || busy || !(running || paused);
  }

  function render(s) {
    const r = s.rollout;
    // An action's outcome is stale once the state moves on by itself.
    if (state !== null && state !== r.state && !busy) {
      result.className = 'result';
      result.textContent = '';
    }
    state = r.state;
    document.body.dataset.state = r.state;
    const target = `${r.target_kind === 'release' ? 'release' : 'OS'} ${r.target}`;
    document.getElementById('title').textContent = `Rollout #${r.id}: ${target}`;
    document.title = `Rollout #${r.id} · Lockstep`;
    document.getElementById('state').replaceChildren(badge(r.state));
    const message = document.getElementById('message');
    message.hidden = !r.message;
    message.textContent = r.message;

    const facts = [
      ['Fleet', h('span', {}, h('a', { href: `/?fleet=${encodeURIComponent(r.fleet)}` }, r.fleet),
        r.tag ? ` (devices tagged ${r.tag})` : '')],
      ['Devices', `${r.devices} in ${s.batches.length} batch${s.batches.length === 1 ? '' : 'es'}` +
        (r.skipped ? `; ${r.skipped} already at the target` : '')],
      ['Strategy', amounts(r.strategy)],
      ['Current batch', r.active && s.batches.length
        ? batchName(s.batches[Math.min(r.current_batch, s.batches.length - 1)], r) : '—'],
    ];
    if (s.soak_until_ms) {
      facts.push(['Soaking until', h('span', { id: 'soak' }, time(s.soak_until_ms))]);
    }
    facts.push(['Started', h('span', {}, time(r.created_ms), ` by ${r.created_by}`)]);
    facts.push(['Last change', time(r.updated_ms)]);
    document.getElementById('facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));

    const overall = progressBar(s.progress);
    overall.classList.add('big');
    document.getElementById('overall').replaceChildren(overall);
    document.getElementById('overall-text').textContent = countsText(s.progress);

    setRows(document.querySelector('#batches tbody'), s.batches.map((b) =>
      h('tr', { class: b.current ? 'current-batch' : null, dataset: { batch: String(b.index) } },
        h('th', { scope: 'row' }, batchName(b, r), b.current ? h('span', { class: 'hint' }, ' (current)') : null),
        h('td', { class: 'num' }, String(b.size)),
        h('td', { class: 'bar-cell' }, progressBar(b)),
        h('td', { class: 'counts' }, countsText(b)))), 'No devices needed this rollout.', 4);

    setRows(document.querySelector('#waits tbody'), s.waiting_lock.map((w) =>
      h('tr', { dataset: { block: w.block, reason: w.reason } },
        h('th', { scope: 'row', class: 'block' }, w.block),
        h('td', { class: 'reason' }, h('code', {}, w.reason), ' — ', h('span', { class: 'reason-text' }, w.reason_text)),
        h('td', { class: 'num devices' }, String(w.devices)))),
    'No device waits on a lock.', 3);

    setRows(document.querySelector('#statuses tbody'), s.device_statuses.map((c) =>
      h('tr', { dataset: { status: c.status } },
        h('td', {}, h('a', { href: `/?fleet=${encodeURIComponent(r.fleet)}&status=${c.status}` }, badge(c.status))),
        h('td', { class: 'num' }, String(c.devices)))), 'No member devices.', 2);
    renderButtons();
  }

  async function act(action) {
    const who = actor.value.trim();
    const why = reason.value.trim();
    result.className = 'result error';
    if (!why) {
      result.textContent = 'Give a reason: it is written to the audit log.';
      reason.focus();
      return;
    }
    if (who) localStorage.setItem('lockstep.actor', who);
    busy = true;
    renderButtons();
    result.className = 'result';
    result.textContent = 'Sending…';
    try {
      const s = await api(`/api/rollouts/${id}/${action}`, { method: 'POST', body: { actor: who, reason: why } });
      render(s);
      result.textContent = `${action === 'pause' ? 'Paused' : action === 'resume' ? 'Resumed' : 'Aborted'}.`;
      reason.value = '';
    } catch (e) {
      result.className = 'result error';
      result.textContent = e.message;
    } finally {
      busy = false;
      renderButtons();
    }
  }

  for (const [action, button] of Object.entries(buttons)) {
    button.addEventListener('click', () => act(action));
  }
  document.getElementById('actions').addEventListener('submit', (ev) => ev.preventDefault());

  const es = follow(`/api/rollouts/${id}/events`, {
    onMessage: (s) => {
      if (!s || !s.rollout) return;
      problem(main, null);
      render(s);
      // The server ends the stream after the final status; closing it
      // here keeps the browser from reconnecting.
      if (!s.rollout.active) end(es, `final: ${s.rollout.state}`);
    },
    handlers: {
      problem: (p) => problem(main, new Error((p && p.error) || 'the status could not be read')),
    },
  });
})();
