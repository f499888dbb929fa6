// backend.test.mjs: what a site's backend does through the server API
// (--api-key), seen from the room page: a message the backend deletes
// vanishes live from an open page, and a page opened afterwards shows the
// tombstone in its history, never the text.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT_MS, UI_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage,
  joinRoom, sendMessage, waitForMessage, unique,
} from './lib.mjs';

const KEY = 'browser-test-api-key-0123456789';

let server;
let browser;

before(async () => {
  server = await startServer({ extraArgs: ['--api-key', KEY] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

/// The server API's DELETE of message `id` in `room`.
async function deleteMessage(room, id) {
  const r = await fetch(`${server.url}/api/rooms/${room}/messages/${id}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${KEY}` },
  });
  assert.equal(r.status, 204, await r.text());
}

/// The texts of the messages on `page`, in order.
const texts = (page) => page.$$eval('#messages li.msg .text', (ps) => ps.map((p) => p.textContent));

test('a deleted message vanishes live and stays a tombstone', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('mod');
  const first = await openPage(browser);
  const second = await openPage(browser);
  try {
    await joinRoom(first, server.url, room, 'ann');
    await sendMessage(first, 'keep me');
    await waitForMessage(first, 'keep me', 'ann');
    await sendMessage(first, 'take me down');
    await waitForMessage(first, 'take me down', 'ann');

    await deleteMessage(room, 2);
    await first.waitForFunction(() => document.querySelector('#messages li.msg[data-id="2"]')
      ?.classList.contains('deleted'), null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    assert.deepEqual(await texts(first), ['keep me', 'message deleted']);

    await joinRoom(second, server.url, room, 'bea');
    await waitForMessage(second, 'keep me', 'ann');
    await second.waitForSelector('#messages li.msg.deleted[data-id="2"]', { timeout: UI_TIMEOUT_MS });
    const shown = await second.$eval('#messages', (ul) => ul.textContent);
    assert.ok(!shown.includes('take me down'), `the text is gone: ${shown}`);
  } finally {
    await closePage(first);
    await closePage(second);
  }
});
