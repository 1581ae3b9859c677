// Authentication and topic ACLs with real MQTT.js clients against the broker on port 0: every
// role's rules both ways, CONNACK codes for refused connections, SUBACK 0x80 for refused filters.
import type { MqttClient } from "mqtt";
import pino from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Filters, Topics } from "../../../contract/index.ts";
import { closed, connackCode, connect, type Message, record, subscribe, user, waitFor } from "./helpers.ts";

const base = "bacmqtt";
const gw1 = new Topics(base, "gw1");
const gw2 = new Topics(base, "gw2");
const PASSWORDS: Record<string, string> = {
  gw1: "gw1-secret",
  ingest: "ingest-secret",
  api: "api-secret",
  reader: "reader-secret",
  admin: "admin-secret",
};

let broker: RunningBroker;
let admin: MqttClient;
let seen: Message[];
const logLines: Record<string, unknown>[] = [];

beforeAll(async () => {
  const logger = pino({ level: "info" }, { write: (line: string) => logLines.push(JSON.parse(line)) });
  broker = await startBroker({
    port: 0,
    users: [
      await user("gw1", PASSWORDS.gw1 as string, "gateway", "gw1"),
      await user("ingest", PASSWORDS.ingest as string, "ingest"),
      await user("api", PASSWORDS.api as string, "api"),
      await user("reader", PASSWORDS.reader as string, "reader"),
      await user("admin", PASSWORDS.admin as string, "admin"),
    ],
    sysInterval: 0,
    logger,
  });
  admin = await login("admin");
  seen = record(admin);
  expect(await subscribe(admin, "#")).toBe(1);
});

afterAll(async () => {
  await admin?.endAsync();
  await broker?.close();
});

function login(name: string): Promise<MqttClient> {
  return connect(broker.url, {
    username: name,
    password: PASSWORDS[name] as string,
    clientId: `${name}-${Math.random()}`,
  });
}

let counter = 0;

/** Publishes as `name`; allowed: admin receives it; refused: the connection is closed and nothing arrives. */
async function publishAs(name: string, topic: string): Promise<"delivered" | "refused"> {
  const client = await login(name);
  const payload = `m${++counter}`;
  const gone = closed(client);
  client.publish(topic, payload, { qos: 0 });
  const delivered = () => seen.some((m) => m.topic === topic && m.payload === payload);
  const outcome = await Promise.race([
    gone.then(() => "refused" as const),
    waitFor(`${payload} on ${topic}`, delivered).then(() => "delivered" as const),
  ]);
  if (outcome === "refused") {
    // Whatever the broker had accepted would have reached admin before this marker.
    const marker = `marker${counter}`;
    await admin.publishAsync("marker", marker, { qos: 1 });
    await waitFor("marker", () => seen.some((m) => m.payload === marker));
    expect(delivered()).toBe(false);
  } else {
    await client.endAsync();
  }
  return outcome;
}

async function grantedTo(name: string, filters: string[]): Promise<Record<string, number>> {
  const client = await login(name);
  const result: Record<string, number> = {};
  for (const filter of filters) result[filter] = await subscribe(client, filter);
  expect(client.connected).toBe(true);
  await client.endAsync();
  return result;
}

describe("authentication", () => {
  it("accepts each user with the right password", async () => {
    for (const name of Object.keys(PASSWORDS))
      expect(await connackCode(broker.url, { username: name, password: PASSWORDS[name] })).toBe(0);
  });

  it("refuses a wrong password and an unknown user with CONNACK 4, and logs it", async () => {
    expect(await connackCode(broker.url, { username: "api", password: "wrong" })).toBe(4);
    expect(await connackCode(broker.url, { username: "nobody", password: "api-secret" })).toBe(4);
    expect(await connackCode(broker.url, { username: "api" })).toBe(4);
    const refusals = logLines.filter((l) => l.reason === "bad_credentials");
    expect(refusals.map((l) => l.username)).toEqual(expect.arrayContaining(["api", "nobody"]));
    expect(JSON.stringify(refusals)).not.toContain("wrong");
  });

  it("refuses anonymous clients with CONNACK 5 when anonymous access is off", async () => {
    expect(await connackCode(broker.url)).toBe(5);
    expect(logLines.some((l) => l.reason === "anonymous")).toBe(true);
  });

  it("counts refusals in /metrics-backed statistics", async () => {
    const text = await broker.stats.registry.getSingleMetricAsString("bacmqtt_broker_refusals_total");
    expect(text).toMatch(/kind="connect",reason="bad_credentials"} [1-9]/);
  });
});

describe("gateway role", () => {
  it("publishes under its own gateway root", async () => {
    expect(await publishAs("gw1", gw1.bridge("state"))).toBe("delivered");
    expect(await publishAs("gw1", gw1.device(1001, "readings"))).toBe("delivered");
    expect(await publishAs("gw1", gw1.response("device/write"))).toBe("delivered");
  });

  it("may not publish for another gateway, outside the base, or to $SYS", async () => {
    expect(await publishAs("gw1", gw2.bridge("state"))).toBe("refused");
    expect(await publishAs("gw1", "elsewhere/gw1/bridge/state")).toBe("refused");
    expect(await publishAs("gw1", "$SYS/fake")).toBe("refused");
    expect(logLines.some((l) => l.reason === "acl" && l.topic === gw2.bridge("state"))).toBe(true);
  });

  it("has its last will published on its own topic, never on another gateway's", async () => {
    const own = {
      topic: gw1.bridge("state"),
      payload: Buffer.from("own-will"),
      qos: 1 as const,
      retain: false,
    };
    const foreign = {
      topic: gw2.bridge("state"),
      payload: Buffer.from("foreign-will"),
      qos: 1 as const,
      retain: false,
    };
    for (const will of [foreign, own]) {
      const client = await connect(broker.url, { username: "gw1", password: PASSWORDS.gw1, will });
      const gone = closed(client);
      (client.stream as unknown as { destroy(): void }).destroy();
      await gone;
    }
    await waitFor("own will", () => seen.some((m) => m.payload === "own-will"));
    await admin.publishAsync("marker", "after-wills", { qos: 1 });
    await waitFor("marker", () => seen.some((m) => m.payload === "after-wills"));
    expect(seen.some((m) => m.payload === "foreign-will")).toBe(false);
  });

  it("subscribes to its own requests, bridge/state and health_check responses only", async () => {
    const granted = await grantedTo("gw1", [
      gw1.requestFilter(),
      gw1.request("device/write"),
      gw2.requestFilter(),
      gw1.allFilter(),
      gw1.bridge("state"),
      gw1.response("health_check"),
      gw2.bridge("state"),
      gw1.bridge("info"),
      Filters.all(base),
      "#",
    ]);
    expect(granted).toEqual({
      [gw1.requestFilter()]: 1,
      [gw1.request("device/write")]: 1,
      [gw2.requestFilter()]: 128,
      [gw1.allFilter()]: 128,
      [gw1.bridge("state")]: 1,
      [gw1.response("health_check")]: 1,
      [gw2.bridge("state")]: 128,
      [gw1.bridge("info")]: 128,
      [Filters.all(base)]: 128,
      "#": 128,
    });
  });

  it("receives requests the api publishes to it", async () => {
    const gw = await login("gw1");
    const got = record(gw);
    await subscribe(gw, gw1.requestFilter());
    const api = await login("api");
    await api.publishAsync(gw1.request("discover"), '{"transaction":"t1"}', { qos: 1 });
    await api.publishAsync(gw2.request("discover"), '{"transaction":"t2"}', { qos: 1 });
    await waitFor("request", () => got.length > 0);
    await api.publishAsync(gw1.request("rebirth"), '{"transaction":"t3"}', { qos: 1 });
    await waitFor("second request", () => got.length > 1);
    expect(got.map((m) => m.topic)).toEqual([gw1.request("discover"), gw1.request("rebirth")]);
    await Promise.all([gw.endAsync(), api.endAsync()]);
  });
});

describe("ingest role", () => {
  it("subscribes to everything under the base; a shared subscription is refused, not silently empty", async () => {
    const granted = await grantedTo("ingest", [
      Filters.all(base),
      Filters.device(base, "readings"),
      Filters.shared("ingest", Filters.all(base)),
      "#",
      Filters.sys(),
      "other/#",
    ]);
    expect(granted).toEqual({
      [Filters.all(base)]: 1,
      [Filters.device(base, "readings")]: 1,
      [Filters.shared("ingest", Filters.all(base))]: 128,
      "#": 128,
      [Filters.sys()]: 128,
      "other/#": 128,
    });
  });

  it("may not publish", async () => {
    expect(await publishAs("ingest", gw1.device(1, "readings"))).toBe("refused");
  });
});

describe("api role", () => {
  it("publishes requests to any gateway", async () => {
    expect(await publishAs("api", gw1.request("device/write"))).toBe("delivered");
    expect(await publishAs("api", gw2.request("discover"))).toBe("delivered");
  });

  it("may not publish state, responses or outside the base", async () => {
    expect(await publishAs("api", gw1.bridge("state"))).toBe("refused");
    expect(await publishAs("api", gw1.response("device/write"))).toBe("refused");
    expect(await publishAs("api", "other/request")).toBe("refused");
  });

  it("reads everything under the base and $SYS, nothing else", async () => {
    const granted = await grantedTo("api", [
      Filters.responses(base),
      Filters.all(base),
      Filters.sys(),
      "#",
      "x/y",
    ]);
    expect(granted).toEqual({
      [Filters.responses(base)]: 1,
      [Filters.all(base)]: 1,
      [Filters.sys()]: 1,
      "#": 128,
      "x/y": 128,
    });
  });
});

describe("reader role", () => {
  it("reads everything under the base and $SYS", async () => {
    const granted = await grantedTo("reader", [
      Filters.all(base),
      Filters.bridge(base, "state"),
      Filters.sys(),
      "#",
    ]);
    expect(granted).toEqual({
      [Filters.all(base)]: 1,
      [Filters.bridge(base, "state")]: 1,
      [Filters.sys()]: 1,
      "#": 128,
    });
  });

  it("may not publish, not even requests", async () => {
    expect(await publishAs("reader", gw1.request("discover"))).toBe("refused");
  });
});

describe("admin role", () => {
  it("publishes and subscribes anywhere but $SYS publishing", async () => {
    expect(await publishAs("admin", "anything/at/all")).toBe("delivered");
    expect(await grantedTo("admin", ["#", Filters.sys(), "+/x"])).toEqual({
      "#": 1,
      [Filters.sys()]: 1,
      "+/x": 1,
    });
    expect(await publishAs("admin", "$SYS/fake")).toBe("refused");
  });
});

describe("configuration", () => {
  it("anonymous clients get the configured role", async () => {
    const open = await startBroker({
      port: 0,
      allowAnonymous: true,
      anonymousRole: "reader",
      sysInterval: 0,
    });
    try {
      expect(await connackCode(open.url)).toBe(0);
      const client = await connect(open.url);
      expect(await subscribe(client, Filters.all(base))).toBe(1);
      expect(await subscribe(client, "#")).toBe(128);
      const gone = closed(client);
      client.publish(gw1.bridge("state"), "x");
      await gone;
    } finally {
      await open.close();
    }
  });

  it("refuses clients past the connection limit with CONNACK 3", async () => {
    const small = await startBroker({
      port: 0,
      allowAnonymous: true,
      limits: { maxConnections: 2 },
      sysInterval: 0,
    });
    try {
      const a = await connect(small.url);
      const b = await connect(small.url);
      expect(await connackCode(small.url)).toBe(3);
      await a.endAsync();
      await waitFor("a slot", () => small.aedes.connectedClients < 2);
      expect(await connackCode(small.url)).toBe(0);
      await b.endAsync();
    } finally {
      await small.close();
    }
  });

  it("will not start with neither users nor anonymous access", async () => {
    await expect(startBroker({ port: 0 })).rejects.toThrow(/no client could connect/);
  });

  it("will not start with an invalid user list, naming every problem", async () => {
    const bad = [
      { username: "g", role: "gateway", password_hash: "x" },
      { username: "r", role: "root", password_hash: "scrypt$16384$8$1$AAAA$AAAA" },
    ] as never;
    await expect(startBroker({ port: 0, users: bad })).rejects.toThrow(
      /user "g": gateway id is missing.*user "g": password_hash.*user "r": role "root"/,
    );
  });
});
