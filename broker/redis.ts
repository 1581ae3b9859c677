// Redis-backed persistence (retained messages, sessions, offline QoS 1 queues, wills) and message
// bus (so several broker instances share one topic space). Owns the Redis connections it opens.

import aedesPersistenceRedis from "aedes-persistence-redis";
import { Redis, type RedisOptions } from "ioredis";
import mqemitterRedis from "mqemitter-redis";
import { CodedError, errorMessage } from "../common/errors.ts";
import type { Logger } from "../common/logger.ts";

export interface RedisSettings {
  /** `redis://[:password@]host:port[/db]` */
  url: string;
  /** Prefix for every persistence key, so several deployments (or tests) share one Redis. */
  keyPrefix?: string;
  /**
   * Queued messages sent to a persistent session when it reconnects; the rest wait for its next
   * reconnect. The library's default (1000) would stall an ingest that was offline for a while.
   */
  maxSessionDelivery?: number;
}

export const DEFAULT_SESSION_DELIVERY = 100_000;

export interface RedisBackends {
  persistence: unknown;
  mq: unknown;
  close(): Promise<void>;
}

/** The URL without its password, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "(unparsable URL)";
  }
}

/** Fails fast with one clear line when Redis cannot be reached, instead of ioredis retrying forever. */
async function probe(url: string, timeoutMs: number): Promise<void> {
  const conn = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    enableOfflineQueue: false,
  });
  // ioredis rejects connect() with a bare "Connection is closed"; the socket error says why.
  let cause: Error | undefined;
  conn.on("error", (err: Error) => {
    cause ??= err;
  });
  try {
    await conn.connect();
    await conn.ping();
  } catch (err) {
    throw cause ?? err;
  } finally {
    conn.disconnect();
  }
}

type Callback = (err?: Error | null) => void;
interface AckOrdering {
  authorizePublish: (client: unknown, packet: { qos?: number }, done: Callback) => void;
  publish: (packet: object, ...rest: unknown[]) => void;
}

/**
 * aedes 1.2 answers a QoS 1 PUBLISH with PUBACK first and only then stores it for the persistent
 * sessions that subscribed (`outgoingEnqueueCombi`: MSET, then one RPUSH per session). A broker
 * SIGKILLed in between had acknowledged messages that were in no queue: the publisher dropped them
 * and the ingest never got them (measured: the 50 messages acknowledged in the last Redis round
 * trip before the kill, over a 10 ms link, test/faults/broker-kill.test.ts). Publishing from the
 * publish authorisation, which aedes runs before the PUBACK, and skipping aedes' own publish of
 * that same packet afterwards moves the PUBACK behind the Redis writes. Every path that authorises
 * a publish (a client's PUBLISH, a will at disconnect, a stale will) publishes that same object
 * right after, so only the order changes. QoS 2 already stores before PUBREC and is left alone.
 */
export function persistBeforeAck(broker: AckOrdering): void {
  const authorize = broker.authorizePublish.bind(broker);
  const publish = broker.publish.bind(broker);
  const published = new WeakSet<object>();
  broker.authorizePublish = (client, packet, done) => {
    authorize(client, packet, (err) => {
      if (err || packet.qos !== 1) return done(err);
      publish(packet, client, (publishErr?: Error | null) => {
        if (publishErr) return done(publishErr);
        published.add(packet);
        done(null);
      });
    });
  };
  broker.publish = (packet, ...rest) => {
    if (!published.delete(packet)) return publish(packet, ...rest);
    // Already published before the PUBACK: only the caller's callback is left to run.
    const done = rest.findLast((a) => typeof a === "function") as Callback | undefined;
    process.nextTick(() => done?.(null));
  };
}

export async function openRedis(settings: RedisSettings, log: Logger): Promise<RedisBackends> {
  const where = redactUrl(settings.url);
  if (!/^rediss?:\/\//.test(settings.url))
    throw new CodedError("BROKER_ERR_REDIS", `Redis URL ${where} must start with redis:// or rediss://`);
  try {
    await probe(settings.url, 3000);
  } catch (err) {
    throw new CodedError(
      "BROKER_ERR_REDIS",
      `cannot reach Redis at ${where}: ${errorMessage(err) || "error"}`,
    );
  }
  const connections: Redis[] = [];
  let lastLogged = 0;
  const open = (options: RedisOptions): Redis => {
    const conn = new Redis(settings.url, options);
    // A Redis outage at run time is logged (at most every 10 s) and ridden out by ioredis' reconnects.
    conn.on("error", (err: Error) => {
      if (Date.now() - lastLogged < 10_000) return;
      lastLogged = Date.now();
      log.error({ err: errorMessage(err), redis: where }, "Redis connection error");
    });
    // Fire-and-forget commands (the persistence does not await its will-list updates; mqemitter-redis
    // publishes without a handler) reject with "Connection is closed" when a connection ends under
    // them. A rejection nobody handles would end the process, so every command's promise gets a
    // no-op handler; callers that await it still see the error.
    const send = conn.sendCommand.bind(conn);
    conn.sendCommand = (...args: Parameters<Redis["sendCommand"]>) => {
      const result = send(...args);
      if (result instanceof Promise) result.catch(() => undefined);
      return result;
    };
    connections.push(conn);
    return conn;
  };
  // Commands wait out a Redis outage instead of failing after 20 retries, and the persistence's
  // fire-and-forget commands (it does not await its will-list updates) can never become an
  // unhandled rejection, which would end the process.
  const store = open({
    maxRetriesPerRequest: null,
    ...(settings.keyPrefix ? { keyPrefix: settings.keyPrefix } : {}),
  });
  const persistence = aedesPersistenceRedis({
    conn: store,
    maxSessionDelivery: settings.maxSessionDelivery ?? DEFAULT_SESSION_DELIVERY,
  });
  const withSetup = persistence as { setup(broker: AckOrdering): Promise<unknown> };
  const setup = withSetup.setup.bind(persistence);
  // aedes hands itself to the persistence at start (and insists on an async function here).
  withSetup.setup = async (broker) => {
    persistBeforeAck(broker);
    return setup(broker);
  };
  // aedes 1.2 stores a SUBSCRIBE's filters once per filter, each call with the whole filter list, at
  // the same time; the Redis persistence's broadcast waits under a key made from the first filter,
  // so every call but the last overwrites the previous waiter and a SUBSCRIBE with several filters
  // never got its SUBACK. One store per SUBSCRIBE packet (the list is the same array for every call).
  type AddSubscriptions = (client: unknown, subs: object) => Promise<unknown>;
  const withSubs = persistence as { addSubscriptions: AddSubscriptions };
  const addSubscriptions = withSubs.addSubscriptions.bind(persistence);
  const storing = new WeakMap<object, Promise<unknown>>();
  withSubs.addSubscriptions = (client, subs) => {
    let pending = storing.get(subs);
    if (!pending) {
      pending = addSubscriptions(client, subs).finally(() => storing.delete(subs));
      storing.set(subs, pending);
    }
    return pending;
  };
  // Messages, too, wait in ioredis' queue during an outage instead of being dropped after 20 retries
  // (aedes has already acknowledged a QoS 1 publish by the time it hands it to the bus).
  const mq = mqemitterRedis({
    subConn: open({ maxRetriesPerRequest: null }),
    pubConn: open({ maxRetriesPerRequest: null }),
  });
  // Both re-emit connection errors on emitters of their own; without a listener each would be an
  // uncaught exception. The connections' listeners above already log them.
  (mq as unknown as { state: NodeJS.EventEmitter }).state.on("error", () => undefined);
  (persistence as NodeJS.EventEmitter).on?.("error", (err: Error) => {
    log.error({ err: errorMessage(err) }, "Redis persistence error");
  });
  return {
    persistence,
    mq,
    close: async () => {
      // aedes closes the mq (which quits its connections); persistence is ours to destroy.
      await (persistence as { destroy(): Promise<void> }).destroy().catch(() => undefined);
      for (const conn of connections) if (conn.status !== "end") conn.disconnect();
    },
  };
}
