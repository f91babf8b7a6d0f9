// The login page: sends the pasted token to /api/login (which keeps it in an
// HttpOnly cookie), then goes where the person was going (`?next=`, a path
// on this site only). A link ending `#token=<token>` (as `lockstep demo`
// prints) logs in by itself; the token is taken out of the address at once.
'use strict';

(() => {
  const { api } = LS;
  const form = document.getElementById('login');
  const input = document.getElementById('token');
  const result = document.getElementById('result');

  /** Only a path on this site: never `//elsewhere` or `https://…`. */
  function next() {
    const n = new URLSearchParams(location.search).get('next') || '/';
    return n.startsWith('/') && !n.startsWith('//') && !n.startsWith('/login') ? n : '/';
  }

  async function login(token) {
    result.className = 'result';
    result.textContent = 'Checking…';
    try {
      await api('/api/login', { method: 'POST', body: { token }, login: true });
      location.replace(next());
    } catch (e) {
      result.className = 'result error';
      result.textContent = e.message;
      input.focus();
    }
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    login(input.value.trim());
  });

  const fromLink = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromLink) {
    history.replaceState(null, '', location.pathname + location.search);
    login(fromLink);
  } else {
    input.focus();
  }
})();
