// learn.test.mjs: the learn page (/learn) against the real /ws/inspect.
// The handshake is shown with the accept value the server really sent (read
// independently through the DevTools protocol) and recomputed step by step;
// frames the browser sends come back dissected; the server's ping,
// fragmented message and close (asked for with JSON commands) show up with
// the browser's automatic answers; all without console errors or CSP
// violations. (The browser's own close frame is rebuilt by the page: after
// close() a page receives no more messages, so the server's description of
// it cannot arrive.)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';

import {
  startServer, launchBrowser, openPage, closePage, cspViolations, waitForStatus,
  withServerAndBrowser, assertClean,
} from './lib.mjs';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

const env = withServerAndBrowser();

/** Opens /learn and waits until its WebSocket is open and the handshake is shown. */
async function openLearn(page) {
  const response = await page.goto(env.server.url + '/learn');
  assert.equal(response.status(), 200);
  await waitForStatus(page, 'online');
  await page.waitForFunction(() => document.getElementById('accept')?.textContent.endsWith('='), null, { polling: 50 });
}

/**
 * Waits for the `nth` (1-based, default the first) described frame with this
 * opcode and returns what it shows.
 */
async function frame(page, opcode, nth = 1) {
  const selector = `#frames .frame[data-opcode="${opcode}"]`;
  await page.waitForFunction(([s, n]) => document.querySelectorAll(s).length >= n, [selector, nth], { polling: 50 });
  return page.$$eval(selector, (cards, n) => {
    const card = cards[n - 1];
    return {
      masked: card.dataset.masked,
      fin: card.dataset.fin,
      payloadLength: card.dataset.payloadLength,
      payloadText: card.querySelector('.payload-text')?.textContent ?? null,
      payloadHex: card.querySelector('.payload-hex')?.textContent ?? null,
      bytes: [...card.querySelectorAll(':scope > .bytes .byte .hex')].map((b) => b.textContent),
      fields: [...card.querySelectorAll(':scope > .bytes .byte')].map((b) => [...b.classList].find((c) => c.startsWith('f-'))),
      unmasked: [...card.querySelectorAll('.unmask tr.result td')].map((td) => td.textContent),
      text: card.textContent,
    };
  }, nth);
}

test('handshake: shows the accept value the server sent, computed step by step', async () => {
  const page = await openPage(env.browser);
  try {
    // Read the real handshake off the network, independently of the page.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    const seen = { key: null, accept: null };
    const header = (headers, name) => Object.entries(headers || {})
      .find(([k]) => k.toLowerCase() === name)?.[1] ?? null;
    cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => {
      seen.key = header(e.request.headers, 'sec-websocket-key');
    });
    cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
      seen.accept = header(e.response.headers, 'sec-websocket-accept');
    });

    await openLearn(page);
    const shown = await page.evaluate(() => ({
      key: document.getElementById('key').textContent,
      concatenated: document.getElementById('concatenated').textContent,
      sha1: document.getElementById('sha1').textContent,
      accept: document.getElementById('accept').textContent,
      match: document.getElementById('accept-match').dataset.ok,
      browser: document.getElementById('accept-browser').dataset.ok,
      request: document.getElementById('request-head').textContent,
      response: document.getElementById('response-head').textContent,
      example: document.getElementById('rfc-example-accept').textContent,
      inHandshake: document.getElementById('handshake').contains(document.getElementById('accept')),
    }));

    assert.ok(seen.key && seen.accept, 'DevTools saw the WebSocket handshake');
    assert.equal(shown.key, seen.key, 'the key shown is the one the browser sent');
    assert.equal(shown.accept, seen.accept, 'the accept shown is the one the server sent');
    assert.equal(shown.concatenated, seen.key + GUID);
    const digest = createHash('sha1').update(seen.key + GUID).digest();
    assert.equal(shown.sha1, [...digest].map((b) => b.toString(16).padStart(2, '0')).join(' '));
    assert.equal(digest.toString('base64'), seen.accept, 'RFC 6455 §4.2.2 holds');
    assert.equal(shown.match, 'true');
    assert.equal(shown.browser, 'true', 'the page recomputed the same accept value');
    assert.ok(shown.inHandshake);
    assert.match(shown.request, /^GET \/ws\/inspect HTTP\/1\.1/);
    assert.match(shown.request, new RegExp(`Sec-WebSocket-Key: ${seen.key.replace(/[+/=]/g, '\\$&')}`, 'i'));
    assert.match(shown.response, /^HTTP\/1\.1 101 Switching Protocols/);
    assert.ok(shown.response.includes(`Sec-WebSocket-Accept: ${seen.accept}`));
    // The worked example of RFC 6455 §1.3, computed by the page itself.
    assert.equal(shown.example, 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=');

    await assertClean(page, 'learn handshake');
  } finally {
    await closePage(page);
  }
});

test('sending "Hello": a masked text frame of 5 bytes, dissected and unmasked', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    await page.fill('#message', 'Hello');
    await page.click('#send-text');
    const f = await frame(page, 'text');
    assert.equal(f.masked, 'true');
    assert.equal(f.fin, 'true');
    assert.equal(f.payloadLength, '5');
    assert.equal(f.payloadText, 'Hello');
    // 2 header bytes, 4 key bytes, 5 payload bytes, coloured by field.
    assert.deepEqual(f.bytes.slice(0, 2), ['81', '85']);
    assert.equal(f.bytes.length, 11);
    assert.deepEqual(f.fields, ['f-b0', 'f-b1', 'f-key', 'f-key', 'f-key', 'f-key', 'f-data', 'f-data', 'f-data', 'f-data', 'f-data']);
    // masked byte XOR key byte = payload byte.
    assert.deepEqual(f.unmasked, ['48', '65', '6c', '6c', '6f']);
    for (let i = 0; i < 5; i++) {
      const wire = parseInt(f.bytes[6 + i], 16);
      const key = parseInt(f.bytes[2 + (i % 4)], 16);
      assert.equal((wire ^ key).toString(16), f.unmasked[i]);
    }

    // User text is text: markup typed in the box is never parsed.
    await page.fill('#message', '<img src=x id=injected>');
    await page.click('#send-text');
    const g = await frame(page, 'text', 2);
    assert.equal(g.payloadText, '<img src=x id=injected>');
    assert.equal(await page.$('#injected'), null);

    // A 16-bit length: byte 2 says 126 and 2 more bytes hold 300.
    await page.fill('#message', 'x'.repeat(300));
    await page.click('#send-text');
    const long = await frame(page, 'text', 3);
    assert.equal(long.payloadLength, '300');
    assert.deepEqual(long.bytes.slice(0, 4), ['81', 'fe', '01', '2c']);
    assert.deepEqual(long.fields.slice(2, 4), ['f-ext', 'f-ext']);
    await assertClean(page, 'learn text');
  } finally {
    await closePage(page);
  }
});

test('a server ping: its frame is shown and the browser\'s automatic pong is dissected', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    await page.fill('#message', 'are you there');
    await page.click('#server-ping');
    const ping = await page.waitForSelector('#frames .server-note[data-what="ping"] .server-frame[data-opcode="ping"]');
    assert.match(await ping.textContent(), /89/);
    const pong = await frame(page, 'pong');
    assert.equal(pong.masked, 'true');
    assert.equal(pong.payloadText, 'are you there');
    assert.equal(pong.bytes[0], '8a');
    await assertClean(page, 'learn ping');
  } finally {
    await closePage(page);
  }
});

test('a fragmented message: the server\'s frames, then the text the browser reassembled', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    await page.fill('#message', 'one message, three frames');
    await page.fill('#parts', '3');
    await page.click('#server-fragmented');
    await page.waitForSelector('#frames .received .received-text');
    const shown = await page.evaluate(() => ({
      frames: [...document.querySelectorAll('#frames .server-note[data-what="fragmented"] .server-frame')]
        .map((f) => [f.dataset.opcode, f.dataset.fin]),
      received: document.querySelector('#frames .received .received-text').textContent,
    }));
    assert.deepEqual(shown.frames, [['text', 'false'], ['continuation', 'false'], ['continuation', 'true']]);
    assert.equal(shown.received, 'one message, three frames');
    await assertClean(page, 'learn fragmented');
  } finally {
    await closePage(page);
  }
});

test('binary: hex bytes and UTF-8 bytes go out with opcode binary', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    await page.check('#hex');
    await page.fill('#message', '01 ff 80');
    await page.click('#send-binary');
    const b = await frame(page, 'binary');
    assert.equal(b.masked, 'true');
    assert.equal(b.payloadLength, '3');
    assert.equal(b.payloadHex, '01 ff 80');
    assert.equal(b.bytes[0], '82');

    // Not hex: refused on the page, nothing sent.
    await page.fill('#message', 'zz');
    await page.click('#send-binary');
    await page.locator('#control-error').waitFor({ state: 'visible' });

    await page.uncheck('#hex');
    await page.fill('#message', 'é');
    await page.click('#send-binary');
    const u = await frame(page, 'binary', 2);
    assert.equal(u.payloadHex, 'c3 a9');
    await assertClean(page, 'learn binary');
  } finally {
    await closePage(page);
  }
});

test('closing: the browser\'s close frame, a code browsers refuse, the server\'s close, and reconnecting', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    const firstKey = await page.textContent('#key');

    // 1005 may never be sent (§7.4.1): the page explains instead of throwing.
    await page.fill('#close-code', '1005');
    await page.click('#send-close');
    await page.locator('#control-error').waitFor({ state: 'visible' });
    assert.equal(await page.textContent('#status'), 'online');

    await page.fill('#close-code', '4001');
    await page.fill('#close-reason', 'bye now');
    await page.click('#send-close');
    // After close() the WebSocket API drops incoming messages, so the server's
    // description cannot arrive: the page rebuilds the frame (key unknown).
    const c = await frame(page, 'close');
    assert.equal(c.masked, 'true');
    assert.equal(c.payloadLength, '9');
    assert.deepEqual(c.bytes.slice(0, 8), ['88', '89', '??', '??', '??', '??', '0f', 'a1']);
    assert.match(c.text, /4001 "bye now"/);
    await waitForStatus(page, 'offline');
    await page.waitForFunction(() => /code 4001/.test(document.querySelector('#frames .note.closed')?.textContent ?? ''),
      null, { polling: 50 });

    // A deliberate close does not reconnect by itself.
    await page.locator('#reconnect').waitFor({ state: 'visible' });
    await page.click('#reconnect');
    await waitForStatus(page, 'online');
    await page.waitForFunction((k) => {
      const key = document.getElementById('key').textContent;
      return key !== k && key.endsWith('=');
    }, firstKey, { polling: 50 });

    // The server refuses codes it may not send, and the connection stays up.
    await page.fill('#server-close-code', '1006');
    await page.click('#server-close');
    await page.waitForSelector('#frames .note.error');
    assert.equal(await page.textContent('#status'), 'online');

    await page.fill('#server-close-code', '4242');
    await page.click('#server-close');
    await page.waitForSelector('#frames .server-note[data-what="close"] .server-frame[data-opcode="close"]');
    await waitForStatus(page, 'offline');
    await page.waitForFunction(() => [...document.querySelectorAll('#frames .note.closed')]
      .some((n) => /code 4242/.test(n.textContent)), null, { polling: 50 });
    await page.locator('#reconnect').waitFor({ state: 'visible' });
    await assertClean(page, 'learn close');
  } finally {
    await closePage(page);
  }
});

test('compression: with the box ticked, Chromium and the server agree on permessage-deflate and frames show RSV1', async () => {
  const page = await openPage(env.browser);
  try {
    await openLearn(page);
    await page.check('#deflate');
    await page.waitForFunction(
      () => /server_no_context_takeover/.test(document.getElementById('response-head')?.textContent ?? ''),
      null, { polling: 50 });
    await waitForStatus(page, 'online');
    const note = await page.$eval('#handshake-note', (n) => n.textContent);
    assert.match(note, /permessage-deflate/);
    const text = 'compress me, compress me, compress me, compress me';
    await page.fill('#message', text);
    await page.click('#send-text');
    await page.waitForSelector('#frames .frame[data-opcode="text"][data-rsv1="true"]');
    const shown = await page.$eval('#frames .frame[data-opcode="text"][data-rsv1="true"]', (card) => ({
      payloadLength: Number(card.dataset.payloadLength),
      inflatedLength: Number(card.dataset.inflatedLength),
      inflated: card.querySelector('.inflated-text')?.textContent ?? null,
    }));
    assert.equal(shown.inflated, text);
    assert.equal(shown.inflatedLength, text.length);
    assert.ok(shown.payloadLength < text.length, `${shown.payloadLength} bytes on the wire for ${text.length}`);
    await assertClean(page, 'learn compressed');
  } finally {
    await closePage(page);
  }
});
