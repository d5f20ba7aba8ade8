// A real heartwire server for the JavaScript client's tests: the `heartwire` binary built by
// cargo (target/debug/heartwire, or $HEARTWIRE_BIN), started on port 0 (or a given port,
// for restarts on the same port) and stopped, paused or killed by signal.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** Longest wait for anything a test expects; generous for a loaded 2-core machine. */
export const PATIENCE = 15000;

export const BIN = process.env.HEARTWIRE_BIN
  ?? fileURLToPath(new URL('../../../target/debug/heartwire', import.meta.url));

/** Quick heartbeat and shutdown settings; clients may ask for intervals down to 50 ms. */
export const FAST = [
  '--heartbeat-interval', '200ms', '--heartbeat-min', '50ms', '--max-missed', '2',
  '--shutdown-reconnect', '100ms', '--drain-timeout', '2s', '--close-timeout', '1s',
  '--presence-events', '*',
];

const running = new Set();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGKILL');
});

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Starts `heartwire serve` with a WebSocket listener on `port` (0: any free port) and the
 * given extra arguments; retries while the port is still taken (a restart).
 * @returns {Promise<Server>}
 */
export async function startServer({ args = FAST, port = 0 } = {}) {
  if (!existsSync(BIN)) throw new Error(`${BIN} does not exist: run \`cargo build\` first (or set HEARTWIRE_BIN)`);
  const until = Date.now() + PATIENCE;
  for (;;) {
    const attempt = await spawnServer(args, port);
    if (attempt.server) return attempt.server;
    if (Date.now() > until || !/in use/i.test(attempt.output)) {
      throw new Error(`heartwire serve did not start:\n${attempt.output}`);
    }
    await sleep(50);
  }
}

function spawnServer(args, port) {
  const proc = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--ws', `127.0.0.1:${port}`, ...args], {
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(proc);
  let output = '';
  proc.stderr.on('data', (chunk) => { output = (output + chunk).slice(-8000); });
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => {
    running.delete(proc);
    resolve({ code, signal });
  }));
  return new Promise((resolve) => {
    const lines = createInterface({ input: proc.stdout });
    lines.on('line', (line) => {
      output += `${line}\n`;
      const m = /^ws on (\S+):(\d+)$/.exec(line);
      if (m) resolve({ server: new Server(proc, Number(m[2]), exited) });
    });
    exited.then(() => resolve({ output }));
  });
}

/** A running `heartwire serve`. */
export class Server {
  constructor(proc, port, exited) {
    this.proc = proc;
    /** The WebSocket listener's port. */
    this.port = port;
    /** `ws://127.0.0.1:PORT/ws`. */
    this.url = `ws://127.0.0.1:${port}/ws`;
    this.exited = exited;
  }

  /** Graceful shutdown (SIGTERM: every session gets `bye{shutdown}`); resolves on exit. */
  stop() {
    this.proc.kill('SIGTERM');
    return this.exited;
  }

  /** A crash: SIGKILL, nothing sent; resolves on exit. */
  kill() {
    this.proc.kill('SIGKILL');
    return this.exited;
  }

  /**
   * Freezes the process: its sockets stay open and silent (a hung server). Resolves once
   * the kernel reports it stopped, so that nothing sent afterwards is still answered.
   */
  async pause() {
    this.proc.kill('SIGSTOP');
    await this.untilState((state) => state === 'T');
  }

  async resume() {
    this.proc.kill('SIGCONT');
    await this.untilState((state) => state !== 'T');
  }

  /** Waits until the process state letter of /proc/PID/stat satisfies `want`. */
  async untilState(want) {
    const until = Date.now() + PATIENCE;
    for (;;) {
      const stat = readFileSync(`/proc/${this.proc.pid}/stat`, 'utf8');
      // The state follows the command name, which is in parentheses.
      if (want(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3))) return;
      if (Date.now() > until) throw new Error(`process ${this.proc.pid} state: ${stat}`);
      await sleep(5);
    }
  }
}
