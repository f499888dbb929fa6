// common.js: small helpers shared by every page.
//
// Loaded first (with `defer`) by each page that needs it, so the page scripts
// after it can call these functions by name. Nothing here touches the network
// except wsUrl(), which only builds an address.

'use strict';

// A room name, exactly as the server accepts it (README, "Wire format").
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

// Builds an element without ever parsing HTML, so text from other people can
// never turn into markup: el('li', {class: 'msg', 'data-id': 4}, 'hi <b>').
// Strings and numbers among the children become text nodes; null is skipped.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Shows a connection state on the #status element: its text is exactly one
// of "connecting", "online", "offline", and data-state says the same for CSS
// and for tests. `detail` goes into the tooltip (e.g. "retrying in 2.0 s").
function setStatus(node, state, detail) {
  node.textContent = state;
  node.dataset.state = state;
  node.title = detail || state;
}

// How long to wait before reconnect attempt number `attempt` (0, 1, 2...):
// 500 ms doubling up to 10 s, then spread by +-25% at random so that a
// thousand browsers dropped by one server restart do not all knock at the
// same millisecond when it comes back.
function backoffDelay(attempt) {
  const base = Math.min(10000, 500 * 2 ** Math.min(attempt, 10));
  return Math.min(10000, Math.round(base * (0.75 + Math.random() * 0.5)));
}

// ws:// on http pages, wss:// on https pages, same host and port.
function wsUrl(path) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return scheme + '//' + location.host + path;
}

// "14:05" today, "3 Mar, 14:05" on other days, in the reader's own locale.
function formatTime(ms) {
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleString([], { day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit' });
}

// "just now", "5 minutes ago", "yesterday"...
const RELATIVE = new Intl.RelativeTimeFormat([], { numeric: 'auto' });
function formatRelative(ms) {
  const seconds = (ms - Date.now()) / 1000;
  if (Math.abs(seconds) < 45) return 'just now';
  const steps = [[60, 'second'], [60, 'minute'], [24, 'hour'], [30, 'day'], [12, 'month'], [Infinity, 'year']];
  let value = seconds;
  for (const [size, unit] of steps) {
    if (Math.abs(value) < size) return RELATIVE.format(Math.round(value), unit);
    value /= size;
  }
  return '';
}

// A <time> element: visible text from `format`, full local date in the tooltip.
function timeEl(ms, format) {
  return el('time', { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() },
    (format || formatTime)(ms));
}

// The "open a room" form on the home and rooms pages: checks the name the
// same way the server will, and says what is wrong instead of navigating.
function bindRoomForm(form) {
  const input = form.querySelector('#room-name');
  const error = form.querySelector('#room-error');
  const clear = () => {
    error.hidden = true;
    error.textContent = '';
    input.removeAttribute('aria-invalid');
  };
  input.addEventListener('input', clear);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const name = input.value.trim();
    if (!ROOM_RE.test(name)) {
      error.textContent = name === ''
        ? 'Type a room name first.'
        : 'A room name is 1 to 64 letters, digits, "-" or "_" (no spaces).';
      error.hidden = false;
      input.setAttribute('aria-invalid', 'true');
      input.focus();
      return;
    }
    clear();
    location.href = '/room/' + encodeURIComponent(name);
  });
}

{
  const form = document.getElementById('room-form');
  if (form) bindRoomForm(form);
}
