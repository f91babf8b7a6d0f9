// Rollouts, newest first, each with its overall progress bar; `?fleet=`
// narrows the list. Re-read when a rollout or a device operation changes.
'use strict';

(() => {
  const { api, h, time, badge, countsText, progressBar, setRows, problem, refresher, live } = LS;
  const fleet = new URLSearchParams(location.search).get('fleet') || '';
  const main = document.getElementById('main');

  function render(data) {
    setRows(document.querySelector('#rollouts tbody'), data.rollouts.map((r) => {
      const current = r.batches ? Math.min(r.current_batch, r.batches - 1) + 1 : 0;
      return h('tr', { dataset: { rollout: String(r.id), state: r.state } },
        h('td', { class: 'num' }, h('a', { href: `/rollouts/${r.id}` }, `#${r.id}`)),
        h('td', {}, r.fleet, r.tag ? h('span', { class: 'hint' }, ` tag ${r.tag}`) : null),
        h('td', { class: 'target' }, `${r.target_kind === 'release' ? 'release' : 'OS'} ${r.target}`),
        h('td', { class: 'state' }, badge(r.state)),
        h('td', { class: 'bar-cell' }, progressBar(r.progress),
          h('span', { class: 'hint progress-text' }, countsText(r.progress))),
        h('td', { class: 'batch' }, r.batches ? `${current} of ${r.batches}` : '—'),
        h('td', {}, time(r.created_ms), h('span', { class: 'hint' }, ` by ${r.created_by}`)),
        h('td', { class: 'message' }, r.message || ''));
    }), fleet ? `No rollouts in fleet ${fleet}.` : 'No rollouts yet.', 8);
  }

  const refresh = refresher(async () => {
    try {
      render(await api('/api/rollouts' + (fleet ? `?fleet=${encodeURIComponent(fleet)}` : '')));
      problem(main, null);
    } catch (e) {
      problem(main, e);
    }
  }, 1000);

  refresh();
  live({ fleet }, () => refresh());
})();
