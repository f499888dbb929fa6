// auth.test.mjs: signed-in users on the room page. A site links to
// /room/<room>#token=<jwt>; the page connects with ?token= and scrolls
// back with Authorization: Bearer. The token is minted here the way a
// site's Node backend would: HS256 with node:crypto alone.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT_MS, UI_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage,
  sendMessage, waitForMessage, waitForStatus, unique,
  mintToken,
} from './lib.mjs';

const SECRET = 'browser-test-secret-of-32-bytes-or-more';

/// An HS256 JWT for `claims`, signed with SECRET.
const mint = (claims) => mintToken(SECRET, claims);

let server;
let browser;

before(async () => {
  server = await startServer({ extraArgs: ['--auth-secret', SECRET, '--private-rooms', 'team-*'] });
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

test('a token in the fragment joins a private room under its name', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('team');
  const page = await openPage(browser);
  try {
    await page.goto(`${server.url}/room/${room}#token=${mint({ sub: 'u-1', name: 'Alice', rooms: ['team-*'] })}`);
    await page.fill('#username', 'mallory');
    await page.click('#connect');
    await waitForStatus(page, 'online');
    await sendMessage(page, 'signed in');
    await waitForMessage(page, 'signed in', 'Alice');
    const mark = await page.$eval('#messages li.msg .verified', (span) => span.title);
    assert.equal(mark, 'signed in', 'a signed-in user\'s message is marked');
    assert.ok(!page.url().includes('token'), `the token is out of the address bar: ${page.url()}`);
  } finally {
    await closePage(page);
  }
});

test('a page without a token is refused at a private room and stops trying', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('team');
  const page = await openPage(browser);
  try {
    await page.goto(`${server.url}/room/${room}`);
    await page.fill('#username', 'gus');
    await page.click('#connect');
    await page.waitForFunction(() => [...document.querySelectorAll('#messages li.sys.error')]
      .some((li) => li.textContent.includes('4403')), null, { timeout: UI_TIMEOUT_MS, polling: 50 });
    await waitForStatus(page, 'offline');
    const lines = await page.$$eval('#messages li.sys', (lis) => lis.map((li) => li.textContent));
    assert.ok(lines.some((l) => l.includes('private')), `the reason is shown: ${lines.join(' | ')}`);
    assert.ok(!lines.some((l) => l.includes('reconnecting')), `no reconnect into a refusal: ${lines.join(' | ')}`);
  } finally {
    await closePage(page);
  }
});
