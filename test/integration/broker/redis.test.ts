// Redis persistence against the real Redis at 127.0.0.1:6379: retained messages and a persistent
// session's queued QoS 1 messages survive a broker restart, and two broker instances share one topic
// space. Each run uses its own key prefix (and database 9) and deletes its keys afterwards.
import { type ChildProcess, spawn } from "node:child_process";
import net from "node:net";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Topics } from "../../../contract/index.ts";
import { connect, connectRecording, record, sleep, subscribe, uniqueId, waitFor } from "./helpers.ts";

const REDIS_URL = "redis://127.0.0.1:6379/9";
const prefix = `${uniqueId("bacmqtt-test-")}:`;
let redis: Redis;
const running: RunningBroker[] = [];
const children: ChildProcess[] = [];

/** Waits (bounded) until something accepts connections on the port. */
async function listening(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => {
        socket.destroy();
        resolve(true);
      });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`nothing listens on port ${port}`);
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

async function start(): Promise<RunningBroker> {
  const broker = await startBroker({
    port: 0,
    allowAnonymous: true,
    sysInterval: 0,
    redis: { url: REDIS_URL, keyPrefix: prefix },
  });
  running.push(broker);
  return broker;
}

async function stop(broker: RunningBroker): Promise<void> {
  running.splice(running.indexOf(broker), 1);
  await broker.close();
}

beforeAll(async () => {
  redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  redis.on("error", () => undefined);
  await redis.connect();
});

afterAll(async () => {
  for (const broker of [...running]) await stop(broker);
  for (const child of children) child.kill("SIGKILL");
  let cursor = "0";
  for (let round = 0; round < 1000; round++) {
    const [next, keys] = await redis.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 500);
    if (keys.length) await redis.del(...keys);
    cursor = next;
    if (cursor === "0") break;
  }
  await redis.quit();
});

describe("Redis persistence", () => {
  it("keeps retained messages and a persistent session's QoS 1 queue across a broker restart", async () => {
    const topics = new Topics("bacmqtt", uniqueId("gw"));
    const clientId = uniqueId("ingest");
    const first = await start();

    const sub = await connect(first.url, { clientId, clean: false });
    expect(await subscribe(sub, topics.device(1, "readings"), 1)).toBe(1);
    await sub.endAsync();

    const pub = await connect(first.url);
    await pub.publishAsync(topics.bridge("state"), '{"state":"online"}', { qos: 1, retain: true });
    for (let i = 0; i < 10; i++) await pub.publishAsync(topics.device(1, "readings"), `r${i}`, { qos: 1 });
    await pub.endAsync();
    // PUBACK goes out before the broker has queued the message; wait until Redis holds all ten.
    const queue = `${prefix}outgoing:${encodeURIComponent(clientId)}`;
    let queued = 0;
    await waitFor("10 queued messages in Redis", () => {
      redis.llen(queue).then(
        (n) => {
          queued = n;
        },
        () => undefined,
      );
      return queued >= 10;
    });
    await stop(first);

    const second = await start();
    expect(second.tcpPort).not.toBe(0);
    const back = await connectRecording(second.url, { clientId, clean: false });
    await waitFor("queued readings after restart", () => back.messages.length >= 10);
    expect(back.messages.map((m) => m.payload)).toEqual(Array.from({ length: 10 }, (_, i) => `r${i}`));

    const late = await connect(second.url);
    const retained = record(late);
    await subscribe(late, topics.bridge("state"));
    await waitFor("retained state after restart", () => retained.length === 1);
    expect(retained[0]).toMatchObject({ payload: '{"state":"online"}', retain: true });
    await Promise.all([back.client.endAsync(), late.endAsync()]);
    await stop(second);
  });

  it("delivers a long offline queue in full on reconnect, not just the first thousand", async () => {
    const topics = new Topics("bacmqtt", uniqueId("gw"));
    const clientId = uniqueId("ingest");
    const broker = await start();
    const sub = await connect(broker.url, { clientId, clean: false });
    await subscribe(sub, topics.device(3, "readings"), 1);
    await sub.endAsync();
    const pub = await connect(broker.url);
    const count = 1500;
    for (let i = 0; i < count; i += 100)
      await Promise.all(
        Array.from({ length: 100 }, (_, k) =>
          pub.publishAsync(topics.device(3, "readings"), `q${i + k}`, { qos: 1 }),
        ),
      );
    await pub.endAsync();
    const back = await connectRecording(broker.url, { clientId, clean: false });
    await waitFor(`${count} queued messages`, () => back.messages.length >= count, 20_000);
    expect(new Set(back.messages.map((m) => m.payload)).size).toBe(count);
    await back.client.endAsync();
    await stop(broker);
  });

  it("answers a SUBSCRIBE with several filters for a persistent session (aedes + Redis hung here)", async () => {
    const broker = await start();
    const client = await connect(broker.url, { clientId: uniqueId("multi"), clean: false });
    const granted = await Promise.race([
      client.subscribeAsync({ "a/+/x": { qos: 1 }, "b/#": { qos: 1 }, "c/d": { qos: 0 } }),
      sleep(10_000).then(() => "no SUBACK within 10 s"),
    ]);
    expect(granted).toEqual([
      { topic: "a/+/x", qos: 1 },
      { topic: "b/#", qos: 1 },
      { topic: "c/d", qos: 0 },
    ]);
    // The session remembers every filter across a reconnect.
    await client.endAsync();
    const again = await connect(broker.url, { clientId: client.options.clientId, clean: false });
    const got = record(again);
    const publisher = await connect(broker.url);
    await publisher.publishAsync("b/1/2", "queued-or-live", { qos: 1 });
    await publisher.publishAsync("a/9/x", "second", { qos: 1 });
    await waitFor("both filters deliver", () => got.length >= 2);
    await Promise.all([again.endAsync(), publisher.endAsync()]);
  });

  it("lets two broker instances share clients: publish on one, receive on the other", async () => {
    const topics = new Topics("bacmqtt", uniqueId("gw"));
    const a = await start();
    const b = await start();
    const onA = await connect(a.url);
    const got = record(onA);
    await subscribe(onA, topics.device(2, "readings"), 1);
    const onB = await connect(b.url);
    // The subscription reaches B through Redis pub/sub; retry a bounded number of times until it has.
    for (let i = 0; i < 50 && got.length === 0; i++) {
      await onB.publishAsync(topics.device(2, "readings"), `probe${i}`, { qos: 1 });
      await waitFor("probe", () => got.length > 0, 200).catch(() => undefined);
    }
    expect(got.length).toBeGreaterThan(0);
    await onB.publishAsync(topics.bridge("info"), '{"version":"x"}', { qos: 1, retain: true });
    const late = await connect(a.url);
    const retained = record(late);
    await subscribe(late, topics.bridge("info"));
    await waitFor("retained message stored through B, read through A", () => retained.length === 1);
    await Promise.all([onA.endAsync(), onB.endAsync(), late.endAsync()]);
  });

  it("queues for a persistent session on one instance what is published on another, and delivers it there", async () => {
    const topics = new Topics("bacmqtt", uniqueId("gw"));
    const clientId = uniqueId("ingest");
    const a = await start();
    const b = await start();
    const sub = await connect(a.url, { clientId, clean: false });
    await subscribe(sub, topics.device(4, "readings"), 1);
    await sub.endAsync();
    const pub = await connect(b.url);
    // B learns of the subscription made on A through Redis; probe until a message is queued for it.
    const queue = `${prefix}outgoing:${encodeURIComponent(clientId)}`;
    let queued = 0;
    for (let i = 0; i < 50 && queued === 0; i++) {
      await pub.publishAsync(topics.device(4, "readings"), `probe${i}`, { qos: 1 });
      await waitFor("probe queued", () => queued > 0, 200).catch(() => undefined);
      queued = await redis.llen(queue);
    }
    expect(queued).toBeGreaterThan(0);
    for (let i = 0; i < 5; i++) await pub.publishAsync(topics.device(4, "readings"), `r${i}`, { qos: 1 });
    await pub.endAsync();
    // Reconnecting at once, while the last messages may still be on their way through Redis: the
    // session must still get its CONNACK first (it used to hang here) and then every message.
    const back = await connectRecording(b.url, { clientId, clean: false });
    const wanted = ["r0", "r1", "r2", "r3", "r4"];
    await waitFor("queued readings on the other instance", () =>
      wanted.every((r) => back.messages.some((m) => m.payload === r)),
    );
    // At least once: a message both queued and in flight may arrive twice, never not at all.
    const readings = new Set(back.messages.map((m) => m.payload).filter((p) => p.startsWith("r")));
    expect(readings).toEqual(new Set(wanted));
    await back.client.endAsync();
  });

  it("rides out a Redis outage: connections wait for Redis to return, nothing crashes", async () => {
    // A private redis-server, so stopping it disturbs no one else.
    const port = await freePort();
    const startRedis = () => {
      const child = spawn(
        "redis-server",
        ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        {
          stdio: "ignore",
        },
      );
      children.push(child);
      return child;
    };
    let server = startRedis();
    const url = `redis://127.0.0.1:${port}/0`;
    await listening(port);
    const broker = await startBroker({ port: 0, allowAnonymous: true, sysInterval: 0, redis: url });
    running.push(broker);
    const before = await connect(broker.url, { clientId: uniqueId("c"), clean: false });
    await subscribe(before, "outage/t", 1);
    await before.endAsync();

    const watcher = await connect(broker.url);
    const watched = record(watcher);
    await subscribe(watcher, "outage/t", 1);
    const talker = await connect(broker.url);

    server.kill("SIGKILL");
    await new Promise((resolve) => server.once("exit", resolve));
    // A message published during the outage is held and delivered once Redis is back.
    talker.publish("outage/t", "during", { qos: 1 });
    // Connecting now needs Redis (session lookup, will bookkeeping): it must wait, not fail or crash.
    const during = connectRecording(broker.url, {
      clientId: uniqueId("d"),
      clean: false,
      connectTimeout: 20_000,
    });
    let connected = false;
    during.then(
      () => {
        connected = true;
      },
      () => undefined,
    );
    await sleep(1500);
    expect(connected).toBe(false);

    server = startRedis();
    const { client } = await during;
    expect(await subscribe(client, "outage/t", 1)).toBe(1);
    const got = record(client);
    const pub = await connect(broker.url);
    await pub.publishAsync("outage/t", "after", { qos: 1 });
    await waitFor("message after the outage", () => got.some((m) => m.payload === "after"));
    await waitFor("message from during the outage", () => watched.some((m) => m.payload === "during"));
    await Promise.all([client.endAsync(), pub.endAsync(), watcher.endAsync(), talker.endAsync()]);
    await stop(broker);
    server.kill("SIGKILL");
  });

  it("refuses to start when Redis cannot be reached, with one clear error", async () => {
    await expect(
      startBroker({ port: 0, allowAnonymous: true, redis: "redis://127.0.0.1:1/0", sysInterval: 0 }),
    ).rejects.toMatchObject({
      code: "BROKER_ERR_REDIS",
      message: expect.stringMatching(/cannot reach Redis.*ECONNREFUSED/),
    });
  });
});
