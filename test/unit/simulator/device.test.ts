// SimDevice without sockets: Annex F's ReadProperty example byte for byte, command priorities,
// and the drifting plant values.
import { describe, expect, it } from "vitest";
import type { DeviceCounters, Peer } from "../../../simulator/device.ts";
import { SimDevice } from "../../../simulator/device.ts";
import { createObject, mulberry32, presentValue, setPlantValue } from "../../../simulator/objects.ts";

function makeDevice(overrides: Partial<ConstructorParameters<typeof SimDevice>[0]> = {}) {
  const sent: Buffer[] = [];
  const counters: DeviceCounters = {
    requestsReceived: 0,
    responsesSent: 0,
    covNotificationsSent: 0,
    segmentsSent: 0,
    rejected: 0,
  };
  const device = new SimDevice(
    {
      instance: 1,
      name: "D1",
      objects: { analog_input: 5, analog_output: 1, binary_input: 1, multi_state_input: 1 },
      segmentation: true,
      maxApdu: 1476,
      rpm: true,
      cov: true,
      covFaults: {},
      vendorId: 999,
      vendorName: "v",
      modelName: "m",
      firmwareRevision: "1",
      changeIntervalMs: 0,
      seed: 1,
      iAmBroadcast: false,
      ...overrides,
    },
    { send: (_d, _p, apdu) => sent.push(apdu), broadcast: () => false },
    counters,
    undefined,
  ).init();
  return { device, sent, counters };
}

const peer: Peer = { ip: "127.0.0.1", port: 47809, route: undefined };

describe("SimDevice", () => {
  it("answers Annex F.3.5's ReadProperty (Analog Input 5, present-value = 72.0) byte for byte", () => {
    const { device, sent } = makeDevice();
    device.setPresentValue("analog_input_5", 72);
    const req = Buffer.from("0005010C0C000000051955", "hex");
    device.receive(req, 0, req.length, peer);
    expect(sent.map((b) => b.toString("hex").toUpperCase())).toEqual(["30010C0C0000000519553E44429000003F"]);
  });

  it("answers Who-Is with I-Am (clause 16.10) advertising 1476, segmented-transmit and the vendor", () => {
    const { device, sent } = makeDevice();
    const req = Buffer.from("1008", "hex");
    device.receive(req, 0, req.length, peer);
    // (Device, 1), Unsigned 1476, Enumerated 1, Unsigned 999.
    expect(sent[0]?.toString("hex").toUpperCase()).toBe("1000C4020000012205C49101" + "2203E7");
  });

  it("stays silent while offline and counts nothing as answered", () => {
    const { device, sent, counters } = makeDevice();
    device.online = false;
    const req = Buffer.from("1008", "hex");
    device.receive(req, 0, req.length, peer);
    expect(sent).toEqual([]);
    expect(counters.responsesSent).toBe(0);
  });
});

describe("point objects", () => {
  it("takes the highest-priority command and falls back to the relinquish default", () => {
    const o = createObject(1, 1, mulberry32(1));
    const rd = o.relinquishDefault;
    o.priority?.splice(9, 1, 40);
    expect(presentValue(o, 0, false)).toBe(40);
    o.priority?.splice(2, 1, 10);
    expect(presentValue(o, 0, false)).toBe(10);
    o.priority?.splice(2, 1, null);
    o.priority?.splice(9, 1, null);
    expect(presentValue(o, 0, false)).toBe(rd);
  });

  it("drifts inputs deterministically per tick and lands setPlantValue exactly on the given value", () => {
    const a = createObject(0, 3, mulberry32(9));
    const b = createObject(0, 3, mulberry32(9));
    const seq = (o: typeof a) => Array.from({ length: 20 }, (_, t) => presentValue(o, t, true));
    expect(seq(a)).toEqual(seq(b));
    expect(new Set(seq(a)).size).toBeGreaterThan(10);
    setPlantValue(a, 50, 7, true);
    expect(presentValue(a, 7, true)).toBeCloseTo(50, 6);
    const bi = createObject(3, 1, mulberry32(3));
    for (const v of [0, 1, 1, 0]) {
      setPlantValue(bi, v, 11, true);
      expect(presentValue(bi, 11, true)).toBe(v);
    }
    const msi = createObject(13, 2, mulberry32(3));
    for (let v = 1; v <= msi.numberOfStates; v++) {
      setPlantValue(msi, v, 1234, true);
      expect(presentValue(msi, 1234, true)).toBe(v);
    }
  });
});
