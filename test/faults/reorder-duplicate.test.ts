// Replies that overtake each other and replies that arrive twice, the copy up to 3 s late: the
// simulator's jitter and duplicate impairments on every datagram its devices send. The devices
// answer ReadProperty only (no RPM), 100 points each, polled every second: ~200 requests/s, so
// each device's 256 invoke ids come round every ~2.5 s, inside the window of the late copies. A
// late copy must never pass for the answer to a newer request that reuses its invoke id: every
// point holds a value that names it ((device index + 1) × 1000 + instance), so a wrong answer shows as a wrong
// value. Produced = readings the broker acknowledged; stored = rows (the in-process gateway, the
// real broker and ingest, PostgreSQL).
import { afterEach, describe, expect, it } from "vitest";
import type { SimDeviceConfig } from "../../simulator/index.ts";
import { Recorder } from "../integration/gateway/helpers.ts";
import { Pipeline, report } from "./support.ts";

const POINTS = 100;
let p: Pipeline | undefined;
let rec: Recorder | undefined;
afterEach(async () => {
  await rec?.close();
  await p?.close();
  rec = undefined;
  p = undefined;
});

const IMPAIRED = { jitterMs: 40, duplicateRate: 0.3, duplicateDelayMs: 3000 };
const VARIANTS: [string, string, number, Partial<SimDeviceConfig>][] = [
  // RP: 100 requests per device per cycle.
  ["ReadProperty", "reorder-rp", 89, { rpm: false }],
  // RPM with a max APDU of 50 bytes: one or two objects per request, ~50–100 per device per cycle.
  ["ReadPropertyMultiple, max APDU 50", "reorder-rpm", 90, { maxApdu: 50 }],
];

describe.each(VARIANTS)("%s", (service, label, subnet, device) => {
  it("never takes a late duplicate or an overtaking reply for another request's answer", {
    timeout: 150_000,
  }, async () => {
    const started = Date.now();
    p = await Pipeline.start({
      label,
      subnet,
      devices: 2,
      pointsPerDevice: POINTS,
      device: { ...device, ...IMPAIRED },
    });
    const pipe = p;
    const expected = new Map<string, number>();
    // Small integers: a BACnet REAL is a float32, exact only up to 2^24.
    for (const [k, d] of pipe.sim.devices().entries())
      for (let i = 1; i <= POINTS; i++) {
        const value = (k + 1) * 1000 + i;
        pipe.sim.setPresentValue(d.instance, `analog_value_${i}`, value);
        expected.set(`${d.instance}/analog_value_${i}`, value);
      }
    const gw = pipe.gateway;
    if (!gw) throw new Error("no gateway");
    rec = await Recorder.connect(pipe.broker.url, gw.topics.full("+/readings"));
    const r = rec;
    // Readings published before the values were set carry the simulator's own start values.
    const settled = Date.now() + 1500;
    await pipe.waitProduced(4 * 2 * POINTS, "four poll cycles");
    const statsBefore = pipe.sim.stats();
    await pipe.waitProduced(20 * 2 * POINTS, "twenty more poll cycles");
    const statsAfter = pipe.sim.stats();

    let checked = 0;
    const wrong: string[] = [];
    for (const m of r.messages) {
      const body = JSON.parse(m.payload) as {
        device: number;
        readings: { point: string; value?: unknown; ts: string; error?: unknown }[];
      };
      for (const reading of body.readings) {
        if (reading.error !== undefined || Date.parse(reading.ts) < settled) continue;
        checked++;
        const want = expected.get(`${body.device}/${reading.point}`);
        if (reading.value !== want)
          wrong.push(`${body.device}/${reading.point}=${String(reading.value)} (want ${want})`);
      }
    }
    const transport = (
      gw.engine as { transportStats?: () => { lateOrUnmatched: number } | undefined }
    ).transportStats?.();
    const t = await pipe.finish();
    report(`replies reordered and duplicated (late copies), ${service}`, {
      jitter_ms: 40,
      duplicate_rate: 0.3,
      duplicate_delay_max_ms: 3000,
      requests_during_window: statsAfter.requestsReceived - statsBefore.requestsReceived,
      duplicates_sent_during_window: statsAfter.duplicated - statsBefore.duplicated,
      readings_checked: checked,
      wrong_values: wrong.length,
      answers_not_taken: transport?.lateOrUnmatched ?? null,
      wrong_sample: wrong.slice(0, 5),
      ...t,
      duration_s: Math.round((Date.now() - started) / 1000),
    });
    const requests = statsAfter.requestsReceived - statsBefore.requestsReceived;
    expect(statsAfter.duplicated - statsBefore.duplicated).toBeGreaterThan(0.2 * requests);
    expect(checked).toBeGreaterThan(10 * 2 * POINTS);
    expect(wrong).toEqual([]);
    // A late copy is not taken for a newer request's answer, not even as an error: the request
    // waits for its own answer (before: ~20 readings per run became GW_ERR_MALFORMED_REPLY).
    expect(t.errored).toBe(0);
    expect(t.lost).toBe(0);
  });
});
