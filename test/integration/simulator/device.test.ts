// Who-Is/I-Am, ReadProperty of every property kind, ReadPropertyMultiple with per-property errors,
// WriteProperty with the priority array, and the error/reject answers, over real UDP with the
// independent raw client.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Simulator, startSimulator } from "../../../simulator/index.ts";
import {
  appValue,
  bvll,
  decodeItems,
  enc,
  npdu,
  objectIdOf,
  RawClient,
  type Reply,
  rpmResults,
  rpPayload,
  rpValues,
  type Target,
  uintOf,
  whoIs,
} from "./raw-client.ts";

const P = {
  all: 8,
  description: 28,
  eventState: 36,
  objectIdentifier: 75,
  objectList: 76,
  objectName: 77,
  objectType: 79,
  outOfService: 81,
  presentValue: 85,
  priorityArray: 87,
  relinquishDefault: 104,
  stateText: 110,
  statusFlags: 111,
  units: 117,
  covIncrement: 22,
  numberOfStates: 74,
  activeText: 4,
  inactiveText: 46,
  propertyList: 371,
} as const;
const RP = 12;
const RPM = 14;
const WP = 15;

let sim: Simulator;
let client: RawClient;
let dev: Target;
let noRpm: Target;
let invoke = 0;
const nextInvoke = () => (invoke = (invoke + 1) & 0xff);

async function rp(target: Target, type: number, instance: number, prop: number, index?: number) {
  return client.request(
    target,
    { invokeId: nextInvoke(), service: RP },
    rpPayload(type, instance, prop, index),
  );
}

async function rpValue(type: number, instance: number, prop: number, index?: number): Promise<unknown[]> {
  const r = await rp(dev, type, instance, prop, index);
  if (r.type !== "complex") throw new Error(`expected ComplexACK, got ${JSON.stringify(r.type)}`);
  return rpValues(r.data).map(appValue);
}

function expectError(r: Reply, cls: number, code: number): void {
  expect(r.type).toBe("error");
  if (r.type !== "error") return;
  expect([r.errorClass, r.errorCode]).toEqual([cls, code]);
}

async function wp(
  type: number,
  instance: number,
  prop: number,
  value: number[],
  priority?: number,
  index?: number,
) {
  return client.request(dev, { invokeId: nextInvoke(), service: WP }, [
    ...enc.ctxObjectId(0, type, instance),
    ...enc.ctxUint(1, prop),
    ...(index === undefined ? [] : enc.ctxUint(2, index)),
    ...enc.open(3),
    ...value,
    ...enc.close(3),
    ...(priority === undefined ? [] : enc.ctxUint(4, priority)),
  ]);
}

beforeAll(async () => {
  sim = await startSimulator({
    seed: 7,
    devices: [
      {
        instance: 1234,
        address: "127.77.1.1",
        port: 0,
        vendorId: 777,
        vendorName: "Acme",
        modelName: "Sim-X",
        firmwareRevision: "2.5.1",
        changeIntervalMs: 0,
        objects: {
          analog_input: 2,
          analog_output: 2,
          analog_value: 1,
          binary_input: 1,
          binary_output: 1,
          binary_value: 1,
          multi_state_input: 1,
          multi_state_output: 1,
          multi_state_value: 1,
          characterstring_value: 1,
          integer_value: 1,
        },
      },
      { instance: 1235, address: "127.77.1.2", port: 0, rpm: false, cov: false },
    ],
  });
  const [a, b] = sim.devices();
  dev = { address: a?.address as string, port: a?.port as number };
  noRpm = { address: b?.address as string, port: b?.port as number };
  client = await RawClient.open("127.0.0.1");
});

afterAll(async () => {
  await client?.close();
  await sim?.close();
});

describe("Who-Is / I-Am", () => {
  const iAmFrom = (t: Target) => (f: { body: Buffer; from: { port: number; address: string } }) =>
    f.from.port === t.port && f.from.address === t.address && f.body[0] === 0x10 && f.body[1] === 0x00;

  it("answers an unranged Who-Is with an I-Am carrying its identity", async () => {
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs()]));
    const f = await client.next(iAmFrom(dev));
    expect(f).toBeDefined();
    const items = decodeItems(f?.body as Buffer, 2);
    expect(items.map(appValue)).toEqual([{ type: 8, instance: 1234 }, 1476, 1, 777]);
  });

  it("answers only when its instance is inside the range", async () => {
    // Out of range first, then in range: the device handles them in order, so the I-Am we get
    // must be the second one's, and nothing may precede it.
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs(1, 1233)]));
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs(1235, 4000)]));
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs(1234, 1234)]));
    const f = await client.next(iAmFrom(dev));
    expect(f).toBeDefined();
    const before = sim.stats().requestsReceived;
    await client.send(dev, bvll(0x0a, [...npdu(), ...whoIs(1000, 2000)]));
    expect(await client.next(iAmFrom(dev))).toBeDefined();
    expect(sim.stats().requestsReceived).toBe(before + 1);
    expect(client.inbox.filter(iAmFrom(dev))).toHaveLength(0);
  });

  it("answers Who-Has by object identifier and by object name with I-Have", async () => {
    const isIHave = (f: { body: Buffer }) => f.body[0] === 0x10 && f.body[1] === 0x01;
    await client.send(dev, bvll(0x0a, [...npdu(), 0x10, 0x07, ...enc.ctxObjectId(2, 14, 1)]));
    const byId = await client.next(isIHave);
    expect(decodeItems(byId?.body as Buffer, 2).map(appValue)).toEqual([
      { type: 8, instance: 1234 },
      { type: 14, instance: 1 },
      "MSO1 Fan Speed",
    ]);
    const name = Buffer.from("AI2 Valve Position");
    await client.send(dev, bvll(0x0a, [...npdu(), 0x10, 0x07, 0x3d, name.length + 1, 0x00, ...name]));
    const byName = await client.next(isIHave);
    expect(decodeItems(byName?.body as Buffer, 2).map(appValue)[1]).toEqual({ type: 0, instance: 2 });
    // Out of the instance range, or an object it lacks: silence, then the in-range answer comes first.
    await client.send(
      dev,
      bvll(0x0a, [
        ...npdu(),
        0x10,
        0x07,
        ...enc.ctxUint(0, 1),
        ...enc.ctxUint(1, 2),
        ...enc.ctxObjectId(2, 14, 1),
      ]),
    );
    await client.send(dev, bvll(0x0a, [...npdu(), 0x10, 0x07, ...enc.ctxObjectId(2, 14, 9)]));
    await client.send(dev, bvll(0x0a, [...npdu(), 0x10, 0x07, ...enc.ctxObjectId(2, 8, 1234)]));
    const last = await client.next(isIHave);
    expect(decodeItems(last?.body as Buffer, 2).map(appValue)[1]).toEqual({ type: 8, instance: 1234 });
    expect(client.inbox.filter(isIHave)).toEqual([]);
  });

  it("answers a global-broadcast Who-Is (DNET 0xFFFF) as a local device", async () => {
    await client.send(dev, bvll(0x0b, [...npdu({ dnet: 0xffff }), ...whoIs()]));
    expect(await client.next(iAmFrom(dev))).toBeDefined();
  });
});

describe("ReadProperty", () => {
  it("reads the device object's properties", async () => {
    expect(await rpValue(8, 1234, P.objectName)).toEqual(["SIM-1234"]);
    expect(await rpValue(8, 1234, P.objectType)).toEqual([8]);
    expect(await rpValue(8, 1234, 120)).toEqual([777]); // vendor-identifier
    expect(await rpValue(8, 1234, 121)).toEqual(["Acme"]);
    expect(await rpValue(8, 1234, 70)).toEqual(["Sim-X"]);
    expect(await rpValue(8, 1234, 44)).toEqual(["2.5.1"]);
    expect(typeof (await rpValue(8, 1234, 12))[0]).toBe("string"); // application-software-version
    expect(await rpValue(8, 1234, 62)).toEqual([1476]);
    expect(await rpValue(8, 1234, 107)).toEqual([1]); // segmented-transmit
    expect(await rpValue(8, 1234, 112)).toEqual([0]); // operational
    expect(await rpValue(8, 1234, 155)).toEqual([1]);
    expect(typeof (await rpValue(8, 1234, P.description))[0]).toBe("string");
    expect(typeof (await rpValue(8, 1234, 58))[0]).toBe("string"); // location
    // The wildcard instance 4194303 means "this device".
    expect(await rpValue(8, 4194303, P.objectName)).toEqual(["SIM-1234"]);
  });

  it("sets the RPM and SubscribeCOV bits of protocol-services-supported per configuration", async () => {
    const [bits] = (await rpValue(8, 1234, 97)) as boolean[][];
    expect(bits?.[12]).toBe(true); // readProperty
    expect(bits?.[14]).toBe(true); // readPropertyMultiple
    expect(bits?.[15]).toBe(true); // writeProperty
    expect(bits?.[5]).toBe(true); // subscribeCOV
    expect(bits?.[34]).toBe(true); // who-Is
    const r = await rp(noRpm, 8, 1235, 97);
    if (r.type !== "complex") throw new Error("expected ACK");
    const [other] = rpValues(r.data).map(appValue) as boolean[][];
    expect(other?.[12]).toBe(true);
    expect(other?.[14]).toBe(false);
    expect(other?.[5]).toBe(false);
  });

  it("lists the object types it holds in protocol-object-types-supported", async () => {
    const [bits] = (await rpValue(8, 1234, 96)) as boolean[][];
    for (const t of [0, 1, 2, 3, 4, 5, 8, 13, 14, 19, 40, 45]) expect(bits?.[t]).toBe(true);
    expect(bits?.[6]).toBe(false); // calendar
  });

  it("reads the object list whole, its length at index 0 and one entry by index", async () => {
    const list = (await rpValue(8, 1234, P.objectList)) as { type: number; instance: number }[];
    expect(list).toHaveLength(1 + 2 + 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1);
    expect(list[0]).toEqual({ type: 8, instance: 1234 });
    expect(list).toContainEqual({ type: 45, instance: 1 });
    expect(await rpValue(8, 1234, P.objectList, 0)).toEqual([list.length]);
    expect(await rpValue(8, 1234, P.objectList, 2)).toEqual([list[1]]);
    expectError(await rp(dev, 8, 1234, P.objectList, list.length + 1), 2, 42); // invalid-array-index
  });

  it("reads every property kind of the point objects", async () => {
    expect(await rpValue(0, 1, P.objectIdentifier)).toEqual([{ type: 0, instance: 1 }]);
    expect(await rpValue(0, 1, P.objectType)).toEqual([0]);
    expect(typeof (await rpValue(0, 1, P.objectName))[0]).toBe("string");
    expect(typeof (await rpValue(0, 1, P.description))[0]).toBe("string");
    expect(await rpValue(0, 1, P.statusFlags)).toEqual([[false, false, false, false]]);
    expect(await rpValue(0, 1, P.eventState)).toEqual([0]);
    expect(await rpValue(0, 1, P.outOfService)).toEqual([false]);
    expect(await rpValue(0, 1, P.units)).toEqual([62]); // degrees-Celsius
    expect((await rpValue(0, 1, P.covIncrement))[0]).toBeCloseTo(0.1, 5);
    const [pv] = (await rpValue(0, 1, P.presentValue)) as number[];
    expect(pv).toBeCloseTo(sim.presentValue(1234, "analog_input_1") as number, 4);
    // Binary present values are ENUMERATED 0/1, multi-state UNSIGNED 1..n, strings and integers as such.
    const [bv] = await rpValue(3, 1, P.presentValue);
    expect(bv).toBe(sim.presentValue(1234, "binary_input_1") ? 1 : 0);
    expect(await rpValue(3, 1, P.activeText)).toEqual(["On"]);
    expect(await rpValue(3, 1, P.inactiveText)).toEqual(["Off"]);
    const [n] = (await rpValue(13, 1, P.numberOfStates)) as number[];
    const texts = await rpValue(13, 1, P.stateText);
    expect(texts).toHaveLength(n as number);
    expect(await rpValue(13, 1, P.stateText, 0)).toEqual([n]);
    expect(await rpValue(13, 1, P.stateText, 1)).toEqual([texts[0]]);
    expect(await rpValue(13, 1, P.presentValue)).toEqual([sim.presentValue(1234, "multi_state_input_1")]);
    expect(await rpValue(40, 1, P.presentValue)).toEqual([sim.presentValue(1234, "characterstring_value_1")]);
    expect(await rpValue(45, 1, P.presentValue)).toEqual([sim.presentValue(1234, "integer_value_1")]);
    const props = (await rpValue(1, 1, P.propertyList)) as number[];
    expect(props).toEqual(expect.arrayContaining([P.presentValue, P.priorityArray, P.relinquishDefault]));
    expect(props).not.toContain(P.objectName);
  });

  it("reads the priority array whole and by index, and the relinquish default", async () => {
    const slots = await rpValue(1, 2, P.priorityArray);
    expect(slots).toEqual(new Array(16).fill(null));
    expect(await rpValue(1, 2, P.priorityArray, 0)).toEqual([16]);
    expect(await rpValue(1, 2, P.priorityArray, 16)).toEqual([null]);
    expectError(await rp(dev, 1, 2, P.priorityArray, 17), 2, 42);
    const [rd] = (await rpValue(1, 2, P.relinquishDefault)) as number[];
    expect(rd).toBeCloseTo(sim.presentValue(1234, "analog_output_2") as number, 4);
  });

  it("answers unknown objects and properties with the standard errors", async () => {
    expectError(await rp(dev, 0, 99, P.presentValue), 1, 31); // object / unknown-object
    expectError(await rp(dev, 8, 999, P.objectName), 1, 31);
    expectError(await rp(dev, 6, 1, P.presentValue), 1, 31); // a type it does not have
    expectError(await rp(dev, 0, 1, P.priorityArray), 2, 32); // property / unknown-property
    expectError(await rp(dev, 0, 1, 9999), 2, 32);
    expectError(await rp(dev, 3, 1, P.units), 2, 32);
    expectError(await rp(dev, 0, 1, P.presentValue, 1), 2, 50); // property-is-not-an-array
  });

  it("rejects a request it cannot decode", async () => {
    const r = await client.request(dev, { invokeId: nextInvoke(), service: RP }, [0x0c, 0x00]);
    expect(r.type).toBe("reject");
    const r2 = await client.request(dev, { invokeId: nextInvoke(), service: RP }, []);
    expect(r2).toMatchObject({ type: "reject", reason: 5 }); // missing-required-parameter
    const r3 = await client.request(dev, { invokeId: nextInvoke(), service: 26 }, []); // ReadRange
    expect(r3).toMatchObject({ type: "reject", reason: 9 }); // unrecognized-service
  });
});

describe("ReadPropertyMultiple", () => {
  it("returns values and per-property errors in request order", async () => {
    const r = await client.request(dev, { invokeId: nextInvoke(), service: RPM }, [
      ...enc.ctxObjectId(0, 0, 1),
      ...enc.open(1),
      ...enc.ctxUint(0, P.presentValue),
      ...enc.ctxUint(0, 9999),
      ...enc.ctxUint(0, P.objectName),
      ...enc.ctxUint(0, P.presentValue),
      ...enc.ctxUint(1, 3),
      ...enc.close(1),
      ...enc.ctxObjectId(0, 0, 77),
      ...enc.open(1),
      ...enc.ctxUint(0, P.presentValue),
      ...enc.close(1),
      ...enc.ctxObjectId(0, 14, 1),
      ...enc.open(1),
      ...enc.ctxUint(0, P.stateText),
      ...enc.ctxUint(1, 0),
      ...enc.ctxUint(0, P.stateText),
      ...enc.ctxUint(1, 99),
      ...enc.close(1),
    ]);
    if (r.type !== "complex") throw new Error(`expected ACK, got ${r.type}`);
    const res = rpmResults(r.data);
    expect(res.map((o) => o.object)).toEqual([
      { type: 0, instance: 1 },
      { type: 0, instance: 77 },
      { type: 14, instance: 1 },
    ]);
    const [ai, missing, mso] = res;
    expect(ai?.results.map((x) => x.prop)).toEqual([P.presentValue, 9999, P.objectName, P.presentValue]);
    expect(ai?.results[0]?.values?.map(appValue)[0]).toBeCloseTo(
      sim.presentValue(1234, "analog_input_1") as number,
      4,
    );
    expect(ai?.results[1]?.error).toEqual([2, 32]);
    expect(typeof ai?.results[2]?.values?.map(appValue)[0]).toBe("string");
    expect(ai?.results[3]).toMatchObject({ index: 3, error: [2, 50] });
    expect(missing?.results).toEqual([{ prop: P.presentValue, error: [1, 31] }]);
    expect(mso?.results[0]?.values?.map(appValue)).toEqual([4]); // "Off, Low, Medium, High"
    expect(mso?.results[1]).toMatchObject({ index: 99, error: [2, 42] });
  });

  it("expands ALL into every property of the object", async () => {
    const r = await client.request(dev, { invokeId: nextInvoke(), service: RPM }, [
      ...enc.ctxObjectId(0, 4, 1),
      ...enc.open(1),
      ...enc.ctxUint(0, P.all),
      ...enc.close(1),
    ]);
    if (r.type !== "complex") throw new Error("expected ACK");
    const [bo] = rpmResults(r.data);
    const props = bo?.results.map((x) => x.prop) ?? [];
    for (const p of [
      P.objectIdentifier,
      P.objectName,
      P.objectType,
      P.presentValue,
      P.statusFlags,
      P.priorityArray,
    ])
      expect(props).toContain(p);
    expect(bo?.results.every((x) => x.values !== undefined)).toBe(true);
    expect(props).not.toContain(P.propertyList);
  });

  it("splits REQUIRED from OPTIONAL properties", async () => {
    const read = async (which: number) => {
      const r = await client.request(dev, { invokeId: nextInvoke(), service: RPM }, [
        ...enc.ctxObjectId(0, 0, 1),
        ...enc.open(1),
        ...enc.ctxUint(0, which),
        ...enc.close(1),
      ]);
      if (r.type !== "complex") throw new Error("expected ACK");
      return rpmResults(r.data)[0]?.results.map((x) => x.prop) ?? [];
    };
    const required = await read(105);
    const optional = await read(80);
    expect(required).toEqual(expect.arrayContaining([P.objectName, P.presentValue, P.statusFlags, P.units]));
    expect(required).not.toContain(P.description);
    expect(optional).toEqual(expect.arrayContaining([P.description, P.covIncrement]));
    expect(optional).not.toContain(P.presentValue);
  });

  it("is rejected with unrecognized-service by a device configured without it", async () => {
    const r = await client.request(noRpm, { invokeId: nextInvoke(), service: RPM }, [
      ...enc.ctxObjectId(0, 8, 1235),
      ...enc.open(1),
      ...enc.ctxUint(0, P.objectName),
      ...enc.close(1),
    ]);
    expect(r).toMatchObject({ type: "reject", reason: 9 });
  });
});

describe("WriteProperty", () => {
  it("commands through the priority array and relinquishes back to the relinquish default", async () => {
    const rd = sim.presentValue(1234, "analog_output_1") as number;
    expect((await wp(1, 1, P.presentValue, enc.appReal(55.5), 8)).type).toBe("simple");
    expect(sim.presentValue(1234, "analog_output_1")).toBeCloseTo(55.5, 4);
    expect((await wp(1, 1, P.presentValue, enc.appReal(11), 12)).type).toBe("simple");
    // Priority 8 still wins over 12.
    expect(sim.presentValue(1234, "analog_output_1")).toBeCloseTo(55.5, 4);
    const slots = await rpValue(1, 1, P.priorityArray);
    expect(slots[7]).toBeCloseTo(55.5, 4);
    expect(slots[11]).toBeCloseTo(11, 4);
    expect(slots.filter((s) => s === null)).toHaveLength(14);
    expect(await rpValue(1, 1, 431)).toEqual([8]); // current-command-priority
    expect((await wp(1, 1, P.presentValue, enc.appNull(), 8)).type).toBe("simple");
    expect(sim.presentValue(1234, "analog_output_1")).toBeCloseTo(11, 4);
    expect((await wp(1, 1, P.presentValue, enc.appNull(), 12)).type).toBe("simple");
    expect(sim.presentValue(1234, "analog_output_1")).toBeCloseTo(rd, 4);
    expect(await rpValue(1, 1, 431)).toEqual([null]);
  });

  it("writes at priority 16 when none is given, for binary and multi-state outputs too", async () => {
    expect((await wp(4, 1, P.presentValue, enc.appEnum(1))).type).toBe("simple");
    expect(sim.presentValue(1234, "binary_output_1")).toBe(true);
    expect((await rpValue(4, 1, P.priorityArray, 16))[0]).toBe(1);
    expect((await wp(14, 1, P.presentValue, enc.appUint(2), 5)).type).toBe("simple");
    expect(sim.presentValue(1234, "multi_state_output_1")).toBe(2);
    expect((await wp(5, 1, P.presentValue, enc.appEnum(0), 3)).type).toBe("simple");
    expect(sim.presentValue(1234, "binary_value_1")).toBe(false);
    expect((await wp(40, 1, P.presentValue, enc.appString("hello"), 9)).type).toBe("simple");
    expect(sim.presentValue(1234, "characterstring_value_1")).toBe("hello");
    expect((await wp(45, 1, P.presentValue, enc.appSigned(-42), 9)).type).toBe("simple");
    expect(sim.presentValue(1234, "integer_value_1")).toBe(-42);
  });

  it("changes the relinquish default", async () => {
    expect((await wp(2, 1, P.relinquishDefault, enc.appReal(3.25))).type).toBe("simple");
    expect(sim.presentValue(1234, "analog_value_1")).toBeCloseTo(3.25, 4);
  });

  it("denies writing an input's present value unless it is out of service", async () => {
    expectError(await wp(0, 2, P.presentValue, enc.appReal(5)), 2, 40); // write-access-denied
    expectError(await wp(3, 1, P.presentValue, enc.appEnum(1)), 2, 40);
    expect((await wp(0, 2, P.outOfService, enc.appBool(true))).type).toBe("simple");
    expect(await rpValue(0, 2, P.statusFlags)).toEqual([[false, false, false, true]]);
    expect((await wp(0, 2, P.presentValue, enc.appReal(99.5))).type).toBe("simple");
    expect(sim.presentValue(1234, "analog_input_2")).toBeCloseTo(99.5, 4);
    expect(await rpValue(0, 2, P.presentValue)).toEqual([99.5]);
    expect((await wp(0, 2, P.outOfService, enc.appBool(false))).type).toBe("simple");
    expectError(await wp(0, 2, P.presentValue, enc.appReal(5)), 2, 40);
  });

  it("answers bad values, types, priorities and targets with the standard errors", async () => {
    expectError(await wp(14, 1, P.presentValue, enc.appUint(0)), 2, 37); // value-out-of-range
    expectError(await wp(14, 1, P.presentValue, enc.appUint(99)), 2, 37);
    expectError(await wp(4, 1, P.presentValue, enc.appEnum(2)), 2, 37);
    expectError(await wp(1, 1, P.presentValue, enc.appUint(3)), 2, 9); // invalid-data-type
    expectError(await wp(1, 1, P.presentValue, enc.appReal(1), 17), 2, 37);
    expectError(await wp(1, 1, P.objectName, enc.appString("x")), 2, 40);
    expectError(await wp(1, 1, P.priorityArray, enc.appReal(1), undefined, 3), 2, 40);
    expectError(await wp(1, 1, 9999, enc.appReal(1)), 2, 32);
    expectError(await wp(1, 9, P.presentValue, enc.appReal(1)), 1, 31);
    expectError(await wp(8, 1234, P.objectName, enc.appString("x")), 2, 40);
  });
});

describe("object identifiers in replies", () => {
  it("echoes the requested object in the ReadProperty-ACK", async () => {
    const r = await rp(dev, 2, 1, P.presentValue);
    if (r.type !== "complex") throw new Error("expected ACK");
    const [id, prop] = decodeItems(r.data);
    expect(objectIdOf((id as { data: Buffer }).data)).toEqual({ type: 2, instance: 1 });
    expect(uintOf((prop as { data: Buffer }).data)).toBe(P.presentValue);
  });
});
