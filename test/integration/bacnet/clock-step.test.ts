// Poll scheduling across a wall-clock step (NTP step, manual change) that lands *during* a poll
// cycle: the engine must keep its interval. The device answers 300 ms late, so a step made as soon
// as the simulator has received the poll's request falls inside the cycle for certain. The step is
// made the way the process sees it: `Date.now()` (and `new Date()`) jump; timers do not.
import { afterEach, expect, it } from "vitest";
import { createEngine, type Engine } from "../../../gateway/bacnet/index.ts";
import type { DiscoveredDevice } from "../../../gateway/bacnet/types.ts";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import { waitFor } from "./support/wait.ts";

const realNow = Date.now;
const RealDate = Date;
let engine: Engine | undefined;
let sim: Simulator | undefined;

afterEach(async () => {
  RealDate.now = realNow;
  globalThis.Date = RealDate;
  await engine?.stop();
  await sim?.close();
  engine = undefined;
  sim = undefined;
});

/** Shifts this process's wall clock by `offsetMs` (0 = real time). */
function stepClock(offsetMs: number): void {
  RealDate.now = () => realNow() + offsetMs;
  globalThis.Date = class extends RealDate {
    constructor(...args: unknown[]) {
      if (args.length === 0) super(realNow() + offsetMs);
      else super(...(args as [number]));
    }
  } as DateConstructor;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

for (const [label, offsetMs] of [
  ["backwards", -3_600_000],
  ["forwards", 3_600_000],
] as const) {
  it(`keeps polling at the interval when the wall clock steps ${label} by 1 h mid-cycle`, async () => {
    const instance = label === "backwards" ? 3_901_501 : 3_901_502;
    sim = await startSimulator({
      devices: [{ instance, address: "127.0.0.1", port: 0, latencyMs: 300, changeIntervalMs: 0 }],
    });
    const target = `${sim.devices()[0]?.address}:${sim.devices()[0]?.port}`;
    engine = await createEngine({
      interface: "127.0.0.1",
      port: 0,
      broadcast: "",
      apduTimeoutMs: 2000,
      retries: 0,
      pollIntervalS: 0.5,
      cov: false,
    });
    const [d] = await engine.discover({ targets: [target], timeoutS: 1 });
    const cat = await engine.readCatalogue(d as DiscoveredDevice);
    const polls: { at: number; ts: string }[] = [];
    const overruns: number[] = [];
    engine.on("readings", (_dev, readings, source) => {
      if (source === "poll") polls.push({ at: performance.now(), ts: readings[0]?.ts ?? "" });
    });
    engine.on("overrun", (_dev, _interval, cycleMs) => overruns.push(cycleMs));
    engine.manage(cat, { include: ["analog_value_1"] });
    await waitFor("first polls", () => polls.length >= 2);

    // Step the clock right after the device received the next poll (it answers 300 ms later).
    const requests = sim.stats().requestsReceived;
    for (let i = 0; i < 2000 && sim.stats().requestsReceived === requests; i++) await sleep(2);
    expect(sim.stats().requestsReceived).toBeGreaterThan(requests);
    const before = polls.length;
    const steppedAt = performance.now();
    stepClock(offsetMs);

    // 0.5 s interval, 0.3 s answers: about 6 polls in the next 3 s. An hour-long wait would give 1.
    for (let i = 0; i < 200 && polls.length < before + 4; i++) await sleep(50);
    const after = polls.slice(before);
    const gaps = after.slice(1).map((p, i) => Math.round(p.at - (after[i] as { at: number }).at));
    process.stdout.write(
      `clock step ${label}: ${after.length} polls in ${Math.round(performance.now() - steppedAt)} ms after the step, ` +
        `gaps ${JSON.stringify(gaps)} ms, overruns ${JSON.stringify(overruns)}, ` +
        `timestamps ${after[0]?.ts} … ${after.at(-1)?.ts}\n`,
    );
    expect(after.length).toBeGreaterThanOrEqual(4);
    // A cycle that took 300 ms must not be reported as an hour-long overrun.
    expect(overruns.filter((ms) => ms > 60_000)).toEqual([]);
    // The readings after the step carry the stepped wall clock (that is what the device time is).
    const last = new RealDate(after.at(-1)?.ts ?? 0).getTime();
    expect(Math.abs(last - realNow() - offsetMs)).toBeLessThan(60_000);
  });
}
