// Records every event of a client, and waits for the next one that matches, with a deadline.

import { PATIENCE } from './server.mjs';

const TYPES = ['connected', 'message', 'subscribed', 'unsubscribed', 'gap', 'disconnected',
  'reconnecting', 'error', 'frame', 'join', 'leave', 'rtt', 'closed'];

/** Clients with a recorder that are not closed yet. */
const open = new Set();

/**
 * Closes every recorded client that is still open, so that a failed test leaves no client
 * reconnecting (which would keep the test file's process alive); for `afterEach`.
 */
export function closeAll() {
  for (const client of open) client.close();
  open.clear();
}

/**
 * A client's events in order, each `{type, detail, at}` (`at`: performance.now()). The
 * client is closed by `closeAll()` if the test does not close it.
 */
export class Recorder {
  constructor(client) {
    open.add(client);
    client.addEventListener('closed', () => open.delete(client));
    this.log = [];
    /** Index of the first event `next` looks at. */
    this.cursor = 0;
    this.waiters = new Set();
    for (const type of TYPES) {
      client.addEventListener(type, (e) => {
        this.log.push({ type, detail: e.detail, at: performance.now() });
        for (const wake of this.waiters) wake();
      });
    }
  }

  /**
   * The first event at or after the cursor of `type` for which `pred(detail)` holds; moves
   * the cursor past it. Rejects after `timeout` ms with what was seen.
   */
  next(type, pred = () => true, timeout = PATIENCE) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = this.cursor; i < this.log.length; i++) {
          const e = this.log[i];
          if (e.type === type && pred(e.detail)) {
            this.cursor = i + 1;
            done();
            resolve(e.detail);
            return true;
          }
        }
        return false;
      };
      const timer = setTimeout(() => {
        done();
        const seen = this.log.slice(this.cursor).map((e) => `${e.type} ${JSON.stringify(e.detail)}`);
        reject(new Error(`no ${type} event within ${timeout} ms; seen:\n  ${seen.join('\n  ')}`));
      }, timeout);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      if (!check()) this.waiters.add(check);
    });
  }

  /** The events of `types` from index `from` on, as compact strings (`m3`, `gap3-1`, ...). */
  story(from = 0, types = ['message', 'gap', 'subscribed']) {
    return this.log.slice(from).filter((e) => types.includes(e.type)).map(({ type, detail: d }) => {
      switch (type) {
        case 'message': return `m${d.seq}`;
        case 'gap': return `gap${d.lastSeen}-${d.resumeSeq}`;
        case 'subscribed': return `sub${d.recovered}`;
        default: return type;
      }
    });
  }

  /** Room messages received so far, optionally only those of `room`. */
  messages(room) {
    return this.log.filter((e) => e.type === 'message' && (room === undefined || e.detail.room === room))
      .map((e) => e.detail);
  }
}
