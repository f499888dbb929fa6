// stats.test.mjs: the live stats page (/stats) against the real /ws/stats.
// The numbers arrive and update every second, the SVG charts are drawn,
// chat traffic moves the message counters, the busiest rooms are listed
// (as links, names as text), and the page rides out a server restart.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  startServer, launchBrowser, openPage, closePage, cspViolations, waitForStatus, unique,
  withServerAndBrowser, assertClean,
} from './lib.mjs';

const env = withServerAndBrowser();

/** The samples the page has drawn so far. */
async function samples(page) {
  return Number(await page.getAttribute('#charts', 'data-samples') ?? 0);
}

async function waitForSamples(page, n, timeout = 10_000) {
  await page.waitForFunction((k) => Number(document.getElementById('charts').dataset.samples ?? 0) >= k, n,
    { timeout, polling: 100 });
}

/** An integer shown in element `id` ("1,234" -> 1234). */
async function shownNumber(page, id) {
  const text = await page.textContent(`#${id}`);
  return Number(text.replace(/[^\d.]/g, ''));
}

test('stats page: live numbers every second and one SVG chart per series', async () => {
  const page = await openPage(env.browser);
  try {
    const response = await page.goto(env.server.url + '/stats');
    assert.equal(response.status(), 200);
    await waitForStatus(page, 'online');
    await waitForSamples(page, 1);
    const first = await samples(page);
    // One sample when the socket opens, then one a second.
    await waitForSamples(page, first + 2, 5_000);

    // At least this page's own WebSocket is connected.
    assert.ok(await shownNumber(page, 'connections') >= 1, 'connections >= 1');
    assert.ok(await shownNumber(page, 'websockets') >= 1, 'websockets >= 1');
    for (const id of ['messages-per-sec', 'deliveries-per-sec', 'bytes-per-sec', 'loop-turn']) {
      assert.match(await page.textContent(`#${id}`), /\d/, `#${id} shows a number`);
    }
    // The page's own traffic (the stats frames) is in bytes out.
    assert.match(await page.textContent('#bytes-per-sec'), /B\/s$/);
    assert.match(await page.textContent('#loop-turn'), /(µs|ms)$/);

    const charts = await page.$$eval('#charts svg', (svgs) => svgs.map((s) => ({
      lines: [...s.querySelectorAll('path.line')].map((p) => p.getAttribute('d')),
      width: s.getBoundingClientRect().width,
    })));
    assert.equal(charts.length, 5, 'connections, messages, deliveries, bytes, loop turn');
    for (const chart of charts) {
      assert.ok(chart.width > 100, 'the chart is drawn at a useful size');
      for (const d of chart.lines) assert.match(d, /^M[\d.]+ [\d.-]+( L[\d.]+ [\d.-]+)+$/, `a drawn line: ${d}`);
    }
    assert.equal(charts[3].lines.length, 2, 'bytes in and bytes out');
    await assertClean(page, 'stats page');
  } finally {
    await closePage(page);
  }
});

test('stats page: chat messages move the counters and the room shows up among the busiest', async () => {
  const room = unique('busy');
  const page = await openPage(env.browser);
  try {
    await page.goto(env.server.url + '/stats');
    await waitForStatus(page, 'online');
    await waitForSamples(page, 1);
    const before = await shownNumber(page, 'messages-total');
    const deliveredBefore = await shownNumber(page, 'deliveries-total');

    // Watch every value #messages-per-sec takes from now on.
    await page.evaluate(() => {
      const node = document.getElementById('messages-per-sec');
      window.__rates = [];
      new MutationObserver(() => window.__rates.push(node.textContent))
        .observe(node, { childList: true, characterData: true, subtree: true });
    });

    // Two members in a fresh room, from the page's own context; one posts 5 messages.
    await page.evaluate(async (r) => {
      const open = (name) => new Promise((resolve, reject) => {
        const ws = new WebSocket(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws/chatroom/${r}?username=${name}`);
        ws.onopen = () => resolve(ws);
        ws.onerror = reject;
      });
      window.__chat = [await open('ann'), await open('ben')];
      for (let i = 0; i < 5; i++) window.__chat[0].send(JSON.stringify({ message: `hello ${i}` }));
    }, room);

    await page.waitForFunction((n) => Number(document.getElementById('messages-total').textContent.replace(/\D/g, '')) >= n,
      before + 5, { polling: 100 });
    // 5 messages to 2 members: 10 deliveries.
    await page.waitForFunction((n) => Number(document.getElementById('deliveries-total').textContent.replace(/\D/g, '')) >= n,
      deliveredBefore + 10, { polling: 100 });
    await page.waitForFunction(() => window.__rates.some((v) => Number(v) > 0), null, { polling: 100 });
    assert.ok(await shownNumber(page, 'connections') >= 3, 'the stats socket and two chat sockets');

    // The room is listed, linked, with its two members.
    const row = await page.waitForFunction((r) => {
      const tr = [...document.querySelectorAll('#busiest tr')].find((t) => t.querySelector('a')?.textContent === r);
      return tr ? { href: tr.querySelector('a').getAttribute('href'), members: tr.querySelector('td').textContent } : null;
    }, room, { polling: 100 }).then((h) => h.jsonValue());
    assert.deepEqual(row, { href: `/room/${room}`, members: '2' });

    // When they leave, the room leaves the list.
    await page.evaluate(() => window.__chat.forEach((ws) => ws.close()));
    await page.waitForFunction((r) => ![...document.querySelectorAll('#busiest a')].some((a) => a.textContent === r),
      room, { polling: 100 });
    await assertClean(page, 'stats traffic');
  } finally {
    await closePage(page);
  }
});

test('stats page: reconnects by itself after a server restart', async () => {
  const first = await startServer();
  let second = null;
  const page = await openPage(env.browser);
  try {
    await page.goto(first.url + '/stats');
    await waitForStatus(page, 'online');
    await waitForSamples(page, 1);
    await first.stop();
    await waitForStatus(page, 'offline');
    const drawn = await samples(page);

    second = await startServer({ port: first.port });
    await waitForStatus(page, 'online', 20_000);
    await waitForSamples(page, drawn + 2);
    // Only the browser's own "connection refused" reports are allowed here.
    const unexpected = page.problems.filter((p) => !/WebSocket connection to .* failed/.test(p));
    assert.deepEqual(unexpected, []);
    assert.deepEqual(await cspViolations(page), []);
  } finally {
    await closePage(page);
    if (second) await second.dispose();
    await first.dispose();
  }
});
