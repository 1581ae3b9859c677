// Two gateway processes with one gateway id: the tie-break rules on their own, then the MQTT side
// of startGateway (stand-in engine, real broker on port 0): a second instance refused, a stale
// retained online state taken over after the bounded liveness wait, a simultaneous start settled
// with one survivor, and another instance's will never leaving the survivor marked offline.
// The same with the real engine, simulator and the `bacmqtt gateway` process is in
// test/integration/gateway/duplicate.test.ts.
import { afterEach, describe, expect, it } from "vitest";
import { validate } from "../../../contract/index.ts";
import { BridgeEvent, BridgeState, type BridgeStatePayload } from "../../../contract/schemas.ts";
import { type Gateway, startGateway } from "../../../gateway/index.ts";
import { DUPLICATE_GATEWAY, parseClaim, winsOver } from "../../../gateway/mqtt/duplicate.ts";
import {
  Recorder,
  retainedUnder,
  startTestBroker,
  type TestBroker,
  tempDir,
  uniqueBase,
} from "../../integration/gateway/helpers.ts";
import { catalogue, FakeEngine } from "./fake-engine.ts";

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function claim(instance: string | undefined, startedAt: string | undefined): BridgeStatePayload {
  return {
    state: "online",
    bd_seq: 1,
    timestamp: "2026-11-27T08:00:00.000Z",
    ...(instance !== undefined ? { instance } : {}),
    ...(startedAt !== undefined ? { started_at: startedAt } : {}),
  };
}

describe("tie-break", () => {
  const t0 = "2026-11-27T08:00:00.000Z";
  const t1 = "2026-11-27T08:00:00.001Z";

  it("the earlier start wins, and both sides agree", () => {
    expect(winsOver({ instance: "b", startedAt: new Date(t0) }, claim("a", t1))).toBe(true);
    expect(winsOver({ instance: "a", startedAt: new Date(t1) }, claim("b", t0))).toBe(false);
  });

  it("equal starts are settled by the instance ids, the same way on both sides", () => {
    const ab = winsOver({ instance: "a", startedAt: new Date(t0) }, claim("b", t0));
    const ba = winsOver({ instance: "b", startedAt: new Date(t0) }, claim("a", t0));
    expect([ab, ba]).toEqual([true, false]);
  });

  it("a claim without instance or start time (an older gateway) is never fought", () => {
    expect(winsOver({ instance: "a", startedAt: new Date(t0) }, claim(undefined, undefined))).toBe(false);
    expect(winsOver({ instance: "a", startedAt: new Date(t0) }, claim("b", undefined))).toBe(false);
  });

  it("reads only valid state messages", () => {
    expect(parseClaim(Buffer.alloc(0))).toBeUndefined();
    expect(parseClaim(Buffer.from("{nope"))).toBeUndefined();
    expect(parseClaim(Buffer.from('{"state":"maybe","bd_seq":1,"timestamp":"x"}'))).toBeUndefined();
    expect(parseClaim(Buffer.from(JSON.stringify(claim("a", t0))))).toEqual(claim("a", t0));
  });
});

interface Env {
  broker: TestBroker;
  base: string;
  root: string;
  rec: Recorder;
}

async function env(): Promise<Env> {
  const broker = await startTestBroker();
  cleanups.push(() => broker.close());
  const base = uniqueBase("dup");
  const rec = await Recorder.connect(broker.url, `${base}/#`);
  cleanups.push(() => rec.close());
  return { broker, base, root: `${base}/gw1`, rec };
}

function start(e: Env, devices: number[], config: Record<string, unknown> = {}): Promise<Gateway> {
  const tmp = tempDir();
  cleanups.push(() => tmp.remove());
  const engine = new FakeEngine();
  for (const d of devices) engine.devicesOnNetwork.set(d, catalogue(d));
  return startGateway(
    {
      gateway_id: "gw1",
      data_dir: tmp.dir,
      mqtt: { url: e.broker.url, base_topic: e.base, reconnect_period_ms: 100, duplicate_check_ms: 1500 },
      metrics: { enabled: false },
      discovery: { on_start: true, interval_s: 0 },
      ...config,
    },
    { engine },
  ).then((gw) => {
    cleanups.push(() => gw.stop());
    return gw;
  });
}

async function retainedState(e: Env): Promise<BridgeStatePayload> {
  const topic = `${e.root}/bridge/state`;
  const payload = (await retainedUnder(e.broker.url, topic)).get(topic);
  if (!payload) throw new Error("no retained bridge/state");
  const parsed = JSON.parse(payload) as BridgeStatePayload;
  expect(validate(BridgeState, parsed).ok).toBe(true);
  return parsed;
}

function duplicateEvents(e: Env): Array<{ type: string; data: Record<string, unknown> }> {
  return (e.rec.json(`${e.root}/bridge/event`) as Array<{ type: string; data: Record<string, unknown> }>)
    .filter((ev) => ev.type === "duplicate_gateway")
    .map((ev) => {
      expect(validate(BridgeEvent, ev).ok).toBe(true);
      return ev;
    });
}

async function healthAnswered(e: Env, transaction: string): Promise<void> {
  await e.rec.publish(`${e.root}/bridge/request/health_check`, { transaction });
  await e.rec.waitFor(
    (m) =>
      m.some((x) => x.topic === `${e.root}/bridge/response/health_check` && x.payload.includes(transaction)),
    `health_check ${transaction} answered`,
  );
}

describe("two instances of one gateway id (stand-in engine, real broker)", () => {
  it("refuses a second instance while the first is alive; nothing of the second is retained", async () => {
    const e = await env();
    const first = await start(e, [1001]);
    // The first's start is over once its birth (meta, then health) and its first scan are out:
    // anything published later would be counted as the second's.
    await e.rec.waitFor(
      (m) =>
        m.some((x) => x.topic === `${e.root}/1001/meta`) &&
        m.some((x) => x.topic === `${e.root}/bridge/health`) &&
        m.some((x) => x.topic === `${e.root}/bridge/event` && x.payload.includes('"scan_finished"')),
      "first birth and scan",
    );
    const before = e.rec.messages.length;
    const t = Date.now();
    const err = await start(e, [2001]).then(
      () => undefined,
      (x: unknown) => x as { code?: string; message?: string },
    );
    console.log(`second instance refused after ${Date.now() - t} ms`);
    expect(err?.code).toBe(DUPLICATE_GATEWAY);
    expect(err?.message).toContain(first.instance);
    await e.rec.waitFor((m) => m.length > before && duplicateEvents(e).length > 0, "duplicate event");
    const ev = duplicateEvents(e)[0]!;
    expect(ev.data).toMatchObject({ outcome: "refused", other_instance: first.instance, gateway_id: "gw1" });
    expect(ev.data.instance).not.toBe(first.instance);
    expect(typeof ev.data.host).toBe("string");
    expect(typeof ev.data.pid).toBe("number");
    // The second published nothing but its health_check requests and the event.
    const second = e.rec.messages
      .slice(before)
      .filter((m) => !m.topic.includes("/bridge/request/") && !m.topic.includes("/bridge/response/"));
    expect(second.map((m) => m.topic)).toEqual([`${e.root}/bridge/event`]);
    expect(e.rec.messages.some((m) => m.topic === `${e.root}/2001/meta`)).toBe(false);
    const state = await retainedState(e);
    expect(state).toMatchObject({ state: "online", instance: first.instance });
    await healthAnswered(e, "after-refusal");
  });

  it("takes over a stale retained online state after the bounded liveness wait", async () => {
    const e = await env();
    const dead = claim("dead0000dead0000", "2026-11-27T07:00:00.000Z");
    await e.rec.publish(`${e.root}/bridge/state`, dead, true);
    const t = Date.now();
    const gw = await start(e, [1001], {
      mqtt: { url: e.broker.url, base_topic: e.base, reconnect_period_ms: 100, duplicate_check_ms: 1000 },
    });
    const took = Date.now() - t;
    console.log(`stale state taken over: start took ${took} ms (liveness wait 1000 ms)`);
    // The health_check requests went unanswered: no response, only the requests.
    const requests = e.rec.messages.filter((m) => m.topic === `${e.root}/bridge/request/health_check`);
    expect(requests.length).toBeGreaterThan(0);
    expect(e.rec.messages.some((m) => m.topic === `${e.root}/bridge/response/health_check`)).toBe(false);
    await e.rec.waitFor((m) => m.some((x) => x.topic === `${e.root}/1001/meta`), "birth");
    expect(await retainedState(e)).toMatchObject({ state: "online", instance: gw.instance });
    expect(duplicateEvents(e)).toEqual([]);
  });

  it("settles a simultaneous start: one survivor, its state retained, the loser's stop changes nothing", async () => {
    const e = await env();
    const started = await Promise.allSettled([start(e, [1001]), start(e, [2001])]);
    const gateways = started.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
    const refused = started.flatMap((s) => (s.status === "rejected" ? [s.reason as { code?: string }] : []));
    for (const r of refused) expect(r.code).toBe(DUPLICATE_GATEWAY);
    // Those that started: at most one may still run once the duplicate has been noticed.
    const stoppedWith = await Promise.all(
      gateways.map((gw) =>
        Promise.race([gw.stopped, new Promise<"running">((r) => setTimeout(() => r("running"), 8000))]),
      ),
    );
    const survivors = gateways.filter((_gw, i) => stoppedWith[i] === "running");
    const losers = stoppedWith.filter((s) => s !== "running");
    console.log(
      `race: ${refused.length} refused at start, ${losers.length} stopped itself, ${survivors.length} survived`,
    );
    expect(survivors.length).toBe(1);
    expect(refused.length + losers.length).toBe(1);
    for (const l of losers) expect((l as { code?: string } | undefined)?.code).toBe(DUPLICATE_GATEWAY);
    const survivor = survivors[0]!;
    const events = duplicateEvents(e);
    expect(events.length).toBeGreaterThan(0);
    for (const ev of events) expect([ev.data.instance, ev.data.other_instance]).toContain(survivor.instance);
    await e.rec.waitFor(
      () => duplicateEvents(e).some((ev) => ev.data.outcome !== "won"),
      "the event of the instance that gave way",
    );
    expect(await retainedState(e)).toMatchObject({ state: "online", instance: survivor.instance });
    await healthAnswered(e, "after-race");
  });

  it("re-publishes its online state when another instance's will marks the id offline", async () => {
    const e = await env();
    const gw = await start(e, [1001]);
    await e.rec.waitFor((m) => m.some((x) => x.topic === `${e.root}/1001/meta`), "birth");
    // What the broker sends for a refused instance that was SIGKILLed: its will.
    await e.rec.publish(
      `${e.root}/bridge/state`,
      { ...claim("other000other000", "2026-11-27T09:00:00.000Z"), state: "offline" },
      true,
    );
    await e.rec.waitFor(
      (m) =>
        m.filter((x) => x.topic === `${e.root}/bridge/state` && x.payload.includes(gw.instance)).length >= 2,
      "state re-published",
    );
    expect(await retainedState(e)).toMatchObject({ state: "online", instance: gw.instance });
    // Its own graceful stop still says offline.
    await gw.stop();
    expect(await retainedState(e)).toMatchObject({ state: "offline", instance: gw.instance });
  });
});
