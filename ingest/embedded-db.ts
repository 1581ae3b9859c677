// The embedded database of `bacmqtt all`: PGlite (PostgreSQL in WASM) persisted in a data folder,
// served over the PostgreSQL wire protocol by pglite-socket on 127.0.0.1 (port 0 = any free port),
// and reached by the normal `pg` driver like any server. Portable dialect.
//
// PGlite is one backend shared by every socket connection; pglite-socket 0.0.22 queues protocol
// messages one at a time but lets two connections' extended-protocol cycles (Parse/Bind/…/Sync)
// and transactions interleave, which corrupts both once two clients (ingest and api, or a pool of
// several) query at once. `servePGlite` therefore replaces the queue's scheduling so a cycle, a
// COPY and a transaction each run to completion before another connection's messages. Session state (SET, advisory locks) is shared by all
// connections, as it is one backend.
import { mkdirSync } from "node:fs";
import { PGlite } from "@electric-sql/pglite";
import { PGLiteSocketServer } from "@electric-sql/pglite-socket";

export interface ServedPGlite {
  url: string;
  port: number;
  server: PGLiteSocketServer;
  stop(): Promise<void>;
}

interface QueuedQuery {
  handlerId: number;
  message: Uint8Array;
  resolve(result: Uint8Array): void;
  reject(err: unknown): void;
}

interface QueueInternals {
  queue: QueuedQuery[];
  processing: boolean;
  lastHandlerId: number | null;
  db: {
    isInTransaction(): boolean;
    runExclusive<T>(fn: () => Promise<T>): Promise<T>;
    execProtocolRaw(m: Uint8Array): Promise<Uint8Array>;
  };
  processQueue(): Promise<void>;
  clearQueueForHandler(handlerId: number): void;
}

const SYNC = 0x53; // 'S'
const QUERY = 0x51; // 'Q'
const COPY_DONE = 0x63; // 'c'
const COPY_FAIL = 0x66; // 'f'
const TERMINATE = 0x58; // 'X'
const COPY_IN_RESPONSE = 0x47; // 'G'
const READY_FOR_QUERY = 0x5a; // 'Z'
const IDLE = 0x49; // 'I'
const EXTENDED = new Set([0x50, 0x42, 0x44, 0x45, 0x43, 0x48]); // P B D E C H

/** Transaction status of the ReadyForQuery that ends a response, if it ends with one. */
function readyStatus(result: Uint8Array): number | undefined {
  const n = result.length;
  if (n >= 6 && result[n - 6] === READY_FOR_QUERY && result[n - 5] === 0 && result[n - 2] === 5)
    return result[n - 1];
  return undefined;
}

/**
 * Makes pglite-socket's query queue run each protocol cycle, COPY and transaction of one
 * connection without interleaving another's. (0.0.22 relies on PGlite.isInTransaction(), which is
 * not updated by the raw protocol path it uses, so over the socket transactions would interleave.)
 */
function serialiseCycles(server: PGLiteSocketServer): void {
  const q = (server as unknown as { queryQueue: QueueInternals }).queryQueue;
  if (!q || !Array.isArray(q.queue) || typeof q.processQueue !== "function") {
    throw new Error("unexpected @electric-sql/pglite-socket internals: pin version 0.0.22");
  }
  let cycleOwner: number | null = null; // connection in the middle of a protocol cycle or COPY
  let extended = false;
  let txOwner: number | null = null; // connection with an open transaction
  q.processQueue = async function processQueue(this: QueueInternals) {
    if (this.processing || this.queue.length === 0) return;
    this.processing = true;
    try {
      for (let guard = 0; this.queue.length > 0 && guard < 10_000_000; guard++) {
        const holder = cycleOwner ?? txOwner;
        const index = holder === null ? 0 : this.queue.findIndex((item) => item.handlerId === holder);
        if (index === -1) break; // wait for the holder's next message
        const [item] = this.queue.splice(index, 1) as [QueuedQuery];
        const type = item.message[0] ?? 0;
        try {
          const result = await this.db.runExclusive(() => this.db.execProtocolRaw(item.message));
          this.lastHandlerId = item.handlerId;
          if (EXTENDED.has(type)) {
            cycleOwner = item.handlerId;
            extended = true;
          } else if (type === SYNC || type === TERMINATE) {
            cycleOwner = null;
            extended = false;
          } else if (type === QUERY) {
            cycleOwner = result[0] === COPY_IN_RESPONSE ? item.handlerId : null;
          } else if ((type === COPY_DONE || type === COPY_FAIL) && !extended) {
            cycleOwner = null;
          }
          const status = readyStatus(result);
          if (status !== undefined) txOwner = status === IDLE ? null : item.handlerId;
          item.resolve(result);
        } catch (err) {
          if (type === SYNC || type === QUERY) cycleOwner = null;
          item.reject(err);
        }
      }
    } finally {
      this.processing = false;
    }
  };
  const clear = q.clearQueueForHandler.bind(q);
  q.clearQueueForHandler = (handlerId: number) => {
    clear(handlerId);
    if (cycleOwner === handlerId || txOwner === handlerId) {
      // The connection went away mid-cycle or mid-transaction: end what it left open, then let
      // the others run.
      cycleOwner = null;
      extended = false;
      txOwner = null;
      const db = q.db as unknown as PGlite;
      void db
        .exec("ROLLBACK")
        .catch(() => undefined)
        .then(() => q.processQueue());
    }
  };
}

/** Serves a PGlite instance on host:port (0 = any free port) for the `pg` driver. */
export async function servePGlite(
  db: PGlite,
  opts: { host?: string; port?: number; maxConnections?: number } = {},
): Promise<ServedPGlite> {
  const host = opts.host ?? "127.0.0.1";
  const server = new PGLiteSocketServer({
    db,
    host,
    port: opts.port ?? 0,
    maxConnections: opts.maxConnections ?? 100,
  });
  serialiseCycles(server);
  await server.start();
  const port = Number(server.getServerConn().split(":").pop());
  return {
    url: `postgres://postgres@${host}:${port}/postgres`,
    port,
    server,
    stop: () => server.stop(),
  };
}

export interface EmbeddedPostgres {
  url: string;
  close(): Promise<void>;
}

/** PGlite persisted in dataDir, served on 127.0.0.1 (port 0 unless given), maxConnections 100. */
export async function startEmbeddedPostgres(opts: {
  dataDir: string;
  port?: number;
}): Promise<EmbeddedPostgres> {
  mkdirSync(opts.dataDir, { recursive: true });
  const db = await PGlite.create({ dataDir: opts.dataDir });
  await db.exec("SET client_min_messages = warning");
  const served = await servePGlite(db, { port: opts.port ?? 0 });
  let closed = false;
  return {
    url: served.url,
    async close() {
      if (closed) return;
      closed = true;
      await served.stop();
      await db.close();
    },
  };
}
