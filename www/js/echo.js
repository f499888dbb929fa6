// echo.js: the echo room, /room/echo.
//
// The smallest possible WebSocket client: open ws://host/ws/chatroom/echo
// (wss:// on an https page), show the greeting, send {"message": X}, show the
// {"message": X} that comes back. It reconnects by itself after a drop, like
// the chat rooms do.

'use strict';

(() => {
  const status = document.getElementById('status');
  const log = document.getElementById('log');
  const messages = document.getElementById('messages');
  const composer = document.getElementById('composer');
  const input = document.getElementById('input');

  let socket = null;
  let attempt = 0;

  // One line in the log; `who` is "you", "echo" or "server".
  function line(who, text, kind) {
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    messages.append(el('li', { class: kind },
      el('div', { class: 'meta' }, el('span', { class: 'who' }, who), timeEl(Date.now())),
      el('p', { class: 'text' }, text)));
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function connect() {
    const ws = new WebSocket(wsUrl('/ws/chatroom/echo'));
    socket = ws;
    setStatus(status, 'connecting');

    ws.addEventListener('open', () => {
      attempt = 0;
      setStatus(status, 'online');
    });

    ws.addEventListener('message', (event) => {
      let frame = null;
      try { frame = JSON.parse(event.data); } catch { /* not JSON: show it raw */ }
      if (frame && typeof frame.message === 'string') {
        // The greeting also carries "status": "connected"; replies do not.
        if (frame.status) line('server', frame.message, 'msg greeting');
        else line('echo', frame.message, 'msg');
      } else {
        line('server', String(event.data), 'sys');
      }
    });

    ws.addEventListener('close', () => {
      socket = null;
      const delay = backoffDelay(attempt++);
      setStatus(status, 'offline', `reconnecting in ${(delay / 1000).toFixed(1)} s`);
      if (attempt === 1) messages.append(el('li', { class: 'sys' }, 'connection lost, reconnecting…'));
      setTimeout(connect, delay);
    });
  }

  composer.addEventListener('submit', (event) => {
    event.preventDefault();
    const text = input.value;
    if (text.trim() === '') return;
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      messages.append(el('li', { class: 'sys error' }, 'not connected yet, one moment…'));
      return;
    }
    socket.send(JSON.stringify({ message: text }));
    line('you', text, 'out mine');
    input.value = '';
  });

  connect();
})();
