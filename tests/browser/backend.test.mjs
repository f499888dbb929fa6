// backend.test.mjs: moderation seen from the room page. A message the
// site's backend deletes (server API, --api-key) vanishes live from an open
// page, and a page opened afterwards shows the tombstone, never the text. A
// moderator (a token whose `moderate` claim names the room) deletes with the
// page's own buttons, and a member it kicks is told why and does not
// reconnect into the ban.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT_MS, UI_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage,
  joinRoom, sendMessage, waitForMessage, waitForStatus, unique,
  mintToken,
} from './lib.mjs';

const KEY = 'browser-test-api-key-0123456789';
const SECRET = 'browser-test-secret-of-32-bytes-or-more';

/// An HS256 JWT for `claims`, signed with SECRET.
const mint = (claims) => mintToken(SECRET, claims);

let server;
let browser;

before(async () => {
  server = await startServer({ extraArgs: ['--api-key', KEY, '--auth-secret', SECRET] });
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

test('a moderator deletes a message and kicks a member from the page', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('mod');
  const mod = await openPage(browser);
  const guest = await openPage(browser);
  try {
    await mod.goto(`${server.url}/room/${room}#token=${mint({ sub: 'm-1', name: 'Moe', moderate: [room] })}`);
    await mod.fill('#username', 'ignored');
    await mod.click('#connect');
    await waitForStatus(mod, 'online');
    await joinRoom(guest, server.url, room, 'gus');
    await sendMessage(guest, 'rude words');
    await waitForMessage(mod, 'rude words', 'gus');
    assert.equal(await guest.$$eval('button.delete, button.kick', (b) => b.length), 0, 'no actions for members');

    await mod.click('#messages li.msg[data-id="1"] button.delete');
    await guest.waitForSelector('#messages li.msg.deleted[data-id="1"]', { timeout: UI_TIMEOUT_MS });
    assert.deepEqual(await texts(guest), ['message deleted']);

    await mod.click('#online button.kick[data-name="gus"]');
    await guest.waitForFunction(() => [...document.querySelectorAll('#messages li.sys.error')]
      .some((li) => li.textContent.includes('4001')), null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    await waitForStatus(guest, 'offline');
    const lines = await guest.$$eval('#messages li.sys', (lis) => lis.map((li) => li.textContent));
    assert.ok(lines.some((l) => l.includes('removed by Moe')), `the reason is shown: ${lines.join(' | ')}`);
    assert.ok(!lines.some((l) => l.includes('reconnecting')), `no reconnect into the ban: ${lines.join(' | ')}`);

    // Pressing Connect again meets the ban, and the page says so.
    await guest.click('#connect');
    await guest.waitForFunction(() => [...document.querySelectorAll('#messages li.sys.error')]
      .some((li) => li.textContent.includes('banned')), null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    await waitForStatus(guest, 'offline');
  } finally {
    await closePage(mod);
    await closePage(guest);
  }
});
