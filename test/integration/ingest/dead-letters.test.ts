// Dead letters are idempotent: a poison message that reaches the ingest again — redelivered by the
// broker after the ingest died before its PUBACK, replayed from a persistent session, or written
// again by a batch retried after a COMMIT whose answer was lost — stays one row, and `deliveries`
// says how often it came. To the ingest a redelivery is the same topic and payload again, so the
// broker path publishes the very same message twice. Real broker, real ingest, real PostgreSQL.
import pg from "pg";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../../common/logger.ts";
import { classify } from "../../../ingest/messages.ts";
import { IngestService } from "../../../ingest/service.ts";
import { BatchWriter, type Envelope } from "../../../ingest/writer.ts";
import { broker, count, eventually, migratedDatabase, publisher, topics } from "./helpers.ts";

const tdb = migratedDatabase("bacmqtt_deadletters", 2);
const t = topics("gw-dead");
const POISON = JSON.stringify({
  device: 7,
  source: "poll",
  readings: [{ point: "analog_value_1", value: 1, ts: "yesterday" }],
});
const OTHER = '{"device":7,"source":"poll","readings":"x"}';

async function rowsFor(topic: string) {
  const { rows } = await tdb.pool.query<{ payload: string; deliveries: number }>(
    "SELECT payload, deliveries FROM dead_letters WHERE topic = $1 ORDER BY id",
    [topic],
  );
  return rows;
}

describe("dead letters", () => {
  it("a poison message delivered again through the broker stays one row; deliveries counts it", async () => {
    const mq = await broker();
    const ingestPool = new pg.Pool({ connectionString: tdb.db.url, max: 2 });
    const ingest = new IngestService({
      mqttUrl: mq.url,
      pool: ingestPool,
      dialect: "portable",
      clientId: "ingest-dead-letters",
      batchWaitMs: 10,
      retentionIntervalMs: 0,
    });
    const pub = await publisher(mq.url, "pub-dead-letters");
    try {
      await ingest.start();
      const topic = t.device(7, "readings");
      // Separate batches (each publish waits for its PUBACK and the ingest commits in between) and
      // the same batch: both ways of meeting the message again.
      await pub.publishAsync(topic, POISON, { qos: 1 });
      await eventually(async () => (await rowsFor(topic)).length > 0, "first dead letter");
      await pub.publishAsync(topic, POISON, { qos: 1 });
      await pub.publishAsync(topic, OTHER, { qos: 1 });
      await pub.publishAsync(topic, POISON, { qos: 1 });
      // A valid message last: once its row is in, everything before it was committed (in order).
      const ts = new Date().toISOString();
      await pub.publishAsync(
        topic,
        JSON.stringify({ device: 7, source: "poll", readings: [{ point: "analog_value_1", value: 1, ts }] }),
        { qos: 1 },
      );
      await eventually(
        async () => (await count(tdb.pool, "SELECT count(*) AS n FROM readings WHERE time = $1", [ts])) === 1,
        "the sentinel reading",
      );
      expect(await rowsFor(topic)).toEqual([
        { payload: POISON, deliveries: 3 },
        { payload: OTHER, deliveries: 1 },
      ]);
    } finally {
      await pub.endAsync();
      await ingest.stop();
      await ingestPool.end();
      await mq.close();
    }
  });

  it("an ingest that stored a poison message and died before its PUBACK gets it again: still one row", async () => {
    const mq = await broker();
    const topic = topics("gw-dead-redeliver").device(5, "readings");
    const pools: pg.Pool[] = [];
    const ingests: IngestService[] = [];
    const start = async (dropAcks: boolean) => {
      const ingestPool = new pg.Pool({ connectionString: tdb.db.url, max: 2 });
      pools.push(ingestPool);
      const ingest = new IngestService({
        mqttUrl: mq.url,
        pool: ingestPool,
        dialect: "portable",
        clientId: "ingest-dead-redeliver",
        batchWaitMs: 10,
        retentionIntervalMs: 0,
      });
      // The crash between COMMIT and PUBACK: the acknowledgements never leave this process.
      if (dropAcks) (ingest as unknown as { sendPacket: () => void }).sendPacket = () => undefined;
      ingests.push(ingest);
      await ingest.start();
      return ingest;
    };
    const pub = await publisher(mq.url, "pub-dead-redeliver");
    try {
      const first = await start(true);
      await pub.publishAsync(topic, POISON, { qos: 1 });
      await eventually(async () => (await rowsFor(topic)).length > 0, "dead letter stored");
      await first.stop();
      // Same client id, persistent session: the broker sends the unacknowledged message again.
      await start(false);
      await eventually(
        async () => (await rowsFor(topic)).reduce((n, r) => n + r.deliveries, 0) >= 2,
        "the redelivery written",
      );
      expect(await rowsFor(topic)).toEqual([{ payload: POISON, deliveries: 2 }]);
    } finally {
      await pub.endAsync();
      for (const i of ingests) await i.stop().catch(() => undefined);
      for (const p of pools) await p.end();
      await mq.close();
    }
  });

  it("a batch written again (retry after a lost COMMIT answer) adds no row", async () => {
    const topic = topics("gw-dead-retry").device(9, "readings");
    const payload = Buffer.from(POISON.replace('"device":7', '"device":9'));
    const op = classify(topic, payload, "bacmqtt");
    expect(op.kind).toBe("dead_letter");
    const first = new Date("2026-03-01T10:00:00Z");
    const env = (receivedAt: Date): Envelope => ({ topic, payload, op, receivedAt });
    const writer = new BatchWriter(tdb.pool, "portable", createLogger("test"));
    await writer.write([env(first), env(new Date(first.getTime() + 1000))]);
    await writer.write([env(first), env(new Date(first.getTime() + 1000))]);
    const { rows } = await tdb.pool.query(
      "SELECT received_at, last_received_at, deliveries FROM dead_letters WHERE topic = $1",
      [topic],
    );
    expect(rows).toEqual([
      { received_at: first, last_received_at: new Date(first.getTime() + 1000), deliveries: 4 },
    ]);
  });

  it("keeps messages that differ in topic, payload or reason apart", async () => {
    const a = topics("gw-dead-apart").device(1, "readings");
    const b = topics("gw-dead-apart").device(2, "readings");
    const writer = new BatchWriter(tdb.pool, "portable", createLogger("test"));
    const env = (topic: string, payload: string, error: string): Envelope => ({
      topic,
      payload: Buffer.from(payload),
      op: { kind: "dead_letter", error },
      receivedAt: new Date(),
    });
    // "a/b" + "c" and "a" + "/bc" must not meet: the fingerprint is length-prefixed.
    await writer.write([env(a, "x", "e1"), env(b, "x", "e1"), env(a, "y", "e1"), env(a, "x", "e2")]);
    await writer.write([env(`${a}x`, "", "e1"), env(a, "x", "e1")]);
    const n = await count(
      tdb.pool,
      "SELECT count(*) AS n FROM dead_letters WHERE topic LIKE '%gw-dead-apart%'",
    );
    expect(n).toBe(5);
  });

  it("stores an error text that quotes a NUL byte in the same batch, without the one-by-one fallback", async () => {
    const topic = topics("gw-dead-nul").device(3, "readings");
    const payload = Buffer.from('{"device":\u0000}');
    const op = classify(topic, payload, "bacmqtt");
    expect(op.kind === "dead_letter" && op.error.includes("\u0000")).toBe(true);
    const warned: string[] = [];
    const log = createLogger("test");
    const spy = Object.assign(Object.create(log), {
      warn: (_o: unknown, msg: string) => warned.push(msg),
    }) as typeof log;
    const writer = new BatchWriter(tdb.pool, "portable", spy);
    const s = await writer.write([{ topic, payload, op, receivedAt: new Date() }]);
    expect(s.deadLetters).toBe(1);
    expect(warned).toEqual([]);
    const { rows } = await tdb.pool.query<{ error: string }>(
      "SELECT error FROM dead_letters WHERE topic = $1",
      [topic],
    );
    expect(rows).toHaveLength(1);
    expect(rows[0]?.error).toContain("\\u0000");
  });
});
