// Publish, subscribe, acks, direct sends, presence, requests and their timeout, the bounded
// queue and frame sizes, against a real `heartwire serve`.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { Heartwire } from '../heartwire.js';
import { closeAll, Recorder } from '../testkit/events.mjs';
import { Gate } from '../testkit/gate.mjs';
import { startServer } from '../testkit/server.mjs';

afterEach(closeAll);

const QUICK = { backoff: { initial: 50, cap: 400 }, dialTimeout: 2000 };

let server;
before(async () => { server = await startServer(); });
after(() => server.kill());

/** A connected client subscribed to `rooms`, with its recorder. */
async function member(user, rooms, options = {}, url = server.url) {
  const hw = new Heartwire(url, { user, ...QUICK, ...options });
  const rec = new Recorder(hw);
  for (const room of rooms) hw.subscribe(room);
  for (const room of rooms) await rec.next('subscribed', (s) => s.room === room);
  return { hw, rec };
}

test('a publish is acked with its seq and reaches every subscriber once', { timeout: 30000 }, async () => {
  const alice = await member('alice', ['pub']);
  const bob = await member('bob', ['pub']);
  const ack = await alice.hw.publish('pub', { text: 'hi' }, { id: 'hello-1' });
  assert.deepEqual(ack, { id: 'hello-1', seq: 1 });
  for (const { rec } of [alice, bob]) {
    const m = await rec.next('message');
    assert.deepEqual(m, { type: 'message', room: 'pub', seq: 1, from: 'alice', data: { text: 'hi' }, id: 'hello-1' });
  }
  // a generated id, and nothing twice
  const second = await bob.hw.publish('pub', [1, 2]);
  assert.equal(second.seq, 2);
  assert.match(second.id, /^[0-9a-f]{12}-\d+$/);
  await alice.rec.next('message', (m) => m.seq === 2);
  assert.deepEqual(alice.rec.messages('pub').map((m) => m.seq), [1, 2]);
  alice.hw.close();
  bob.hw.close();
});

test('many publishes through a small window: all acked and delivered in order', { timeout: 30000 }, async () => {
  const alice = await member('alice', ['window'], { maxInFlight: 4 });
  const bob = await member('bob', ['window']);
  const acks = await Promise.all(Array.from({ length: 50 }, (_, i) => alice.hw.publish('window', i)));
  assert.deepEqual(acks.map((a) => a.seq), Array.from({ length: 50 }, (_, i) => i + 1));
  await bob.rec.next('message', (m) => m.seq === 50);
  assert.deepEqual(bob.rec.messages('window').map((m) => m.data), Array.from({ length: 50 }, (_, i) => i));
  assert.equal(alice.hw.status().pending, 0);
  assert.equal(alice.hw.status().inFlight, 0);
  alice.hw.close();
  bob.hw.close();
});

test('a direct send reaches every session of the user', { timeout: 30000 }, async () => {
  const alice = await member('alice', []);
  await alice.rec.next('connected');
  const bob = await member('bob', []);
  await bob.rec.next('connected');
  assert.deepEqual(await alice.hw.send('bob', 'psst', { id: 's1' }), { id: 's1', delivered: 1 });
  const m = await bob.rec.next('message');
  assert.deepEqual(m, { type: 'message', from: 'alice', data: 'psst', id: 's1' });
  assert.equal((await alice.hw.send('nobody', 'x')).delivered, 0);
  alice.hw.close();
  bob.hw.close();
});

test('presence: the users in a room, then join and leave events', { timeout: 30000 }, async () => {
  const alice = await member('alice', ['lobby']);
  assert.deepEqual(await alice.hw.presence('lobby'), ['alice']);
  const bob = await member('bob', ['lobby']);
  assert.deepEqual(await alice.rec.next('join'), { room: 'lobby', user: 'bob' });
  assert.deepEqual(await alice.hw.presence('lobby'), ['alice', 'bob']);
  bob.hw.unsubscribe('lobby');
  assert.deepEqual(await alice.rec.next('leave'), { room: 'lobby', user: 'bob' });
  alice.hw.close();
  bob.hw.close();
});

test('a request resolves with the frame carrying its id, or rejects with the error', { timeout: 30000 }, async () => {
  const alice = await member('alice', []);
  await alice.rec.next('connected');
  const answer = await alice.hw.request({ type: 'presence', room: 'nowhere', id: 'q1' });
  assert.deepEqual(answer, { type: 'presence', room: 'nowhere', users: [], id: 'q1' });
  await assert.rejects(alice.hw.request({ type: 'no_such_frame' }), { code: 'unknown_type', server: true });
  await assert.rejects(alice.hw.publish('', 1), { code: 'invalid' });
  const first = alice.hw.request({ type: 'x', id: 'dup' });
  await assert.rejects(alice.hw.request({ type: 'x', id: 'dup' }), { code: 'duplicate_id' });
  await assert.rejects(first, { code: 'unknown_type' });
  alice.hw.close();
});

test('a request without answer times out and is dropped from the queue', { timeout: 30000 }, async () => {
  // A long heartbeat, so that the paused server is noticed by the request alone.
  const alice = await member('alice', [], { heartbeat: 5000 });
  await alice.rec.next('connected');
  await server.pause();
  try {
    const started = performance.now();
    await assert.rejects(alice.hw.request({ type: 'presence', room: 'r' }, { timeout: 300 }), { code: 'timeout' });
    assert.ok(performance.now() - started >= 290);
    assert.equal(alice.hw.status().pending, 0);
    assert.equal(alice.hw.status().inFlight, 0);
  } finally {
    await server.resume();
  }
  alice.hw.close();
});

test('a request that timed out while offline is never sent late', { timeout: 30000 }, async () => {
  const gate = await Gate.start(server.port);
  gate.close();
  const observer = await member('observer', ['late']);
  const alice = new Heartwire(gate.url, { user: 'alice', ...QUICK });
  const rec = new Recorder(alice);
  await assert.rejects(alice.request({ type: 'publish', room: 'late', data: 'too late' }, { timeout: 200 }), { code: 'timeout' });
  const marker = alice.publish('late', 'marker');
  gate.open();
  await rec.next('connected');
  await marker;
  await observer.rec.next('message', (m) => m.data === 'marker');
  assert.deepEqual(observer.rec.messages('late').map((m) => m.data), ['marker']);
  alice.close();
  observer.hw.close();
  await gate.stop();
});

test('the queue is bounded: one publish too many fails at once, the others are delivered', { timeout: 30000 }, async () => {
  const gate = await Gate.start(server.port);
  gate.close();
  const observer = await member('observer', ['bounded']);
  const alice = new Heartwire(gate.url, { user: 'alice', ...QUICK, maxPending: 3 });
  const queued = [1, 2, 3].map((n) => alice.publish('bounded', n));
  await assert.rejects(alice.publish('bounded', 4), { code: 'queue_full' });
  assert.equal(alice.status().pending, 3);
  gate.open();
  assert.deepEqual((await Promise.all(queued)).map((a) => a.seq), [1, 2, 3]);
  await observer.rec.next('message', (m) => m.seq === 3);
  assert.deepEqual(observer.rec.messages('bounded').map((m) => m.data), [1, 2, 3]);
  alice.close();
  observer.hw.close();
  await gate.stop();
});

test('a frame over the server max_frame is refused before it is sent', { timeout: 30000 }, async () => {
  const alice = await member('alice', []);
  await alice.rec.next('connected');
  await assert.rejects(alice.hw.publish('big', 'x'.repeat(70000)), { code: 'too_large' });
  // multi-byte characters count in UTF-8 bytes
  await assert.rejects(alice.hw.publish('big', 'é'.repeat(33000)), { code: 'too_large' });
  assert.equal((await alice.hw.publish('big', 'x'.repeat(60000))).seq, 1);
  alice.hw.close();
});
