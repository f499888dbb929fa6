// pages.test.mjs: the other pages in a real browser: the home page loads
// cleanly under the CSP, the rooms list shows live numbers and its form
// checks names, the echo room echoes, and unknown paths get the 404 page.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  TEST_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage, cspViolations, unique,
  joinRoom, sendMessage, waitForMessage, waitForMessageCount, waitForStatus,
  withServerAndBrowser, assertClean,
} from './lib.mjs';

const env = withServerAndBrowser();

test('home page: loads with its styles and scripts, no console errors, no CSP violations', { timeout: TEST_TIMEOUT_MS }, async () => {
  const page = await openPage(env.browser);
  try {
    const response = await page.goto(env.server.url + '/');
    assert.equal(response.status(), 200);
    assert.match(response.headers()['content-security-policy'] ?? '', /script-src 'self'/,
      'pages are served with the CSP of src/response.rs');
    // Settled: scripts ran, the stylesheet and icon were fetched.
    await page.waitForLoadState('networkidle');

    assert.equal(await page.title(), 'chatroom');
    assert.equal(await page.textContent('h1'), 'chatroom');
    // The stylesheet applied (a blocked or missing one leaves the default 8px body margin).
    assert.equal(await page.evaluate(() => getComputedStyle(document.body).margin), '0px',
      'style.css did not apply');
    // common.js ran and bound the room form: an empty name is refused in place.
    await page.click('#open-room');
    await page.locator('#room-error').waitFor({ state: 'visible' });
    assert.equal(page.url(), env.server.url + '/');

    await assertClean(page, 'home page');
  } finally {
    await closePage(page);
  }
});

test('rooms page: lists welcome and a room with its message count; the form checks names and navigates', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('listed');
  const carol = await openPage(env.browser);
  const page = await openPage(env.browser);
  try {
    await joinRoom(carol, env.server.url, room, 'carol');
    for (const text of ['one', 'two', 'three']) await sendMessage(carol, text);
    await waitForMessageCount(carol, 3);

    await page.goto(env.server.url + '/room/');
    // The row of a room by its link text: [online, messages, created, last post, status].
    const row = (name) => page.waitForFunction((n) => {
      const tr = [...document.querySelectorAll('#rooms tr')]
        .find((r) => r.querySelector('th a')?.textContent === n);
      if (!tr) return null;
      return {
        href: tr.querySelector('th a').getAttribute('href'),
        cells: [...tr.querySelectorAll('td')].map((td) => td.textContent.trim()),
      };
    }, name, { polling: 100 }).then((handle) => handle.jsonValue());

    const welcome = await row('welcome');
    assert.equal(welcome.href, '/room/welcome');
    const listed = await row(room);
    assert.equal(listed.href, '/room/' + room);
    assert.equal(listed.cells[0], '1', `${room}: online`);
    assert.equal(listed.cells[1], '3', `${room}: messages`);
    assert.equal(listed.cells[3], 'just now', `${room}: last post`);
    assert.equal(listed.cells[4], 'active', `${room}: status`);
    assert.equal(welcome.cells[0], '0', 'welcome: online');
    assert.equal(welcome.cells[4], 'idle', 'welcome: status');
    assert.match(await page.textContent('#page-info'), /^1–\d+ of \d+$/);

    // A bad name: an error in place, no navigation.
    await page.fill('#room-name', 'bad name!');
    await page.click('#open-room');
    const error = page.locator('#room-error');
    await error.waitFor({ state: 'visible' });
    assert.match(await error.textContent(), /letters, digits/);
    assert.equal(await page.getAttribute('#room-name', 'aria-invalid'), 'true');
    assert.equal(new URL(page.url()).pathname, '/room/');
    // Typing again clears it.
    await page.fill('#room-name', 'x');
    await error.waitFor({ state: 'hidden' });

    // A good name opens the room.
    const fresh = unique('opened');
    await page.fill('#room-name', fresh);
    await Promise.all([page.waitForURL(`${env.server.url}/room/${fresh}`), page.click('#open-room')]);
    await page.waitForFunction((t) => document.getElementById('room-title')?.textContent === t, '#' + fresh);
    assert.equal(await page.textContent('#status'), 'offline');

    await assertClean(page, 'rooms page');
    await assertClean(carol, 'room page');
  } finally {
    await closePage(carol);
    await closePage(page);
  }
});

test('echo room: shows the greeting and echoes a typed message', { timeout: TEST_TIMEOUT_MS }, async () => {
  const page = await openPage(env.browser);
  try {
    await page.goto(env.server.url + '/room/echo');
    await waitForStatus(page, 'online');
    await waitForMessage(page, 'You are connected to the Echo Room!', 'server');

    const text = 'ping <b>42</b> ünïcødé';
    await sendMessage(page, text);
    await waitForMessage(page, text, 'echo');
    const lines = await page.$$eval('#messages li', (lis) => lis.map((li) => [
      li.className, li.querySelector('.who')?.textContent, li.querySelector('.text')?.textContent,
    ]));
    assert.deepEqual(lines, [
      ['msg greeting', 'server', 'You are connected to the Echo Room!'],
      ['out mine', 'you', text],
      ['msg', 'echo', text],
    ]);
    assert.equal(await page.inputValue('#input'), '');
    await assertClean(page, 'echo room');
  } finally {
    await closePage(page);
  }
});

test('unknown paths get the 404 page', { timeout: TEST_TIMEOUT_MS }, async () => {
  const page = await openPage(env.browser);
  try {
    for (const target of ['/no/such/page', '/room/welcome/extra', '/js/nope.js']) {
      const response = await page.goto(env.server.url + target);
      assert.equal(response.status(), 404, `${target}: status`);
      assert.equal(await page.textContent('h1'), 'Nobody is talking here', `${target}: the 404 page`);
      assert.equal(await page.title(), 'Not found – chatroom');
    }
    assert.deepEqual(await cspViolations(page), [], 'CSP violations on the 404 page');
    assert.deepEqual(page.problems.filter((p) => !/status of 404/.test(p)), [],
      'errors other than the expected 404 on the 404 page');
  } finally {
    await closePage(page);
  }
});
