// Resume after a reconnect: replay in the same epoch, gaps when history no longer reaches
// back, and after a server restart the gap for the old epoch, then what the new epoch holds,
// fetched and delivered once, in seq order, before later live messages.
//
// Alice connects directly and comes back first; Bob connects through a gate the test keeps
// closed until Alice has published into the new epoch, so "Bob comes back later" is the
// test's decision, not a race between backoff delays.

import assert from 'node:assert/strict';
import { afterEach, test } from 'node:test';

import { Heartwire } from '../heartwire.js';
import { closeAll, Recorder } from '../testkit/events.mjs';
import { Gate } from '../testkit/gate.mjs';
import { FAST, startServer } from '../testkit/server.mjs';

afterEach(closeAll);

const QUICK = { backoff: { initial: 50, cap: 400 }, dialTimeout: 2000 };

/** A server, Alice on it directly and Bob through a gate, both in room `r` at seq `n`. */
async function scene(args, published = 3) {
  const server = await startServer({ args });
  const gate = await Gate.start(server.port);
  const alice = new Heartwire(server.url, { user: 'alice', ...QUICK });
  const bob = new Heartwire(gate.url, { user: 'bob', ...QUICK });
  const a = new Recorder(alice);
  const b = new Recorder(bob);
  alice.subscribe('r');
  bob.subscribe('r');
  await a.next('subscribed');
  await b.next('subscribed');
  for (let i = 1; i <= published; i++) await alice.publish('r', `old ${i}`);
  await b.next('message', (m) => m.seq === published);
  await a.next('message', (m) => m.seq === published);
  return { server, gate, alice, bob, a, b };
}

async function teardown({ server, gate, alice, bob }) {
  alice.close();
  bob.close();
  await gate.stop();
  await server.kill();
}

test('same epoch: what the history still holds is replayed once, the rest is a gap', { timeout: 60000 }, async () => {
  const s = await scene([...FAST, '--history-size', '3']);
  try {
    s.gate.close();
    await s.b.next('disconnected');
    for (let i = 4; i <= 8; i++) await s.alice.publish('r', `new ${i}`);
    const from = s.b.log.length;
    s.gate.open();
    await s.b.next('subscribed', (x) => x.recovered === false);
    // seqs 4 and 5 fell out of the history of 3
    assert.deepEqual(s.b.story(from), ['gap3-6', 'm6', 'm7', 'm8', 'subfalse']);
    const gap = s.b.log.find((e) => e.type === 'gap').detail;
    assert.deepEqual(gap, { room: 'r', lastSeen: 3, previousEpoch: gap.epoch, epoch: gap.epoch, resumeSeq: 6, epochChanged: false });
    // and with everything still in the history, a clean resume
    s.gate.cut();
    await s.b.next('disconnected');
    await s.alice.publish('r', 'new 9');
    const from2 = s.b.log.length;
    await s.b.next('subscribed', (x) => x.recovered === true);
    assert.deepEqual(s.b.story(from2), ['m9', 'subtrue']);
  } finally {
    await teardown(s);
  }
});

test('server restart: the old epoch is a gap, the new epoch is fetched in order', { timeout: 60000 }, async () => {
  const s = await scene(FAST);
  try {
    s.gate.close();
    await s.b.next('disconnected');
    const oldEpoch = s.alice.status().rooms[0].epoch;
    await s.server.kill();
    s.server = await startServer({ port: s.server.port });
    // Alice comes back first: the epoch gap, nothing to fetch yet
    const aliceGap = await s.a.next('gap');
    assert.equal(aliceGap.epochChanged, true);
    assert.equal(aliceGap.previousEpoch, oldEpoch);
    assert.deepEqual([aliceGap.lastSeen, aliceGap.resumeSeq], [3, 1]);
    await s.a.next('subscribed', (x) => x.recovered === false);
    for (let i = 1; i <= 2; i++) assert.equal((await s.alice.publish('r', `new ${i}`)).seq, i);

    const from = s.b.log.length;
    s.gate.open();
    const done = await s.b.next('subscribed');
    assert.equal(done.recovered, false);
    await s.alice.publish('r', 'new 3');
    await s.b.next('message', (m) => m.data === 'new 3');
    assert.deepEqual(s.b.story(from), ['gap3-1', 'm1', 'm2', 'subfalse', 'm3']);
    const gap = s.b.log.slice(from).find((e) => e.type === 'gap').detail;
    assert.equal(gap.previousEpoch, oldEpoch);
    assert.equal(gap.epoch, done.epoch);
    assert.notEqual(gap.epoch, oldEpoch);
    assert.deepEqual(s.b.messages('r').map((m) => m.data), ['old 1', 'old 2', 'old 3', 'new 1', 'new 2', 'new 3']);
  } finally {
    await teardown(s);
  }
});

test('a new epoch that outgrew its history is a second gap, in the new epoch', { timeout: 60000 }, async () => {
  const s = await scene([...FAST, '--history-size', '2']);
  try {
    s.gate.close();
    await s.b.next('disconnected');
    await s.server.kill();
    s.server = await startServer({ port: s.server.port, args: [...FAST, '--history-size', '2'] });
    await s.a.next('subscribed', (x) => x.recovered === false);
    for (let i = 1; i <= 3; i++) await s.alice.publish('r', `new ${i}`);
    const from = s.b.log.length;
    s.gate.open();
    await s.b.next('subscribed');
    assert.deepEqual(s.b.story(from), ['gap3-1', 'gap0-2', 'm2', 'm3', 'subfalse']);
    const second = s.b.log.slice(from).filter((e) => e.type === 'gap')[1].detail;
    assert.equal(second.epochChanged, false);
  } finally {
    await teardown(s);
  }
});
