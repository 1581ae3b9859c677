// Two gateways started with the same gateway_id on one broker (a copied config), each meant to poll
// its own devices. Refused or reported, never mixed: the second is refused with
// GW_ERR_DUPLICATE_GATEWAY and a `duplicate_gateway` event, the first keeps polling, the retained
// bridge/state stays the first's, and only the first site's devices are stored under the id. Then a
// later instance that skips the start-up check announces itself, gives way to the earlier one and
// stops: no reading of its site is stored from the detection on, the retained state is the first's.
import { afterAll, expect, it } from "vitest";
import { type Gateway, loadConfig, startGateway } from "../../gateway/index.ts";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { Recorder, retainedUnder, sleep, tempDir } from "../integration/gateway/helpers.ts";
import { Pipeline, report } from "./support.ts";

let p: Pipeline | undefined;
let sim2: Simulator | undefined;
let late: Gateway | undefined;
let rec: Recorder | undefined;
const tmp = tempDir("bacmqtt-faults-dup-");
const tmpLate = tempDir("bacmqtt-faults-dup-late-");
afterAll(async () => {
  await late?.stop().catch(() => undefined);
  tmpLate.remove();
  await rec?.close();
  await sim2?.close();
  await p?.close();
  tmp.remove();
});

it("two gateways with one id: refused, or the later one gives way; nothing is mixed", {
  timeout: 150_000,
}, async () => {
  p = await Pipeline.start({ label: "dup", subnet: 88, devices: 2 });
  const pipe = p;
  const first = pipe.gateway;
  if (!first) throw new Error("no gateway");
  rec = await Recorder.connect(pipe.broker.url, first.topics.full("bridge/#"));
  const r = rec;
  await pipe.waitProduced(40, "first gateway polling");
  sim2 = await startSimulator({
    devices: [{ instance: 889_001, address: "127.0.89.1", port: 0, cov: false, changeIntervalMs: 0 }],
  });
  const site2 = sim2.devices().map((d) => `${d.address}:${d.port}`);
  const secondSite = (dataDir: string, duplicateCheckMs: number) =>
    loadConfig({
      env: {},
      overrides: {
        gateway_id: pipe.gatewayId,
        data_dir: dataDir,
        mqtt: { url: pipe.broker.url, reconnect_period_ms: 200, duplicate_check_ms: duplicateCheckMs },
        metrics: { enabled: false },
        bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
        discovery: { targets: site2, timeout_s: 2, interval_s: 0 },
        polling: { interval_s: 1, cov: false },
        buffer: { fsync: "never" },
      },
    });
  const t0 = Date.now();
  const refusal = await startGateway(secondSite(tmp.dir, 3000)).then(
    async (second) => {
      await second.stop();
      return undefined;
    },
    (err: unknown) => err as { code?: string },
  );
  const refusedAfterMs = Date.now() - t0;
  await r.waitFor(
    (m) => m.some((x) => x.topic === first.topics.bridge("event") && x.payload.includes("duplicate_gateway")),
    "duplicate_gateway event",
  );
  // As long as the two used to overlap: the first keeps polling, alone.
  await sleep(5000);
  const events = r.json(first.topics.bridge("event")) as { type: string; data: Record<string, unknown> }[];
  const states = r.json(first.topics.bridge("state")) as {
    state: string;
    bd_seq: number;
    instance?: string;
  }[];
  await pipe.waitProduced(20, "first gateway still polling");
  const retained = JSON.parse(
    (await retainedUnder(pipe.broker.url, first.topics.bridge("state"))).get(first.topics.bridge("state")) ??
      "{}",
  ) as { state?: string; instance?: string };
  const devicesUnderId = await pipe.pool.query<{ device_instance: number }>(
    "SELECT DISTINCT device_instance FROM points WHERE gateway_id = $1 ORDER BY 1",
    [pipe.gatewayId],
  );

  // A later instance that skips the start-up check (duplicate_check_ms 0) announces itself, loses
  // the tie-break to the earlier one and stops; from its detection on, nothing of its site is stored.
  const t1 = Date.now();
  const lateError = await startGateway(secondSite(tmpLate.dir, 0)).then(
    async (gw) => {
      late = gw;
      let timer: NodeJS.Timeout | undefined;
      const err = await Promise.race([
        gw.stopped,
        new Promise<"still running">((resolve) => {
          timer = setTimeout(() => resolve("still running"), 30_000);
        }),
      ]).finally(() => clearTimeout(timer));
      return err === "still running" ? { code: err } : err;
    },
    (err: unknown) => err as { code?: string },
  );
  const lateStoppedAfterMs = Date.now() - t1;
  await r.waitFor(
    (m) =>
      ["won", "lost"].every((o) =>
        m.some((x) => x.topic === first.topics.bridge("event") && x.payload.includes(`"outcome":"${o}"`)),
      ),
    "duplicate_gateway events of both instances",
  );
  const lost = (
    r.json(first.topics.bridge("event")) as {
      type: string;
      timestamp: string;
      data: Record<string, unknown>;
    }[]
  ).find((e) => e.type === "duplicate_gateway" && e.data.outcome === "lost");
  // Readings are stamped by the gateways' clock (this host), as is the loser's event.
  const detectedAt = new Date(lost?.timestamp ?? Date.now());
  await pipe.waitProduced(20, "first gateway polling after the late instance left");
  const retainedAfterLate = JSON.parse(
    (await retainedUnder(pipe.broker.url, first.topics.bridge("state"))).get(first.topics.bridge("state")) ??
      "{}",
  ) as { state?: string; instance?: string };
  const t = await pipe.finish();
  const site2Rows = await pipe.pool.query<{ before: string; after: string }>(
    `SELECT count(*) FILTER (WHERE r.time <= $2) AS before, count(*) FILTER (WHERE r.time > $2) AS after
       FROM readings r JOIN points p USING (point_id) WHERE p.gateway_id = $1 AND p.device_instance = 889001`,
    [pipe.gatewayId, detectedAt],
  );
  const duplicate = events.find((e) => e.type === "duplicate_gateway");
  report("two gateways with the same id", {
    second_start: refusal?.code ?? "started",
    refused_after_ms: refusedAfterMs,
    events: events.map((e) =>
      e.type === "duplicate_gateway" ? `${e.type}:${String(e.data.outcome)}` : e.type,
    ),
    bridge_states_seen: states.map((s) => `${s.state}#${s.bd_seq}@${s.instance ?? "?"}`),
    first_instance: first.instance,
    retained_state_after_refusal: `${retained.state}@${retained.instance ?? "?"}`,
    devices_stored_under_the_id: devicesUnderId.rows.map((x) => Number(x.device_instance)),
    late_instance: lateError?.code ?? "stopped without error",
    late_instance_stopped_after_ms: lateStoppedAfterMs,
    late_site_rows_before_detection: Number(site2Rows.rows[0]?.before),
    late_site_rows_after_detection: Number(site2Rows.rows[0]?.after),
    retained_state_after_late: `${retainedAfterLate.state}@${retainedAfterLate.instance ?? "?"}`,
    ...t,
  });
  // Refused or reported, never mixed.
  expect(refusal?.code).toBe("GW_ERR_DUPLICATE_GATEWAY");
  expect(duplicate?.data).toMatchObject({ outcome: "refused", other_instance: first.instance });
  expect(states.every((s) => s.instance === first.instance)).toBe(true);
  expect(retained).toMatchObject({ state: "online", instance: first.instance });
  const site1 = pipe.sim
    .devices()
    .map((d) => d.instance)
    .sort((a, b) => a - b);
  expect(devicesUnderId.rows.map((x) => Number(x.device_instance))).toEqual(site1);
  expect(lateError?.code).toBe("GW_ERR_DUPLICATE_GATEWAY");
  expect(lost?.data.other_instance).toBe(first.instance);
  expect(Number(site2Rows.rows[0]?.after)).toBe(0);
  expect(retainedAfterLate).toMatchObject({ state: "online", instance: first.instance });
  expect(t.produced).toBeGreaterThan(0);
  expect(t.lost).toBe(0);
});
