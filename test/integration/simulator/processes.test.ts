// spawnSimulatorProcesses: devices spread over child processes answer like in-process ones, calls
// are relayed, stats are summed, and close() leaves no child behind.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type SimulatorCluster, spawnSimulatorProcesses } from "../../../simulator/processes.ts";
import { appValue, RawClient, rpPayload, rpValues, type Target } from "./raw-client.ts";

let cluster: SimulatorCluster;
let client: RawClient;
let invoke = 0;

beforeAll(async () => {
  cluster = await spawnSimulatorProcesses(
    {
      devices: [1, 2, 3, 4].map((i) => ({
        instance: 9500 + i,
        address: `127.77.7.${i}`,
        port: 0,
        changeIntervalMs: 0,
      })),
    },
    2,
  );
  client = await RawClient.open("127.0.0.1");
}, 120_000);

afterAll(async () => {
  await client?.close();
  await cluster?.close();
});

const target = (instance: number): Target => {
  const d = cluster.devices().find((x) => x.instance === instance);
  if (!d) throw new Error(`no device ${instance}`);
  return { address: d.address, port: d.port };
};

describe("spawnSimulatorProcesses", () => {
  it("runs the devices in separate processes that all answer", async () => {
    expect(cluster.pids).toHaveLength(2);
    expect(new Set(cluster.pids).size).toBe(2);
    expect(cluster.devices().map((d) => d.instance)).toEqual([9501, 9502, 9503, 9504]);
    for (const d of cluster.devices()) {
      const r = await client.request(
        target(d.instance),
        { invokeId: ++invoke, service: 12 },
        rpPayload(8, d.instance, 77),
      );
      if (r.type !== "complex") throw new Error(`device ${d.instance}: ${r.type}`);
      expect(rpValues(r.data).map(appValue)).toEqual([`SIM-${d.instance}`]);
    }
    const stats = await cluster.stats();
    expect(stats.requestsReceived).toBe(4);
    expect(stats.responsesSent).toBe(4);
  });

  it("relays present values, plant changes and online state to the owning process", async () => {
    await cluster.setPresentValue(9504, "analog_value_1", 12.5);
    expect(await cluster.presentValue(9504, "analog_value_1")).toBe(12.5);
    const r = await client.request(target(9504), { invokeId: ++invoke, service: 12 }, rpPayload(2, 1, 85));
    if (r.type !== "complex") throw new Error("expected ACK");
    expect(rpValues(r.data).map(appValue)).toEqual([12.5]);
    await cluster.setOnline(9501, false);
    const before = (await cluster.stats()).dropped;
    await client.send(target(9501), Buffer.from("810a000801001008", "hex"));
    for (let i = 0; i < 200 && (await cluster.stats()).dropped === before; i++)
      await new Promise((res) => setTimeout(res, 10));
    expect((await cluster.stats()).dropped).toBe(before + 1);
    await expect(cluster.presentValue(9504, "no_such_point_1")).rejects.toThrow();
  });
});
