import { describe, expect, it } from "vitest";
import {
  BridgeState,
  DeviceReadings,
  ErrorResponse,
  parsePayload,
  Requests,
  Responses,
  SCHEMAS,
  validate,
} from "../../../contract/index.ts";
import { jsonSchemaDocument } from "../../../contract/json-schema.ts";

describe("payload validation", () => {
  it("accepts a valid write request and echoes its shape", () => {
    const r = validate(Requests["device/write"], {
      transaction: "t1",
      device: 1001,
      point: "analog_output_1",
      value: 22.5,
      priority: 8,
    });
    expect(r.ok).toBe(true);
  });

  it("accepts relinquish (value null) and rejects a missing value", () => {
    expect(validate(Requests["device/write"], { device: 1, point: "binary_output_1", value: null }).ok).toBe(
      true,
    );
    const r = validate(Requests["device/write"], { device: 1, point: "binary_output_1" });
    expect(r.ok).toBe(false);
  });

  it("lists every problem at once, with the path of each", () => {
    const r = validate(Requests["device/write"], {
      device: -1,
      point: "Analog Output 1",
      value: { nested: true },
      priority: 17,
      extra: 1,
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    const text = r.errors.join("\n");
    expect(text).toMatch(/\/device/);
    expect(text).toMatch(/\/point/);
    expect(text).toMatch(/\/value/);
    expect(text).toMatch(/\/priority/);
    expect(text).toMatch(/\/extra/);
  });

  it("caps the error list so hostile payloads cannot produce megabytes of text", () => {
    const readings = Array.from({ length: 500 }, () => ({ point: "BAD", value: {}, ts: "yesterday" }));
    const r = validate(DeviceReadings, { device: 1, source: "poll", readings });
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.errors.length).toBeLessThanOrEqual(21);
  });

  it("parses raw MQTT payloads and explains bad JSON, wrong types and oversize", () => {
    expect(
      parsePayload(
        BridgeState,
        Buffer.from('{"state":"online","bd_seq":3,"timestamp":"2026-01-01T00:00:00.000Z"}'),
      ).ok,
    ).toBe(true);
    const notJson = parsePayload(BridgeState, Buffer.from("{state:online"));
    expect(notJson.ok === false && notJson.errors[0]).toMatch(/not valid JSON/);
    const wrong = parsePayload(BridgeState, '{"state":"sleeping","bd_seq":"3","timestamp":"noon"}');
    expect(wrong.ok === false && wrong.errors.length).toBeGreaterThanOrEqual(3);
    const huge = parsePayload(BridgeState, Buffer.alloc(2 * 1024 * 1024, 0x20));
    expect(huge.ok === false && huge.errors[0]).toMatch(/exceeds/);
  });

  it("validates responses as ok-with-data or error envelope", () => {
    expect(
      validate(Responses.health_check, {
        status: "ok",
        data: { healthy: true, problems: [] },
        transaction: 7,
      }).ok,
    ).toBe(true);
    expect(
      validate(ErrorResponse, {
        status: "error",
        error: { code: "GW_ERR_DEVICE_OFFLINE", message: "device 1001 is offline" },
        transaction: "t9",
      }).ok,
    ).toBe(true);
    expect(validate(Responses.health_check, { status: "ok", data: { healthy: "yes" } }).ok).toBe(false);
  });

  it("exports every schema as plain JSON Schema", () => {
    const doc = jsonSchemaDocument();
    const defs = doc.$defs as Record<string, { type?: string; anyOf?: unknown }>;
    expect(Object.keys(defs).sort()).toEqual(Object.keys(SCHEMAS).sort());
    for (const [name, schema] of Object.entries(defs)) {
      expect(schema.type === "object" || Array.isArray(schema.anyOf), name).toBe(true);
    }
    // Round-trips through JSON, so no TypeBox-only symbols leak into what consumers see.
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc);
  });
});
