// learn.js: the learn page, /learn. A WebSocket to /ws/inspect, taken apart.
//
// The server at /ws/inspect sends, as JSON text frames:
//   {"type":"handshake", ...}     first: the request it got and how it computed the accept value;
//   {"type":"frame", ...}         one per frame the browser sent, read from the raw socket bytes;
//   {"type":"server_frame", ...}  a note before it sends a ping, a fragmented message or a close
//                                 that this page asked for (JSON commands, see inspect.rs);
//   {"type":"error", ...}         a command it could not carry out.
// Anything else the page receives is a real data message from the server: the
// fragmented message, put back together by the browser.
//
// Everything the server or the user provides is shown with textContent (el()
// from common.js), never parsed as HTML.

'use strict';

(() => {
  const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
  const RFC_KEY = 'dGhlIHNhbXBsZSBub25jZQ==';
  /** Payload bytes drawn as boxes at most; the rest is counted. */
  const BOXES = 48;
  /** Payload bytes shown in the unmasking table. */
  const UNMASKED = 8;
  /** Entries kept in the conversation (the heartbeat adds one now and then). */
  const MAX_ENTRIES = 200;

  const $ = (id) => document.getElementById(id);
  const status = $('status');
  const frames = $('frames');
  const message = $('message');
  const hexBox = $('hex');
  const deflateBox = $('deflate');
  const controlError = $('control-error');
  const reconnectButton = $('reconnect');
  const announce = $('announce');
  const actionButtons = ['send-text', 'send-binary', 'send-close', 'server-ping', 'server-fragmented', 'server-close']
    .map($);

  const utf8 = new TextEncoder();

  let socket = null;
  let attempt = 0;
  let retryTimer = null;
  /** Who asked for the current close: null, "browser" or "server". */
  let closeAskedBy = null;
  /** Fragmented messages announced by the server and not yet received. */
  let reassembling = [];
  /** When the user last pressed a button (new entries are scrolled to for a moment after). */
  let lastAction = 0;

  // ---------------------------------------------------------------- bytes

  function hex2(b) {
    return b.toString(16).padStart(2, '0');
  }

  function toHex(bytes) {
    return Array.from(bytes, hex2).join(' ');
  }

  /** "81 85 37" -> Uint8Array; "" -> empty. */
  function fromHex(text) {
    const clean = (text || '').replace(/\s+/g, '');
    if (clean.length % 2 !== 0 || /[^0-9a-f]/i.test(clean)) return null;
    const out = new Uint8Array(clean.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(i * 2, i * 2 + 2), 16);
    return out;
  }

  function toBase64(bytes) {
    return btoa(String.fromCharCode(...bytes));
  }

  /** A byte as a character, when it is printable ASCII. */
  function printable(b) {
    return b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : null;
  }

  // SHA-1 (FIPS 180-4), small and synchronous, so the page can redo the
  // server's computation itself (crypto.subtle only exists on https pages).
  function sha1(bytes) {
    const bitLength = bytes.length * 8;
    const size = ((bytes.length + 9 + 63) >> 6) << 6;
    const buf = new Uint8Array(size);
    buf.set(bytes);
    buf[bytes.length] = 0x80;
    const view = new DataView(buf.buffer);
    view.setUint32(size - 8, Math.floor(bitLength / 2 ** 32));
    view.setUint32(size - 4, bitLength >>> 0);
    const h = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0];
    const w = new Uint32Array(80);
    for (let block = 0; block < size; block += 64) {
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + i * 4);
      for (let i = 16; i < 80; i++) {
        const x = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
        w[i] = (x << 1) | (x >>> 31);
      }
      let [a, b, c, d, e] = h;
      for (let i = 0; i < 80; i++) {
        let f, k;
        if (i < 20) { f = (b & c) | (~b & d); k = 0x5a827999; }
        else if (i < 40) { f = b ^ c ^ d; k = 0x6ed9eba1; }
        else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8f1bbcdc; }
        else { f = b ^ c ^ d; k = 0xca62c1d6; }
        const t = (((a << 5) | (a >>> 27)) + f + e + k + w[i]) >>> 0;
        e = d; d = c; c = ((b << 30) | (b >>> 2)) >>> 0; b = a; a = t;
      }
      h[0] = (h[0] + a) >>> 0; h[1] = (h[1] + b) >>> 0; h[2] = (h[2] + c) >>> 0;
      h[3] = (h[3] + d) >>> 0; h[4] = (h[4] + e) >>> 0;
    }
    const out = new Uint8Array(20);
    const outView = new DataView(out.buffer);
    h.forEach((word, i) => outView.setUint32(i * 4, word));
    return out;
  }

  /** §4.2.2: base64(SHA-1(key + GUID)). */
  function acceptFor(key) {
    return toBase64(sha1(utf8.encode(key + GUID)));
  }

  // ---------------------------------------------------------------- frames

  const OPCODES = { 0: 'continuation', 1: 'text', 2: 'binary', 8: 'close', 9: 'ping', 10: 'pong' };

  const OPCODE_MEANING = {
    continuation: 'The next piece of a message started by an earlier frame (§5.4).',
    text: 'A text message; its payload must be UTF-8 (§5.6).',
    binary: 'A binary message: any bytes at all (§5.6).',
    close: 'Ends the conversation, with an optional code and reason (§5.5.1).',
    ping: '"Are you there?" The other side must answer with a pong (§5.5.2).',
    pong: 'The answer to a ping, carrying the same payload (§5.5.3).',
  };

  const CLOSE_MEANING = {
    1000: 'normal closure',
    1001: 'going away (a server shutting down, a page being left)',
    1002: 'protocol error',
    1003: 'cannot accept this kind of data',
    1007: 'payload does not match the message type (e.g. bad UTF-8)',
    1008: 'policy violation',
    1009: 'message too big',
    1010: 'a required extension is missing',
    1011: 'unexpected condition on the server',
    1012: 'service restart',
    1013: 'try again later',
    1014: 'bad gateway',
  };

  function closeMeaning(code) {
    if (CLOSE_MEANING[code]) return `${CLOSE_MEANING[code]} (§7.4.1)`;
    if (code >= 3000 && code <= 3999) return 'registered for libraries and frameworks (§7.4.2)';
    if (code >= 4000 && code <= 4999) return 'private use: its meaning is agreed by the application (§7.4.2)';
    return 'not a code defined for the wire (§7.4)';
  }

  function opcodeName(code) {
    return OPCODES[code] || (code < 8 ? 'reserved (data)' : 'reserved (control)');
  }

  /**
   * Takes apart one frame given as bytes (the server's frames, which the
   * page gets as hex in the server_frame notes) into the same shape as the
   * inspector's JSON descriptions.
   */
  function parseFrame(bytes) {
    const b0 = bytes[0] || 0;
    const b1 = bytes[1] || 0;
    const len7 = b1 & 0x7f;
    let headerLen = 2;
    let length = len7;
    if (len7 === 126) {
      length = ((bytes[2] << 8) | bytes[3]) >>> 0;
      headerLen = 4;
    } else if (len7 === 127) {
      length = 0;
      for (let i = 2; i < 10; i++) length = length * 256 + (bytes[i] || 0);
      headerLen = 10;
    }
    const masked = (b1 & 0x80) !== 0;
    const key = masked ? bytes.slice(headerLen, headerLen + 4) : null;
    if (masked) headerLen += 4;
    const wire = bytes.slice(headerLen);
    const payload = masked ? wire.map((b, i) => b ^ key[i % 4]) : wire;
    const opcode = b0 & 0x0f;
    const f = {
      header_hex: toHex(bytes.slice(0, headerLen)),
      fin: (b0 & 0x80) !== 0,
      rsv1: (b0 & 0x40) !== 0,
      rsv2: (b0 & 0x20) !== 0,
      rsv3: (b0 & 0x10) !== 0,
      opcode,
      opcode_name: opcodeName(opcode),
      masked,
      payload_length: length,
      length_encoding: len7 === 126 ? '16-bit' : len7 === 127 ? '64-bit' : '7-bit',
      mask_key_hex: key ? toHex(key) : null,
      masked_payload_hex: toHex(wire),
      payload_hex: toHex(payload),
      payload_text: decodeText(payload),
      truncated: false,
    };
    if (opcode === 8 && payload.length >= 2) {
      f.close_code = (payload[0] << 8) | payload[1];
      f.close_reason = decodeText(payload.slice(2)) ?? '';
    }
    return f;
  }

  function decodeText(bytes) {
    try {
      return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      return null;
    }
  }

  /** One byte box: hex on top, a small label (or the bits) below. */
  function byteBox(value, field, sub, title) {
    return el('span', { class: `byte ${field}`, title },
      el('span', { class: 'hex' }, hex2(value)),
      sub instanceof Node ? sub : el('span', { class: 'sub' }, sub || '\u00a0'));
  }

  /** The 8 bits of a header byte, each coloured by the field it belongs to. */
  function bits(value, fields) {
    const out = el('span', { class: 'sub bits' });
    for (let i = 0; i < 8; i++) {
      out.append(el('span', { class: fields[i] }, (value >> (7 - i)) & 1));
    }
    return out;
  }

  /**
   * The bytes of a frame as coloured boxes. `header` and `wire` (the payload
   * as it crossed the network) are byte arrays; `total` is the real payload
   * length (more than `wire` holds when the inspector cut it short).
   */
  function byteRow(header, wire, total, masked) {
    const row = el('div', { class: 'bytes', role: 'group', 'aria-label': 'The bytes of this frame, in order' });
    const b0 = header[0];
    const b1 = header[1];
    if (b0 !== undefined) {
      const op = b0 & 0x0f;
      row.append(byteBox(b0, 'f-b0', bits(b0, ['f-fin', 'f-rsv', 'f-rsv', 'f-rsv', 'f-op', 'f-op', 'f-op', 'f-op']),
        `byte 1: FIN=${b0 >> 7}, RSV1-3=${(b0 >> 4) & 7}, opcode=${op} (${opcodeName(op)})`));
    }
    if (b1 !== undefined) {
      row.append(byteBox(b1, 'f-b1', bits(b1, ['f-mask', 'f-len', 'f-len', 'f-len', 'f-len', 'f-len', 'f-len', 'f-len']),
        `byte 2: MASK=${b1 >> 7}, length=${b1 & 0x7f}`));
    }
    const len7 = (b1 ?? 0) & 0x7f;
    const extLen = len7 === 126 ? 2 : len7 === 127 ? 8 : 0;
    let i = 2;
    for (; i < 2 + extLen && i < header.length; i++) {
      row.append(byteBox(header[i], 'f-ext', 'len', `extended payload length, byte ${i - 1} of ${extLen}`));
    }
    for (let k = 0; i < header.length; i++, k++) {
      row.append(byteBox(header[i], 'f-key', 'key', `masking key, byte ${k + 1} of 4`));
    }
    const shown = Math.min(wire.length, BOXES);
    for (let j = 0; j < shown; j++) {
      // Unmasked bytes show their character; masked ones mean nothing yet.
      const sub = masked ? '' : (printable(wire[j]) ?? '·');
      row.append(byteBox(wire[j], 'f-data', sub, `payload byte ${j + 1} of ${total}`));
    }
    if (total > shown) {
      row.append(el('span', { class: 'more' }, `… ${total - shown} more payload byte${total - shown === 1 ? '' : 's'}`));
    }
    return row;
  }

  function yesNo(flag) {
    return flag ? '1' : '0';
  }

  /** The readable table of fields for a frame description `f`. */
  function fieldTable(f, fromServer) {
    const rows = [];
    const row = (field, cls, where, value, meaning) => rows.push(el('tr', {},
      el('th', { scope: 'row' }, el('span', { class: `swatch ${cls}` }), field),
      el('td', { class: 'where' }, where),
      el('td', {}, value instanceof Node ? value : el('code', {}, value)),
      el('td', { class: 'meaning' }, meaning)));

    row('FIN', 'f-fin', 'byte 1, bit 1', yesNo(f.fin),
      f.fin ? 'The last (or only) frame of its message (§5.2).' : 'More frames of this message follow (§5.4).');
    const rsv = [f.rsv1, f.rsv2, f.rsv3].map(yesNo).join(' ');
    row('RSV1–3', 'f-rsv', 'byte 1, bits 2–4', rsv, f.rsv1 && f.compressed && !f.rsv2 && !f.rsv3
      ? 'RSV1 = 1: this message is compressed with permessage-deflate, agreed in the handshake (RFC 7692 §6).'
      : f.rsv1 || f.rsv2 || f.rsv3
        ? 'Set, but no extension was agreed in the handshake: a protocol error (§5.2).'
        : 'For extensions such as compression; 0 when none was agreed (§5.2).');
    row('opcode', 'f-op', 'byte 1, bits 5–8', `${f.opcode} = ${f.opcode_name}`,
      OPCODE_MEANING[f.opcode_name] || 'Reserved for future use: a protocol error today (§5.2).');
    row('MASK', 'f-mask', 'byte 2, bit 1', yesNo(f.masked), f.masked
      ? 'The payload is masked. A browser must mask every frame it sends (§5.3).'
      : fromServer
        ? 'Not masked: a server never masks its frames (§5.1).'
        : 'Not masked, but a client must always mask: a protocol error (§5.1).');
    if (f.payload_length !== undefined) {
      const where = { '7-bit': 'byte 2, bits 2–8', '16-bit': 'bytes 3–4', '64-bit': 'bytes 3–10' }[f.length_encoding];
      const meaning = {
        '7-bit': 'Up to 125 bytes: the length fits in byte 2 itself (§5.2).',
        '16-bit': 'Byte 2 says 126, so the length is in the next 2 bytes (§5.2).',
        '64-bit': 'Byte 2 says 127, so the length is in the next 8 bytes (§5.2).',
      }[f.length_encoding];
      row('payload length', f.length_encoding === '7-bit' ? 'f-len' : 'f-ext', where || '', String(f.payload_length), meaning || '');
    }
    if (f.mask_key_hex) {
      row('masking key', 'f-key', '4 bytes after the length', f.mask_key_hex,
        'Random, new for every frame (§5.3), so nobody can predict the bytes on the wire (§10.3).');
    }
    if (f.payload_hex !== undefined) {
      let value;
      if (f.opcode === 8 && f.close_code !== undefined && f.close_code !== null) {
        value = el('code', {}, `${f.close_code}${f.close_reason ? ` "${f.close_reason}"` : ''}`);
      } else if (f.payload_text !== null && f.payload_text !== undefined && (f.opcode === 1 || f.opcode === 0 || f.opcode >= 8)) {
        value = el('code', { class: 'payload-text' }, f.payload_text);
      } else {
        value = el('code', { class: 'payload-hex' }, f.payload_hex + (f.truncated ? ' …' : ''));
      }
      let meaning;
      if (f.opcode === 8) {
        meaning = f.close_code === undefined || f.close_code === null
          ? 'An empty close: no code given (the other side sees 1005, §7.1.5).'
          : `Close code ${f.close_code}: ${closeMeaning(f.close_code)}. The first 2 payload bytes hold the code, the rest is the reason in UTF-8 (§5.5.1).`;
      } else if (f.opcode === 2) {
        meaning = 'Raw bytes, shown in hex; a binary message has no text meaning (§5.6).';
      } else if (f.masked) {
        meaning = 'After unmasking (below), as UTF-8 text.';
      } else {
        meaning = 'Sent as is: no mask to undo.';
      }
      row('payload', 'f-data', `${f.payload_length ?? 0} byte${f.payload_length === 1 ? '' : 's'}`, value, meaning);
    }
    return el('div', { class: 'fields-wrap table-scroll' }, el('table', { class: 'fields' },
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, 'Field'), el('th', { scope: 'col', class: 'where' }, 'Where'),
        el('th', { scope: 'col' }, 'Value'), el('th', { scope: 'col' }, 'Meaning'))),
      el('tbody', {}, ...rows)));
  }

  /** The first payload bytes unmasked one by one (§5.3). */
  function unmaskTable(f) {
    const key = fromHex(f.mask_key_hex);
    const wire = fromHex(f.masked_payload_hex);
    const plain = fromHex(f.payload_hex);
    if (!key || !wire || !plain || wire.length === 0) return null;
    const n = Math.min(UNMASKED, wire.length);
    const cells = (fn, cls) => Array.from({ length: n }, (_, i) => el('td', { class: cls }, fn(i)));
    return el('figure', { class: 'unmask' },
      el('figcaption', {}, 'Unmasking (§5.3): payload byte ', el('var', {}, 'i'), ' = wire byte ',
        el('var', {}, 'i'), ' XOR key byte (', el('var', {}, 'i'), ' mod 4)',
        wire.length > n ? `, first ${n} of ${wire.length} bytes` : ''),
      el('div', { class: 'table-scroll' }, el('table', {},
        el('tbody', {},
          el('tr', {}, el('th', { scope: 'row' }, 'on the wire'), ...cells((i) => hex2(wire[i]), 'f-data masked')),
          el('tr', {}, el('th', { scope: 'row' }, 'XOR key'), ...cells((i) => hex2(key[i % 4]), 'f-key')),
          el('tr', { class: 'result' }, el('th', { scope: 'row' }, '= payload'), ...cells((i) => hex2(plain[i]), 'f-data')),
          el('tr', {}, el('th', { scope: 'row' }, 'character'),
            ...cells((i) => printable(plain[i]) ?? '·', 'char'))))));
  }

  /** A line describing a header given as hex (the server's frames). */
  function headerSummary(headerHex) {
    const h = fromHex(headerHex);
    if (!h || h.length < 2) return '';
    const f = parseFrame(h);
    const length = (h[1] & 0x7f) < 126 ? (h[1] & 0x7f) : f.payload_length;
    return `FIN ${yesNo(f.fin)}, ${f.opcode_name}, ${f.masked ? 'masked' : 'not masked'}, ${length} byte${length === 1 ? '' : 's'} of payload`;
  }

  // ---------------------------------------------------------------- the conversation

  /** Adds one entry to the conversation; `dir` is "to-server", "to-browser" or "event". */
  function addEntry(dir, node) {
    node.classList.add('entry', dir);
    frames.append(node);
    // Screen readers hear the one-line summary, not the whole table.
    announce.textContent = (node.querySelector('.entry-head') || node).textContent;
    while (frames.childElementCount > MAX_ENTRIES) frames.firstElementChild.remove();
    if (Date.now() - lastAction < 3000) node.scrollIntoView({ block: 'nearest' });
    return node;
  }

  function note(text, kind) {
    return addEntry('event', el('li', { class: `note ${kind || ''}` }, text));
  }

  /** The header of the text frame that carried the server's JSON reply. */
  function replyHeader(json) {
    const n = utf8.encode(json).length;
    if (n < 126) return Uint8Array.of(0x81, n);
    if (n < 65536) return Uint8Array.of(0x81, 126, n >> 8, n & 0xff);
    const h = new Uint8Array(10);
    h[0] = 0x81; h[1] = 127;
    new DataView(h.buffer).setUint32(6, n);
    return h;
  }

  /** A frame the browser sent, as the inspector described it. */
  function showDescribed(d, raw) {
    const header = fromHex(d.header_hex) || new Uint8Array();
    const wire = fromHex(d.masked_payload_hex) || new Uint8Array();
    const total = d.payload_length ?? wire.length;
    const onWire = header.length + total;
    const card = el('li', {
      class: 'frame',
      'data-opcode': d.opcode_name,
      'data-index': d.index,
      'data-masked': String(d.masked),
      'data-fin': String(d.fin),
      'data-payload-length': d.payload_length ?? '',
      'data-rsv1': String(Boolean(d.rsv1)),
      'data-inflated-length': d.inflated_length ?? '',
    });
    card.append(el('header', { class: 'entry-head' },
      el('span', { class: 'arrow', 'aria-hidden': 'true' }, '→'),
      el('strong', {}, `Frame ${d.index} from your browser: `),
      el('span', { class: `op-badge op-${d.opcode_name.replace(/\W.*/, '')}` }, d.opcode_name),
      el('span', { class: 'muted' }, ` ${onWire} byte${onWire === 1 ? '' : 's'} on the wire`)));
    if (d.opcode_name === 'pong') {
      card.append(el('p', { class: 'explain' },
        'Your browser sent this pong by itself, in answer to a ping from the server. Pages never see pings or pongs (§5.5.2, §5.5.3).'
        + (d.payload_text === 'chatroom' ? ' This one answers the server\'s heartbeat, sent when the connection is quiet.' : '')));
    } else if (d.opcode_name === 'close') {
      card.append(el('p', { class: 'explain' },
        'A close frame. The server answers with a close frame of its own, then closes the TCP connection (§5.5.1, §7.1.1).'));
    }
    if (d.compressed && d.inflated_length !== undefined) {
      const text = typeof d.inflated_text === 'string' ? d.inflated_text : null;
      card.append(el('p', { class: 'explain compressed-note' },
        `Compressed (RSV1 set): the ${total} payload byte${total === 1 ? '' : 's'} on the wire are DEFLATE data. `
        + 'The server adds back the four bytes 00 00 ff ff your browser left off, inflates them, and gets '
        + `${d.inflated_length} byte${d.inflated_length === 1 ? '' : 's'}`,
        text === null ? '.' : el('span', {}, ': ', el('code', { class: 'inflated-text' }, text)),
        ' (RFC 7692 §7.2).'));
    } else if (d.compressed) {
      card.append(el('p', { class: 'explain' },
        'Part of a compressed message: its bytes are inflated once the last frame is in (RFC 7692 §7.2).'));
    }
    const command = d.opcode_name === 'text' && typeof d.payload_text === 'string' && /^\s*\{.*"cmd"/.test(d.payload_text);
    if (command) {
      card.append(el('p', { class: 'explain' }, 'The page\'s JSON command to the server: itself an ordinary text frame, ',
        el('code', { class: 'command-text' }, d.payload_text), '.'));
    }
    card.append(byteRow(header, wire, total, d.masked));
    const details = el('div', { class: 'frame-details' }, fieldTable(d, false));
    if (d.masked) {
      const unmask = unmaskTable(d);
      if (unmask) details.append(unmask);
    }
    // Commands are plumbing: their fields stay folded away.
    card.append(command ? el('details', { class: 'folded' }, el('summary', {}, 'Fields and unmasking'), details) : details);
    if (Array.isArray(d.problems) && d.problems.length > 0) {
      card.append(el('ul', { class: 'problems' }, ...d.problems.map((p) => el('li', {}, p))));
    }
    // The server's reply: this very description, in a text frame.
    const reply = el('div', { class: 'reply' },
      el('p', {}, el('span', { class: 'arrow', 'aria-hidden': 'true' }, '←'),
        ' The server\'s reply: this description, as JSON in a text frame. Its header:'),
      byteRow(replyHeader(raw), new Uint8Array(), 0, false),
      el('p', { class: 'muted small' }, `${headerSummary(toHex(replyHeader(raw)))}. Servers never mask (§5.1).`));
    if (d.previous_server_frame_header_hex) {
      reply.append(el('p', { class: 'muted small' }, 'The frame the server sent before it began with ',
        el('code', {}, d.previous_server_frame_header_hex), ` (${headerSummary(d.previous_server_frame_header_hex)}).`));
    }
    reply.append(el('details', {}, el('summary', {}, 'The JSON'),
      el('pre', { class: 'json' }, JSON.stringify(JSON.parse(raw), null, 2))));
    card.append(reply);
    addEntry('to-server', card);
  }

  /**
   * The close frame the browser is about to send, rebuilt here. After
   * close() the WebSocket API drops every message that still arrives, so the
   * server's description of this frame never reaches the page. Everything
   * but the masking key follows from the RFC.
   */
  function showOwnClose(code, reason) {
    const reasonBytes = utf8.encode(reason);
    const payload = new Uint8Array(2 + reasonBytes.length);
    payload[0] = code >> 8;
    payload[1] = code & 0xff;
    payload.set(reasonBytes, 2);
    const f = {
      fin: true, rsv1: false, rsv2: false, rsv3: false, opcode: 8, opcode_name: 'close', masked: true,
      payload_length: payload.length, length_encoding: '7-bit', mask_key_hex: '?? ?? ?? ??',
      payload_hex: toHex(payload), payload_text: null, close_code: code, close_reason: reason,
    };
    const onWire = 6 + payload.length;
    const card = el('li', {
      class: 'frame reconstructed', 'data-opcode': 'close', 'data-masked': 'true', 'data-fin': 'true',
      'data-payload-length': payload.length,
    });
    card.append(el('header', { class: 'entry-head' },
      el('span', { class: 'arrow', 'aria-hidden': 'true' }, '→'),
      el('strong', {}, 'Your browser\'s close frame: '),
      el('span', { class: 'op-badge op-close' }, 'close'),
      el('span', { class: 'muted' }, ` ${onWire} bytes on the wire`)));
    card.append(el('p', { class: 'explain' },
      'The server describes this frame too, but once a page calls close() the WebSocket API drops every message that still '
      + 'arrives, so that description never reaches this page. Here is the frame rebuilt from the RFC instead: all of it but the '
      + 'masking key, which the browser picks at random and never tells the page (§5.3). The payload boxes show the bytes before masking.'));
    const row = byteRow(Uint8Array.of(0x88, 0x80 | payload.length), payload, payload.length, false);
    const keyBoxes = [1, 2, 3, 4].map((k) => el('span', { class: 'byte f-key', title: `masking key, byte ${k} of 4 (unknown)` },
      el('span', { class: 'hex' }, '??'), el('span', { class: 'sub' }, 'key')));
    row.children[1].after(...keyBoxes);
    card.append(row, el('div', { class: 'frame-details' }, fieldTable(f, false)));
    card.append(el('p', { class: 'explain' },
      'The server answers with a close frame of its own, usually echoing the code (§5.5.1); then it closes the TCP connection (§7.1.1).'));
    addEntry('to-server', card);
  }

  /** One frame the server sent, from its hex. */
  function serverFrame(frameHex) {
    const bytes = fromHex(frameHex) || new Uint8Array();
    const f = parseFrame(bytes);
    const header = fromHex(f.header_hex);
    const wire = fromHex(f.masked_payload_hex);
    return el('div', { class: 'server-frame', 'data-opcode': f.opcode_name, 'data-fin': String(f.fin) },
      el('p', { class: 'sf-head' }, el('span', { class: `op-badge op-${f.opcode_name.replace(/\W.*/, '')}` }, f.opcode_name),
        ` FIN ${yesNo(f.fin)}, ${bytes.length} bytes`),
      byteRow(header, wire, f.payload_length, f.masked),
      el('details', {}, el('summary', {}, 'Fields'), fieldTable(f, true)));
  }

  function showServerNote(n) {
    const entry = el('li', { class: 'server-note', 'data-what': n.what });
    if (n.what === 'ping') {
      entry.append(el('header', { class: 'entry-head' }, el('span', { class: 'arrow', 'aria-hidden': 'true' }, '←'),
        el('strong', {}, 'The server sends a ping')),
      el('p', { class: 'explain' }, 'A control frame with opcode 9. Your browser must answer with a pong carrying the same payload (§5.5.2); watch for it below.'),
      serverFrame(n.frame_hex));
    } else if (n.what === 'fragmented') {
      const list = Array.isArray(n.frames_hex) ? n.frames_hex : [];
      // No frames (an empty text), no message to wait for.
      if (list.length > 0) reassembling.push(list.length);
      entry.append(el('header', { class: 'entry-head' }, el('span', { class: 'arrow', 'aria-hidden': 'true' }, '←'),
        el('strong', {}, `The server sends one message in ${list.length} frame${list.length === 1 ? '' : 's'}`)),
      el('p', { class: 'explain' }, 'The first frame has the opcode (text) and FIN 0; the middle ones are continuation frames (opcode 0); the last has FIN 1 (§5.4).'),
      ...list.map(serverFrame));
    } else if (n.what === 'close') {
      entry.append(el('header', { class: 'entry-head' }, el('span', { class: 'arrow', 'aria-hidden': 'true' }, '←'),
        el('strong', {}, `The server closes with code ${n.code}`)),
      el('p', { class: 'explain' }, 'Its close frame comes next. Your browser answers with a close frame of its own (§5.5.1), but the server has said its last word: after a close it may send nothing more, so it cannot describe that answer to you.'),
      serverFrame(n.frame_hex));
    } else {
      entry.append(el('pre', { class: 'json' }, JSON.stringify(n, null, 2)));
    }
    addEntry('to-browser', entry);
  }

  /** A real data message: the fragmented message, reassembled by the browser. */
  function showReceived(data) {
    const parts = reassembling.shift();
    const entry = el('li', { class: 'received' },
      el('header', { class: 'entry-head' }, el('span', { class: 'arrow', 'aria-hidden': 'true' }, '←'),
        el('strong', {}, 'The page receives one message')));
    if (typeof data === 'string') {
      entry.append(el('p', { class: 'received-text' }, data));
    } else {
      entry.append(el('p', { class: 'received-text' }, el('code', {}, toHex(new Uint8Array(data)))));
    }
    entry.append(el('p', { class: 'explain' }, parts
      ? `Your browser put the ${parts} frame${parts === 1 ? '' : 's'} back together; the page's message event only ever sees whole messages (§5.4, §6.2).`
      : 'A data message from the server.'));
    addEntry('to-browser', entry);
  }

  // ---------------------------------------------------------------- the handshake

  /** A request or response head, with the WebSocket lines highlighted. */
  function showHead(pre, text) {
    pre.textContent = '';
    const lines = String(text).replace(/(\r\n)+$/, '').split('\r\n');
    for (const line of lines) {
      const interesting = /^(upgrade|connection|sec-websocket-[a-z]+)\s*:|^HTTP\/|^GET /i.test(line);
      pre.append(el('span', { class: interesting ? 'hl' : null }, line), '\n');
    }
  }

  function showHandshake(h) {
    showHead($('request-head'), h.request || '');
    showHead($('response-head'), h.response || '');
    $('key').textContent = h.key || '';
    $('key-bytes').textContent = h.key_decoded_hex ? `${h.key_decoded_hex} (${fromHex(h.key_decoded_hex).length} bytes)` : '';
    $('concat-key').textContent = h.key || '';
    $('concat-guid').textContent = h.guid || GUID;
    $('sha1').textContent = h.sha1_hex || '';
    $('accept').textContent = h.accept || '';

    // Extensions the browser offered and the server did not take up (§9.1).
    const offered = /^sec-websocket-extensions\s*:\s*([^\r\n]+)/im.exec(h.request || '');
    const taken = /^sec-websocket-extensions\s*:/im.test(h.response || '');
    const handshakeNote = $('handshake-note');
    handshakeNote.hidden = !offered || taken;
    if (offered && !taken) {
      const name = offered[1].split(/[;,]/)[0].trim();
      handshakeNote.textContent = `Your browser also offered the extension "${name}". The response does not name it, `
        + 'so no extension is in use: frames travel exactly as written, and the RSV bits must stay 0 (§9.1, §5.2).';
    }

    if (h.extension) {
      handshakeNote.hidden = false;
      handshakeNote.textContent = `The server took the extension: "${h.extension}". Each message is now `
        + 'compressed on its own (no context takeover either way). Your browser compresses what it sends; '
        + 'the server compresses what is worth it (1 KiB and more). A compressed message has RSV1 set in its '
        + 'first frame, and its payload is DEFLATE data (RFC 7692).';
    }

    const header = /^sec-websocket-accept\s*:\s*(\S+)/im.exec(h.response || '');
    const sent = header ? header[1] : h.accept_sent;
    const match = $('accept-match');
    match.hidden = false;
    match.dataset.ok = String(sent === h.accept);
    match.textContent = sent === h.accept
      ? '✓ the Sec-WebSocket-Accept the server sent'
      : `✗ the server sent ${sent}`;

    // Redo the computation here, with this page's own SHA-1.
    const mine = acceptFor(h.key || '');
    const own = $('accept-browser');
    own.dataset.ok = String(mine === h.accept);
    own.textContent = mine === h.accept
      ? `This page redid the four steps with its own SHA-1 and got ${mine} too. Your browser did the same check before it said "open".`
      : `This page computed ${mine}, which does not match.`;
  }

  // ---------------------------------------------------------------- the socket

  function setOnline(online) {
    for (const b of actionButtons) b.disabled = !online;
    reconnectButton.hidden = online || retryTimer !== null;
  }

  function showError(text) {
    controlError.textContent = text;
    controlError.hidden = !text;
    if (text) controlError.scrollIntoView({ block: 'nearest' });
  }

  function connect() {
    clearTimeout(retryTimer);
    retryTimer = null;
    closeAskedBy = null;
    reassembling = [];
    showError('');
    const ws = new WebSocket(wsUrl(deflateBox.checked ? '/ws/inspect?deflate=1' : '/ws/inspect'));
    ws.binaryType = 'arraybuffer';
    socket = ws;
    setStatus(status, 'connecting');
    setOnline(false);
    reconnectButton.hidden = true;

    ws.addEventListener('open', () => {
      attempt = 0;
      setStatus(status, 'online');
      setOnline(true);
      note('Connected: the handshake above just happened. From now on, frames.', 'open');
    });

    ws.addEventListener('message', (event) => {
      if (socket !== ws) return;
      if (typeof event.data !== 'string' || reassembling.length > 0) {
        showReceived(event.data);
        return;
      }
      let m = null;
      try { m = JSON.parse(event.data); } catch { /* not JSON */ }
      if (!m || typeof m !== 'object') {
        showReceived(event.data);
      } else if (m.type === 'handshake') {
        showHandshake(m);
      } else if (m.type === 'frame') {
        showDescribed(m, event.data);
      } else if (m.type === 'server_frame') {
        showServerNote(m);
      } else if (m.type === 'error') {
        if (closeAskedBy === 'server') closeAskedBy = null;
        note(`The server says: ${m.message || m.code}`, 'error');
      } else {
        showReceived(event.data);
      }
    });

    ws.addEventListener('close', (event) => {
      if (socket !== ws) return;
      socket = null;
      const reason = event.reason ? `, reason "${event.reason}"` : '';
      const clean = event.wasClean
        ? 'Both sides sent a close frame: a clean close (§7.1.4).'
        : 'The connection ended without a close handshake (§7.1.5).';
      note(`Closed. Your browser reports code ${event.code}${event.code ? ` (${closeMeaning(event.code)})` : ''}${reason}. ${clean}`,
        'closed');
      if (closeAskedBy) {
        setStatus(status, 'offline', 'closed on request');
        setOnline(false);
        reconnectButton.hidden = false;
      } else {
        const delay = backoffDelay(attempt++);
        setStatus(status, 'offline', `reconnecting in ${(delay / 1000).toFixed(1)} s`);
        retryTimer = setTimeout(connect, delay);
        setOnline(false);
      }
    });
  }

  function openSocket() {
    if (socket && socket.readyState === WebSocket.OPEN) return socket;
    showError('Not connected right now.');
    return null;
  }

  function sendCommand(command) {
    const ws = openSocket();
    if (!ws) return;
    ws.send(JSON.stringify(command));
  }

  // ---------------------------------------------------------------- controls

  function acted() {
    lastAction = Date.now();
    showError('');
  }

  $('send-form').addEventListener('submit', (event) => {
    event.preventDefault();
    acted();
    const ws = openSocket();
    if (ws) ws.send(message.value);
  });

  $('send-binary').addEventListener('click', () => {
    acted();
    let bytes;
    if (hexBox.checked) {
      bytes = fromHex(message.value);
      if (!bytes) {
        showError('Hex bytes are pairs of 0-9 and a-f, like "01 ff 80".');
        message.setAttribute('aria-invalid', 'true');
        return;
      }
    } else {
      bytes = utf8.encode(message.value);
    }
    message.removeAttribute('aria-invalid');
    const ws = openSocket();
    if (ws) ws.send(bytes);
  });

  message.addEventListener('input', () => message.removeAttribute('aria-invalid'));

  $('close-form').addEventListener('submit', (event) => {
    event.preventDefault();
    acted();
    const code = Number($('close-code').value);
    const reason = $('close-reason').value;
    // The browser throws for anything else (WebSocket API, close()).
    if (!(code === 1000 || (Number.isInteger(code) && code >= 3000 && code <= 4999))) {
      showError(`A page may close with 1000 or 3000–4999 only; ${$('close-code').value || 'nothing'} would be refused by the browser. The server can use the others: try "Close with code".`);
      return;
    }
    if (utf8.encode(reason).length > 123) {
      showError('The reason must fit in 123 bytes of UTF-8: a close frame carries at most 125 (§5.5).');
      return;
    }
    const ws = openSocket();
    if (!ws) return;
    closeAskedBy = 'browser';
    showOwnClose(code, reason);
    ws.close(code, reason);
  });

  $('server-ping').addEventListener('click', () => {
    acted();
    const payload = message.value;
    if (utf8.encode(payload).length > 125) {
      showError('A ping carries at most 125 bytes (§5.5); the server will cut the message short.');
    }
    sendCommand(payload ? { cmd: 'ping', payload } : { cmd: 'ping' });
  });

  $('server-fragmented').addEventListener('click', () => {
    acted();
    const parts = Math.max(1, Math.min(16, Number($('parts').value) || 3));
    sendCommand({ cmd: 'fragmented', text: message.value || 'a message in several frames', parts });
  });

  $('server-close').addEventListener('click', () => {
    acted();
    const code = Number($('server-close-code').value);
    if (!Number.isInteger(code)) {
      showError('Type a close code first, e.g. 1001.');
      return;
    }
    if (!openSocket()) return;
    closeAskedBy = 'server';
    sendCommand({ cmd: 'close', code, reason: 'you asked me to' });
  });

  // Compression is agreed in the handshake, so changing it means a new connection.
  deflateBox.addEventListener('change', () => {
    acted();
    note(deflateBox.checked
      ? 'Opening a new connection that asks for permessage-deflate (?deflate=1): watch the handshake and RSV1.'
      : 'Opening a new connection without compression.', 'open');
    const old = socket;
    socket = null;
    if (old) old.close(1000, 'reconnecting');
    attempt = 0;
    connect();
  });

  reconnectButton.addEventListener('click', () => {
    acted();
    note('Opening a new connection: a new handshake, with a new key.', 'open');
    attempt = 0;
    connect();
  });

  // The RFC's own example, computed here (§1.3).
  $('rfc-example-accept').textContent = acceptFor(RFC_KEY);

  setOnline(false);
  connect();
})();
