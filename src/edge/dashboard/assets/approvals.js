// Pending approvals: each lists the device's upcoming window occurrences
// with an Approve button per occurrence, and a Decline form with a message.
// Approvals are kept by id across live refreshes so a message being typed
// is never wiped. Recent decisions show where each operation went next.
// The logged-in token decides (and is recorded); "on behalf of" adds a
// name beside it. A token that may not decide sees the list read-only.
'use strict';

(() => {
  const { api, h, time, range, badge, deviceLink, opLabel, setRows, problem, refresher, live } = LS;
  const main = document.getElementById('main');
  const pending = document.getElementById('pending');
  const actor = document.getElementById('actor');
  const decides = document.body.dataset.decides === 'yes';
  if (!decides) {
    document.getElementById('deciding').hidden = true;
    document.getElementById('read-only').hidden = false;
    pending.classList.add('read-only');
  }
  actor.value = localStorage.getItem('lockstep.actor') || '';
  actor.addEventListener('change', () => localStorage.setItem('lockstep.actor', actor.value.trim()));

  async function decide(article, path, body, button) {
    const result = article.querySelector('.result');
    body.actor = actor.value.trim();
    if (body.actor) localStorage.setItem('lockstep.actor', body.actor);
    const buttons = article.querySelectorAll('button');
    buttons.forEach((b) => { b.disabled = true; });
    result.className = 'result';
    result.textContent = 'Sending…';
    try {
      const a = await api(path, { method: 'POST', body });
      result.textContent = `${a.status === 'approved' ? 'Approved' : 'Declined'}.`;
      article.dataset.status = a.status;
      refresh();
    } catch (e) {
      result.className = 'result error';
      result.textContent = e.message;
      buttons.forEach((b) => { b.disabled = false; });
      if (button) button.focus();
    }
  }

  function candidates(a, article) {
    if (!decides) {
      return h('ul', { class: 'read-only-candidates' }, a.candidates.map((o) => h('li', {}, range(o))));
    }
    if (a.candidates.length === 0) {
      return h('p', { class: 'notice' }, 'No upcoming window occurrence for this device: add a maintenance window first.');
    }
    return h('table', { class: 'candidates' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Upcoming window'), h('th', { scope: 'col' }, ''))),
      h('tbody', {}, a.candidates.map((o, i) => {
        const button = h('button', {
          type: 'button',
          class: 'approve',
          dataset: { start: String(o.start_ms), end: String(o.end_ms) },
          onclick: () => decide(article, `/api/approvals/${a.id}/approve`, { occurrence: o }, button),
        }, i === 0 ? 'Approve the next window' : 'Approve this window');
        return h('tr', { dataset: { start: String(o.start_ms) } }, h('td', {}, range(o)), h('td', {}, button));
      })));
  }

  function create(a) {
    const article = h('article', { class: 'approval', dataset: { approval: String(a.id), operation: String(a.operation.id), device: a.device } });
    if (!decides) {
      article.append(h('h3', {}), h('div', { class: 'choices' }));
      return article;
    }
    const message = h('textarea', { name: 'message', rows: '1', placeholder: 'e.g. harvest week, not now' });
    const declineButton = h('button', { type: 'submit', class: 'danger decline-button' }, 'Decline');
    const form = h('form', { class: 'decline' },
      h('label', {}, 'Decline with a message', message), declineButton);
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      decide(article, `/api/approvals/${a.id}/decline`, { message: message.value.trim() }, declineButton);
    });
    article.append(h('h3', {}), h('div', { class: 'choices' }), form, h('p', { class: 'result', role: 'status' }));
    return article;
  }

  function update(article, a) {
    article.querySelector('h3').replaceChildren(
      `Approval ${a.id}: `, opLabel(a.operation), ' on ', deviceLink(a.device), ' ', badge(a.operation.status));
    const key = JSON.stringify(a.candidates);
    if (article.dataset.candidates !== key) {
      article.dataset.candidates = key;
      article.querySelector('.choices').replaceChildren(candidates(a, article));
    }
  }

  function renderPending(list) {
    const seen = new Set();
    const articles = list.map((a) => {
      seen.add(String(a.id));
      const article = pending.querySelector(`article[data-approval="${a.id}"]`) || create(a);
      update(article, a);
      return article;
    });
    if (articles.length === 0) {
      pending.replaceChildren(h('p', { class: 'hint empty-note' }, 'Nothing waits for a decision.'));
    } else {
      // Re-appending keeps existing nodes (and what is typed in them).
      pending.querySelectorAll(':scope > :not(article)').forEach((n) => n.remove());
      pending.querySelectorAll(':scope > article').forEach((n) => { if (!seen.has(n.dataset.approval)) n.remove(); });
      pending.append(...articles);
    }
  }

  function renderDecided(list) {
    setRows(document.querySelector('#decided tbody'), list.map((a) => h('tr', { dataset: { approval: String(a.id), operation: String(a.operation.id) } },
      h('td', { class: 'num' }, String(a.id)),
      h('td', {}, deviceLink(a.device)),
      h('td', { class: 'operation' }, opLabel(a.operation), ' ', badge(a.operation.status)),
      h('td', { class: 'decision' }, badge(a.status)),
      h('td', {}, a.approved ? range(a.approved) : '—'),
      h('td', {}, a.decided_by || '—'),
      h('td', {}, a.message || ''),
    )), 'No decisions yet.', 7);
  }

  const refresh = refresher(async () => {
    try {
      const [open, recent] = await Promise.all([
        api('/api/approvals?status=requested'),
        api('/api/approvals?limit=20'),
      ]);
      renderPending(open.approvals);
      renderDecided(recent.approvals.filter((a) => a.status !== 'requested').reverse());
      problem(main, null);
    } catch (e) {
      problem(main, e);
    }
  }, 250);

  refresh();
  live({}, () => refresh());
})();
