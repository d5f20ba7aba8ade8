// Publishes are resent after a reconnect with their ids and delivered exactly once (the
// server dedupes); direct sends are never resent.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { Heartwire } from '../heartwire.js';
import { closeAll, Recorder } from '../testkit/events.mjs';
import { Gate } from '../testkit/gate.mjs';
import { startServer } from '../testkit/server.mjs';

afterEach(closeAll);

const QUICK = { backoff: { initial: 50, cap: 400 }, dialTimeout: 2000 };

let server;
let gate;
before(async () => {
  server = await startServer();
  gate = await Gate.start(server.port);
});
after(async () => {
  await gate.stop();
  await server.kill();
});

async function observer(room) {
  const hw = new Heartwire(server.url, { user: 'observer', ...QUICK });
  const rec = new Recorder(hw);
  hw.subscribe(room);
  await rec.next('subscribed');
  return { hw, rec };
}

test('a publish whose ack was lost is resent with its id and delivered once', { timeout: 60000 }, async () => {
  const obs = await observer('once');
  const alice = new Heartwire(gate.url, { user: 'alice', ...QUICK });
  const rec = new Recorder(alice);
  alice.subscribe('once');
  await rec.next('subscribed');
  // The server gets the publish and sequences it; its ack never reaches Alice.
  gate.blackhole();
  const publish = alice.publish('once', 'only once', { id: 'p-1' });
  const delivered = await obs.rec.next('message');
  assert.equal(delivered.id, 'p-1');
  assert.equal(alice.status().pending, 1);
  gate.cut();
  await rec.next('disconnected');
  // Resent after the reconnect: the server answers with the first ack, delivers nothing new.
  assert.deepEqual(await publish, { id: 'p-1', seq: delivered.seq });
  await alice.publish('once', 'marker');
  await obs.rec.next('message', (m) => m.data === 'marker');
  assert.deepEqual(obs.rec.messages('once').map((m) => m.data), ['only once', 'marker']);
  // Alice herself gets her publish once: in the replay of her resubscription.
  await rec.next('message', (m) => m.data === 'marker');
  assert.deepEqual(rec.messages('once').map((m) => m.data), ['only once', 'marker']);
  alice.close();
  obs.hw.close();
});

test('publishes made offline are sent once connected, in order, each once', { timeout: 60000 }, async () => {
  const obs = await observer('offline');
  gate.close();
  const alice = new Heartwire(gate.url, { user: 'alice', ...QUICK, maxInFlight: 8 });
  const acks = Array.from({ length: 30 }, (_, i) => alice.publish('offline', i));
  const rec = new Recorder(alice);
  await rec.next('reconnecting');
  // Cut again halfway through: some are acked, the rest resent.
  gate.open();
  await rec.next('connected');
  await acks[10];
  gate.cut();
  assert.deepEqual((await Promise.all(acks)).map((a) => a.seq), Array.from({ length: 30 }, (_, i) => i + 1));
  await obs.rec.next('message', (m) => m.seq === 30);
  assert.deepEqual(obs.rec.messages('offline').map((m) => m.data), Array.from({ length: 30 }, (_, i) => i));
  alice.close();
  obs.hw.close();
});

test('a direct send written before the connection died fails and is not resent', { timeout: 60000 }, async () => {
  const bob = new Heartwire(server.url, { user: 'bob', ...QUICK });
  const b = new Recorder(bob);
  await b.next('connected');
  const alice = new Heartwire(gate.url, { user: 'alice', ...QUICK });
  const a = new Recorder(alice);
  await a.next('connected');
  gate.blackhole();
  const sent = alice.send('bob', 'once', { id: 'd-1' });
  await b.next('message', (m) => m.id === 'd-1');
  gate.cut();
  await assert.rejects(sent, { code: 'connection_lost' });
  await a.next('connected');
  assert.equal((await alice.send('bob', 'marker')).delivered, 1);
  await b.next('message', (m) => m.data === 'marker');
  assert.deepEqual(b.messages().map((m) => m.data), ['once', 'marker']);
  alice.close();
  bob.close();
});
