// room.js: one chat room, /room/<name>.
//
// The connection itself (the handshake's query, reconnecting with growing
// pauses and ?since=, which closes are final, scroll-back requests) is the
// client module's, chatroom-client.js, which sites embedding the chat use
// too. This page draws what it reports. The flow, in the order a reader
// meets it below:
//   1. the room name comes from the address, the user name from the form
//      (or a signed-in user's token: a site links to /room/<room>#token=<jwt>;
//      a browser never sends the fragment with the page's request, and the
//      page takes it out of the address bar; the handshake carries it as
//      ?token=, which chatroom never logs);
//   2. connect() asks the client to connect;
//   3. each frame the server sends arrives as an event of its type and is
//      drawn (README, "Wire format");
//   4. onClosed() and onReconnecting() say what the client decided: stop
//      (Close pressed, or a close a reconnect cannot fix), or come back;
//   5. loadOlder() fetches history above the oldest message on screen.
//
// Every message carries the room's sequence number (`id`: 1, 2, 3... without
// gaps). Remembering the highest one we showed (`lastId`) is all it takes to
// never show a message twice and to resume exactly where we left off.

import { ChatroomClient } from '/js/chatroom-client.js';

(() => {
  const NAME_KEY = 'chatroom.username';  // localStorage key for the last name used
  const OLDER_PAGE = 50;                 // messages per "Load older messages" click
  const MAX_CHARS = 4096;                // the server refuses longer messages
  const NEAR_BOTTOM_PX = 48;             // "at the bottom" means within this distance

  // What the close codes we expect from the server mean, for people.
  const CLOSE_REASONS = {
    1003: 'binary frames are not accepted in a chat room',
    1008: 'this connection fell too far behind (slow consumer)',
    1009: 'a message was too big',
    1013: 'the room is full, try again later',
    4401: 'this chat needs you signed in (your token is missing, expired or invalid)',
    4001: 'a moderator removed you from this room',
    4403: 'you may not join this room',
  };
  // A moderator's kick from this page also bans for this long.
  const KICK_BAN_SECONDS = 600;

  // A signed-in user's token, from the address's fragment (#token=...).
  // Read once, then taken out of the address bar (and so out of the
  // history, bookmarks and anything the user copies from it).
  const token = new URLSearchParams(location.hash.slice(1)).get('token');
  if (token) history.replaceState(null, '', location.pathname + location.search);

  const $ = (id) => document.getElementById(id);
  const ui = {
    title: $('room-title'), status: $('status'), join: $('join'), username: $('username'),
    connect: $('connect'), close: $('close'), log: $('log'), older: $('older'),
    messages: $('messages'), composer: $('composer'), input: $('input'),
    online: $('online'), onlineCount: $('online-count'),
  };

  // ---- 1. names ----------------------------------------------------------

  // "/room/welcome" and "/room/welcome/" both mean "welcome".
  function roomFromPath(path) {
    const raw = path.replace(/^\/room\/?/, '').replace(/\/+$/, '');
    try {
      return decodeURIComponent(raw);
    } catch {
      return raw; // a broken %-escape; ROOM_RE will reject it below
    }
  }

  function loadName() {
    try { return localStorage.getItem(NAME_KEY) || ''; } catch { return ''; }
  }

  function saveName(name) {
    // Names the server made up for us (guest-7) are not worth keeping.
    if (!name || /^guest-\d+$/.test(name)) return;
    try { localStorage.setItem(NAME_KEY, name); } catch { /* storage disabled: fine */ }
  }

  const room = roomFromPath(location.pathname);

  // ---- state -------------------------------------------------------------

  let client = null;        // the room's ChatroomClient (made once the room name checks out)
  let me = '';              // our name, as the server knows it
  let moderator = false;    // the welcome said our token moderates this room
  let lastId = 0;           // highest message id shown
  let oldestId = null;      // lowest message id shown (null: none yet)
  let floorId = 1;          // nothing older than this exists any more
  let loadingOlder = false;
  const shown = new Set();  // ids of the messages on screen
  const online = new Map(); // name -> number of connections using it
  let onlineCount = 0;      // the server's latest online_count

  // ---- rendering ---------------------------------------------------------

  // Runs `change` and, if the reader was at the bottom of the log before,
  // keeps them there; someone scrolled up to read is left alone.
  function stickToBottom(change) {
    const log = ui.log;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < NEAR_BOTTOM_PX;
    change();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // The same name always gets the same of eight colours.
  function hueClass(name) {
    let hash = 0;
    for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
    return 'hue-' + (hash % 8);
  }

  function messageEl(m) {
    // A deleted message keeps its place (its id) with no name and no text.
    if (m.deleted) {
      return el('li', { class: 'msg deleted', 'data-id': m.id }, el('p', { class: 'text' }, 'message deleted'));
    }
    const mine = m.username === me;
    return el('li', { class: mine ? 'msg mine' : 'msg', 'data-id': m.id },
      el('div', { class: 'meta' },
        el('span', { class: 'who ' + hueClass(m.username) }, m.username),
        // A signed-in user's message ("verified": true): the name is theirs.
        m.verified ? el('span', { class: 'verified', title: 'signed in' }, '✓') : null,
        timeEl(m.ts),
        // A moderator's action; its mark is drawn by CSS, so the line's
        // text stays the message's.
        moderator ? el('button', { type: 'button', class: 'delete', 'data-id': m.id, title: 'delete this message' }) : null),
      el('p', { class: 'text' }, m.message));
  }

  // A grey line about the room rather than from a person.
  function systemLine(text, kind) {
    stickToBottom(() => ui.messages.append(el('li', { class: kind ? 'sys ' + kind : 'sys' }, text)));
  }

  // Appends a message that arrived live or in the welcome history. Anything
  // at or below lastId is already on screen (a resend after a reconnect).
  function addMessage(m) {
    if (!Number.isInteger(m.id) || m.id <= lastId) return;
    stickToBottom(() => ui.messages.append(messageEl(m)));
    shown.add(m.id);
    lastId = m.id;
    if (oldestId === null) oldestId = m.id;
  }

  // Redraws the online list. `count` is the server's online_count when the
  // frame has one; it can exceed the names we know (in big rooms the server
  // stops naming who comes and goes), so it is shown as given.
  function renderOnline(count) {
    if (Number.isInteger(count)) onlineCount = count;
    const names = [...online.keys()].sort((a, b) => a.localeCompare(b));
    ui.online.replaceChildren(...names.map((name) =>
      el('li', { class: name === me ? 'me ' + hueClass(name) : hueClass(name) }, name,
        moderator && name !== me
          ? el('button', { type: 'button', class: 'kick', 'data-name': name, title: `remove ${name} (banned for ${KICK_BAN_SECONDS / 60} min)` })
          : null)));
    ui.onlineCount.textContent = String(onlineCount);
  }

  function addOnline(name) {
    online.set(name, (online.get(name) || 0) + 1);
  }

  function removeOnline(name) {
    const n = online.get(name) || 0;
    if (n > 1) online.set(name, n - 1); else online.delete(name);
  }

  function updateOlder() {
    const before = oldestId ?? lastId + 1;
    ui.older.disabled = loadingOlder || before <= floorId;
  }

  // ---- 2. connecting -----------------------------------------------------

  function connect() {
    ui.close.disabled = false;
    saveName(ui.username.value.trim());
    setStatus(ui.status, 'connecting');
    client.connect();
  }

  function disconnect() {
    client.close();
    ui.close.disabled = true;
    goOffline('offline');
    systemLine('disconnected');
  }

  function goOffline(detail) {
    setStatus(ui.status, 'offline', detail);
    online.clear();
    renderOnline(0);
  }

  // ---- 3. frames from the server ------------------------------------------

  // What each frame type does to the page (a type newer than this page
  // has no entry, and is ignored).
  const onFrame = {
    welcome: (f) => onWelcome(f),
    message: (f) => addMessage(f),
    join: (f) => {
      addOnline(f.username);
      renderOnline(f.online_count);
      systemLine(f.username + ' joined');
    },
    leave: (f) => {
      removeOnline(f.username);
      renderOnline(f.online_count);
      systemLine(f.username + ' left');
    },
    presence: (f) => onPresence(f),
    rename: (f) => onRename(f),
    delete: (f) => onDelete(f),
    error: (f) => systemLine(f.message || f.code || 'error', 'error'),
    gap: (f) => {
      if (Number.isInteger(f.oldest_id)) floorId = Math.max(floorId, f.oldest_id);
      updateOlder();
      systemLine('older messages are no longer available');
    },
  };

  function onWelcome(f) {
    me = f.username || me;
    moderator = f.moderator === true;
    ui.username.value = me;
    if (Number.isInteger(f.last_id) && f.last_id < lastId) {
      // The room now ends before what we have seen: its history was wiped
      // (a server restarted without its data). Start the list afresh.
      ui.messages.replaceChildren();
      shown.clear();
      lastId = 0;
      oldestId = null;
      floorId = 1;
      systemLine('the room’s history was reset on the server');
    }
    online.clear();
    for (const name of f.online || []) addOnline(name);
    renderOnline(f.online_count);
    for (const m of f.history || []) addMessage(m);
    // With an empty history, still remember where the room is, so that a
    // reconnect asks only for newer messages and scroll-back knows its start.
    if (Number.isInteger(f.last_id) && shown.size === 0) lastId = Math.max(lastId, f.last_id);
    updateOlder();
    setStatus(ui.status, 'online', 'connected as ' + me);
    systemLine('connected as ' + me);
    // Someone who just pressed Connect wants the latest messages and to type next.
    if (ui.join.contains(document.activeElement)) {
      ui.log.scrollTop = ui.log.scrollHeight;
      ui.input.focus();
    }
  }

  function onPresence(f) {
    const joined = Array.isArray(f.joined) ? f.joined : [];
    const left = Array.isArray(f.left) ? f.left : [];
    joined.forEach(addOnline);
    left.forEach(removeOnline);
    renderOnline(f.online_count);
    const parts = [];
    if (joined.length) parts.push(joined.join(', ') + ' joined');
    if (left.length) parts.push(left.join(', ') + ' left');
    if (parts.length) systemLine(parts.join('; '));
  }

  // A message was taken down: its line becomes the tombstone history shows.
  function onDelete(f) {
    if (!Number.isInteger(f.id)) return;
    const line = ui.messages.querySelector(`li.msg[data-id="${f.id}"]`);
    if (line) line.replaceWith(messageEl({ id: f.id, deleted: true }));
  }

  function onRename(f) {
    removeOnline(f.from);
    addOnline(f.to);
    if (f.from === me) {
      me = f.to;
      ui.username.value = me;
      saveName(me);
    }
    renderOnline(f.online_count);
    systemLine(f.from + ' is now ' + f.to);
  }

  // ---- 4. closes and reconnects --------------------------------------------

  // The client stopped: Close was pressed, or the server closed in a way
  // a reconnect cannot fix (4001 kicked, 4401 no valid token, 4403 not
  // allowed or banned).
  function onClosed({ code, reason }) {
    const meaning = CLOSE_REASONS[code];
    if (meaning) systemLine(`closed by the server (${code}): ${reason || meaning}`, 'error');
    goOffline('offline');
  }

  // The client comes back after a pause; say so once, not on every try.
  function onReconnecting({ code, reason, delay, attempt }) {
    // 4401: the client asks for the token once more before it gives up.
    if (code === 4401) return goOffline('checking the token again');
    const meaning = CLOSE_REASONS[code];
    if (meaning) systemLine(`closed by the server (${code}): ${reason || meaning}`, 'error');
    if (attempt === 1) systemLine('connection lost, reconnecting…');
    goOffline(`reconnecting in ${(delay / 1000).toFixed(1)} s`);
  }

  // When the network comes back, don't wait out the rest of a long pause.
  window.addEventListener('online', () => {
    if (client && client.wanted && !client.socket) {
      client.attempt = 0;
      client.connect();
    }
  });

  // ---- sending -------------------------------------------------------------


  function send(event) {
    event.preventDefault();
    const text = ui.input.value;
    if (text.trim() === '') return;
    if (Array.from(text).length > MAX_CHARS) {
      systemLine(`a message can be at most ${MAX_CHARS} characters`, 'error');
      return;
    }
    if (!client.post(text)) {
      systemLine('not connected: press Connect first', 'error');
      return;
    }
    ui.input.value = '';
    ui.input.focus();
  }

  // ---- 5. scroll-back ------------------------------------------------------

  async function loadOlder() {
    const before = oldestId ?? lastId + 1;
    loadingOlder = true;
    updateOlder();
    try {
      const data = await client.older(before, OLDER_PAGE);
      if (data === null) {
        floorId = before; // the room has no stored history at all
        return;
      }
      const all = Array.isArray(data.messages) ? data.messages : [];
      const fresh = all.filter((m) => Number.isInteger(m.id) && m.id < before && !shown.has(m.id));
      if (fresh.length) prepend(fresh);
      // A short page means we reached the start of what the server keeps.
      if (all.length < OLDER_PAGE) floorId = Math.max(floorId, oldestId ?? before);
    } catch (err) {
      systemLine('could not load older messages: ' + err.message, 'error');
    } finally {
      loadingOlder = false;
      updateOlder();
    }
  }

  // Puts older messages above the list without moving what the reader sees.
  function prepend(messages) {
    const log = ui.log;
    const fromBottom = log.scrollHeight - log.scrollTop;
    const batch = document.createDocumentFragment();
    for (const m of messages) {
      batch.append(messageEl(m));
      shown.add(m.id);
    }
    ui.messages.prepend(batch);
    oldestId = Math.min(oldestId ?? Infinity, messages[0].id);
    lastId = Math.max(lastId, messages[messages.length - 1].id);
    log.scrollTop = log.scrollHeight - fromBottom;
  }

  // ---- start ---------------------------------------------------------------

  setStatus(ui.status, 'offline');
  ui.username.value = loadName();

  if (!ROOM_RE.test(room)) {
    ui.title.textContent = 'No such room';
    systemLine('"' + room + '" is not a room name: use 1 to 64 letters, digits, "-" or "_".', 'error');
    ui.connect.disabled = true;
    ui.input.disabled = true;
    return;
  }

  ui.title.textContent = '#' + room;
  document.title = '#' + room + ' – chatroom';
  client = new ChatroomClient(room, {
    username: () => ui.username.value.trim(),
    // The fragment's token, the same every time: a 4401 cannot be mended here.
    getToken: token ? async () => token : null,
  });
  for (const [type, handle] of Object.entries(onFrame)) {
    client.addEventListener(type, (event) => handle(event.detail));
  }
  client.addEventListener('closed', (event) => onClosed(event.detail));
  client.addEventListener('reconnecting', (event) => onReconnecting(event.detail));
  ui.join.addEventListener('submit', (event) => { event.preventDefault(); connect(); });
  ui.close.addEventListener('click', disconnect);
  ui.composer.addEventListener('submit', send);
  ui.older.addEventListener('click', loadOlder);
  ui.messages.addEventListener('click', (event) => {
    // A moderator's frames: the server checks the token's `moderate`
    // claim, and answers anyone else with a `forbidden` error.
    const button = event.target.closest('button.delete');
    if (button) client.remove(Number(button.dataset.id));
  });
  ui.online.addEventListener('click', (event) => {
    const button = event.target.closest('button.kick');
    if (button) client.kick(button.dataset.name, { banSeconds: KICK_BAN_SECONDS, reason: `removed by ${me}` });
  });
})();
