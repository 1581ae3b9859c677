// Broadcast discovery on a real (virtual) LAN: a bridge in its own network namespace, one veth per
// simulated host, a private subnet (10.231.0.0/24) that exists only inside these namespaces. The
// gateway side is `bacmqtt scan` run inside the first host namespace with no --target at all, so
// every device is found by broadcast Who-Is (local subnet and global DNET 0xFFFF through a router).
// Needs root and iproute2; everything created is removed afterwards, also on failure.

import type { ChildProcess } from "node:child_process";
import { execFileSync } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run, startReady, stopChild } from "./support/run.ts";

const tag = `${process.pid % 100000}`;
const BR = `bqbr${tag}`;
const HOSTS = [0, 1, 2, 3].map((i) => `bqh${i}x${tag}`);
const SUBNET = "10.231.0";
const canRun = (() => {
  if (process.getuid?.() !== 0) return false;
  try {
    execFileSync("ip", ["-V"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
})();

const ip = (...args: string[]) => execFileSync("ip", args, { stdio: ["ignore", "ignore", "pipe"] });
const children: ChildProcess[] = [];

function teardown(): void {
  for (const ns of [...HOSTS, BR]) {
    try {
      ip("netns", "del", ns);
    } catch {
      // not created
    }
  }
}

describe.skipIf(!canRun)("broadcast discovery inside network namespaces", () => {
  beforeAll(async () => {
    teardown();
    try {
      ip("netns", "add", BR);
      ip("-n", BR, "link", "add", "br0", "type", "bridge");
      ip("-n", BR, "link", "set", "br0", "up");
      HOSTS.forEach((ns, i) => {
        ip("netns", "add", ns);
        // veth created inside the host namespace, peer moved into the bridge namespace.
        ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", `p${i}`);
        ip("-n", ns, "link", "set", `p${i}`, "netns", BR);
        ip("-n", BR, "link", "set", `p${i}`, "master", "br0");
        ip("-n", BR, "link", "set", `p${i}`, "up");
        ip("-n", ns, "addr", "add", `${SUBNET}.${i + 1}/24`, "dev", "eth0");
        ip("-n", ns, "link", "set", "eth0", "up");
        ip("-n", ns, "link", "set", "lo", "up");
      });
      const bcast = `${SUBNET}.255`;
      const sims = [
        {
          ns: HOSTS[1],
          config: { devices: [{ instance: 3_930_001, address: `${SUBNET}.2` }], broadcastAddress: bcast },
        },
        {
          ns: HOSTS[2],
          config: { devices: [{ instance: 3_930_002, address: `${SUBNET}.3` }], broadcastAddress: bcast },
        },
        {
          ns: HOSTS[3],
          config: {
            routers: [
              {
                address: `${SUBNET}.4`,
                networks: [{ network: 77, devices: [{ instance: 3_930_101 }, { instance: 3_930_102 }] }],
              },
            ],
            broadcastAddress: bcast,
          },
        },
      ];
      for (const s of sims) {
        const { child } = await startReady(
          "ip",
          [
            "netns",
            "exec",
            s.ns as string,
            process.execPath,
            "--import",
            "tsx",
            "test/integration/bacnet/support/sim-host.ts",
            JSON.stringify(s.config),
          ],
          60_000,
        );
        children.push(child);
      }
    } catch (err) {
      await Promise.all(children.map(stopChild));
      teardown();
      throw err;
    }
  }, 120_000);

  afterAll(async () => {
    await Promise.all(children.map(stopChild));
    teardown();
  });

  it("finds every host and the routed devices by broadcast alone", async () => {
    const r = await run(
      "ip",
      [
        "netns",
        "exec",
        HOSTS[0] as string,
        process.execPath,
        "bin/bacmqtt.mjs",
        "scan",
        "--interface",
        "eth0",
        "--timeout",
        "2",
        "--json",
      ],
      90_000,
    );
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as {
      devices: {
        device_instance: number;
        address: string;
        network: number | null;
        mac: string | null;
        object_name: string;
      }[];
    };
    expect(out.devices.map((d) => [d.device_instance, d.address, d.network, d.mac])).toEqual([
      [3_930_001, `${SUBNET}.2:47808`, null, null],
      [3_930_002, `${SUBNET}.3:47808`, null, null],
      [3_930_101, `${SUBNET}.4:47808`, 77, "01"],
      [3_930_102, `${SUBNET}.4:47808`, 77, "02"],
    ]);
    expect(out.devices.every((d) => d.object_name === `SIM-${d.device_instance}`)).toBe(true);
  }, 120_000);

  it("reads a routed device found by broadcast, by instance only", async () => {
    const r = await run(
      "ip",
      [
        "netns",
        "exec",
        HOSTS[0] as string,
        process.execPath,
        "bin/bacmqtt.mjs",
        "read",
        "3930102",
        "device",
        "--property",
        "object_name",
        "--interface",
        `${SUBNET}.1`,
        "--json",
      ],
      90_000,
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      device: 3_930_102,
      property: "object_name",
      value: "SIM-3930102",
    });
  }, 120_000);
});
