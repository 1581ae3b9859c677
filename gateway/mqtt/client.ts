// The gateway's one MQTT connection. Owns the base topic, the birth/death sequence number (`bd_seq`,
// kept on disk), the Last Will (retained offline `bridge/state`), retained-topic bookkeeping and
// publish safety: callers pass topics relative to `{base}/{gw}/` and a publish never throws.
// It also guards the gateway id: before each birth it looks at the retained `bridge/state` and asks
// another online instance whether it is alive, and while connected it watches `bridge/state` for
// other instances (rules in ./duplicate.ts). It knows nothing of BACnet or of what the topics mean
// beyond bridge/state.
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import path from "node:path";
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import type { Logger } from "../../common/logger.ts";
import { type BridgeStatePayload, TOPIC_QOS, Topics } from "../../contract/index.ts";
import { type DuplicateInfo, eventData, type Identity, parseClaim, winsOver } from "./duplicate.ts";

export interface GatewayMqttOptions {
  url: string;
  topics: Topics;
  /** Folder for the `bd_seq` file. */
  dataDir: string;
  username?: string;
  password?: string;
  clientId: string;
  keepaliveS?: number;
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  rejectUnauthorized?: boolean;
  /** Random id of this process (default: a new one), carried in every `bridge/state`. */
  instance?: string;
  /** When this process started (default: now); the earlier of two instances stays. */
  startedAt?: Date;
  /**
   * How long another instance's retained `online` state is given to answer a `health_check` before
   * it is taken as stale; 0 = not asked (taken as stale at once). Default 3000.
   */
  duplicateCheckMs?: number;
  log: Logger;
}

/** How the first connection went, for a start that must not go on as a duplicate. */
export type FirstOutcome = "online" | "refused" | "unreachable";

/**
 * Retained messages follow the SUBACK asynchronously (aedes streams them from its persistence);
 * this long is allowed for the retained `bridge/state` to arrive before the topic is taken as empty.
 */
const RETAINED_WAIT_MS = 500;

export interface PublishOptions {
  retain?: boolean;
  qos?: 0 | 1;
}

export interface GatewayMqttEvents {
  /** Connected and `bridge/state` online published; the birth sequence may start. */
  online: [bdSeq: number];
  offline: [];
  message: [relativeTopic: string, payload: Buffer];
  /**
   * Another instance holds this gateway id. `refused`/`lost`: this one has published nothing more
   * (and will not: `connected` stays false) and should stop; `won`: the online state was re-published
   * and the rest of the birth should be repeated.
   */
  duplicate: [info: DuplicateInfo];
}

type Phase = "connecting" | "checking" | "online" | "refused" | "lost";

const BD_SEQ_FILE = "bd_seq";

export class GatewayMqtt extends EventEmitter<GatewayMqttEvents> {
  readonly topics: Topics;
  private readonly options: GatewayMqttOptions;
  private readonly log: Logger;
  private client: MqttClient | undefined;
  private seq = 0;
  private seqUsed = false;
  private stopping = false;
  private lastError: string | undefined;
  private readonly retained = new Set<string>();
  readonly stats = { published: 0, failed: 0, skipped: 0 };
  readonly identity: Identity;
  /** Where this connection is: only `online` lets callers publish. */
  private phase: Phase = "connecting";
  /** Counts connections, so that a check from an earlier one gives up. */
  private generation = 0;
  /** Another instance's state seen while checking (retained or live). */
  private seenWhileChecking: BridgeStatePayload | undefined;
  private pingTransaction: string | undefined;
  private pingAnswered = false;
  private duplicate: DuplicateInfo | undefined;
  private settleFirst: ((outcome: FirstOutcome) => void) | undefined;
  private readonly first: Promise<FirstOutcome>;

  constructor(options: GatewayMqttOptions) {
    super();
    this.options = options;
    this.topics = options.topics;
    this.log = options.log;
    this.identity = {
      instance: options.instance ?? randomBytes(8).toString("hex"),
      startedAt: options.startedAt ?? new Date(),
    };
    this.first = new Promise((resolve) => {
      this.settleFirst = resolve;
    });
  }

  /** Connected, checked and announced: publishing is allowed. */
  get connected(): boolean {
    return this.client?.connected === true && !this.stopping && this.phase === "online";
  }

  /**
   * The first connection's outcome: `online` (checked and announced), `refused` (another live
   * instance holds the id: nothing was announced), or `unreachable` (the first attempt failed, or no
   * answer within `timeoutMs`: the check then runs whenever the connection comes up).
   */
  firstOutcome(timeoutMs: number): Promise<FirstOutcome> {
    let timer: NodeJS.Timeout | undefined;
    return Promise.race([
      this.first,
      new Promise<FirstOutcome>((resolve) => {
        timer = setTimeout(() => resolve("unreachable"), timeoutMs);
      }),
    ]).finally(() => clearTimeout(timer));
  }

  private settle(outcome: FirstOutcome): void {
    this.settleFirst?.(outcome);
    this.settleFirst = undefined;
  }

  get bdSeq(): number {
    return this.seq;
  }

  /** Starts connecting; resolves at once (the broker may be down: readings then go to the buffer). */
  start(): void {
    mkdirSync(this.options.dataDir, { recursive: true });
    this.seq = this.readSeq() + 1;
    this.writeSeq(this.seq);
    const o = this.options;
    const opts: IClientOptions = {
      clientId: o.clientId,
      clean: true,
      keepalive: o.keepaliveS ?? 30,
      reconnectPeriod: o.reconnectPeriodMs ?? 2000,
      connectTimeout: o.connectTimeoutMs ?? 10_000,
      protocolVersion: 4,
      // Subscriptions are made after the birth sequence, on every connect, by the bridge.
      resubscribe: false,
      queueQoSZero: false,
      will: this.will(),
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...(o.ca ? { ca: o.ca } : {}),
      ...(o.cert ? { cert: o.cert } : {}),
      ...(o.key ? { key: o.key } : {}),
      ...(o.rejectUnauthorized !== undefined ? { rejectUnauthorized: o.rejectUnauthorized } : {}),
    };
    const client = mqtt.connect(o.url, opts);
    this.client = client;
    client.on("connect", () => this.onConnect());
    client.on("close", () => this.onClose());
    client.on("error", (err) => {
      // A broker that stays away fails every reconnect the same way: say it once, then at debug.
      if (err.message === this.lastError) this.log.debug({ err: err.message }, "mqtt error (again)");
      else this.log.warn({ err: err.message }, "mqtt error");
      this.lastError = err.message;
    });
    client.on("message", (topic, payload) => {
      const prefix = `${this.topics.root}/`;
      if (!topic.startsWith(prefix)) return;
      const relative = topic.slice(prefix.length);
      if (relative === Topics.bridgeRel("state")) this.onState(payload);
      else if (relative === Topics.responseRel("health_check")) this.onPingResponse(payload);
      else this.emit("message", relative, payload);
    });
  }

  private will(): NonNullable<IClientOptions["will"]> {
    return {
      topic: this.topics.bridge("state"),
      payload: Buffer.from(JSON.stringify(this.statePayload("offline"))),
      qos: 1,
      retain: true,
    };
  }

  private statePayload(state: "online" | "offline"): BridgeStatePayload {
    return {
      state,
      bd_seq: this.seq,
      timestamp: new Date().toISOString(),
      instance: this.identity.instance,
      started_at: this.identity.startedAt.toISOString(),
    };
  }

  private onConnect(): void {
    // A refused or losing instance is on its way out: a reconnect must not announce it again.
    if (this.stopping || this.phase === "refused" || this.phase === "lost") return;
    this.seqUsed = true;
    this.lastError = undefined;
    this.phase = "checking";
    this.generation += 1;
    this.log.info({ bd_seq: this.seq, instance: this.identity.instance }, "mqtt connected");
    void this.checkThenAnnounce(this.generation).catch((err: unknown) =>
      this.log.error({ err: String(err) }, "birth failed"),
    );
  }

  /** Before the birth: is another instance of this gateway id online and alive? */
  private async checkThenAnnounce(generation: number): Promise<void> {
    const current = () => generation === this.generation && !this.stopping;
    const other = await this.findLiveOther(current);
    if (!current()) return;
    if (other) {
      this.phase = "refused";
      this.duplicate = { outcome: "refused", other };
      this.log.error(
        { code: "GW_ERR_DUPLICATE_GATEWAY", instance: this.identity.instance, other },
        "another gateway instance with this gateway_id is online and answering: refusing to start",
      );
      await this.announceDuplicate(this.duplicate);
      this.settle("refused");
      this.emit("duplicate", this.duplicate);
      return;
    }
    // From here on a state of another instance is a conflict to settle (see onState).
    this.phase = "online";
    await this.publish(Topics.bridgeRel("state"), this.statePayload("online"), TOPIC_QOS.state);
    if (!this.connected || generation !== this.generation) return;
    this.settle("online");
    this.emit("online", this.seq);
  }

  /** The retained state of another instance that answered a health check, else undefined. */
  private async findLiveOther(current: () => boolean): Promise<BridgeStatePayload | undefined> {
    const client = this.client;
    if (!client) return undefined;
    this.seenWhileChecking = undefined;
    const state = this.topics.bridge("state");
    const response = this.topics.response("health_check");
    try {
      const granted = await client.subscribeAsync([state, response], { qos: 1 });
      if (granted.some((g) => g.topic === state && g.qos === 128)) {
        this.log.warn(
          { topic: state },
          "subscription to the own bridge/state refused by the broker: a duplicate gateway id cannot be detected",
        );
        return undefined;
      }
    } catch (err) {
      this.log.warn({ err: String(err) }, "cannot watch bridge/state: duplicate check skipped");
      return undefined;
    }
    await waitUntil(() => this.seenWhileChecking !== undefined || !current(), RETAINED_WAIT_MS);
    // Set by onState meanwhile (the compiler cannot see that).
    const seen = this.seenWhileChecking as BridgeStatePayload | undefined;
    const waitMs = this.options.duplicateCheckMs ?? 3000;
    const alive = current() && seen?.state === "online" && waitMs > 0 && (await this.ping(waitMs, current));
    await client.unsubscribeAsync(response).catch(() => undefined);
    if (!current() || seen?.state !== "online") return undefined;
    if (alive) return seen;
    if (current())
      this.log.warn(
        { other: seen, waited_ms: waitMs },
        "retained bridge/state says another instance is online but it does not answer: taken as stale",
      );
    return undefined;
  }

  /** Sends `health_check` requests to this gateway id until one is answered or `waitMs` passes. */
  private async ping(waitMs: number, current: () => boolean): Promise<boolean> {
    const client = this.client;
    if (!client) return false;
    this.pingTransaction = `duplicate-check-${this.identity.instance}-${this.generation}`;
    this.pingAnswered = false;
    const body = JSON.stringify({ transaction: this.pingTransaction });
    const deadline = Date.now() + waitMs;
    // Repeated: the other instance subscribes to requests only at the end of its own birth.
    const every = Math.max(100, Math.floor(waitMs / 5));
    for (let n = 0; n < 100 && !this.pingAnswered && current(); n += 1) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await client.publishAsync(this.topics.request("health_check"), body, { qos: 1 }).catch(() => undefined);
      await waitUntil(() => this.pingAnswered || !current(), Math.min(every, left));
    }
    this.pingTransaction = undefined;
    return this.pingAnswered;
  }

  private onPingResponse(payload: Buffer): void {
    try {
      const t = (JSON.parse(payload.toString("utf8")) as { transaction?: unknown })?.transaction;
      if (t !== undefined && t === this.pingTransaction) this.pingAnswered = true;
    } catch {
      // not ours
    }
  }

  /** A `bridge/state` message on this gateway id: ours, another instance's, or garbage. */
  private onState(payload: Buffer): void {
    const claim = parseClaim(payload);
    if (!claim) return;
    if (claim.instance === this.identity.instance) {
      // Our own will from an earlier connection, fired late (the broker noticed the old connection
      // dead after the new one was up): the id is not offline, this instance is still here.
      if (claim.state === "offline" && claim.bd_seq < this.seq && this.phase === "online")
        void this.reassert("a late will of an earlier connection");
      return;
    }
    if (this.phase === "checking") {
      this.seenWhileChecking = claim;
      return;
    }
    if (this.phase !== "online" || this.stopping) return;
    if (claim.state === "offline") {
      // e.g. a refused or losing instance that crashed: its will must not mark this one offline.
      void this.reassert(`offline state of instance ${claim.instance ?? "(none)"}`);
      return;
    }
    if (winsOver(this.identity, claim)) {
      this.duplicate = { outcome: "won", other: claim };
      this.log.error(
        { code: "GW_ERR_DUPLICATE_GATEWAY", instance: this.identity.instance, other: claim },
        "another gateway instance announced this gateway_id; it started later and gives way, this one stays",
      );
      void this.announceDuplicate(this.duplicate).then(() =>
        this.reassert("duplicate gateway resolved in our favour"),
      );
      this.emit("duplicate", this.duplicate);
      return;
    }
    this.phase = "lost";
    this.duplicate = { outcome: "lost", other: claim };
    this.log.error(
      { code: "GW_ERR_DUPLICATE_GATEWAY", instance: this.identity.instance, other: claim },
      "another gateway instance with this gateway_id started first: this one stops publishing and exits",
    );
    void this.announceDuplicate(this.duplicate);
    this.emit("duplicate", this.duplicate);
  }

  private async reassert(why: string): Promise<void> {
    this.log.warn({ why }, "bridge/state online re-published");
    await this.publish(Topics.bridgeRel("state"), this.statePayload("online"), TOPIC_QOS.state);
  }

  /** The `duplicate_gateway` event, sent even when this instance may publish nothing else. */
  private async announceDuplicate(info: DuplicateInfo): Promise<void> {
    const client = this.client;
    if (!client?.connected) return;
    const payload = {
      type: "duplicate_gateway",
      timestamp: new Date().toISOString(),
      data: eventData(this.topics.gateway, { ...this.identity, bdSeq: this.seq }, info),
    };
    await client
      .publishAsync(this.topics.bridge("event"), JSON.stringify(payload), {
        qos: TOPIC_QOS.event.qos,
        retain: false,
      })
      .then(() => {
        this.stats.published += 1;
      })
      .catch((err: unknown) => this.log.warn({ err: String(err) }, "duplicate_gateway event not published"));
  }

  private onClose(): void {
    if (!this.seqUsed) this.settle("unreachable");
    if (this.phase === "checking" || this.phase === "online") this.phase = "connecting";
    if (this.stopping || !this.seqUsed) return;
    // The broker has (or will have) published this connection's will; the next one gets a new number.
    this.seqUsed = false;
    this.seq += 1;
    this.writeSeq(this.seq);
    if (this.client) this.client.options.will = this.will();
    this.failInFlight();
    this.log.warn({ next_bd_seq: this.seq }, "mqtt connection lost");
    this.emit("offline");
  }

  /**
   * Publishes still waiting for their PUBACK would be re-sent from this process's memory after the
   * reconnect, and lost with it if the process dies first. Failing them now hands them back to their
   * callers: readings then go to the disk buffer (replayed in order), state is re-sent at the birth.
   */
  private failInFlight(): void {
    const client = this.client as unknown as { outgoing?: Record<string, unknown> } | undefined;
    if (!client?.outgoing) return;
    const ids = Object.keys(client.outgoing)
      .map(Number)
      .sort((a, b) => a - b);
    for (const id of ids) this.client?.removeOutgoingMessage(id);
  }

  private readSeq(): number {
    try {
      const n = Number(readFileSync(path.join(this.options.dataDir, BD_SEQ_FILE), "utf8").trim());
      return Number.isInteger(n) && n >= 0 ? n : 0;
    } catch {
      return 0;
    }
  }

  private writeSeq(n: number): void {
    const file = path.join(this.options.dataDir, BD_SEQ_FILE);
    try {
      writeFileSync(`${file}.tmp`, `${n}\n`);
      renameSync(`${file}.tmp`, file);
    } catch (err) {
      this.log.error({ err: (err as Error).message }, "cannot persist bd_seq");
    }
  }

  /**
   * Publishes JSON (or a raw string/Buffer) to a topic relative to the gateway root. Never throws:
   * resolves true once the broker acknowledged (QoS 1) or the packet was written (QoS 0), false when
   * not connected (nothing is queued: state is re-sent by the next birth) or on failure.
   */
  async publish(relative: string, payload: unknown, options: PublishOptions = {}): Promise<boolean> {
    const client = this.client;
    if (!client || !this.connected) {
      this.stats.skipped += 1;
      return false;
    }
    const retain = options.retain ?? false;
    // Every bridge/state says which instance sent it (e.g. the one a `rebirth` request repeats).
    if (relative === Topics.bridgeRel("state") && isObject(payload) && "state" in payload)
      payload = {
        ...payload,
        instance: this.identity.instance,
        started_at: this.identity.startedAt.toISOString(),
      };
    let body: string | Buffer;
    try {
      body = typeof payload === "string" || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload);
    } catch (err) {
      this.stats.failed += 1;
      this.log.error({ topic: relative, err: (err as Error).message }, "payload not serialisable");
      return false;
    }
    try {
      await client.publishAsync(this.topics.full(relative), body, { qos: options.qos ?? 1, retain });
      this.stats.published += 1;
      if (retain) {
        if (body.length === 0) this.retained.delete(relative);
        else this.retained.add(relative);
      }
      return true;
    } catch (err) {
      this.stats.failed += 1;
      this.log.warn({ topic: relative, err: (err as Error).message }, "publish failed");
      return false;
    }
  }

  /** Publishes with QoS 1 and rejects unless the broker acknowledged; used for the buffer replay. */
  async publishAcked(relative: string, body: string): Promise<void> {
    const client = this.client;
    if (!client || !this.connected) throw new Error("not connected");
    await client.publishAsync(this.topics.full(relative), body, { qos: 1, retain: false });
    this.stats.published += 1;
  }

  /** Clears a retained topic on the broker (empty retained payload). */
  clearRetained(relative: string): Promise<boolean> {
    return this.publish(relative, "", { retain: true, qos: 1 });
  }

  /** Retained topics this process has published and not cleared. */
  retainedTopics(): ReadonlySet<string> {
    return this.retained;
  }

  async subscribe(relativeFilter: string): Promise<boolean> {
    const client = this.client;
    if (!client || !this.connected) return false;
    try {
      await client.subscribeAsync(this.topics.full(relativeFilter), { qos: 1 });
      return true;
    } catch (err) {
      this.log.warn({ filter: relativeFilter, err: (err as Error).message }, "subscribe failed");
      return false;
    }
  }

  /**
   * Clean stop: retained offline state first (the will is not sent on a clean disconnect), then
   * disconnect. The offline state is published only by an instance that announced itself online on
   * this connection: a refused or losing instance leaves the other one's retained state alone.
   */
  async stop(timeoutMs = 5000): Promise<void> {
    const client = this.client;
    if (!client) return;
    this.settle("unreachable");
    if (client.connected && this.phase === "online" && !this.stopping) {
      await withTimeout(
        client.publishAsync(this.topics.bridge("state"), JSON.stringify(this.statePayload("offline")), {
          qos: 1,
          retain: true,
        }),
        timeoutMs,
      ).catch((err: unknown) => this.log.warn({ err: String(err) }, "offline state not published"));
    }
    this.stopping = true;
    await withTimeout(client.endAsync(false), timeoutMs).catch(async () => {
      await client.endAsync(true).catch(() => undefined);
    });
    this.client = undefined;
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) && !Buffer.isBuffer(v);
}

/** Resolves when `done()` is true (checked every 20 ms) or after `ms`. */
async function waitUntil(done: () => boolean, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!done() && Date.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, Math.min(20, Math.max(1, deadline - Date.now()))));
}
