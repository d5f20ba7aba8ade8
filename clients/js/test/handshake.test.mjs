// Handshake, the server's heartbeat answered, round trips, heartbeat negotiation and a
// refused token, against a real `heartwire serve`.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, afterEach, before, test } from 'node:test';

import { Heartwire } from '../heartwire.js';
import { closeAll, Recorder } from '../testkit/events.mjs';
import { Gate } from '../testkit/gate.mjs';
import { BIN, FAST, sleep, startServer } from '../testkit/server.mjs';

afterEach(closeAll);

let server;
before(async () => { server = await startServer(); });
after(() => server.kill());

test('connects, answers every server ping and stays connected', { timeout: 30000 }, async () => {
  const hw = new Heartwire(server.url, { user: 'alice' });
  const rec = new Recorder(hw);
  const connected = await rec.next('connected');
  assert.match(connected.session, /.+/);
  assert.equal(connected.user, 'alice');
  assert.equal(connected.reconnects, 0);
  assert.deepEqual(connected.heartbeat, { interval_ms: 200, max_missed: 2 });
  assert.equal(connected.maxFrame, 65536);
  assert.equal(hw.state, 'connected');
  // The server closes a session silent for more than 2 x 200 ms: six intervals alive means
  // every ping was answered.
  await sleep(1200);
  assert.deepEqual(rec.log.filter((e) => e.type === 'disconnected'), []);
  assert.equal(hw.status().session, connected.session);
  assert.equal(hw.status().silenceLimitMs, 600);
  await hw.close();
  assert.deepEqual(rec.log.slice(-2).map((e) => e.type), ['disconnected', 'closed']);
  assert.equal(hw.state, 'closed');
});

test('ping measures the round trip', { timeout: 30000 }, async () => {
  const hw = new Heartwire(server.url, { user: 'pinger' });
  const rec = new Recorder(hw);
  await assert.rejects(hw.ping(), { code: 'offline' });
  await rec.next('connected');
  const rtt = await hw.ping();
  assert.ok(rtt >= 0 && rtt < 5000, `rtt ${rtt}`);
  assert.equal(hw.rtt, rtt);
  assert.equal((await rec.next('rtt')).ms, rtt);
  hw.close();
});

test('asks for a heartbeat interval and judges the server by the one granted', { timeout: 30000 }, async () => {
  const s = await startServer({ args: ['--heartbeat-interval', '1s', '--heartbeat-min', '100ms', '--heartbeat-max', '3s'] });
  try {
    const granted = async (heartbeat) => {
      const hw = new Heartwire(s.url, { user: `hb${heartbeat}`, heartbeat });
      const connected = await new Recorder(hw).next('connected');
      const limit = hw.status().silenceLimitMs;
      hw.close();
      return [connected.heartbeat.interval_ms, limit];
    };
    assert.deepEqual(await granted(150), [150, 450]);
    assert.deepEqual(await granted(10), [100, 300]);
    assert.deepEqual(await granted(60000), [3000, 9000]);
    assert.deepEqual(await granted(undefined), [1000, 3000]);
  } finally {
    await s.kill();
  }
});

test('a refused token stops the client: retrying cannot help', { timeout: 30000 }, async () => {
  const s = await startServer({ args: [...FAST, '--jwt-secret', 'a-secret-of-at-least-16-bytes'] });
  try {
    const hw = new Heartwire(s.url, { token: 'not-a-jwt' });
    const rec = new Recorder(hw);
    const gone = await rec.next('disconnected');
    assert.equal(gone.reason, 'unauthorized');
    await rec.next('closed');
    assert.equal(hw.state, 'closed');
    assert.deepEqual(rec.log.filter((e) => e.type === 'reconnecting'), []);
    await assert.rejects(hw.publish('r', 1), { code: 'closed' });
  } finally {
    await s.kill();
  }
});

test('a token function is asked before every attempt', { timeout: 30000 }, async () => {
  const secret = 'a-secret-of-at-least-16-bytes';
  const s = await startServer({ args: [...FAST, '--jwt-secret', secret] });
  const gate = await Gate.start(s.port);
  try {
    gate.close();
    let calls = 0;
    const token = async () => {
      calls += 1;
      return execFileSync(BIN, ['token', '--secret', secret, '--user', 'dana', '--ttl', '1m'], { encoding: 'utf8' }).trim();
    };
    const hw = new Heartwire(gate.url, { token, backoff: { initial: 20, cap: 50 } });
    const rec = new Recorder(hw);
    await rec.next('disconnected', (d) => d.reason === 'connect_failed');
    await rec.next('disconnected', (d) => d.reason === 'connect_failed');
    gate.open();
    const connected = await rec.next('connected');
    assert.equal(connected.user, 'dana');
    assert.ok(calls >= 3, `${calls} calls`);
    hw.close();
  } finally {
    await gate.stop();
    await s.kill();
  }
});

test('bad arguments are refused at once', () => {
  assert.throws(() => new Heartwire('http://127.0.0.1:1/ws', { user: 'u' }), /not a WebSocket URL/);
  assert.throws(() => new Heartwire('ws://127.0.0.1:1/ws', {}), /user or a token/);
  assert.throws(() => new Heartwire('ws://127.0.0.1:1/ws', { user: 'u', WebSocket: 'none' }), /no WebSocket/);
  assert.throws(() => new Heartwire('ws://127.0.0.1:1/ws', { user: 'u', heartbeat: 1.5 }), /whole number/);
});
