// Shared test support for the gateway suites: a real broker on port 0 (the project's broker once it
// exists, aedes directly until then), the Mosquitto broker on 127.0.0.1:1883, a recording MQTT
// client, and bounded waits. Loopback only.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import mqtt, { type MqttClient } from "mqtt";

export const MOSQUITTO_URL = "mqtt://127.0.0.1:1883";

export interface TestBroker {
  url: string;
  close(): Promise<void>;
}

const brokerModule = new URL("../../../broker/index.ts", import.meta.url);

/** The project's broker (`startBroker({port:0})`) when it has landed, else a bare aedes on port 0. */
export async function startTestBroker(port = 0): Promise<TestBroker> {
  if (existsSync(brokerModule)) {
    const mod = (await import(brokerModule.href)) as {
      startBroker?: (o: Record<string, unknown>) => Promise<Record<string, unknown>>;
    };
    if (typeof mod.startBroker === "function") {
      const b = await mod.startBroker({ port, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
      return { url: brokerUrl(b), close: () => closeOf(b)() };
    }
  }
  return startAedes(port);
}

function brokerUrl(b: Record<string, unknown>): string {
  for (const key of ["url", "mqttUrl", "tcpUrl"]) if (typeof b[key] === "string") return b[key] as string;
  const port = (b.port ?? (b.ports as Record<string, number> | undefined)?.tcp) as number | undefined;
  if (typeof port === "number") return `mqtt://127.0.0.1:${port}`;
  throw new Error(`cannot tell the broker's URL from ${Object.keys(b).join(", ")}`);
}

function closeOf(b: Record<string, unknown>): () => Promise<void> {
  const fn = (b.close ?? b.stop) as (() => Promise<void>) | undefined;
  if (!fn) throw new Error("broker handle has no close/stop");
  return () => fn.call(b);
}

export async function startAedes(port = 0): Promise<TestBroker> {
  const { Aedes } = await import("aedes");
  const broker = await Aedes.createBroker();
  const server = net.createServer(broker.handle as (s: net.Socket) => void);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", () => resolve());
  });
  const { port: bound } = server.address() as net.AddressInfo;
  const sockets = new Set<net.Socket>();
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  return {
    url: `mqtt://127.0.0.1:${bound}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await new Promise<void>((resolve) => broker.close(() => resolve()));
    },
  };
}

export interface Received {
  topic: string;
  payload: string;
  retain: boolean;
}

/** A client that records everything under a filter, with bounded waits. */
export class Recorder {
  readonly messages: Received[] = [];
  private constructor(private readonly client: MqttClient) {}

  static async connect(url: string, filter: string): Promise<Recorder> {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 200, connectTimeout: 5000 });
    const r = new Recorder(client);
    client.on("message", (topic, payload, packet) =>
      r.messages.push({ topic, payload: payload.toString(), retain: packet.retain }),
    );
    await client.subscribeAsync(filter, { qos: 1 });
    return r;
  }

  json(topic: string): unknown[] {
    return this.messages
      .filter((m) => m.topic === topic && m.payload !== "")
      .map((m) => JSON.parse(m.payload));
  }

  async waitFor(
    predicate: (messages: Received[]) => boolean,
    what: string,
    timeoutMs = 10_000,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!predicate(this.messages)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await sleep(20);
    }
  }

  async publish(topic: string, payload: string | object, retain = false): Promise<void> {
    await this.client.publishAsync(topic, typeof payload === "string" ? payload : JSON.stringify(payload), {
      qos: 1,
      retain,
    });
  }

  async close(): Promise<void> {
    await this.client.endAsync(true);
  }
}

/** Reads the retained messages under a filter with a fresh client: what a late subscriber sees. */
export async function retainedUnder(
  url: string,
  filter: string,
  settleMs = 300,
): Promise<Map<string, string>> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000 });
  const out = new Map<string, string>();
  client.on("message", (topic, payload, packet) => {
    if (packet.retain) out.set(topic, payload.toString());
  });
  await client.subscribeAsync(filter, { qos: 1 });
  await sleep(settleMs);
  await client.endAsync(true);
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export function tempDir(prefix = "bacmqtt-gw-"): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export function uniqueBase(label: string): string {
  return `test-${label}-${process.pid}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6)}`;
}

export async function mosquittoAvailable(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(1883, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * A TCP relay in front of a broker, so that a test can take "the broker" away and bring it back on
 * the same port without touching the broker itself (Mosquitto on this machine must not be
 * reconfigured). `cut()` closes the listener and every relayed connection; `restore()` listens again.
 * `hold()` keeps what clients send from here on (the broker hears nothing more: no PUBLISH arrives,
 * no PUBACK comes back); `discard()` drops those bytes with the connections.
 */
export class BrokerLink {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private holding = false;
  /** What clients sent while held, in order. */
  readonly held: Buffer[] = [];
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  async restore(): Promise<void> {
    const server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.on("data", (d: Buffer) => {
        if (this.holding) this.held.push(d);
        else upstream.write(d);
      });
      client.on("end", () => upstream.end());
      upstream.pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
    this.port = (server.address() as net.AddressInfo).port;
    this.server = server;
  }

  hold(): void {
    this.holding = true;
  }

  /** Drops the held bytes' connections; new connections are relayed normally. */
  discard(): void {
    this.holding = false;
    for (const s of this.sockets) s.destroy();
  }

  async cut(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

export function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port || 1883) };
}
