// lib.mjs: shared helpers for the browser tests.
//
// - startServer(): runs the real chatroom binary on 127.0.0.1:0 (or a given
//   port, for the restart test) with a temporary SQLite file, and reads the
//   port from its "chatroom listening on http://..." log line; with
//   CHATROOM_TLS_CERT and CHATROOM_TLS_KEY set (run.sh --tls), over TLS
//   ("https://...");
// - launchBrowser(): Debian's /usr/bin/chromium through playwright-core
//   (never a downloaded browser), trusting CHATROOM_TLS_CERT's key if set;
// - openPage(): a fresh browser context + page that records console errors,
//   uncaught page errors and CSP violations;
// - joinRoom() / sendMessage() / messages(): the chat page's moves.
//
// Every wait here is bounded: a broken server or page fails a test, it never
// hangs the run.

import crypto from 'node:crypto';
import { before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/// How long the server may take to say it listens, and to exit after SIGTERM.
export const SERVER_START_MS = 15_000;
export const SERVER_STOP_MS = 10_000;
/// Default bound for every Playwright action and wait.
export const UI_TIMEOUT_MS = 10_000;
/// Bound for one whole test (node:test's `timeout` option).
export const TEST_TIMEOUT_MS = 60_000;

// run.sh makes a relative CHATROOM_BIN absolute before it changes folder.
export const CHATROOM_BIN = process.env.CHATROOM_BIN
  ? path.resolve(process.env.CHATROOM_BIN)
  : path.resolve(HERE, '../../target/release/chatroom');

export const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/// TLS: the certificate and key run.sh --tls made for this run (else plain HTTP).
export const TLS_CERT = process.env.CHATROOM_TLS_CERT || '';
const TLS_KEY = process.env.CHATROOM_TLS_KEY || '';
const SCHEME = TLS_CERT ? 'https' : 'http';

/// Chromium trusts exactly the test's key: the SHA-256 of its public key
/// (SPKI), as --ignore-certificate-errors-spki-list takes it.
function spkiHash(pemPath) {
  const cert = new crypto.X509Certificate(readFileSync(pemPath));
  const spki = cert.publicKey.export({ type: 'spki', format: 'der' });
  return crypto.createHash('sha256').update(spki).digest('base64');
}

const CHROMIUM_ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ...(TLS_CERT ? [`--ignore-certificate-errors-spki-list=${spkiHash(TLS_CERT)}`] : []),
];

/// A unique name per call, valid as a room name ([A-Za-z0-9_-]).
let uniqueN = 0;
export function unique(prefix) {
  uniqueN += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${uniqueN}`;
}

/// A temporary folder removed by `cleanup()`.
export function tempDir(tag) {
  const dir = mkdtempSync(path.join(tmpdir(), `chatroom-browser-${tag}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/// Starts the chatroom binary. `port` 0 (the default) picks a free port;
/// `data` is the SQLite file (default: a new one in a temporary folder).
/// Resolves once the server logged its address; rejects (with the log) if it
/// exits first or stays silent for SERVER_START_MS.
export async function startServer({ port = 0, data, extraArgs = [] } = {}) {
  if (!existsSync(CHATROOM_BIN)) {
    throw new Error(`no chatroom binary at ${CHATROOM_BIN}: run \`cargo build --release\` or set CHATROOM_BIN`);
  }
  let tmp = null;
  if (!data) {
    tmp = tempDir('data');
    data = path.join(tmp.dir, 'chatroom.db');
  }
  const args = ['--bind', `127.0.0.1:${port}`, '--data', data];
  // CHATROOM_WWW=www serves the pages from the working tree instead of the
  // copy embedded at build time (handy while editing www/).
  if (process.env.CHATROOM_WWW) args.push('--www', path.resolve(process.env.CHATROOM_WWW));
  if (TLS_CERT) args.push('--tls-cert', TLS_CERT, '--tls-key', TLS_KEY);
  args.push(...extraArgs);

  const child = spawn(CHATROOM_BIN, args, {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  child.stdout.setEncoding('utf8');
  child.stderr.setEncoding('utf8');
  child.stdout.on('data', (s) => { log += s; });

  const actualPort = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      finish(new Error(`chatroom did not report its address within ${SERVER_START_MS} ms; log:\n${log}`));
    }, SERVER_START_MS);
    const onData = (s) => {
      log += s;
      const m = /chatroom listening on https?:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) finish(null, Number(m[1]));
    };
    const onExit = ({ code, signal }) => finish(new Error(`chatroom exited early (code ${code}, signal ${signal}); args ${args.join(' ')}; log:\n${log}`));
    let done = false;
    function finish(err, value) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        child.kill('SIGKILL');
        reject(err);
      } else {
        resolve(value);
      }
    }
    child.stderr.on('data', onData);
    exited.then(onExit);
  });
  // Keep collecting the log after startup, for failure messages.
  child.stderr.on('data', (s) => { log += s; });

  let stopped = null;
  const server = {
    port: actualPort,
    url: `${SCHEME}://127.0.0.1:${actualPort}`,
    data,
    get log() { return log; },
    /// SIGTERM, then waits for the exit; SIGKILL and an error if it hangs.
    /// Resolves to { code, signal }.
    stop() {
      if (stopped) return stopped;
      stopped = (async () => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        let timer;
        const timeout = new Promise((resolve) => { timer = setTimeout(() => resolve(null), SERVER_STOP_MS); });
        const result = await Promise.race([exited, timeout]);
        clearTimeout(timer);
        if (result === null) {
          child.kill('SIGKILL');
          await exited;
          throw new Error(`chatroom did not exit within ${SERVER_STOP_MS} ms of SIGTERM; log:\n${log}`);
        }
        return result;
      })();
      return stopped;
    },
    /// Stops the server and removes its temporary data folder (if ours).
    async dispose() {
      try {
        await server.stop();
      } finally {
        if (tmp) tmp.cleanup();
      }
    },
  };
  return server;
}

/// Debian's Chromium, headless. Never a browser playwright downloaded.
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM} (apt-get install chromium)`);
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30_000 });
}

/// A new context (own cookies and localStorage) with one page. The page
/// collects `page.problems`: console errors, uncaught exceptions and CSP
/// violations (seen through the securitypolicyviolation event).
export async function openPage(browser, { viewport = { width: 1000, height: 700 } } = {}) {
  const context = await browser.newContext({ viewport });
  context.setDefaultTimeout(UI_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(UI_TIMEOUT_MS);
  // Injected through the DevTools protocol, so the page's CSP does not apply.
  await context.addInitScript(() => {
    window.__csp = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.problems = problems;
  return page;
}

/// The CSP violations the page saw so far (strings).
export async function cspViolations(page) {
  return page.evaluate(() => window.__csp || []);
}

/// Closes a page's whole context.
export async function closePage(page) {
  await page.context().close();
}

/// Waits until #status reads exactly `state` ("online", "offline", ...).
export async function waitForStatus(page, state, timeout = UI_TIMEOUT_MS) {
  await page.waitForFunction(
    (s) => document.getElementById('status')?.textContent === s,
    state,
    { timeout, polling: 50 },
  );
}

/// Opens /room/<room>, types the name, presses Connect and waits for "online".
export async function joinRoom(page, baseUrl, room, name) {
  await page.goto(`${baseUrl}/room/${room}`);
  await connectAs(page, name);
}

/// On an open room page: fills the name, presses Connect, waits for "online".
export async function connectAs(page, name) {
  await page.fill('#username', name);
  await page.click('#connect');
  await waitForStatus(page, 'online');
}

/// Types `text` in the composer and presses Enter.
export async function sendMessage(page, text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
}

/// The chat messages on screen, in order: [{ id, who, text }].
export async function messages(page) {
  return page.$$eval('#messages li.msg', (lis) => lis.map((li) => ({
    id: Number(li.dataset.id),
    who: li.querySelector('.who')?.textContent ?? null,
    text: li.querySelector('.text')?.textContent ?? null,
  })));
}

/// Waits until a li.msg with exactly this text (and author, if given) is shown.
export async function waitForMessage(page, text, who, timeout = UI_TIMEOUT_MS) {
  await page.waitForFunction(([t, w]) => [...document.querySelectorAll('#messages li.msg')].some((li) =>
    li.querySelector('.text')?.textContent === t && (w === null || li.querySelector('.who')?.textContent === w)),
  [text, who ?? null], { timeout, polling: 50 });
}

/// Waits until at least `n` li.msg are shown.
export async function waitForMessageCount(page, n, timeout = UI_TIMEOUT_MS) {
  await page.waitForFunction((k) => document.querySelectorAll('#messages li.msg').length >= k, n,
    { timeout, polling: 50 });
}

/// The names in the online list (#online li), sorted.
export async function onlineNames(page) {
  return (await page.$$eval('#online li', (lis) => lis.map((li) => li.textContent))).sort();
}

/**
 * Registers a `before`/`after` pair that starts one server and one browser
 * for a test file and stops them at the end; the returned object holds them
 * (`env.server`, `env.browser`) once `before` has run.
 */
export function withServerAndBrowser(options) {
  const env = { server: undefined, browser: undefined };
  before(async () => {
    env.server = await startServer(options);
    env.browser = await launchBrowser();
  });
  after(async () => {
    await env.browser?.close();
    await env.server?.dispose();
  });
  return env;
}

/** Fails unless `page` saw no console errors, page errors or CSP violations. */
export async function assertClean(page, where) {
  assert.deepEqual(page.problems, [], `${where}: console errors or page errors`);
  assert.deepEqual(await cspViolations(page), [], `${where}: CSP violations`);
}


/// An HS256 JWT for `claims` (expiring in 10 minutes), signed with
/// `secret` the way a site's Node backend would: node:crypto alone.
export function mintToken(secret, claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ exp: Math.floor(Date.now() / 1000) + 600, ...claims })}`;
  return `${body}.${crypto.createHmac('sha256', secret).update(body).digest('base64url')}`;
}
