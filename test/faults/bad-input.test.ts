// Bad input at the gateway's request topics and at the ingest, while the whole pipeline runs:
// malformed JSON, wrong types, 1 MB payloads, deep nesting, random bytes, unknown endpoints.
// Every request to a known endpoint gets an error response; every bad message the ingest takes
// becomes a dead letter; afterwards both still serve and no polled reading is lost.
import net from "node:net";
import { afterAll, expect, it } from "vitest";
import { ENDPOINTS, Topics } from "../../contract/index.ts";
import { mulberry32 as rng } from "../../simulator/objects.ts"; // deterministic: a failure can be replayed
import { Recorder } from "../integration/gateway/helpers.ts";
import { count, publisher } from "../integration/ingest/helpers.ts";
import { eventually, Pipeline, report } from "./support.ts";

function randomBytes(r: () => number, max: number): Buffer {
  const b = Buffer.alloc(1 + Math.floor(r() * max));
  for (let i = 0; i < b.length; i++) b[i] = Math.floor(r() * 256);
  return b;
}
const MB = "x".repeat(1024 * 1024);

/** Bad for every endpoint (none is a JSON object a schema could accept). */
const BAD_FOR_ALL: (string | Buffer)[] = [
  "{",
  "not json",
  Buffer.from([0xff, 0xfe, 0x00, 0x7b]),
  "null",
  "[]",
  "42",
  '"a string"',
  `{"transaction":"t-huge","device":"${MB}"}`,
  `${"[".repeat(100_000)}${"]".repeat(100_000)}`,
  `{"transaction":{"nested":true}}`,
];
/** Wrong types or ranges for endpoints that take arguments. */
const BAD_WITH_ARGS: Record<string, string[]> = {
  "device/read": [
    '{"device":"x","point":"analog_value_1","transaction":"r1"}',
    '{"device":-1,"point":"analog_value_1"}',
    '{"device":1e300,"point":"analog_value_1"}',
    '{"device":1,"point":5}',
    '{"device":1,"point":"analog_value_1","index":-3}',
  ],
  "device/write": [
    '{"device":1,"point":"analog_value_1"}',
    '{"device":1,"point":"analog_value_1","value":{"x":1}}',
    '{"device":1,"point":"analog_value_1","value":1,"priority":17}',
  ],
  "device/points": ['{"device":"all"}', "{}"],
  "device/options": ['{"device":1,"poll_interval_s":-5}', '{"device":true}'],
  discover: ['{"low":-1}', '{"targets":"127.0.0.1"}', `{"targets":["${"9".repeat(200)}"]}`],
};
const RANDOM_REQUESTS = 1000;
const RANDOM_INGEST = 500;

/** MQTT 3.1.1 packets by hand (a client library refuses to send a wildcard topic name). */
function packet(type: number, body: Buffer): Buffer {
  const len: number[] = [];
  let n = body.length;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 128;
    len.push(byte);
  } while (n > 0);
  return Buffer.concat([Buffer.from([type, ...len]), body]);
}
const str = (s: string) => {
  const b = Buffer.from(s, "utf8");
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 255]), b]);
};
const connectPacket = (clientId: string) =>
  packet(0x10, Buffer.concat([str("MQTT"), Buffer.from([4, 0x02, 0, 60]), str(clientId)]));
const publishPacket = (topic: string, payload: string) =>
  packet(0x30, Buffer.concat([str(topic), Buffer.from(payload)]));

/**
 * Connects over raw TCP, publishes one QoS 0 message to `topic` and reports whether the broker
 * closed the connection (within 5 s) — what it must do with a wildcard in a topic name.
 */
function rawPublish(url: string, topic: string, payload: string): Promise<"closed" | "open"> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), hostname);
    let connacked = false;
    const timer = setTimeout(() => {
      socket.destroy();
      resolve("open");
    }, 5000);
    socket.on("data", (d) => {
      if (!connacked && d[0] === 0x20) {
        connacked = true;
        socket.write(publishPacket(topic, payload));
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(connacked ? "closed" : "open");
    });
    socket.write(connectPacket(`faults-wild-${Math.random().toString(36).slice(2, 10)}`));
  });
}

let p: Pipeline | undefined;
const closers: (() => Promise<unknown>)[] = [];
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  await p?.close();
});

it("answers bad requests with errors, dead-letters bad ingest input, and keeps serving", {
  timeout: 180_000,
}, async () => {
  const started = Date.now();
  p = await Pipeline.start({ label: "badinput", subnet: 85 });
  const pipe = p;
  const gw = pipe.gateway;
  if (!gw) throw new Error("no gateway");
  await pipe.waitProduced(60, "steady polling");
  const rec = await Recorder.connect(pipe.broker.url, gw.topics.full("bridge/#"));
  closers.push(() => rec.close());
  const responseTopic = (e: string) => gw.topics.response(e as (typeof ENDPOINTS)[number]);
  const responses = (e: string) => rec.messages.filter((m) => m.topic === responseTopic(e));

  // 1. Request topics.
  const sent = new Map<string, number>();
  const r = rng(20261127);
  const send = async (endpoint: string, payload: string | Buffer) => {
    sent.set(endpoint, (sent.get(endpoint) ?? 0) + 1);
    await rec.publish(gw.topics.full(`bridge/request/${endpoint}`), payload as string);
  };
  for (const e of ENDPOINTS) {
    for (const b of BAD_FOR_ALL) await send(e, b);
    for (const b of BAD_WITH_ARGS[e] ?? []) await send(e, b);
  }
  for (let i = 0; i < RANDOM_REQUESTS; i++) {
    const e = ENDPOINTS[i % ENDPOINTS.length] as string;
    let b = randomBytes(r, 300);
    if (b[0] === 0x7b) b = Buffer.concat([Buffer.from("!"), b]); // never a JSON object
    await send(e, b);
  }
  const unknown = ["bridge/request/nope", "bridge/request/device/zap", "bridge/request/a/b/c/d/e/f"];
  for (const t of unknown) await rec.publish(gw.topics.full(t), "{}");
  const totalSent = [...sent.values()].reduce((a, b) => a + b, 0);
  await rec.waitFor(
    () => ENDPOINTS.every((e) => responses(e).length >= (sent.get(e) ?? 0)),
    "a response to every bad request",
    120_000,
  );
  const all = ENDPOINTS.flatMap((e) => responses(e).map((m) => JSON.parse(m.payload) as { status: string }));
  const errors = all.filter((x) => x.status === "error").length;
  const echoed = responses("device/read").some(
    (m) => (JSON.parse(m.payload) as { transaction?: string }).transaction === "r1",
  );

  // Still serving: a health check and a real read.
  await rec.publish(gw.topics.request("health_check"), { transaction: "alive" });
  const device = pipe.sim.devices()[0]?.instance as number;
  await rec.publish(gw.topics.request("device/read"), {
    transaction: "read-ok",
    device,
    point: "analog_value_1",
  });
  await rec.waitFor(
    () =>
      ["health_check", "device/read"].every((e) =>
        responses(e).some((m) => {
          const x = JSON.parse(m.payload) as { status: string; transaction?: string };
          return x.status === "ok" && (x.transaction === "alive" || x.transaction === "read-ok");
        }),
      ),
    "health check and read answered ok",
    30_000,
  );

  // 2. Ingest: bad messages on topics it subscribes to, as another ("evil") gateway.
  const evil = new Topics(gw.config.mqtt.base_topic, "faults-evil");
  const pub = await publisher(pipe.broker.url, "faults-evil-pub");
  closers.push(() => pub.endAsync());
  const badIngest: [string, string | Buffer][] = [
    [evil.device(7, "readings"), "{"],
    [evil.device(7, "readings"), '{"device":7,"source":"poll","readings":"x"}'],
    [evil.device(7, "readings"), '{"device":8,"source":"poll","readings":[]}'],
    [
      evil.device(7, "readings"),
      '{"device":7,"source":"poll","readings":[{"point":"analog_value_1","value":1e999,"ts":"2026-01-01T00:00:00Z"}]}',
    ],
    [
      evil.device(7, "readings"),
      '{"device":7,"source":"poll","readings":[{"point":"analog_value_1","value":1,"ts":"yesterday"}]}',
    ],
    [evil.device(7, "readings"), `{"device":7,"source":"poll","readings":"${MB}"}`],
    [evil.device(7, "meta"), '{"device_instance":"seven"}'],
    [evil.device(7, "availability"), "maybe"],
    [evil.bridge("event"), "[1,2,3]"],
  ];
  const ri = rng(7);
  for (let i = 0; i < RANDOM_INGEST; i++) badIngest.push([evil.device(7, "readings"), randomBytes(ri, 300)]);
  for (const [topic, payload] of badIngest) await pub.publishAsync(topic, payload, { qos: 1 });
  // Messages, not rows: dead letters are idempotent, and random payload 126 is "{" again (the first
  // bad message), so 509 messages make 508 rows, one with deliveries 2.
  const dead = () =>
    count(pipe.pool, "SELECT coalesce(sum(deliveries), 0) AS n FROM dead_letters WHERE topic LIKE $1", [
      `%/faults-evil/%`,
    ]);
  await eventually(
    async () => (await dead()) >= badIngest.length,
    "every bad ingest message dead-lettered",
    1200,
  );
  const deadLetters = await dead();
  const evilRows = await count(
    pipe.pool,
    "SELECT count(*) AS n FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = 'faults-evil'",
  );

  // 3. Wildcard abuse: wildcards in topic names (a protocol error: the broker drops the client)
  // aimed at the gateway's request topics and the ingest's topics, and legal but odd device levels
  // at the ingest (dead letters). The gateway must answer none of them and keep serving.
  const base = gw.config.mqtt.base_topic;
  const wildTopics = [
    gw.topics.full("bridge/request/+"),
    gw.topics.full("bridge/request/#"),
    `${base}/+/bridge/request/health_check`,
    `${base}/#`,
    gw.topics.full("+/readings"),
    `${base}/faults-evil/#`,
    // not a wildcard, but refused the same way (an empty level; see broker.ts hasEmptyLevel)
    `${base}/faults-evil//readings`,
  ];
  const before = rec.messages.length;
  const wild: string[] = [];
  for (const topic of wildTopics)
    wild.push(await rawPublish(pipe.broker.url, topic, '{"transaction":"wild"}'));
  const oddDevices = ["007", "-1", "1e3", "4194304", " 7", "seven", "7.5"];
  for (const d of oddDevices)
    await pub.publishAsync(
      `${base}/faults-evil/${d}/readings`,
      // a valid payload: only the topic is wrong
      '{"device":7,"source":"poll","readings":[{"point":"analog_value_1","value":1,"ts":"2026-01-01T00:00:00Z"}]}',
      {
        qos: 1,
      },
    );
  await eventually(
    async () => (await dead()) >= badIngest.length + oddDevices.length,
    "every odd device topic dead-lettered",
    1200,
  );
  const oddDead = await count(pipe.pool, "SELECT count(*) AS n FROM dead_letters WHERE topic = ANY($1)", [
    oddDevices.map((d) => `${base}/faults-evil/${d}/readings`),
  ]);
  // Nothing published to a wildcard topic name may have reached the ingest either.
  const wildDead = await count(pipe.pool, "SELECT count(*) AS n FROM dead_letters WHERE topic ~ '[+#]'");
  const wildRows = (
    await pipe.pool.query<{ topic: string }>("SELECT topic FROM dead_letters WHERE topic ~ '[+#]'")
  ).rows.map((r) => r.topic);
  await rec.publish(gw.topics.request("health_check"), { transaction: "alive-after-wildcards" });
  await rec.waitFor(
    () =>
      responses("health_check").some(
        (m) => (JSON.parse(m.payload) as { transaction?: string }).transaction === "alive-after-wildcards",
      ),
    "health check answered after the wildcard abuse",
    30_000,
  );
  const answeredWild = rec.messages.slice(before).filter((m) => m.payload.includes('"wild"')).length;

  const t = await pipe.finish();
  report("bad input (requests + ingest)", {
    wildcard_publishes: wildTopics.length,
    wildcard_connections_closed: wild.filter((w) => w === "closed").length,
    wildcard_answered: answeredWild,
    odd_device_topics: oddDevices.length,
    odd_device_dead_letters: oddDead,
    wildcard_dead_letters: wildDead,
    wildcard_dead_letter_topics: wildRows,
    requests_sent: totalSent,
    responses: all.length,
    error_responses: errors,
    unknown_endpoint_messages: unknown.length,
    ingest_bad_messages: badIngest.length,
    dead_letters: deadLetters,
    rows_from_bad_input: evilRows,
    ...t,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(all.length).toBe(totalSent);
  expect(errors).toBe(totalSent);
  expect(echoed).toBe(true);
  expect(deadLetters).toBe(badIngest.length);
  expect(evilRows).toBe(0);
  expect(wild).toEqual(wildTopics.map(() => "closed"));
  expect(answeredWild).toBe(0);
  expect(oddDead).toBe(oddDevices.length);
  expect(wildDead).toBe(0);
  expect(t.lost).toBe(0);
});
