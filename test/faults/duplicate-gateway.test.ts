// Two gateways started with the same gateway_id on one broker (a copied config), each polling its
// own devices. Measured and reported: whether anything says so, where their readings end up, and
// what the retained bridge/state says once one of them stops gracefully while the other runs.
import { afterAll, expect, it } from "vitest";
import { type Gateway, loadConfig, startGateway } from "../../gateway/index.ts";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { Recorder, retainedUnder, sleep, tempDir } from "../integration/gateway/helpers.ts";
import { Pipeline, report } from "./support.ts";

let p: Pipeline | undefined;
let sim2: Simulator | undefined;
let second: Gateway | undefined;
let rec: Recorder | undefined;
const tmp = tempDir("bacmqtt-faults-dup-");
afterAll(async () => {
  await rec?.close();
  await second?.stop().catch(() => undefined);
  await sim2?.close();
  await p?.close();
  tmp.remove();
});

it("two gateways with one id: observed behaviour", { timeout: 150_000 }, async () => {
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
  second = await startGateway(
    loadConfig({
      env: {},
      overrides: {
        gateway_id: pipe.gatewayId,
        data_dir: tmp.dir,
        mqtt: { url: pipe.broker.url, reconnect_period_ms: 200 },
        metrics: { enabled: false },
        bacnet: { interface: "127.0.0.1", port: 0, apdu_timeout_ms: 500, retries: 1 },
        discovery: {
          targets: sim2.devices().map((d) => `${d.address}:${d.port}`),
          timeout_s: 2,
          interval_s: 0,
        },
        polling: { interval_s: 1, cov: false },
        buffer: { fsync: "never" },
      },
    }),
  );
  await sleep(5000);
  const events = r.json(first.topics.bridge("event")) as { type: string }[];
  const states = r.json(first.topics.bridge("state")) as { state: string; bd_seq: number }[];
  await second.stop();
  second = undefined;
  await pipe.waitProduced(20, "first gateway still polling");
  const retained = JSON.parse(
    (await retainedUnder(pipe.broker.url, first.topics.bridge("state"))).get(first.topics.bridge("state")) ??
      "{}",
  ) as { state?: string };
  const devicesUnderId = await pipe.pool.query<{ device_instance: number }>(
    "SELECT DISTINCT device_instance FROM points WHERE gateway_id = $1 ORDER BY 1",
    [pipe.gatewayId],
  );
  const t = await pipe.finish();
  report("two gateways with the same id", {
    events_during_overlap: events.map((e) => e.type),
    bridge_states_seen: states.map((s) => `${s.state}#${s.bd_seq}`),
    retained_state_after_one_stopped: retained.state,
    devices_stored_under_the_id: devicesUnderId.rows.map((x) => Number(x.device_instance)),
    ...t,
  });
  // Known issue (docs/reliability.md): nothing detects the duplicate, both sites' devices are stored
  // under one gateway id, and the graceful stop of one marks the id offline while the other runs.
  // Asserted: both ran and the first one's readings were all stored; the issue is reported, not pinned.
  expect(devicesUnderId.rows.length).toBeGreaterThanOrEqual(2);
  expect(t.produced).toBeGreaterThan(0);
  expect(t.lost).toBe(0);
});
