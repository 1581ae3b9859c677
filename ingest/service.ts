// The ingest: a persistent MQTT session (fixed client id, clean: false, QoS 1) whose messages are
// batched by size and time and committed by the BatchWriter; each QoS 1 message is acknowledged
// (PUBACK) only after the batch holding it is committed. A database outage stalls the batch and
// retries it with backoff, never drops it; an ingest killed mid-batch has acknowledged nothing of
// that batch, so the broker redelivers it and ON CONFLICT makes the replay harmless.
//
// MQTT 3.1.1 (aedes) has no customHandleAcks (MQTT.js only honours it for MQTT 5), so acks are
// manual: `handleMessage` hands MQTT.js an error for every message, which makes MQTT.js skip its
// automatic PUBACK and go on with the next packet (mqtt 5.16 handlers/publish.js), and the PUBACK is
// sent here after COMMIT, in the order the messages arrived (MQTT 3.1.1 §4.6). Acks are only sent on
// the connection the message came in on: after a reconnect the broker redelivers what was not
// acknowledged. When too many messages wait, `handleMessage` holds its callback, which stops
// MQTT.js reading the socket: TCP back-pressure up to the broker, bounded memory here.
import mqtt, { type IPublishPacket, type MqttClient } from "mqtt";
import type pg from "pg";
import { CodedError, errorMessage } from "../common/errors.ts";
import { createLogger, type Logger } from "../common/logger.ts";
import { Filters } from "../contract/index.ts";
import { classify, DEFAULT_TIME_WINDOW, type TimeWindow } from "./messages.ts";
import { IngestMetrics } from "./metrics.ts";
import type { Dialect } from "./migrations/index.ts";
import { runPortableRetention } from "./policies.ts";
import { BatchWriter, type CopyMode, type Envelope } from "./writer.ts";

export interface IngestOptions {
  mqttUrl: string;
  pool: pg.Pool;
  dialect: Dialect;
  baseTopic?: string;
  /** Fixed client id of the persistent session; replicas sharing load use distinct ids. */
  clientId?: string;
  /** Shared-subscription group for readings and events ($share/<group>/…); undefined = not shared. */
  shareGroup?: string;
  username?: string;
  password?: string;
  /** Commit when this many readings wait … */
  batchSize?: number;
  /** … or when the oldest waiting message is this old. */
  batchWaitMs?: number;
  /** Stop reading from the broker while this many readings wait. */
  maxPendingReadings?: number;
  /** Portable retention job period; 0 disables. */
  retentionIntervalMs?: number;
  metrics?: IngestMetrics;
  log?: Logger;
  /** Backoff bounds for database retries. */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Batches written at once, each on its own connection (default 2, at most the pool's size). */
  concurrency?: number;
  /** Send readings with COPY when the batch holds only new rows (default auto: not on PGlite). */
  copy?: CopyMode;
  /** Readings outside this window of plausible timestamps become dead letters (messages.ts). */
  timeWindow?: Partial<TimeWindow>;
}

interface Pending extends Envelope {
  /** performance.now() at arrival: how long it has waited (monotonic, unlike receivedAt). */
  arrivedAt: number;
  messageId: number | undefined;
  generation: number;
  readings: number;
}

interface InFlight {
  batch: Pending[];
  state: "writing" | "committed" | "given_up";
}

const DEFER_ACK = new Error("ack deferred until commit");

export class IngestService {
  readonly metrics: IngestMetrics;
  private readonly log: Logger;
  private readonly writer: BatchWriter;
  private readonly base: string;
  private readonly timeWindow: TimeWindow;
  private readonly batchSize: number;
  private readonly batchWaitMs: number;
  private readonly maxPending: number;
  private client: MqttClient | undefined;
  private generation = 0;
  private pending: Pending[] = [];
  private pendingReadings = 0;
  private held: (() => void)[] = [];
  private wake: (() => void) | undefined;
  private loopDone: Promise<void> | undefined;
  private stopping = false;
  /** Batches being written, oldest first. */
  private inFlight: InFlight[] = [];
  private readonly concurrency: number;
  private slotFree: (() => void) | undefined;
  private settledWaiters: (() => void)[] = [];
  /** A batch was given up (stopping during an outage): nothing after it is acknowledged. */
  private gaveUp = false;
  private retentionTimer: NodeJS.Timeout | undefined;
  private idleWaiters: (() => void)[] = [];
  private readonly sendPacket = (packet: object, cb?: () => void) =>
    (this.client as unknown as { _sendPacket(p: object, cb?: () => void): void })._sendPacket(packet, cb);

  constructor(private readonly opts: IngestOptions) {
    this.log = opts.log ?? createLogger("ingest");
    this.metrics = opts.metrics ?? new IngestMetrics();
    this.writer = new BatchWriter(opts.pool, opts.dialect, this.log, opts.copy);
    this.base = opts.baseTopic ?? "bacmqtt";
    this.timeWindow = { ...DEFAULT_TIME_WINDOW, ...opts.timeWindow };
    this.batchSize = opts.batchSize ?? 20_000;
    const poolMax = (opts.pool as unknown as { options?: { max?: number } }).options?.max ?? 10;
    this.concurrency = Math.max(1, Math.min(opts.concurrency ?? 2, poolMax));
    this.batchWaitMs = opts.batchWaitMs ?? 200;
    this.maxPending = opts.maxPendingReadings ?? Math.max(4 * this.batchSize, 20_000);
  }

  /** Subscription filters: readings and events may be shared; retained state is not (every replica upserts it). */
  subscriptions(): Record<string, { qos: 1 }> {
    const shared = (f: string) => (this.opts.shareGroup ? Filters.shared(this.opts.shareGroup, f) : f);
    return {
      [shared(Filters.device(this.base, "readings"))]: { qos: 1 },
      [shared(Filters.bridge(this.base, "event"))]: { qos: 1 },
      [Filters.device(this.base, "meta")]: { qos: 1 },
      [Filters.device(this.base, "availability")]: { qos: 1 },
      [Filters.bridge(this.base, "state")]: { qos: 1 },
      [Filters.bridge(this.base, "info")]: { qos: 1 },
      [Filters.bridge(this.base, "devices")]: { qos: 1 },
    };
  }

  async start(): Promise<void> {
    await this.warmPool();
    const clientId = this.opts.clientId ?? "bacmqtt-ingest";
    const client = mqtt.connect(this.opts.mqttUrl, {
      clientId,
      clean: false,
      protocolVersion: 4,
      keepalive: 60,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      resubscribe: true,
      ...(this.opts.username ? { username: this.opts.username } : {}),
      ...(this.opts.password ? { password: this.opts.password } : {}),
      manualConnect: true,
    });
    this.client = client;
    client.handleMessage = (packet, callback) => this.onMessage(packet as IPublishPacket, callback);
    let firstSubscription: ((err?: Error) => void) | undefined;
    const subscribed = new Promise<void>((resolve, reject) => {
      firstSubscription = (err) => (err ? reject(err) : resolve());
    });
    client.on("connect", (connack) => {
      this.metrics.mqttConnected.set(1);
      this.log.info({ clientId, sessionPresent: connack.sessionPresent }, "connected to broker");
      // Subscribing again is harmless when the session is present and needed when it is not
      // (first start, or a broker that lost its sessions).
      // One filter per SUBSCRIBE: aedes with Redis persistence never answers a SUBSCRIBE that
      // carries several filters; one at a time works with every broker.
      const filters = Object.entries(this.subscriptions());
      Promise.all(
        filters.map(([filter, opts]) =>
          client.subscribeAsync(filter, opts).then(
            (granted) => granted.filter((g) => g.qos === 128).map((g) => g.topic),
            (err: Error) => [`${filter} (${err.message})`],
          ),
        ),
      ).then(
        (results) => {
          const refused = results.flat();
          const problem = refused.length
            ? `the broker refused ${refused.join(", ")}${
                this.opts.shareGroup ? " (does it support shared subscriptions? aedes does not)" : ""
              }`
            : undefined;
          if (problem) this.log.error({ err: problem }, "subscribe failed");
          const settle = firstSubscription;
          firstSubscription = undefined;
          settle?.(
            problem ? new CodedError("INGEST_ERR_SUBSCRIBE", `subscribe failed: ${problem}`) : undefined,
          );
        },
        () => undefined,
      );
    });
    client.on("close", () => {
      this.generation++;
      this.metrics.mqttConnected.set(0);
      // Messages of the old connection can no longer be acknowledged; the broker redelivers them.
      this.releaseHeld();
    });
    client.on("error", (err) => this.log.warn({ err: err.message }, "mqtt error"));
    client.on("offline", () => this.log.warn("broker unreachable; reconnecting"));
    this.loopDone = this.loop();
    const connected = new Promise<void>((resolve, reject) => {
      const onConnect = () => {
        client.off("error", onError);
        resolve();
      };
      const onError = (err: Error) => {
        client.off("connect", onConnect);
        reject(err);
      };
      client.once("connect", onConnect);
      client.once("error", onError);
    });
    client.connect();
    try {
      await connected;
      await subscribed;
    } catch (err) {
      this.stopping = true;
      this.wake?.();
      await client.endAsync(true).catch(() => undefined);
      throw err;
    }
    if (this.opts.dialect === "portable" && (this.opts.retentionIntervalMs ?? 3_600_000) > 0) {
      this.retentionTimer = setInterval(() => {
        runPortableRetention(this.opts.pool, this.log).catch((err: unknown) =>
          this.log.warn({ err: errorMessage(err) }, "retention job failed"),
        );
      }, this.opts.retentionIntervalMs ?? 3_600_000);
      this.retentionTimer.unref();
    }
  }

  private onMessage(packet: IPublishPacket, callback: (err?: Error) => void): void {
    if (this.stopping) {
      callback(DEFER_ACK); // not acknowledged: the broker keeps it for the next session
      return;
    }
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    const op = classify(packet.topic, payload, this.base, this.timeWindow);
    this.metrics.messages.inc({ kind: op.kind });
    const readings = op.kind === "readings" ? op.payload.readings.length : 0;
    if (readings) this.metrics.readingsReceived.inc(readings);
    this.pending.push({
      topic: packet.topic,
      payload,
      op,
      receivedAt: new Date(),
      arrivedAt: performance.now(),
      messageId: packet.qos > 0 ? packet.messageId : undefined,
      generation: this.generation,
      readings,
    });
    this.pendingReadings += readings;
    this.metrics.pending.set(this.pending.length);
    if (this.pendingReadings >= this.batchSize) this.wake?.();
    else if (this.pending.length === 1) this.wake?.(); // start the batch timer
    if (this.pendingReadings >= this.maxPending) {
      this.held.push(() => callback(DEFER_ACK));
    } else {
      callback(DEFER_ACK);
    }
  }

  private releaseHeld(): void {
    const held = this.held;
    this.held = [];
    for (const release of held) release();
  }

  private async waitForBatch(): Promise<void> {
    // Wait for the first message, then until the batch is full or batchWaitMs have passed.
    for (let i = 0; this.pending.length === 0 && !this.stopping && i < Number.MAX_SAFE_INTEGER; i++) {
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    if (this.stopping || this.pendingReadings >= this.batchSize) return;
    // batchWaitMs counts from the oldest waiting message's arrival, not from now: messages that
    // arrived while the previous batch was being written have already waited that long.
    const oldest = this.pending[0]?.arrivedAt ?? performance.now();
    const remaining = this.batchWaitMs - (performance.now() - oldest);
    if (remaining <= 0) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, remaining);
      this.wake = () => {
        if (this.pendingReadings >= this.batchSize || this.stopping) {
          clearTimeout(timer);
          resolve();
        }
      };
    });
  }

  private takeBatch(): Pending[] {
    let readings = 0;
    let n = 0;
    while (n < this.pending.length && n < 10_000) {
      const next = this.pending[n] as Pending;
      if (n > 0 && readings + next.readings > this.batchSize) break;
      readings += next.readings;
      n++;
    }
    const batch = this.pending.splice(0, n);
    this.pendingReadings -= readings;
    return batch;
  }

  /**
   * Takes batches and writes up to `concurrency` of them at once, each in its own transaction on
   * its own connection (PostgreSQL parses one batch's COPY while the next is prepared and sent).
   * Acknowledgements stay in arrival order: a batch is acknowledged only once it and every batch
   * before it have committed.
   */
  private async loop(): Promise<void> {
    for (;;) {
      await this.waitForBatch();
      this.wake = undefined;
      if (this.pending.length === 0) {
        if (this.inFlight.length === 0) this.notifyIdle();
        if (this.stopping) {
          await this.allSettled();
          return;
        }
        continue;
      }
      // A slot is a batch being written. A batch that committed ahead of an earlier one waits in
      // `inFlight` only for its acknowledgement turn, holding no connection: counting it (as
      // before) stalled the next batch behind the slowest one (measured: two of five batches
      // taken only when the head batch finished, ~60 ms idle per 100,000 readings). The total
      // is still bounded, so a stuck head cannot let committed batches pile up without end.
      for (
        let i = 0;
        (this.writing() >= this.concurrency || this.inFlight.length >= 4 * this.concurrency) &&
        i < Number.MAX_SAFE_INTEGER;
        i++
      ) {
        await new Promise<void>((resolve) => {
          this.slotFree = resolve;
        });
      }
      // Stopping during an outage: what was not committed is not acknowledged; the broker keeps it.
      if (this.gaveUp) {
        await this.allSettled();
        return;
      }
      const batch = this.takeBatch();
      const entry: InFlight = { batch, state: "writing" };
      this.inFlight.push(entry);
      void this.commit(batch).then(
        (ok) => {
          entry.state = ok ? "committed" : "given_up";
          this.settle();
        },
        (err: unknown) => {
          // commit() retries every database failure itself; this is a bug, not an outage.
          this.log.error({ err: errorMessage(err) }, "batch commit crashed; not acknowledged");
          entry.state = "given_up";
          this.settle();
        },
      );
    }
  }

  /**
   * Opens the connections the write lanes use before the broker delivers anything: after a restart
   * the backlog arrives at once, and the first batches otherwise paid the connection set-up (TCP,
   * startup, authentication) while the event loop was busy taking that backlog in (measured: 40–60
   * ms from taking a batch to its BEGIN, per 100,000 readings). Best effort and bounded: a database
   * that is down is the writer's business (it retries), not a reason not to start.
   */
  private async warmPool(): Promise<void> {
    const clients: pg.PoolClient[] = [];
    let late = false;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(
        Array.from({ length: this.concurrency }, () =>
          this.opts.pool.connect().then(
            (c) => {
              if (late)
                c.release(); // came after we stopped waiting: back to the pool at once
              else clients.push(c);
            },
            () => undefined,
          ),
        ),
      ),
      new Promise((resolve) => {
        timer = setTimeout(resolve, 2000);
      }),
    ]);
    clearTimeout(timer);
    late = true;
    for (const c of clients) c.release();
  }

  private writing(): number {
    let n = 0;
    for (const e of this.inFlight) if (e.state === "writing") n++;
    return n;
  }

  /** Acknowledges the committed batches at the head of the queue, in order. */
  private settle(): void {
    for (let head = this.inFlight[0]; head && head.state !== "writing"; head = this.inFlight[0]) {
      this.inFlight.shift();
      if (head.state === "given_up") this.gaveUp = true;
      // After a batch was given up, later ones are not acknowledged either (acks go in order);
      // the broker redelivers them and ON CONFLICT makes that harmless.
      if (!this.gaveUp) this.ack(head.batch);
    }
    this.metrics.pending.set(this.pending.length);
    if (this.pendingReadings < this.maxPending) this.releaseHeld();
    if (this.pending.length === 0 && this.inFlight.length === 0) this.notifyIdle();
    const free = this.slotFree;
    this.slotFree = undefined;
    free?.();
    if (this.inFlight.length === 0) for (const w of this.settledWaiters.splice(0)) w();
  }

  private async allSettled(): Promise<void> {
    if (this.inFlight.length === 0) return;
    await new Promise<void>((resolve) => {
      this.settledWaiters.push(resolve);
    });
  }

  private notifyIdle(): void {
    for (const w of this.idleWaiters.splice(0)) w();
  }

  private async commit(batch: Pending[]): Promise<boolean> {
    const started = performance.now();
    const min = this.opts.retryMinMs ?? 100;
    const max = this.opts.retryMaxMs ?? 30_000;
    for (let attempt = 0; ; attempt++) {
      try {
        const stats = await this.writer.write(batch);
        const now = Date.now();
        this.metrics.dbUp.set(1);
        this.metrics.committed(stats.readingsInserted, now);
        this.metrics.batchSeconds.observe((performance.now() - started) / 1000);
        this.metrics.batchSize.observe(stats.readingsReceived);
        const copied = stats.readingsCopied ?? 0;
        if (copied) this.metrics.writePath.inc({ path: "copy" }, copied);
        if (stats.readingsReceived > copied)
          this.metrics.writePath.inc({ path: "insert" }, stats.readingsReceived - copied);
        if (stats.copyFallbacks) this.metrics.copyFallbacks.inc(stats.copyFallbacks);
        if (stats.deadLetters) {
          this.metrics.deadLetters.inc(stats.deadLetters);
          this.log.warn({ count: stats.deadLetters }, "messages stored as dead letters");
        }
        if (stats.newest !== null) this.metrics.lag.set(Math.max(0, (now - stats.newest) / 1000));
        return true;
      } catch (err) {
        this.metrics.dbUp.set(0);
        this.metrics.retries.inc();
        const delay = Math.min(max, min * 2 ** Math.min(attempt, 16)) * (0.75 + Math.random() * 0.5);
        this.log.warn(
          {
            err: errorMessage(err),
            code: (err as { code?: string }).code,
            attempt,
            retryInMs: Math.round(delay),
          },
          "batch commit failed; retrying",
        );
        if (this.stopping && attempt >= 2) return false;
        await new Promise((r) => setTimeout(r, delay));
        if (this.stopping && attempt >= 2) return false;
      }
    }
  }

  private ack(batch: Pending[]): void {
    const client = this.client;
    if (!client?.connected) return;
    for (const p of batch) {
      if (p.messageId === undefined || p.generation !== this.generation) continue;
      this.sendPacket({ cmd: "puback", messageId: p.messageId });
    }
  }

  /** Resolves when every message received so far is committed (tests, graceful stop). */
  async drained(): Promise<void> {
    if (this.pending.length === 0 && this.inFlight.length === 0) return;
    await new Promise<void>((resolve) => {
      this.idleWaiters.push(resolve);
    });
  }

  /** Stops taking messages, commits and acknowledges what was received, and disconnects. */
  async stop(): Promise<void> {
    if (this.retentionTimer) clearInterval(this.retentionTimer);
    this.stopping = true;
    this.wake?.();
    this.releaseHeld();
    await this.loopDone;
    const client = this.client;
    if (client) await client.endAsync();
    this.metrics.mqttConnected.set(0);
  }
}
