// One device: status, blocks with their running versions and locks, the
// operation in flight with what it waits on, recent operations, and the
// timeline of intents and answers. Re-read whenever an event for this
// device arrives.
'use strict';

(() => {
  const { api, h, time, range, badge, opLabel, waitText, setRows, problem, refresher, live, fmtTime } = LS;
  const id = document.body.dataset.device;
  const main = document.getElementById('main');
  const enc = encodeURIComponent(id);

  function facts(d) {
    const r = d.report;
    const rows = [
      ['Fleet', d.device.fleet],
      ['Tags', d.device.tags.length ? d.device.tags.join(', ') : '—'],
      ['Release', r && r.current_release ? r.current_release : '—'],
      ['OS version', r && r.os_version ? r.os_version : '—'],
      ['Agent', r ? r.agent_version : 'never connected'],
      ['Last report', r ? time(r.reported_ms) : '—'],
      ['Registered', time(d.device.created_ms)],
    ];
    if (d.device.credential_revoked) rows.push(['Credential', 'revoked']);
    document.getElementById('facts').replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  function waitItem(w) {
    return h('li', { class: 'wait', dataset: { block: w.block, reason: w.reason } },
      'Waiting on ', h('strong', {}, w.block), "'s lock — reason ", h('code', { class: 'reason' }, w.reason),
      w.because_of ? ` (because ${w.because_of} restarts)` : null,
      w.handover ? ', handover possible' : null,
      w.asked_at_ms ? [' · asked ', time(w.asked_at_ms)] : null,
      w.deferred_until_ms ? [' · deferred until ', time(w.deferred_until_ms)] : null);
  }

  function operation(op) {
    const box = document.getElementById('operation');
    if (!op) {
      box.className = 'card none';
      box.replaceChildren(h('p', {}, 'None: nothing is under way on this device.'));
      box.dataset.status = '';
      return;
    }
    box.className = 'card';
    box.dataset.status = op.status;
    box.dataset.operation = String(op.id);
    box.replaceChildren(...[
      h('p', {}, h('strong', {}, opLabel(op)), ' ', badge(op.status), ' · created ', time(op.created_ms)),
      op.waiting_on.length ? h('ul', { class: 'waits' }, op.waiting_on.map(waitItem)) : null,
      op.window ? h('p', {}, 'Window: ', range(op.window)) : null,
      op.phase ? h('p', {}, 'Phase: ', op.phase) : null,
      op.interruptions ? h('p', {}, `Interrupted ${op.interruptions} time(s), trying again: `, op.interrupted || '') : null,
      op.force ? h('p', {}, `Forced over the locks of ${op.force.blocks.join(', ')}: ${op.force.reason}`) : null,
      op.error ? h('p', { class: 'error' }, op.error) : null,
    ].filter(Boolean));
  }

  function blocks(d) {
    setRows(document.querySelector('#blocks tbody'), d.blocks.map((b) => {
      const held = b.lock && b.lock.held;
      return h('tr', { dataset: { block: b.block } },
        h('th', { scope: 'row' }, b.block),
        h('td', {}, b.version || '—'),
        h('td', { class: `lock ${held ? 'lock-held' : 'lock-free'}` }, held ? 'held' : 'free'),
        h('td', { class: 'num' }, b.lock ? String(b.lock.generation) : '0'),
        h('td', {}, b.lock && b.lock.since_ms ? time(b.lock.since_ms) : '—'),
        h('td', { class: 'waited' }, b.waited_on ? waitText(b.waited_on) : '—'));
    }), 'The agent has not reported any block yet.', 6);
  }

  function operations(list) {
    setRows(document.querySelector('#operations tbody'), list.map((op) => h('tr', { dataset: { operation: String(op.id) } },
      h('td', {}, opLabel(op)),
      h('td', {}, badge(op.status)),
      h('td', {}, time(op.created_ms)),
      h('td', {}, time(op.updated_ms)),
      h('td', {}, op.error || (op.waiting_on.length ? op.waiting_on.map(waitText).join('; ') : '')),
    )), 'No operations yet.', 5);
  }

  function timeline(t) {
    setRows(document.querySelector('#timeline tbody'), t.entries.map((e) => h('tr', { dataset: { direction: e.direction, kind: e.kind } },
      h('td', {}, time(e.at_ms)),
      h('td', { class: `dir-${e.direction}`, title: e.direction === 'sent' ? 'sent to the device' : 'answer from the device' },
        e.direction === 'sent' ? '→' : '←'),
      h('td', { class: 'num' }, String(e.seq)),
      h('td', {}, e.operation ? `#${e.operation}` : '—'),
      h('td', {}, h('code', {}, e.kind)),
      h('td', {}, e.block || '—'),
      h('td', {}, e.summary, e.until_ms ? ` until ${fmtTime(e.until_ms)}` : ''),
    )), 'Nothing sent to this device yet.', 7);
  }

  const refresh = refresher(async () => {
    try {
      const [d, t] = await Promise.all([
        api(`/api/devices/${enc}`),
        api(`/api/devices/${enc}/timeline?limit=50`),
      ]);
      document.getElementById('device-id').textContent = d.device.id;
      document.getElementById('device-status').replaceChildren(badge(d.device.status));
      const crumb = document.getElementById('crumb-fleet');
      crumb.textContent = d.device.fleet;
      crumb.href = `/?fleet=${encodeURIComponent(d.device.fleet)}`;
      facts(d);
      operation(d.operation);
      blocks(d);
      operations(d.recent_operations);
      timeline(t);
      problem(main, null);
    } catch (e) {
      problem(main, e);
    }
  }, 150);

  refresh();
  live({ device: id }, () => refresh());
})();
