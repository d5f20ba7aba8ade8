// A scripted protocol peer over a real WebSocket (RFC 6455, server side, text frames only),
// for the protocol v1.1 behaviours a single heartwire node never produces: `unsubscribed
// {reason: "resync"}` and `error{code: "unavailable"}` come from a cluster whose message
// store is out of reach. The test plays the server frame by frame.

import { createHash } from 'node:crypto';
import http from 'node:http';

import { PATIENCE } from './server.mjs';

const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';

export class ScriptedServer {
  /** Listens on a free port; `connections` yields each accepted peer in turn. */
  static async start() {
    const s = new ScriptedServer();
    await new Promise((resolve) => s.http.listen(0, '127.0.0.1', resolve));
    s.port = s.http.address().port;
    return s;
  }

  constructor() {
    this.peers = [];
    this.waiting = [];
    this.http = http.createServer((_, res) => res.writeHead(404).end());
    this.http.unref();
    this.http.on('upgrade', (req, socket) => {
      const accept = createHash('sha1').update(req.headers['sec-websocket-key'] + GUID).digest('base64');
      socket.write('HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
        + `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
      const peer = new Peer(socket);
      this.peers.push(peer);
      const waiter = this.waiting.shift();
      if (waiter) waiter(peer);
    });
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** The next connection (accepted already, or the next to come). */
  accept() {
    const next = this.peers.find((p) => !p.taken);
    if (next) {
      next.taken = true;
      return Promise.resolve(next);
    }
    return new Promise((resolve) => this.waiting.push((p) => { p.taken = true; resolve(p); }));
  }

  stop() {
    for (const p of this.peers) p.socket.destroy();
    return new Promise((resolve) => this.http.close(resolve));
  }
}

/** One client connection: frames received (parsed JSON) and a way to send frames. */
class Peer {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.frames = [];
    this.cursor = 0;
    this.wake = null;
    socket.on('data', (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.parse();
    });
    socket.on('error', () => {});
  }

  parse() {
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      let len = b[1] & 0x7f;
      let at = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        at = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        at = 10;
      }
      const masked = (b[1] & 0x80) !== 0;
      const end = at + (masked ? 4 : 0) + len;
      if (b.length < end) return;
      const payload = Buffer.from(b.subarray(end - len, end));
      if (masked) for (let i = 0; i < len; i++) payload[i] ^= b[at + (i & 3)];
      this.buffer = b.subarray(end);
      const opcode = b[0] & 0x0f;
      if (opcode === 1) {
        this.frames.push(JSON.parse(payload.toString('utf8')));
        this.wake?.();
      } else if (opcode === 8) {
        this.write(0x88, payload.subarray(0, 2));
        this.socket.end();
      } else if (opcode === 9) {
        this.write(0x8a, payload);
      }
    }
  }

  write(head, payload) {
    const len = payload.length;
    const header = len < 126 ? Buffer.from([head, len])
      : len < 65536 ? Buffer.from([head, 126, len >> 8, len & 0xff])
        : Buffer.concat([Buffer.from([head, 127]), (() => { const x = Buffer.alloc(8); x.writeBigUInt64BE(BigInt(len)); return x; })()]);
    if (!this.socket.destroyed) this.socket.write(Buffer.concat([header, payload]));
  }

  /** Sends one frame as a text message. */
  send(frame) {
    this.write(0x81, Buffer.from(JSON.stringify(frame)));
  }

  /** The next frame the client sent whose `type` is `type` (others are skipped). */
  async next(type, timeout = PATIENCE) {
    const until = Date.now() + timeout;
    for (;;) {
      while (this.cursor < this.frames.length) {
        const f = this.frames[this.cursor++];
        if (f.type === type) return f;
      }
      const left = until - Date.now();
      if (left <= 0) throw new Error(`no ${type} frame from the client within ${timeout} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.wake = () => { clearTimeout(timer); resolve(); };
      });
    }
  }

  /** Answers `hello` with a `welcome` (a long heartbeat: the script sends no pings). */
  async handshake(user = 'u') {
    await this.next('hello');
    this.send({
      type: 'welcome', session: 's-1', user, heartbeat: { interval_ms: 60000, max_missed: 2 },
      max_frame: 65536, server: 'scripted',
    });
  }
}
