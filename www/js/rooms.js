// rooms.js: the rooms table (/room/), fed by GET /api/rooms.
//
// The table is rebuilt from scratch on every answer: it is small (one page),
// and rebuilding keeps the code obvious. The page position lives in the
// address (?offset=50) so that a page of the list can be shared or reloaded.

'use strict';

(() => {
  const LIMIT = 25;             // rows per page
  const REFRESH_MS = 5000;      // how often the numbers are fetched again

  const tbody = document.getElementById('rooms');
  const problem = document.getElementById('rooms-problem');
  const updated = document.getElementById('rooms-updated');
  const prev = document.getElementById('prev');
  const next = document.getElementById('next');
  const pageInfo = document.getElementById('page-info');

  let offset = Math.max(0, parseInt(new URLSearchParams(location.search).get('offset'), 10) || 0);
  let loading = false;

  // One table row for one room object of /api/rooms (README, "Routes"). Names come from users,
  // so everything goes in as text.
  function roomRow(room) {
    const link = el('a', { href: '/room/' + encodeURIComponent(room.name) }, room.name);
    const lastPost = room.last_post ? timeEl(room.last_post, formatRelative) : el('span', { class: 'muted' }, 'never');
    const status = room.status === 'active' ? 'active' : 'idle';
    return el('tr', {},
      el('th', { scope: 'row' }, link),
      el('td', { class: 'num' }, room.online),
      el('td', { class: 'num' }, room.messages),
      el('td', {}, timeEl(room.created, (ms) => new Date(ms).toLocaleDateString())),
      el('td', {}, lastPost),
      el('td', {}, el('span', { class: 'badge ' + status }, status)));
  }

  function render(data) {
    const rows = data.rooms.map(roomRow);
    if (rows.length === 0) {
      rows.push(el('tr', {}, el('td', { colspan: 6, class: 'muted' },
        offset > 0 ? 'No rooms on this page.' : 'No rooms yet. Create the first one below.')));
    }
    tbody.replaceChildren(...rows);

    const total = data.total;
    const first = total === 0 ? 0 : offset + 1;
    const last = Math.min(offset + data.rooms.length, total);
    pageInfo.textContent = `${first}–${last} of ${total}`;
    prev.disabled = offset === 0;
    next.disabled = offset + LIMIT >= total;
    updated.textContent = '(updated ' + new Date().toLocaleTimeString() + ')';
  }

  async function refresh() {
    if (loading) return;
    loading = true;
    try {
      const response = await fetch(`/api/rooms?offset=${offset}&limit=${LIMIT}`, { cache: 'no-store' });
      if (!response.ok) throw new Error('the server answered HTTP ' + response.status);
      render(await response.json());
      problem.hidden = true;
    } catch (err) {
      // Keep the last good table on screen; just say that it is stale.
      problem.textContent = 'Could not load the rooms: ' + err.message + '. Retrying…';
      problem.hidden = false;
    } finally {
      loading = false;
    }
  }

  function goTo(newOffset) {
    offset = Math.max(0, newOffset);
    const url = offset ? '?offset=' + offset : location.pathname;
    history.replaceState(null, '', url);
    refresh();
  }

  prev.addEventListener('click', () => goTo(offset - LIMIT));
  next.addEventListener('click', () => goTo(offset + LIMIT));

  // Poll while the tab is visible; catch up at once when it comes back.
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
  refresh();
})();
