// A TCP proxy in front of a server that the test controls: closed (connections cut, new ones
// refused), open, or a black hole for what the server sends (the client's frames still
// arrive; the server's answers are lost, as when a connection dies mid-way).

import net from 'node:net';

export class Gate {
  /** Starts a gate on a free port, forwarding to `127.0.0.1:targetPort`, open. */
  static async start(targetPort) {
    const gate = new Gate(targetPort);
    await new Promise((resolve) => gate.server.listen(0, '127.0.0.1', resolve));
    gate.port = gate.server.address().port;
    return gate;
  }

  constructor(targetPort) {
    this.target = targetPort;
    this.isOpen = true;
    this.pairs = new Set();
    this.server = net.createServer((client) => this.accept(client));
    // A test that fails before stopping its gate must not keep the process alive.
    this.server.unref();
  }

  /** `ws://127.0.0.1:PORT/ws` through the gate. */
  get url() {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  accept(client) {
    if (!this.isOpen) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target, '127.0.0.1');
    const pair = { client, upstream, blackhole: false };
    this.pairs.add(pair);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => { if (!pair.blackhole) client.write(d); });
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  }

  /** Cuts every connection through the gate; later ones are refused until `open()`. */
  close() {
    this.isOpen = false;
    this.cut();
  }

  open() {
    this.isOpen = true;
  }

  /** Cuts every connection through the gate (new ones pass if it is open). */
  cut() {
    for (const { client, upstream } of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** From now on, drops what the server sends on the current connections. */
  blackhole() {
    for (const pair of this.pairs) pair.blackhole = true;
  }

  stop() {
    this.close();
    return new Promise((resolve) => this.server.close(resolve));
  }
}
