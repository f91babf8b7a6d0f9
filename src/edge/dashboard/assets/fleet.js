// The fleet overview: device counts per status for each fleet (each count
// links to the devices in that status), and the devices with what their
// current operation waits on. Filters and the page live in the URL.
'use strict';

(() => {
  const { api, h, setRows, badge, deviceLink, opLabel, waitText, problem, refresher, live } = LS;
  const params = new URLSearchParams(location.search);
  const filter = {
    fleet: params.get('fleet') || '',
    status: params.get('status') || '',
    page_token: params.get('page_token') || '',
  };
  const form = document.getElementById('filters');
  const main = document.getElementById('main');

  function link(query) {
    const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString();
    return q ? `/?${q}` : '/';
  }

  function fillSelect(select, values, current) {
    const keep = select.options[0];
    select.replaceChildren(keep, ...values.map(([v, label]) =>
      h('option', { value: v, selected: v === current }, label)));
  }

  /** Statuses shown as columns only when some fleet has such a device. */
  const RARE = ['unknown', 'done'];

  function renderFleets(all) {
    const shown = all.statuses.filter((s) => !RARE.includes(s) || all.fleets.some((f) => f.counts[s]));
    const data = { ...all, statuses: shown };
    const table = document.getElementById('fleets');
    table.tHead.rows[0].replaceChildren(
      h('th', { scope: 'col' }, 'Fleet'),
      h('th', { scope: 'col', class: 'num' }, 'Devices'),
      ...data.statuses.map((s) => h('th', { scope: 'col', class: 'num' }, badge(s))),
    );
    setRows(table.tBodies[0], data.fleets.map((f) => h('tr', { dataset: { fleet: f.id } },
      h('th', { scope: 'row' }, h('a', { href: link({ fleet: f.id }) }, f.id),
        f.name ? h('span', { class: 'hint' }, ` ${f.name}`) : null),
      h('td', { class: 'num' }, String(f.devices)),
      ...data.statuses.map((s) => {
        const n = f.counts[s] || 0;
        return h('td', { class: n ? 'num' : 'num zero', dataset: { status: s } },
          n ? h('a', { href: link({ fleet: f.id, status: s }) }, String(n)) : '0');
      }),
    )), 'No fleets yet.', data.statuses.length + 2);
    fillSelect(form.elements.fleet, data.fleets.map((f) => [f.id, f.id]), filter.fleet);
    fillSelect(form.elements.status, all.statuses.map((s) => [s, s.replace(/_/g, ' ')]), filter.status);
  }

  function renderDevices(data) {
    const tbody = document.querySelector('#devices tbody');
    setRows(tbody, data.devices.map((d) => h('tr', { dataset: { device: d.id } },
      h('td', {}, deviceLink(d.id)),
      h('td', {}, d.fleet),
      h('td', { class: 'status' }, badge(d.status)),
      h('td', {}, d.operation ? [opLabel(d.operation), ' ', badge(d.operation.status)] : '—'),
      h('td', { class: 'waiting' }, d.waiting_on.length
        ? h('ul', { class: 'waits' }, d.waiting_on.map((w) =>
          h('li', { dataset: { block: w.block, reason: w.reason } }, waitText(w))))
        : '—'),
    )), filter.status || filter.fleet ? 'No devices match.' : 'No devices yet.', 5);
    const next = document.getElementById('next-page');
    next.hidden = !data.next_page_token;
    if (data.next_page_token) next.href = link({ ...filter, page_token: data.next_page_token });
    const first = document.getElementById('first-page');
    first.hidden = !filter.page_token;
    first.href = link({ ...filter, page_token: '' });
  }

  const refresh = refresher(async () => {
    try {
      const query = new URLSearchParams(Object.entries(filter).filter(([, v]) => v)).toString();
      const [fleets, devices] = await Promise.all([
        api('/api/fleets'),
        api('/api/devices' + (query ? `?${query}` : '')),
      ]);
      renderFleets(fleets);
      renderDevices(devices);
      problem(main, null);
    } catch (e) {
      problem(main, e);
    }
  }, 500);

  form.addEventListener('change', () => {
    location.href = link({ fleet: form.elements.fleet.value, status: form.elements.status.value });
  });

  refresh();
  live({}, () => refresh());
})();
