// SubscribeCOV (clause 13.14) and COV notifications (clause 13.1): initial notification, change by
// COV increment, confirmed notifications and their acknowledgement, cancellation and expiry.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  appValue,
  bvll,
  decodeItems,
  enc,
  type Frame,
  npdu,
  objectIdOf,
  RawClient,
  type Target,
  uintOf,
} from "./raw-client.ts";

const SUBSCRIBE_COV = 5;
const WP = 15;

let sim: Simulator;
let client: RawClient;
let dev: Target;
let drifting: Target;
let noCov: Target;
let invoke = 10;
const nextInvoke = () => (invoke = (invoke + 1) & 0xff);

interface Notification {
  confirmed: boolean;
  invokeId: number;
  processId: number;
  device: { type: number; instance: number };
  object: { type: number; instance: number };
  timeRemaining: number;
  values: Record<number, unknown>;
}

function parseNotification(f: Frame): Notification | undefined {
  const b = f.body;
  const confirmed = b[0] === 0x00 && b[3] === 0x01;
  const unconfirmed = b[0] === 0x10 && b[1] === 0x02;
  if (!confirmed && !unconfirmed) return undefined;
  const items = decodeItems(b, confirmed ? 4 : 2);
  const [pid, devId, objId, remaining, list] = items;
  if (list?.kind !== "open" || list.tag !== 4) throw new Error("no listOfValues");
  const values: Record<number, unknown> = {};
  for (let i = 0; i < list.items.length; i += 2) {
    const id = list.items[i] as { data: Buffer };
    const v = list.items[i + 1];
    if (v?.kind !== "open" || v.tag !== 2) throw new Error("no [2] value");
    values[uintOf(id.data)] = appValue(v.items[0] as never);
  }
  return {
    confirmed,
    invokeId: confirmed ? (b[2] as number) : -1,
    processId: uintOf((pid as { data: Buffer }).data),
    device: objectIdOf((devId as { data: Buffer }).data),
    object: objectIdOf((objId as { data: Buffer }).data),
    timeRemaining: uintOf((remaining as { data: Buffer }).data),
    values,
  };
}

const isNotification = (f: Frame) => parseNotification(f) !== undefined;

async function nextNotification(filter: (n: Notification) => boolean = () => true) {
  const f = await client.next((fr) => {
    const n = parseNotification(fr);
    return n !== undefined && filter(n);
  });
  return f ? parseNotification(f) : undefined;
}

function subscribe(
  target: Target,
  processId: number,
  type: number,
  instance: number,
  opts: { confirmed?: boolean; lifetime?: number } | "cancel",
) {
  const payload = [...enc.ctxUint(0, processId), ...enc.ctxObjectId(1, type, instance)];
  if (opts !== "cancel") {
    payload.push(...enc.ctxBool(2, opts.confirmed ?? false));
    if (opts.lifetime !== undefined) payload.push(...enc.ctxUint(3, opts.lifetime));
  }
  return client.request(target, { invokeId: nextInvoke(), service: SUBSCRIBE_COV }, payload);
}

beforeAll(async () => {
  sim = await startSimulator({
    devices: [
      { instance: 4001, address: "127.77.3.1", port: 0, changeIntervalMs: 0 },
      { instance: 4002, address: "127.77.3.2", port: 0, changeIntervalMs: 40, objects: { analog_input: 1 } },
      { instance: 4003, address: "127.77.3.3", port: 0, cov: false },
    ],
  });
  const [a, b, c] = sim.devices();
  dev = { address: a?.address as string, port: a?.port as number };
  drifting = { address: b?.address as string, port: b?.port as number };
  noCov = { address: c?.address as string, port: c?.port as number };
  client = await RawClient.open("127.0.0.1");
});

afterAll(async () => {
  await client?.close();
  await sim?.close();
});

describe("SubscribeCOV", () => {
  it("acknowledges, sends an initial notification, then notifies changes of at least the COV increment", async () => {
    sim.setPresentValue(4001, "analog_input_1", 20);
    const ack = await subscribe(dev, 11, 0, 1, { lifetime: 60 });
    expect(ack.type).toBe("simple");
    const first = await nextNotification((n) => n.processId === 11);
    expect(first).toMatchObject({
      confirmed: false,
      device: { type: 8, instance: 4001 },
      object: { type: 0, instance: 1 },
    });
    expect(first?.timeRemaining).toBeGreaterThan(55);
    expect(first?.timeRemaining).toBeLessThanOrEqual(60);
    expect(first?.values[85]).toBeCloseTo(20, 4);
    expect(first?.values[111]).toEqual([false, false, false, false]);
    // Below the increment (0.1): no notification. The next one must therefore carry 20.5.
    sim.setPresentValue(4001, "analog_input_1", 20.05);
    sim.setPresentValue(4001, "analog_input_1", 20.5);
    const second = await nextNotification((n) => n.processId === 11);
    expect(second?.values[85]).toBeCloseTo(20.5, 4);
  });

  it("notifies every change of a binary value, including one made by WriteProperty", async () => {
    expect((await subscribe(dev, 12, 4, 1, { lifetime: 0 })).type).toBe("simple");
    const initial = await nextNotification((n) => n.processId === 12);
    expect(initial?.timeRemaining).toBe(0); // indefinite
    const before = initial?.values[85];
    const wp = await client.request(dev, { invokeId: nextInvoke(), service: WP }, [
      ...enc.ctxObjectId(0, 4, 1),
      ...enc.ctxUint(1, 85),
      ...enc.open(3),
      ...enc.appEnum(before === 1 ? 0 : 1),
      ...enc.close(3),
      ...enc.ctxUint(4, 8),
    ]);
    expect(wp.type).toBe("simple");
    const changed = await nextNotification((n) => n.processId === 12);
    expect(changed?.values[85]).toBe(before === 1 ? 0 : 1);
  });

  it("sends confirmed notifications and stops retrying once acknowledged", async () => {
    expect((await subscribe(dev, 13, 2, 1, { confirmed: true, lifetime: 120 })).type).toBe("simple");
    const n = await nextNotification((x) => x.processId === 13);
    expect(n?.confirmed).toBe(true);
    await client.send(dev, bvll(0x0a, [...npdu(), 0x20, n?.invokeId as number, 0x01]));
    sim.setPresentValue(4001, "analog_value_1", 77);
    const m = await nextNotification((x) => x.processId === 13);
    expect(m?.values[85]).toBeCloseTo(77, 4);
    expect(m?.invokeId).not.toBe(n?.invokeId);
    await client.send(dev, bvll(0x0a, [...npdu(), 0x20, m?.invokeId as number, 0x01]));
  });

  it("retransmits an unacknowledged confirmed notification with the same invoke id", async () => {
    expect((await subscribe(dev, 20, 1, 1, { confirmed: true, lifetime: 60 })).type).toBe("simple");
    const first = await nextNotification((x) => x.processId === 20);
    expect(first?.confirmed).toBe(true);
    // No acknowledgement: the device repeats it after its APDU timeout (3 s).
    const again = await nextNotification((x) => x.processId === 20);
    expect(again?.invokeId).toBe(first?.invokeId);
    await client.send(dev, bvll(0x0a, [...npdu(), 0x20, again?.invokeId as number, 0x01]));
    await subscribe(dev, 20, 1, 1, "cancel");
  });

  it("notifies a change of status flags when an input goes out of service", async () => {
    expect((await subscribe(dev, 21, 3, 1, { lifetime: 60 })).type).toBe("simple");
    const initial = await nextNotification((x) => x.processId === 21);
    expect(initial?.values[111]).toEqual([false, false, false, false]);
    const wp = await client.request(dev, { invokeId: nextInvoke(), service: WP }, [
      ...enc.ctxObjectId(0, 3, 1),
      ...enc.ctxUint(1, 81),
      ...enc.open(3),
      ...enc.appBool(true),
      ...enc.close(3),
    ]);
    expect(wp.type).toBe("simple");
    const n = await nextNotification((x) => x.processId === 21);
    expect(n?.values[111]).toEqual([false, false, false, true]);
    expect(n?.values[85]).toBe(initial?.values[85]);
    await subscribe(dev, 21, 3, 1, "cancel");
  });

  it("stops notifying after cancellation", async () => {
    expect((await subscribe(dev, 14, 13, 1, { lifetime: 300 })).type).toBe("simple");
    expect(await nextNotification((n) => n.processId === 14)).toBeDefined();
    expect((await subscribe(dev, 15, 14, 1, { lifetime: 300 })).type).toBe("simple");
    expect(await nextNotification((n) => n.processId === 15)).toBeDefined();
    expect((await subscribe(dev, 14, 13, 1, "cancel")).type).toBe("simple");
    // Change the cancelled object first, then the live one: the live one's notification must be
    // the first to come, and none for process 14 may be queued before it.
    sim.setPresentValue(
      4001,
      "multi_state_input_1",
      ((sim.presentValue(4001, "multi_state_input_1") as number) % 3) + 1,
    );
    sim.setPresentValue(
      4001,
      "multi_state_output_1",
      ((sim.presentValue(4001, "multi_state_output_1") as number) % 4) + 1,
    );
    const next = await nextNotification((n) => n.processId === 14 || n.processId === 15);
    expect(next?.processId).toBe(15);
    expect(
      client.inbox
        .filter(isNotification)
        .map(parseNotification)
        .filter((n) => n?.processId === 14),
    ).toEqual([]);
  });

  it("lets a subscription expire at the end of its lifetime", async () => {
    expect((await subscribe(dev, 16, 2, 1, { lifetime: 1 })).type).toBe("simple");
    const initial = await nextNotification((n) => n.processId === 16);
    expect(initial?.timeRemaining).toBe(1);
    expect((await subscribe(dev, 17, 1, 2, { lifetime: 300 })).type).toBe("simple");
    expect(await nextNotification((n) => n.processId === 17)).toBeDefined();
    await new Promise((r) => setTimeout(r, 1500));
    sim.setPresentValue(4001, "analog_value_1", 5);
    sim.setPresentValue(4001, "analog_output_2", 5);
    const next = await nextNotification((n) => n.processId === 16 || n.processId === 17);
    expect(next?.processId).toBe(17);
    expect(
      client.inbox
        .filter(isNotification)
        .map(parseNotification)
        .filter((n) => n?.processId === 16),
    ).toEqual([]);
  });

  it("notifies drifting inputs on its own as their value moves", async () => {
    expect((await subscribe(drifting, 18, 0, 1, { lifetime: 60 })).type).toBe("simple");
    const values: number[] = [];
    for (let i = 0; i < 4; i++) {
      const n = await nextNotification((x) => x.processId === 18);
      if (!n) break;
      values.push(n.values[85] as number);
    }
    expect(values).toHaveLength(4);
    for (let i = 1; i < values.length; i++)
      expect(Math.abs((values[i] as number) - (values[i - 1] as number))).toBeGreaterThanOrEqual(0.1 - 1e-4); // REAL is float32;
  });

  it("refuses what it cannot subscribe to", async () => {
    expect(await subscribe(dev, 19, 0, 99, { lifetime: 10 })).toMatchObject({
      type: "error",
      errorClass: 1,
      errorCode: 31,
    });
    expect((await subscribe(dev, 19, 8, 4001, { lifetime: 10 })).type).toBe("error");
    expect(await subscribe(noCov, 19, 0, 1, { lifetime: 10 })).toMatchObject({ type: "reject", reason: 9 });
  });
});
