// chat.test.mjs: the chat room page (/room/<name>, www/js/room.js) in a real
// browser against the real server: two people talking, markup staying text,
// history after a reload, and a server restart the page rides out by itself.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';

import {
  TEST_TIMEOUT_MS, startServer, launchBrowser, openPage, closePage, cspViolations, tempDir, unique,
  joinRoom, connectAs, sendMessage, messages, waitForMessage, waitForMessageCount,
  waitForStatus, onlineNames,
  assertClean,
} from './lib.mjs';

let server;
let browser;

before(async () => {
  server = await startServer();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await server?.dispose();
});

/// [who, text] pairs, the shape most assertions compare.
const pairs = (list) => list.map((m) => [m.who, m.text]);

/// Asserts the ids on screen are 1..n, each once, in order.
function assertContiguous(list, n, where) {
  assert.deepEqual(list.map((m) => m.id), Array.from({ length: n }, (_, i) => i + 1),
    `${where}: message ids on screen should be 1..${n}, each once, in order`);
}


test('two people chat: both pages show both messages in order, and both names online', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('chat');
  const alice = await openPage(browser);
  const bob = await openPage(browser);
  try {
    await joinRoom(alice, server.url, room, 'alice');
    await joinRoom(bob, server.url, room, 'bob');

    await sendMessage(alice, 'hello from alice');
    for (const page of [alice, bob]) await waitForMessage(page, 'hello from alice', 'alice');
    assert.equal(await alice.inputValue('#input'), '', 'the composer is cleared after sending');

    await sendMessage(bob, 'hi alice, bob here');
    for (const page of [alice, bob]) await waitForMessage(page, 'hi alice, bob here', 'bob');

    const expected = [['alice', 'hello from alice'], ['bob', 'hi alice, bob here']];
    for (const [name, page] of [['alice', alice], ['bob', bob]]) {
      const list = await messages(page);
      assert.deepEqual(pairs(list), expected, `${name}'s page: messages, authors and order`);
      assertContiguous(list, 2, `${name}'s page`);
    }
    // Each side marks its own message, and only its own.
    const mine = (page) => page.$$eval('#messages li.msg.mine .text', (els) => els.map((e) => e.textContent));
    assert.deepEqual(await mine(alice), ['hello from alice']);
    assert.deepEqual(await mine(bob), ['hi alice, bob here']);

    // Alice learnt about bob from a join frame, bob about alice from his welcome.
    for (const [name, page] of [['alice', alice], ['bob', bob]]) {
      // Bounded wait; on timeout the assertion below says what was listed.
      await page.waitForFunction(() => [...document.querySelectorAll('#online li')]
        .map((li) => li.textContent).sort().join() === 'alice,bob', null, { timeout: 5000, polling: 50 })
        .catch(() => {});
      assert.deepEqual(await onlineNames(page), ['alice', 'bob'], `${name}'s online list`);
      assert.equal(await page.textContent('#online-count'), '2', `${name}'s online count`);
      assert.equal(await page.textContent('#online li.me'), name, `${name}'s own name is marked`);
    }

    if (process.env.CHAT_SCREENSHOT) await alice.screenshot({ path: process.env.CHAT_SCREENSHOT });
    await assertClean(alice, 'alice');
    await assertClean(bob, 'bob');
  } finally {
    await closePage(alice);
    await closePage(bob);
  }
});

test('markup in messages and names stays text: no dialog, no element', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('xss');
  const payload = '<img src=x onerror=alert(1)>';
  const evilName = '<svg onload=alert(2)>';
  const alice = await openPage(browser);
  const bob = await openPage(browser);
  const dialogs = [];
  for (const page of [alice, bob]) {
    // Registered before anything is sent; a dialog is dismissed so that it
    // cannot block the page, and remembered so that the test fails.
    page.on('dialog', (dialog) => {
      dialogs.push(dialog.message());
      dialog.dismiss().catch(() => {});
    });
  }
  try {
    await joinRoom(alice, server.url, room, 'alice');
    await joinRoom(bob, server.url, room, evilName);

    await sendMessage(alice, payload);
    await sendMessage(bob, 'after the payload');
    for (const page of [alice, bob]) {
      // The second message on screen means the payload's element, had one
      // been created, had its turn to load (and fail).
      await waitForMessageCount(page, 2);
      await waitForMessage(page, 'after the payload', evilName);
    }

    for (const [name, page] of [['alice', alice], ['bob', bob]]) {
      assert.deepEqual(dialogs, [], 'a dialog opened: markup from a message or name was executed');
      assert.equal((await page.$$('#messages img')).length, 0, `${name}'s page: an <img> was created in #messages`);
      const list = await messages(page);
      assert.deepEqual(pairs(list), [['alice', payload], [evilName, 'after the payload']],
        `${name}'s page: the markup should show as literal text`);
      assert.equal((await page.$$('#messages svg, #online svg')).length, 0, `${name}'s page: an <svg> was created`);
      assert.ok((await onlineNames(page)).includes(evilName), `${name}'s online list shows the name as text`);
      assert.equal(await page.evaluate(() => document.querySelectorAll('img:not(.brand img)').length), 0,
        `${name}'s page: an <img> appeared somewhere`);
    }
    assert.deepEqual(dialogs, [], 'a dialog opened: markup from a message or name was executed');
  } finally {
    await closePage(alice);
    await closePage(bob);
  }
});

test('a reload shows the history from the welcome frame, each message once', { timeout: TEST_TIMEOUT_MS }, async () => {
  const room = unique('reload');
  const page = await openPage(browser);
  try {
    await joinRoom(page, server.url, room, 'alice');
    const texts = ['first', 'second', 'third'];
    for (const text of texts) {
      await sendMessage(page, text);
      await waitForMessage(page, text, 'alice');
    }

    await page.reload();
    await waitForStatus(page, 'offline');
    assert.equal(await page.$$eval('#messages li.msg', (l) => l.length), 0, 'a fresh page starts empty');
    assert.equal(await page.inputValue('#username'), 'alice', 'the name is remembered across reloads');
    await connectAs(page, 'alice');
    await waitForMessageCount(page, 3);

    let list = await messages(page);
    assert.deepEqual(pairs(list), texts.map((t) => ['alice', t]), 'history after the reload');
    assertContiguous(list, 3, 'after the reload');
    assert.ok(await page.isDisabled('#older'), 'all history is on screen: "Load older" is disabled');

    // A message after the reload comes once, after the history.
    await sendMessage(page, 'fourth');
    await waitForMessage(page, 'fourth', 'alice');
    list = await messages(page);
    assert.deepEqual(pairs(list), [...texts, 'fourth'].map((t) => ['alice', t]));
    assertContiguous(list, 4, 'after a new message');
    await assertClean(page, 'reloaded page');
  } finally {
    await closePage(page);
  }
});

test('server restart: the page reconnects by itself (?since) and shows every message once', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const tmp = tempDir('restart');
  const data = path.join(tmp.dir, 'chatroom.db');
  const first = await startServer({ data });
  let second = null;
  const room = unique('restart');
  const alice = await openPage(browser);
  const bob = await openPage(browser);
  let carol = null;
  try {
    const aliceSockets = [];
    const resumedWith = []; // history length of each welcome after the first
    alice.on('websocket', (ws) => {
      aliceSockets.push(ws.url());
      ws.on('framereceived', ({ payload }) => {
        try {
          const f = JSON.parse(payload);
          if (f.type === 'welcome' && aliceSockets.length > 1) resumedWith.push(f.history.length);
        } catch { /* not JSON: not ours to judge here */ }
      });
    });

    await joinRoom(alice, first.url, room, 'alice');
    await joinRoom(bob, first.url, room, 'bob');
    await sendMessage(bob, 'before 1');
    await sendMessage(bob, 'before 2');
    await waitForMessageCount(alice, 2);
    // Carol's page is loaded now, so that once the server is back she only
    // has to connect to talk.
    carol = await openPage(browser);
    await carol.goto(`${first.url}/room/${room}`);

    // Record every state #status goes through from here on.
    await alice.evaluate(() => {
      const status = document.getElementById('status');
      window.__states = [status.textContent];
      new MutationObserver(() => {
        if (window.__states.at(-1) !== status.textContent) window.__states.push(status.textContent);
      }).observe(status, { childList: true, characterData: true, subtree: true });
    });

    const exit = await first.stop();
    assert.deepEqual(exit, { code: 0, signal: null }, `SIGTERM should stop the server cleanly; log:\n${first.log}`);
    await waitForStatus(alice, 'offline');
    // Let alice's retries fail until her pause is long (the third one is
    // 1.5-2.5 s, see backoffDelay), so that carol most likely talks while
    // alice is away and alice gets those messages through ?since.
    await alice.waitForFunction(() => {
      const m = /reconnecting in (\d+(?:\.\d+)?) s/.exec(document.getElementById('status').title);
      return m && Number(m[1]) >= 1.5;
    }, null, { timeout: 10_000, polling: 50 });

    second = await startServer({ port: first.port, data });
    assert.equal(second.port, first.port);

    // Someone else talks as soon as the server is back (alice may still be
    // waiting out her reconnect pause: then she gets these through ?since).
    await connectAs(carol, 'carol');
    for (const text of ['while away 1', 'while away 2', 'while away 3']) await sendMessage(carol, text);
    await waitForMessageCount(carol, 5);

    await waitForStatus(alice, 'online', 20_000);
    await sendMessage(carol, 'after');
    await waitForMessage(alice, 'after', 'carol');

    const expected = [
      ['bob', 'before 1'], ['bob', 'before 2'],
      ['carol', 'while away 1'], ['carol', 'while away 2'], ['carol', 'while away 3'],
      ['carol', 'after'],
    ];
    const list = await messages(alice);
    assert.deepEqual(pairs(list), expected, `alice's messages across the restart; server log:\n${second.log}`);
    assertContiguous(list, 6, "alice's page");

    const states = await alice.evaluate(() => window.__states);
    assert.equal(states[0], 'online');
    assert.ok(states.includes('offline'), `status should go offline: ${states.join(' → ')}`);
    assert.equal(states.at(-1), 'online', `status should end online: ${states.join(' → ')}`);
    t.diagnostic(`alice's status: ${states.join(' → ')}; resumed with ${resumedWith.join(', ')} missed message(s)`);

    // The reconnect resumed from the last message seen before the drop.
    const resumed = aliceSockets.slice(1);
    assert.ok(resumed.length >= 1, 'alice opened a new WebSocket');
    assert.ok(resumed.every((url) => new URL(url).searchParams.get('since') === '2'),
      `reconnects should ask for since=2: ${resumed.join(', ')}`);
    assert.equal(new URL(resumed.at(-1)).searchParams.get('username'), 'alice');

    // Bob rode it out too.
    await waitForMessage(bob, 'after', 'carol', 20_000);
    const bobList = await messages(bob);
    assert.deepEqual(pairs(bobList), expected, "bob's messages across the restart");
    assertContiguous(bobList, 6, "bob's page");
  } finally {
    await closePage(alice);
    await closePage(bob);
    if (carol) await closePage(carol);
    if (second) await second.stop();
    await first.stop().catch(() => {});
    tmp.cleanup();
  }
});
