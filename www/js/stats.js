// stats.js: the live stats page, /stats.
//
// /ws/stats sends one JSON text frame a second (src/stats.rs):
//   {"type":"stats","connections":N,"websockets":N,"rooms":N,"members":N,
//    "messages_received":N,"messages_delivered":N,"messages_per_sec":N,
//    "deliveries_per_sec":N,"bytes_in_per_sec":N,"bytes_out_per_sec":N,
//    "loop_turns_per_sec":N,"loop_turn_avg_us":F,
//    "busiest_rooms":[{"name":"welcome","members":3}, ...]}
// The page keeps the last 60 samples of each series and draws them as small
// SVG line charts, built with createElementNS (no chart library). Room names
// reach the page only as text (el() from common.js).

'use strict';

(() => {
  /** Samples kept per series: one minute. */
  const KEEP = 60;
  const SVG = 'http://www.w3.org/2000/svg';
  /** The charts' own coordinates; CSS stretches them to the card's width. */
  const W = 300;
  const H = 80;

  const $ = (id) => document.getElementById(id);
  const status = $('status');
  const charts = $('charts');
  const numbers = new Intl.NumberFormat();

  function count(v) {
    return numbers.format(v);
  }

  function bytesPerSecond(v) {
    if (v < 1024) return `${count(v)} B/s`;
    if (v < 1024 * 1024) return `${(v / 1024).toFixed(1)} KiB/s`;
    return `${(v / 1024 / 1024).toFixed(1)} MiB/s`;
  }

  function micros(v) {
    if (v >= 1000) {
      const ms = v / 1000;
      return `${Number.isInteger(ms) ? ms : ms.toFixed(ms >= 10 ? 1 : 2)} ms`;
    }
    return `${Number.isInteger(v) || v >= 100 ? Math.round(v) : v.toFixed(1)} µs`;
  }

  // What each card draws: the fields of the stats frame, one line each.
  const CHARTS = [
    { card: 'connections', format: count, lines: [{ field: 'connections' }] },
    { card: 'messages', format: count, lines: [{ field: 'messages_per_sec' }] },
    { card: 'deliveries', format: count, lines: [{ field: 'deliveries_per_sec' }] },
    { card: 'bytes', format: bytesPerSecond,
      lines: [{ field: 'bytes_in_per_sec', cls: 'in' }, { field: 'bytes_out_per_sec', cls: 'out' }] },
    { card: 'loop', format: micros, lines: [{ field: 'loop_turn_avg_us' }] },
  ];

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    return node;
  }

  // Builds the empty chart of each card once.
  for (const chart of CHARTS) {
    const card = charts.querySelector(`[data-series="${chart.card}"]`);
    const wrap = card.querySelector('.chart-wrap');
    const title = card.querySelector('h2').textContent;
    const root = svg('svg', {
      class: 'spark', viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none',
      role: 'img', 'aria-label': `${title}, last 60 seconds`,
    });
    for (const f of [0.25, 0.5, 0.75]) root.append(svg('line', { class: 'grid', x1: 0, x2: W, y1: H * f, y2: H * f }));
    root.append(svg('line', { class: 'base', x1: 0, x2: W, y1: H - 0.5, y2: H - 0.5 }));
    for (const line of chart.lines) {
      line.values = [];
      line.area = svg('path', { class: `area ${line.cls || ''}`, d: '' });
      line.path = svg('path', { class: `line ${line.cls || ''}`, d: '' });
      root.append(line.area, line.path);
    }
    chart.scale = el('span', { class: 'scale' }, '');
    wrap.append(root, chart.scale, el('div', { class: 'axis', 'aria-hidden': 'true' },
      el('span', {}, '1 min ago'), el('span', {}, 'now')));
  }

  /** A round number at least `v` (1, 2, 2.5, 5 times a power of ten). */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function draw(chart) {
    const all = chart.lines.flatMap((l) => l.values);
    // A little headroom, so a flat line does not run along the top edge.
    const max = niceMax(Math.max(0, ...all) * 1.1);
    const step = W / (KEEP - 1);
    const y = (v) => (H - 1 - (v / max) * (H - 6)).toFixed(1);
    for (const line of chart.lines) {
      const v = line.values;
      if (v.length === 0) continue;
      // Newest at the right edge; with one sample, a short flat stroke.
      const points = v.length === 1 ? [v[0], v[0]] : v;
      const x = (i) => (W - (points.length - 1 - i) * step).toFixed(1);
      const d = points.map((p, i) => `${i ? 'L' : 'M'}${x(i)} ${y(p)}`).join(' ');
      line.path.setAttribute('d', d);
      line.area.setAttribute('d', `${d} L${x(points.length - 1)} ${H} L${x(0)} ${H} Z`);
    }
    chart.scale.textContent = chart.format(max);
  }

  function text(id, value) {
    const node = $(id);
    if (node) node.textContent = value;
  }

  let samples = 0;

  function onStats(s) {
    samples += 1;
    charts.dataset.samples = String(samples);
    for (const chart of CHARTS) {
      for (const line of chart.lines) {
        line.values.push(Number(s[line.field]) || 0);
        if (line.values.length > KEEP) line.values.shift();
      }
      draw(chart);
    }
    text('connections', count(s.connections));
    text('websockets', count(s.websockets));
    text('members', count(s.members));
    text('rooms', count(s.rooms));
    text('messages-per-sec', count(s.messages_per_sec));
    text('messages-total', count(s.messages_received));
    text('deliveries-per-sec', count(s.deliveries_per_sec));
    text('deliveries-total', count(s.messages_delivered));
    text('bytes-per-sec', bytesPerSecond(s.bytes_in_per_sec + s.bytes_out_per_sec));
    text('bytes-in', bytesPerSecond(s.bytes_in_per_sec));
    text('bytes-out', bytesPerSecond(s.bytes_out_per_sec));
    text('loop-turn', micros(Number(s.loop_turn_avg_us) || 0));
    text('loop-turns', count(s.loop_turns_per_sec));
    text('updated', `Last sample at ${new Date().toLocaleTimeString()}.`);
    showBusiest(Array.isArray(s.busiest_rooms) ? s.busiest_rooms : []);
  }

  function showBusiest(rooms) {
    const body = $('busiest');
    if (rooms.length === 0) {
      body.replaceChildren(el('tr', {}, el('td', { colspan: 2, class: 'muted' }, 'Nobody is in a room right now.')));
      return;
    }
    body.replaceChildren(...rooms.map((r) => el('tr', {},
      el('th', { scope: 'row' }, el('a', { href: `/room/${encodeURIComponent(r.name)}` }, r.name)),
      el('td', { class: 'num' }, count(r.members)))));
  }

  let attempt = 0;

  function connect() {
    const ws = new WebSocket(wsUrl('/ws/stats'));
    setStatus(status, 'connecting');

    ws.addEventListener('open', () => {
      attempt = 0;
      setStatus(status, 'online');
    });

    ws.addEventListener('message', (event) => {
      let s = null;
      try { s = JSON.parse(event.data); } catch { return; }
      if (s && s.type === 'stats') onStats(s);
    });

    ws.addEventListener('close', () => {
      const delay = backoffDelay(attempt++);
      setStatus(status, 'offline', `reconnecting in ${(delay / 1000).toFixed(1)} s`);
      setTimeout(connect, delay);
    });
  }

  connect();
})();
