// embed.test.mjs: a site on another origin embeds a room with the client
// module, as the README shows. A small Node server plays the site: it
// serves a page that imports /js/chatroom-client.js from the chat server,
// and mints its users' tokens at /token (HS256 with node:crypto alone).
// The chat server lists the site in --allow-origin, which lets the page
// load the module, open the WebSocket and read the API (CORS, with the
// preflight its Authorization header needs).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';

import {
  TEST_TIMEOUT_MS, UI_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage, mintToken, unique,
} from './lib.mjs';

const SECRET = 'browser-test-secret-of-32-bytes-or-more';

let site;      // the embedding site (Node)
let sitePort;
let server;    // the chat server
let browser;
let tokensMinted = 0;

/// The site's page: a room, embedded in a dozen lines.
function page(room) {
  return `<!doctype html><meta charset="utf-8"><title>embed</title><ul id="log"></ul>
<script type="module">
  import { ChatroomClient } from '${server.url}/js/chatroom-client.js';
  const chat = new ChatroomClient('${room}', {
    server: '${server.url}',
    getToken: async () => (await fetch('/token')).text(),
  });
  chat.addEventListener('message', (e) => {
    const li = document.createElement('li');
    li.textContent = e.detail.username + ': ' + e.detail.message;
    document.getElementById('log').append(li);
  });
  chat.connect();
  window.chat = chat;
</script>`;
}

before(async () => {
  site = http.createServer((req, res) => {
    if (req.url === '/token') {
      tokensMinted += 1;
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      return res.end(mintToken(SECRET, { sub: 'u-42', name: 'Embedded Ann' }));
    }
    const room = new URL(req.url, 'http://x').searchParams.get('room') || 'lobby';
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(page(room));
  });
  await new Promise((resolve) => site.listen(0, '127.0.0.1', resolve));
  sitePort = site.address().port;
  server = await startServer({ extraArgs: ['--auth-secret', SECRET, '--allow-origin', `127.0.0.1:${sitePort}`] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
  await new Promise((resolve) => site?.close(resolve));
});

test('a site on another origin embeds a room with the client module', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('embed');
  const p = await openPage(browser);
  try {
    await p.goto(`http://127.0.0.1:${sitePort}/?room=${room}`);
    await p.waitForFunction(() => window.chat?.open === true, null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    assert.equal(tokensMinted, 1, 'getToken was called before connecting');
    await p.evaluate(() => window.chat.post('hello from another site'));
    await p.waitForFunction(() => document.getElementById('log').textContent.includes('hello from another site'),
      null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    assert.equal(await p.$eval('#log', (ul) => ul.textContent), 'Embedded Ann: hello from another site');
    // Scroll-back through the API, with the token as a bearer: a CORS
    // request with a preflight.
    const older = await p.evaluate(() => window.chat.older(100).then((page) => page.messages.map((m) => m.message)));
    assert.deepEqual(older, ['hello from another site']);
  } finally {
    await closePage(p);
  }
});
