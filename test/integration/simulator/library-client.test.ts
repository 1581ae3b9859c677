// The simulator as seen by @bacnet-js/client, the library the gateway's engine is built on: the
// calls that engine makes must work against it (discovery, routed discovery, RP, RPM, segmented
// object list, writes). The raw-client suites check the encodings; this one checks compatibility.
import Bacnet from "@bacnet-js/client";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";

// In native-ESM TypeScript the class is the package's `.default` (BACNET-NOTES).
const Client = ((Bacnet as unknown as { default?: typeof Bacnet }).default ?? Bacnet) as unknown as new (
  opts: Record<string, unknown>,
) => LibClient;

interface LibClient {
  on(event: string, fn: (...args: never[]) => void): void;
  whoIs(receiver?: unknown, options?: unknown): void;
  readProperty(
    receiver: unknown,
    objectId: unknown,
    prop: number,
    options?: unknown,
  ): Promise<{ values: { type: number; value: unknown }[] }>;
  readPropertyMultiple(
    receiver: unknown,
    props: unknown[],
    options?: unknown,
  ): Promise<{ values: { objectId: unknown; values: { id: number; value: { value: unknown }[] }[] }[] }>;
  writeProperty(
    receiver: unknown,
    objectId: unknown,
    prop: number,
    values: unknown[],
    options: unknown,
  ): Promise<void>;
  close(): void;
}

let sim: Simulator;
let client: LibClient;

/** The library may drop a pending request (BACNET-NOTES): race every call against a timer. */
function within<T>(p: Promise<T>, ms = 5000): Promise<T> {
  return Promise.race([p, new Promise<T>((_, reject) => setTimeout(() => reject(new Error("timeout")), ms))]);
}

beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      {
        instance: 9001,
        address: "127.77.6.1",
        port: 47808,
        objects: { analog_input: 300, analog_output: 2 },
      },
      { instance: 9002, address: "127.77.6.2", port: 47808 },
    ],
    routers: [
      {
        address: "127.77.6.3",
        port: 47808,
        networks: [{ network: 100, devices: [{ instance: 9101 }, { instance: 9102 }] }],
      },
    ],
  });
  client = new Client({
    port: 47808,
    interface: "127.77.6.100",
    broadcastAddress: "127.77.6.255",
    apduTimeout: 3000,
    reuseAddr: false,
  });
  client.on("error", () => {});
});

afterAll(async () => {
  client?.close();
  await sim?.close();
});

describe("@bacnet-js/client against the simulator", () => {
  it("discovers plain and routed devices", async () => {
    const seen = new Map<number, unknown>();
    client.on("iAm", ((msg: { payload: { deviceId: number }; header: { sender: unknown } }) => {
      seen.set(msg.payload.deviceId, msg.header.sender);
    }) as never);
    client.whoIs({ address: "127.77.6.1:47808" });
    client.whoIs({ address: "127.77.6.2:47808" });
    client.whoIs({ address: "127.77.6.3:47808", net: 0xffff });
    for (let i = 0; i < 300 && seen.size < 4; i++) await new Promise((r) => setTimeout(r, 10));
    expect([...seen.keys()].sort()).toEqual([9001, 9002, 9101, 9102]);
    expect(seen.get(9102)).toMatchObject({ address: "127.77.6.3", net: 100, adr: [2] });
  });

  it("reads properties, a segmented 303-entry object list and a routed device", async () => {
    const name = await within(
      client.readProperty({ address: "127.77.6.2:47808" }, { type: 8, instance: 9002 }, 77),
    );
    expect(name.values[0]?.value).toBe("SIM-9002");
    const list = await within(
      client.readProperty({ address: "127.77.6.1:47808" }, { type: 8, instance: 9001 }, 76),
    );
    expect(list.values).toHaveLength(303);
    const routed = await within(
      client.readProperty(
        { address: "127.77.6.3:47808", net: 100, adr: [1] },
        { type: 8, instance: 9101 },
        77,
      ),
    );
    expect(routed.values[0]?.value).toBe("SIM-9101");
  });

  it("reads several properties with ReadPropertyMultiple and writes with a priority", async () => {
    const rpm = await within(
      client.readPropertyMultiple({ address: "127.77.6.1:47808" }, [
        { objectId: { type: 0, instance: 1 }, properties: [{ id: 85 }, { id: 77 }, { id: 117 }] },
      ]),
    );
    expect(rpm.values[0]?.values.map((v) => v.id)).toEqual([85, 77, 117]);
    await within(
      client.writeProperty(
        { address: "127.77.6.1:47808" },
        { type: 1, instance: 2 },
        85,
        [{ type: 4, value: 61.5 }],
        {
          priority: 9,
        },
      ),
    );
    expect(sim.presentValue(9001, "analog_output_2")).toBeCloseTo(61.5, 4);
  });
});
