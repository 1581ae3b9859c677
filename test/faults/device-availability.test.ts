// A device stops answering for a while and comes back while the pipeline runs: its availability
// goes offline then online (retained, so a late subscriber sees the truth), the other devices keep
// being polled and stored, and no reading the gateway published is lost. The ingest's view
// (`devices` availability columns) is not asserted here.
import { afterAll, expect, it } from "vitest";
import { Recorder, retainedUnder } from "../integration/gateway/helpers.ts";
import { Pipeline, report } from "./support.ts";

let p: Pipeline | undefined;
let rec: Recorder | undefined;
afterAll(async () => {
  await rec?.close();
  await p?.close();
});

it("marks a silent device offline, then online when it answers again", { timeout: 150_000 }, async () => {
  const started = Date.now();
  p = await Pipeline.start({ label: "avail", subnet: 87 });
  const pipe = p;
  const gw = pipe.gateway;
  if (!gw) throw new Error("no gateway");
  const [gone, kept] = pipe.sim.devices().map((d) => d.instance) as [number, number];
  const topic = gw.topics.device(gone, "availability");
  rec = await Recorder.connect(pipe.broker.url, gw.topics.full("+/availability"));
  const r = rec;
  const states = () => r.json(topic).map((x) => (x as { state: string }).state);
  await pipe.waitProduced(60, "steady polling");
  await r.waitFor(() => states().at(-1) === "online", "online first", 30_000);

  pipe.sim.setOnline(gone, false);
  await r.waitFor(() => states().at(-1) === "offline", "offline after silence", 60_000);
  const retainedOffline = JSON.parse((await retainedUnder(pipe.broker.url, topic)).get(topic) ?? "{}") as {
    state?: string;
  };
  const keptBefore = [...pipe.produced].filter((k) => k.startsWith(`${kept}/`)).length;
  await pipe.waitProduced(60, "other devices still polled");
  const keptWhileOffline = [...pipe.produced].filter((k) => k.startsWith(`${kept}/`)).length - keptBefore;

  pipe.sim.setOnline(gone, true);
  await r.waitFor(() => states().at(-1) === "online", "online again", 60_000);
  const goneBefore = [...pipe.produced].filter((k) => k.startsWith(`${gone}/`)).length;
  await pipe.waitProduced(60, "polling after the return");
  const goneAfter = [...pipe.produced].filter((k) => k.startsWith(`${gone}/`)).length - goneBefore;
  const t = await pipe.finish();
  report("device disappears and returns", {
    availability_sequence: states(),
    retained_while_silent: retainedOffline.state,
    other_device_readings_while_offline: keptWhileOffline,
    returned_device_readings_after: goneAfter,
    ...t,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(states()).toEqual(["online", "offline", "online"]);
  expect(retainedOffline.state).toBe("offline");
  expect(keptWhileOffline).toBeGreaterThan(0);
  expect(goneAfter).toBeGreaterThan(0);
  expect(t.lost).toBe(0);
});
