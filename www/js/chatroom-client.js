// chatroom-client.js: one chat room, from any page, as an ES module.
//
// The room page uses it, and so can a site that embeds the chat (the
// server's --allow-origin lets that site's pages load this file and call
// the API). What it does, in the order a session meets it:
//
//   1. connect() opens ws(s)://server/ws/chatroom/<room> with ?username= or,
//      for a signed-in user, ?token= from getToken(), which is called
//      before every (re)connect so an expired token is replaced;
//   2. every frame the server sends becomes an event of its type
//      ('welcome', 'message', 'delete', 'join', 'leave', 'presence',
//      'rename', 'error', 'gap'; README, "Wire format"), the parsed frame
//      as the event's `detail`;
//   3. when the connection drops it comes back, with growing pauses, and
//      asks for ?since=<the last id seen>, so nothing is missed or shown
//      twice ('reconnecting' says when); a close that a reconnect cannot
//      fix stops it ('closed' says why): 4001 (kicked), 4403 (not allowed,
//      or banned); 4401 (no valid token) asks getToken() once more first;
//   4. post(), older() (scroll-back through the HTTP API, with the token
//      as Authorization: Bearer), and a moderator's remove() and kick().
//
//   const chat = new ChatroomClient('lobby', { server: 'https://chat.example', getToken });
//   chat.addEventListener('message', (e) => show(e.detail));
//   chat.connect();
//   chat.post('hello');

/** Closes after which reconnecting would not help. */
const FINAL = new Set([4001, 4403]);

/** The pause before reconnect attempt `n` (0, 1, 2...): 500 ms doubling up
 * to 10 s, spread by +-25% so that many clients dropped together do not
 * come back at the same moment. */
export function backoff(n) {
  const base = Math.min(10000, 500 * 2 ** Math.min(n, 10));
  return Math.min(10000, Math.round(base * (0.75 + Math.random() * 0.5)));
}

export class ChatroomClient extends EventTarget {
  /**
   * @param {string} room the room's name (1-64 of A-Z a-z 0-9 _ -)
   * @param {object} [options]
   * @param {string} [options.server] the server's http(s) address; default: this page's
   * @param {string|(() => string)} [options.username] a guest's name
   * @param {() => Promise<string|null>} [options.getToken] a signed-in user's token
   */
  constructor(room, { server = location.origin, username = '', getToken = null } = {}) {
    super();
    this.room = room;
    this.server = server.replace(/\/$/, '');
    this.username = username;
    this.getToken = getToken;
    this.lastId = 0;          // the highest message id seen: where a reconnect resumes
    this.token = null;        // the token of the current connection
    this.socket = null;
    this.wanted = false;      // connect() until close(): come back after drops
    this.attempt = 0;         // reconnects since the last welcome
    this.timer = null;
    this.retriedToken = false; // a 4401 asks for a new token once
  }

  /** Whether a connection is open. */
  get open() {
    return this.socket !== null && this.socket.readyState === WebSocket.OPEN;
  }

  /** Opens the connection (again, if one is open: with the current name). */
  async connect() {
    clearTimeout(this.timer);
    this.timer = null;
    this.wanted = true;
    if (this.socket) {
      const old = this.socket;
      this.socket = null;
      old.close(1000);
    }
    this.token = this.getToken ? await this.getToken() : null;
    if (!this.wanted) return; // close() while the token was on its way
    const params = new URLSearchParams();
    const name = typeof this.username === 'function' ? this.username() : this.username;
    if (this.token) params.set('token', this.token);
    else if (name) params.set('username', name);
    if (this.lastId > 0) params.set('since', String(this.lastId));
    const base = this.server.replace(/^http/, 'ws');
    const query = params.toString();
    const ws = new WebSocket(`${base}/ws/chatroom/${encodeURIComponent(this.room)}${query ? '?' + query : ''}`);
    this.socket = ws;
    this.emit('connecting', {});
    // A socket we replaced may still report in; only the current one counts.
    ws.addEventListener('message', (event) => { if (this.socket === ws) this.onFrame(event.data); });
    ws.addEventListener('close', (event) => {
      if (this.socket !== ws) return;
      this.socket = null;
      this.onClose(event);
    });
  }

  /** Closes the connection for good (until the next connect()). */
  close() {
    this.wanted = false;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) {
      const old = this.socket;
      this.socket = null;
      old.close(1000, 'bye');
    }
  }

  /** Posts `text`; false if not connected. */
  post(text) {
    return this.send({ message: text });
  }

  /** A moderator's delete of message `id`. */
  remove(id) {
    return this.send({ type: 'delete', id });
  }

  /** A moderator's kick of `username`, with an optional ban and reason. */
  kick(username, { banSeconds, reason } = {}) {
    return this.send({ type: 'kick', username, ban_seconds: banSeconds, reason });
  }

  /** Up to `limit` messages before id `before`, oldest first (scroll-back):
   * the API's answer, `{room, messages, oldest_id}`, or null for a room
   * with no stored history. */
  async older(before, limit = 50) {
    const url = `${this.server}/api/rooms/${encodeURIComponent(this.room)}/messages?before=${before}&limit=${limit}`;
    const headers = this.token ? { Authorization: 'Bearer ' + this.token } : {};
    const response = await fetch(url, { cache: 'no-store', headers });
    if (response.status === 404) return null;
    if (!response.ok) throw new Error('HTTP ' + response.status);
    return response.json();
  }

  // ---- inside ---------------------------------------------------------------

  send(frame) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  onFrame(data) {
    if (typeof data !== 'string') return; // the chat protocol is text only
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === 'welcome') {
      this.attempt = 0;
      this.retriedToken = false;
      // The room now ends before what we have seen: its history was wiped
      // (a server restarted without its data). Start afresh.
      if (Number.isInteger(frame.last_id) && frame.last_id < this.lastId) {
        this.lastId = 0;
        this.emit('reset', frame);
      }
      for (const m of frame.history || []) this.seen(m.id);
      if (Number.isInteger(frame.last_id) && !(frame.history || []).length) this.lastId = Math.max(this.lastId, frame.last_id);
    } else if (frame.type === 'message') {
      this.seen(frame.id);
    }
    if (typeof frame.type === 'string') this.emit(frame.type, frame);
  }

  seen(id) {
    if (Number.isInteger(id)) this.lastId = Math.max(this.lastId, id);
  }

  onClose(event) {
    const { code, reason } = event;
    // A token that stopped working (expired, say): ask for a new one, once.
    const renew = code === 4401 && this.getToken && !this.retriedToken;
    if (!this.wanted || FINAL.has(code) || (code === 4401 && !renew)) {
      this.wanted = false;
      this.emit('closed', { code, reason });
      return;
    }
    if (renew) this.retriedToken = true;
    const delay = renew ? 0 : backoff(this.attempt);
    this.attempt += 1;
    this.emit('reconnecting', { code, reason, delay, attempt: this.attempt });
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
