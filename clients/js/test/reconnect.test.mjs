// Dead-server detection (a hung server process), reconnect with backoff after a restart on
// the same port, and the backoff schedule itself.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { Backoff, Heartwire } from '../heartwire.js';
import { closeAll, Recorder } from '../testkit/events.mjs';
import { FAST, startServer } from '../testkit/server.mjs';

afterEach(closeAll);

const BACKOFF = { initial: 50, factor: 2, cap: 400 };

test('a hung server is noticed after (max_missed + 1) x the granted interval', { timeout: 60000 }, async () => {
  // The server's default is 1 s; the client asks for 100 ms and must judge by that.
  const server = await startServer({ args: ['--heartbeat-interval', '1s', '--heartbeat-min', '50ms', '--max-missed', '2'] });
  try {
    const hw = new Heartwire(server.url, { user: 'alice', heartbeat: 100, backoff: BACKOFF, dialTimeout: 500 });
    const rec = new Recorder(hw);
    hw.subscribe('r');
    await rec.next('subscribed');
    assert.equal(hw.status().silenceLimitMs, 300);
    const observer = new Heartwire(server.url, { user: 'observer' });
    const seen = new Recorder(observer);
    observer.subscribe('r');
    await seen.next('subscribed');

    await server.pause();
    const paused = performance.now();
    const gone = await rec.next('disconnected');
    const detectedAfter = performance.now() - paused;
    assert.equal(gone.reason, 'server_silent');
    assert.ok(gone.silentMs >= 300, `silent ${gone.silentMs} ms`);
    // The last ping came at most one interval before the pause; the upper bound leaves room
    // for a loaded machine.
    assert.ok(detectedAfter >= 190, `detected after ${detectedAfter} ms`);
    assert.ok(detectedAfter < 3000, `detected after ${detectedAfter} ms`);
    // While the server hangs, attempts fail (the kernel accepts, nobody answers).
    const publish = hw.publish('r', 'sent while the server hung');
    assert.equal((await rec.next('disconnected')).reason, 'connect_failed');

    await server.resume();
    const back = await rec.next('connected');
    assert.ok(back.reconnects >= 1);
    const resumed = await rec.next('subscribed');
    assert.equal(resumed.recovered, true);
    assert.equal((await publish).seq, 1);
    assert.equal((await seen.next('message')).data, 'sent while the server hung');
    hw.close();
    observer.close();
  } finally {
    await server.resume();
    await server.kill();
  }
});

test('a restart on the same port: bye, backoff with full jitter above its floor, back', { timeout: 60000 }, async () => {
  const server = await startServer();
  const hw = new Heartwire(server.url, { user: 'alice', backoff: BACKOFF, dialTimeout: 2000 });
  const rec = new Recorder(hw);
  await rec.next('connected');
  const stopped = server.stop();
  const bye = await rec.next('disconnected');
  assert.equal(bye.reason, 'bye');
  assert.equal(bye.bye, 'shutdown');
  // --shutdown-reconnect 100ms: a hint in [100, 200] ms, a floor for the next delay
  assert.ok(bye.reconnectMs >= 100 && bye.reconnectMs <= 200, `reconnect_ms ${bye.reconnectMs}`);
  const first = await rec.next('reconnecting');
  assert.equal(first.attempt, 1);
  assert.ok(first.inMs >= bye.reconnectMs, `${first.inMs} < ${bye.reconnectMs}`);
  await stopped;
  // Refused attempts back off: attempt k waits at most min(cap, initial x 2^(k-1)).
  for (let attempt = 2; attempt <= 5; attempt++) {
    assert.equal((await rec.next('disconnected')).reason, 'connect_failed');
    const next = await rec.next('reconnecting');
    assert.equal(next.attempt, attempt);
    assert.ok(next.inMs >= 0 && next.inMs <= Math.min(400, 50 * 2 ** (attempt - 1)), `attempt ${attempt}: ${next.inMs} ms`);
  }
  const again = await startServer({ port: server.port });
  try {
    const back = await rec.next('connected');
    assert.equal(back.reconnects, 1);
    assert.equal(hw.state, 'connected');
    hw.close();
  } finally {
    await again.kill();
  }
});

test('backoff: full jitter under a capped exponential ceiling, a floor, a reset', () => {
  const b = new Backoff({ initial: 100, factor: 2, cap: 1000, resetAfter: 5000 });
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((k) => b.ceiling(k)), [100, 200, 400, 800, 1000, 1000]);
  // A herd cut at once spreads over [0, initial] instead of coming back together.
  const draws = Array.from({ length: 2000 }, () => new Backoff({ initial: 100 }).next());
  assert.ok(Math.min(...draws) >= 0 && Math.max(...draws) <= 100);
  const mean = draws.reduce((a, b) => a + b, 0) / draws.length;
  assert.ok(mean > 40 && mean < 60, `mean ${mean}`);
  const buckets = [0, 0, 0, 0];
  for (const d of draws) buckets[Math.min(3, Math.floor(d / 25))] += 1;
  assert.ok(buckets.every((n) => n > 350), `buckets ${buckets}`);
  // Jitter stays below the cap once it is reached, and a server's hint is a floor.
  const capped = new Backoff({ initial: 100, cap: 1000 }, () => 0.999);
  const delays = Array.from({ length: 8 }, () => capped.next());
  assert.ok(delays.every((d) => d <= 1000));
  assert.equal(delays.at(-1), 999);
  assert.equal(new Backoff({}, () => 0).next(700), 700);
  // A connection that stayed up long enough starts the schedule over.
  b.next();
  b.next();
  b.connectionEnded(4999);
  assert.equal(b.attempt, 2);
  b.connectionEnded(5000);
  assert.equal(b.attempt, 0);
});

test('close while the server is away: no more attempts, waiting calls fail', { timeout: 30000 }, async () => {
  const server = await startServer({ args: FAST });
  const port = server.port;
  await server.kill();
  const hw = new Heartwire(`ws://127.0.0.1:${port}/ws`, { user: 'alice', backoff: BACKOFF });
  const rec = new Recorder(hw);
  const pending = hw.publish('r', 1);
  await rec.next('reconnecting');
  await hw.close();
  await assert.rejects(pending, { code: 'closed' });
  const count = rec.log.length;
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(rec.log.length, count, 'no events after closed');
  assert.equal(rec.log.at(-1).type, 'closed');
});
