// Two gateways with one gateway id, with the real engine, the simulator over UDP on 127.0.44.x /
// 127.0.45.x and the `bacmqtt gateway` process as users run it: a stale retained online state is
// taken over after the liveness wait; a second process is refused (exit 1, GW_ERR_DUPLICATE_GATEWAY)
// while the first keeps polling; two processes started at once leave exactly one running, whose
// state stays retained, and readings from then on come from one site only.
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import type { BridgeStatePayload } from "../../../contract/index.ts";
import { startGateway } from "../../../gateway/index.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  Recorder,
  retainedUnder,
  sleep,
  startTestBroker,
  type TestBroker,
  tempDir,
  uniqueBase,
} from "./helpers.ts";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const SITE_A = [4401, 4402];
const SITE_B = [4501];

let broker: TestBroker;
let simA: Simulator;
let simB: Simulator;
beforeAll(async () => {
  broker = await startTestBroker();
  simA = await startSimulator({
    devices: [
      { instance: 4401, address: "127.0.44.1", port: 0, cov: false },
      { instance: 4402, address: "127.0.44.2", port: 0, cov: false },
    ],
  });
  simB = await startSimulator({ devices: [{ instance: 4501, address: "127.0.45.1", port: 0, cov: false }] });
});
afterAll(async () => {
  await simA?.close();
  await simB?.close();
  await broker?.close();
});

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn();
});

function targets(sim: Simulator): string[] {
  return sim.devices().map((d) => `${d.address}:${d.port}`);
}

function settings(base: string, sim: Simulator, dataDir: string) {
  return {
    gateway_id: "site",
    data_dir: dataDir,
    mqtt: { url: broker.url, base_topic: base, reconnect_period_ms: 200, duplicate_check_ms: 2000 },
    bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
    discovery: { on_start: true, interval_s: 0, targets: targets(sim), timeout_s: 1 },
    polling: { interval_s: 1, cov: false },
    buffer: { fsync: "never" as const },
    metrics: { enabled: false },
  };
}

interface Proc {
  child: ChildProcess;
  exited: Promise<number | null>;
  stderr: () => string;
}

function runGateway(base: string, sim: Simulator, duplicateCheckMs?: number): Proc {
  const tmp = tempDir("bacmqtt-dup-");
  cleanups.push(() => tmp.remove());
  const file = path.join(tmp.dir, "gateway.yaml");
  const config = settings(base, sim, path.join(tmp.dir, "data"));
  if (duplicateCheckMs !== undefined) config.mqtt.duplicate_check_ms = duplicateCheckMs;
  writeFileSync(file, stringify(config));
  const child = spawn(process.execPath, [bin, "gateway", "--config", file], {
    env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let err = "";
  child.stderr?.on("data", (d: Buffer) => {
    err = (err + d.toString()).slice(-8000);
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGKILL");
      await exited;
    }
  });
  return { child, exited, stderr: () => err };
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p,
    new Promise<never>((_r, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Devices of the readings messages recorded from index `from` on. */
function readingDevices(rec: Recorder, from = 0): number[] {
  return rec.messages
    .slice(from)
    .filter((m) => m.topic.endsWith("/readings"))
    .map((m) => (JSON.parse(m.payload) as { device: number }).device);
}

async function retainedState(root: string): Promise<BridgeStatePayload | undefined> {
  const topic = `${root}/bridge/state`;
  const payload = (await retainedUnder(broker.url, topic)).get(topic);
  return payload ? (JSON.parse(payload) as BridgeStatePayload) : undefined;
}

type DupEvent = { type: string; data: Record<string, unknown> };
function duplicateEvents(rec: Recorder, root: string): DupEvent[] {
  return (rec.json(`${root}/bridge/event`) as DupEvent[]).filter((e) => e.type === "duplicate_gateway");
}

describe("two gateways with one gateway id (real engine, simulator, processes)", () => {
  it("takes over a stale state, then refuses a second process while it keeps polling", {
    timeout: 90_000,
  }, async () => {
    const base = uniqueBase("dup");
    const root = `${base}/site`;
    const rec = await Recorder.connect(broker.url, `${base}/#`);
    cleanups.push(() => rec.close());
    // A gateway that died where the broker lost its will: online, but nobody answers.
    await rec.publish(
      `${root}/bridge/state`,
      {
        state: "online",
        bd_seq: 7,
        timestamp: "2026-11-27T06:00:00.000Z",
        instance: "0123456789abcdef",
        started_at: "2026-11-27T05:00:00.000Z",
      },
      true,
    );
    const tmp = tempDir("bacmqtt-dup-first-");
    cleanups.push(() => tmp.remove());
    const t0 = Date.now();
    const first = await startGateway(settings(base, simA, tmp.dir));
    cleanups.push(() => first.stop());
    console.log(`first gateway started over a stale online state in ${Date.now() - t0} ms (wait 2000 ms)`);
    expect(await retainedState(root)).toMatchObject({ state: "online", instance: first.instance });
    await rec.waitFor(
      () => SITE_A.every((d) => readingDevices(rec).includes(d)),
      "first gateway polling both devices",
      30_000,
    );

    const t1 = Date.now();
    const second = runGateway(base, simB);
    const code = await within(second.exited, 60_000, "the second gateway to exit");
    console.log(`second gateway process exited with ${code} after ${Date.now() - t1} ms`);
    expect(code).toBe(1);
    expect(second.stderr()).toContain("GW_ERR_DUPLICATE_GATEWAY");
    await rec.waitFor(() => duplicateEvents(rec, root).length > 0, "duplicate_gateway event");
    const ev = duplicateEvents(rec, root)[0]!;
    expect(ev.data).toMatchObject({ outcome: "refused", other_instance: first.instance, gateway_id: "site" });
    // Never mixed: nothing of site B reached the broker, not even its meta.
    expect(rec.messages.filter((m) => m.topic.startsWith(`${root}/4501/`))).toEqual([]);
    expect(readingDevices(rec).filter((d) => !SITE_A.includes(d))).toEqual([]);
    // The first keeps polling, and the id is still its own and online.
    const mark = rec.messages.length;
    await rec.waitFor(
      () => readingDevices(rec, mark).length >= 4,
      "readings of the first after the refusal",
      20_000,
    );
    expect(await retainedState(root)).toMatchObject({ state: "online", instance: first.instance });
  });

  it("two processes started at once: exactly one keeps running, with its state retained", {
    timeout: 120_000,
  }, async () => {
    const base = uniqueBase("dup-race");
    const root = `${base}/site`;
    const rec = await Recorder.connect(broker.url, `${base}/#`);
    cleanups.push(() => rec.close());
    const procs = [runGateway(base, simA), runGateway(base, simB)];
    const t0 = Date.now();
    const firstExit = await within(
      Promise.race(procs.map((p, i) => p.exited.then((code) => ({ i, code })))),
      60_000,
      "one of the two to exit",
    );
    console.log(`race: process ${firstExit.i} exited with ${firstExit.code} after ${Date.now() - t0} ms`);
    expect(firstExit.code).toBe(1);
    const loser = procs[firstExit.i]!;
    const survivor = procs[1 - firstExit.i]!;
    expect(loser.stderr()).toContain("GW_ERR_DUPLICATE_GATEWAY");
    await rec.waitFor(() => duplicateEvents(rec, root).length > 0, "duplicate_gateway event");
    const events = duplicateEvents(rec, root);
    const giving = events.find((e) => e.data.outcome !== "won");
    expect(giving).toBeDefined();
    const survivorInstance = giving?.data.other_instance;
    const survivorSite = firstExit.i === 0 ? SITE_B : SITE_A;
    // From here on: one instance, one site.
    const mark = rec.messages.length;
    await rec.waitFor(
      () => survivorSite.every((d) => readingDevices(rec, mark).includes(d)),
      "the survivor's readings",
      30_000,
    );
    await sleep(2000);
    expect(survivor.child.exitCode).toBe(null);
    expect(readingDevices(rec, mark).filter((d) => !survivorSite.includes(d))).toEqual([]);
    const state = await retainedState(root);
    console.log(
      `race: events ${events.map((e) => e.data.outcome).join(",")}; retained ${state?.state} of ${state?.instance}`,
    );
    expect(state).toMatchObject({ state: "online", instance: survivorInstance });
    // The survivor's own graceful stop still marks the id offline, with its instance.
    survivor.child.kill("SIGTERM");
    expect(await within(survivor.exited, 30_000, "the survivor to stop")).toBe(0);
    expect(await retainedState(root)).toMatchObject({ state: "offline", instance: survivorInstance });
  });

  it("a process that skipped the check announces itself, loses to the earlier instance and exits 1", {
    timeout: 90_000,
  }, async () => {
    const base = uniqueBase("dup-late");
    const root = `${base}/site`;
    const rec = await Recorder.connect(broker.url, `${base}/#`);
    cleanups.push(() => rec.close());
    const tmp = tempDir("bacmqtt-dup-first-");
    cleanups.push(() => tmp.remove());
    const first = await startGateway(settings(base, simA, tmp.dir));
    cleanups.push(() => first.stop());
    await rec.waitFor(() => SITE_A.every((d) => readingDevices(rec).includes(d)), "first polling", 30_000);
    // duplicate_check_ms 0: the retained online state is not asked, so the second announces itself.
    const t0 = Date.now();
    const second = runGateway(base, simB, 0);
    const code = await within(second.exited, 60_000, "the later instance to exit");
    console.log(`later instance (no start-up check) exited with ${code} after ${Date.now() - t0} ms`);
    expect(code).toBe(1);
    expect(second.stderr()).toContain("GW_ERR_DUPLICATE_GATEWAY");
    await rec.waitFor(
      () => ["won", "lost"].every((o) => duplicateEvents(rec, root).some((e) => e.data.outcome === o)),
      "both sides' duplicate_gateway events",
    );
    const lost = duplicateEvents(rec, root).find((e) => e.data.outcome === "lost")!;
    expect(lost.data.other_instance).toBe(first.instance);
    const states = rec.json(`${root}/bridge/state`) as BridgeStatePayload[];
    const other = states.find((x) => x.instance !== first.instance);
    console.log(
      `bridge/state sequence: ${states.map((x) => `${x.state}@${x.instance === first.instance ? "first" : "second"}`).join(" ")}; ` +
        `site B topics seen: ${rec.messages.filter((m) => m.topic.startsWith(`${root}/4501/`)).length}`,
    );
    expect(other?.state).toBe("online");
    // The loser's graceful exit published no offline over the survivor, which re-asserted itself.
    expect(states.filter((x) => x.instance !== first.instance && x.state === "offline")).toEqual([]);
    expect(states.at(-1)).toMatchObject({ state: "online", instance: first.instance });
    expect(await retainedState(root)).toMatchObject({ state: "online", instance: first.instance });
    const mark = rec.messages.length;
    await rec.waitFor(() => readingDevices(rec, mark).length >= 4, "the first still polling", 20_000);
    expect(readingDevices(rec, mark).filter((d) => !SITE_A.includes(d))).toEqual([]);
  });
});
