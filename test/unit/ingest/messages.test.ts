import { describe, expect, it } from "vitest";
import { classify, statusFlagBits, storedValue } from "../../../ingest/messages.ts";
import { parseAge } from "../../../ingest/policies.ts";
import { payloadText } from "../../../ingest/writer.ts";

const buf = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));
const readings = {
  device: 1001,
  source: "poll",
  readings: [{ point: "analog_input_1", value: 21.5, ts: "2026-11-27T08:00:00.000Z" }],
};

describe("classify", () => {
  it("checks reading timestamps against the plausible window, and not when a side is off", () => {
    const at = (ts: string) => buf({ ...readings, readings: [{ ...readings.readings[0], ts }] });
    const now = Date.parse("2026-11-27T08:00:00.000Z");
    const window = { maxFutureMs: 3600_000, minTimeMs: Date.UTC(2000, 0, 1) };
    const kind = (ts: string, w = window) =>
      classify("bacmqtt/gw1/1001/readings", at(ts), "bacmqtt", w, now).kind;
    expect(kind("2026-11-27T08:59:59.000Z")).toBe("readings");
    expect(kind("2026-11-27T09:00:01.000Z")).toBe("dead_letter");
    expect(kind("2000-01-01T00:00:00.000Z")).toBe("readings");
    expect(kind("1999-12-31T23:59:59.999Z")).toBe("dead_letter");
    const off = { maxFutureMs: 0, minTimeMs: Number.NEGATIVE_INFINITY };
    expect(kind("2099-01-01T00:00:00.000Z", off)).toBe("readings");
    expect(kind("1970-01-01T00:00:00.000Z", off)).toBe("readings");
    // The defaults: one day ahead, nothing before 2000.
    expect(
      classify("bacmqtt/gw1/1001/readings", at("2026-11-28T07:59:00.000Z"), "bacmqtt", undefined, now).kind,
    ).toBe("readings");
    expect(
      classify("bacmqtt/gw1/1001/readings", at("2026-11-28T08:01:00.000Z"), "bacmqtt", undefined, now).kind,
    ).toBe("dead_letter");
  });

  it("accepts a valid readings message and names gateway and device from the topic", () => {
    const op = classify("bacmqtt/gw1/1001/readings", buf(readings), "bacmqtt");
    expect(op).toMatchObject({ kind: "readings", gateway: "gw1", device: 1001 });
  });

  it("dead-letters invalid JSON, schema errors (all of them), a device mismatch and non-finite values", () => {
    expect(classify("bacmqtt/gw1/1001/readings", buf("{nope"), "bacmqtt")).toMatchObject({
      kind: "dead_letter",
      error: expect.stringMatching(/not valid JSON/),
    });
    const bad = classify(
      "bacmqtt/gw1/1001/readings",
      buf({ device: 1001, source: "x", readings: [{ point: "AI1", value: 1, ts: "now" }] }),
      "bacmqtt",
    );
    expect(bad.kind).toBe("dead_letter");
    if (bad.kind === "dead_letter") {
      expect(bad.error).toMatch(/source/);
      expect(bad.error).toMatch(/point/);
      expect(bad.error).toMatch(/ts/);
    }
    expect(classify("bacmqtt/gw1/1002/readings", buf(readings), "bacmqtt")).toMatchObject({
      kind: "dead_letter",
      error: expect.stringMatching(/topic says 1002/),
    });
    expect(
      classify(
        "bacmqtt/gw1/1001/readings",
        Buffer.from(JSON.stringify(readings).replace("21.5", "1e999")),
        "bacmqtt",
      ),
    ).toMatchObject({ kind: "dead_letter" });
  });

  it("dead-letters topics outside the contract and ignores what is not stored", () => {
    expect(classify("bacmqtt/gw1/1001/bogus", buf({}), "bacmqtt")).toMatchObject({ kind: "dead_letter" });
    expect(classify("other/gw1/1001/readings", buf(readings), "bacmqtt")).toMatchObject({
      kind: "dead_letter",
    });
    expect(classify("bacmqtt/gw1/1001/meta", Buffer.alloc(0), "bacmqtt")).toEqual({ kind: "ignore" });
    expect(
      classify("bacmqtt/gw1/1001/state", buf({ timestamp: "2026-11-27T08:00:00Z", values: {} }), "bacmqtt"),
    ).toEqual({
      kind: "ignore",
    });
    expect(
      classify(
        "bacmqtt/gw1/bridge/event",
        buf({ type: "scan_started", timestamp: "2026-11-27T08:00:00Z", data: {} }),
        "bacmqtt",
      ),
    ).toEqual({ kind: "ignore" });
    expect(
      classify(
        "bacmqtt/gw1/bridge/event",
        buf({ type: "write", timestamp: "2026-11-27T08:00:00Z", data: { device: 1 } }),
        "bacmqtt",
      ),
    ).toMatchObject({ kind: "write_event", gateway: "gw1" });
  });

  it("handles a multi-level base topic", () => {
    expect(classify("site/a/gw1/1001/readings", buf(readings), "site/a")).toMatchObject({
      kind: "readings",
      gateway: "gw1",
    });
  });
});

describe("storedValue and statusFlagBits", () => {
  it("stores booleans as 1/0 with their texts, multi-state as a number with its state text, strings as text", () => {
    const binary = { object_type: "binary-input", active_text: "On", inactive_text: "Off" };
    expect(storedValue(true, binary)).toEqual({ value: 1, text: "On" });
    expect(storedValue(false, binary)).toEqual({ value: 0, text: "Off" });
    expect(storedValue(1, binary)).toEqual({ value: 1, text: "On" });
    expect(storedValue(true, undefined)).toEqual({ value: 1, text: null });
    expect(storedValue(2, { state_texts: ["Off", "Heat", "Cool"] })).toEqual({ value: 2, text: "Heat" });
    expect(storedValue(9, { state_texts: ["Off"] })).toEqual({ value: 9, text: null });
    expect(storedValue(21.5, undefined)).toEqual({ value: 21.5, text: null });
    expect(storedValue("hello", undefined)).toEqual({ value: null, text: "hello" });
    expect(storedValue(null, binary)).toEqual({ value: null, text: null });
  });

  it("packs status flags into bits 0..3", () => {
    expect(statusFlagBits(undefined)).toBeNull();
    expect(statusFlagBits({ in_alarm: true, fault: false, overridden: true, out_of_service: true })).toBe(13);
    expect(statusFlagBits({ in_alarm: false, fault: true, overridden: false, out_of_service: false })).toBe(
      2,
    );
  });
});

describe("parseAge and payloadText", () => {
  it("accepts ages and off, refuses the rest with a reason", () => {
    expect(parseAge("30 days")).toEqual({ value: "30 days" });
    expect(parseAge(" 2 Years ")).toEqual({ value: "2 years" });
    expect(parseAge("off")).toEqual({ value: null });
    expect(parseAge("30")).toHaveProperty("problem");
    expect(parseAge("1 day; drop table x")).toHaveProperty("problem");
  });

  it("keeps UTF-8 text and stores anything else as base64", () => {
    expect(payloadText(Buffer.from('{"a":"é"}'))).toBe('{"a":"é"}');
    expect(payloadText(Buffer.from([0xff, 0x00, 0x41]))).toBe("base64:/wBB");
    expect(payloadText(Buffer.from("a\u0000b"))).toMatch(/^base64:/);
  });
});
