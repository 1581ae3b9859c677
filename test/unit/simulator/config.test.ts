// `bacmqtt simulate` flags and config files → SimulatorConfig, and configuration validation.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../../common/errors.ts";
import { configFromOptions, nthAddress, parseObjectCounts } from "../../../simulator/config.ts";
import { splitConfig } from "../../../simulator/processes.ts";
import { validateSimulatorConfig } from "../../../simulator/simulator.ts";

describe("simulate options", () => {
  it("parses object counts and reports unknown types", () => {
    const problems: string[] = [];
    expect(parseObjectCounts("analog_input=10, binary_output:4", problems)).toEqual({
      analog_input: 10,
      binary_output: 4,
    });
    expect(problems).toEqual([]);
    parseObjectCounts("analog_inptu=3,oops", problems);
    expect(problems).toHaveLength(2);
  });

  it("counts addresses across octets", () => {
    expect(nthAddress("127.0.0.1", 0)).toBe("127.0.0.1");
    expect(nthAddress("127.0.0.254", 3)).toBe("127.0.1.1");
  });

  it("gives flag devices consecutive addresses and puts a router after them", () => {
    const c = configFromOptions({
      devices: "3",
      "first-instance": "100",
      address: "127.0.9.1",
      port: "47808",
      objects: "analog_input=2",
      "no-segmentation": true,
      "max-apdu": "480",
      router: ["5:2", "6:1"],
      loss: "0.1",
    });
    expect(c.devices?.map((d) => [d.instance, d.address, d.port])).toEqual([
      [100, "127.0.9.1", 47808],
      [101, "127.0.9.2", 47808],
      [102, "127.0.9.3", 47808],
    ]);
    expect(c.devices?.[0]).toMatchObject({
      segmentation: false,
      maxApdu: 480,
      lossRate: 0.1,
      objects: { analog_input: 2 },
    });
    expect(c.routers).toHaveLength(1);
    expect(c.routers?.[0]?.address).toBe("127.0.9.4");
    expect(c.routers?.[0]?.networks.map((n) => [n.network, n.devices.map((d) => d.instance)])).toEqual([
      [5, [103, 104]],
      [6, [105]],
    ]);
    validateSimulatorConfig(c);
  });

  it("spreads over ports on one address", () => {
    const c = configFromOptions({ devices: "2", address: "127.0.0.5", port: "50000", spread: "port" });
    expect(c.devices?.map((d) => `${d.address}:${d.port}`)).toEqual(["127.0.0.5:50000", "127.0.0.5:50001"]);
  });

  it("reads a YAML file and adds flag devices to it", () => {
    const dir = mkdtempSync(join(tmpdir(), "bacmqtt-sim-"));
    const file = join(dir, "plant.yaml");
    writeFileSync(
      file,
      "seed: 3\ndevices:\n  - instance: 9\n    address: 127.0.0.9\n    objects: { analog_value: 2 }\n",
    );
    const c = configFromOptions({
      config: file,
      devices: "1",
      "first-instance": "10",
      address: "127.0.0.10",
    });
    expect(c.seed).toBe(3);
    expect(c.devices?.map((d) => d.instance)).toEqual([9, 10]);
    expect(() => configFromOptions({ config: join(dir, "missing.yaml") })).toThrow(ConfigError);
  });

  it("reports every bad flag at once", () => {
    try {
      configFromOptions({ devices: "x", loss: "2", "max-apdu": "20", router: ["bad"], spread: "sideways" });
      expect.unreachable();
    } catch (e) {
      expect((e as ConfigError).problems.length).toBeGreaterThanOrEqual(5);
    }
  });
});

describe("validateSimulatorConfig", () => {
  it("lists duplicate instances and endpoints, bad ranges and too many routed devices", () => {
    try {
      validateSimulatorConfig({
        devices: [
          { instance: 1, address: "127.0.0.2" },
          { instance: 1, address: "127.0.0.2", maxApdu: 10, lossRate: 3 },
          { instance: 5, address: "300.0.0.1", objects: { nonsense: 1 } as never },
        ],
        routers: [
          {
            networks: [
              { network: 0, devices: Array.from({ length: 256 }, (_, i) => ({ instance: 100 + i })) },
            ],
          },
        ],
      });
      expect.unreachable();
    } catch (e) {
      const text = (e as ConfigError).problems.join("\n");
      for (const needle of [
        "used twice",
        "maxApdu",
        "lossRate",
        "IPv4",
        "unknown object type",
        "network must",
        "255",
      ])
        expect(text).toContain(needle);
    }
  });
});

describe("splitConfig", () => {
  it("splits devices into contiguous blocks and routers round-robin", () => {
    const devices = Array.from({ length: 10 }, (_, i) => ({ instance: i }));
    const routers = [{ networks: [] }, { networks: [] }, { networks: [] }];
    const shares = splitConfig({ devices, routers, seed: 4 }, 3);
    expect(shares.map((s) => s.devices?.map((d) => d.instance))).toEqual([
      [0, 1, 2, 3],
      [4, 5, 6],
      [7, 8, 9],
    ]);
    expect(shares.map((s) => s.routers?.length)).toEqual([1, 1, 1]);
    expect(shares.every((s) => s.seed === 4)).toBe(true);
    expect(splitConfig({ devices: devices.slice(0, 2) }, 4)).toHaveLength(2);
  });
});
