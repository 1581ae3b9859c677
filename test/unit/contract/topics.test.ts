import { describe, expect, it } from "vitest";
import {
  BRIDGE_TOPICS,
  DEVICE_TOPICS,
  ENDPOINTS,
  Filters,
  nameProblem,
  parsePointId,
  parseTopic,
  pointId,
  Topics,
  topicMatches,
} from "../../../contract/index.ts";

describe("topic builders and parser", () => {
  const t = new Topics("bacmqtt", "gw1");

  it("builds the architecture's topics", () => {
    expect(t.bridge("state")).toBe("bacmqtt/gw1/bridge/state");
    expect(t.request("device/write")).toBe("bacmqtt/gw1/bridge/request/device/write");
    expect(t.response("health_check")).toBe("bacmqtt/gw1/bridge/response/health_check");
    expect(t.device(1001, "readings")).toBe("bacmqtt/gw1/1001/readings");
    expect(t.requestFilter()).toBe("bacmqtt/gw1/bridge/request/#");
    expect(Filters.device("bacmqtt", "meta")).toBe("bacmqtt/+/+/meta");
  });

  it("round-trips every bridge, device, request and response topic", () => {
    for (const base of ["bacmqtt", "site-a/bms"]) {
      const tt = new Topics(base, "gw-02");
      for (const name of BRIDGE_TOPICS) {
        expect(parseTopic(tt.bridge(name), base)).toEqual({ kind: "bridge", base, gateway: "gw-02", name });
      }
      for (const name of DEVICE_TOPICS) {
        for (const device of [0, 1001, 4194303]) {
          expect(parseTopic(tt.device(device, name), base)).toEqual({
            kind: "device",
            base,
            gateway: "gw-02",
            device,
            name,
          });
        }
      }
      for (const endpoint of ENDPOINTS) {
        expect(parseTopic(tt.request(endpoint), base)).toEqual({
          kind: "request",
          base,
          gateway: "gw-02",
          endpoint,
        });
        expect(parseTopic(tt.response(endpoint), base)).toEqual({
          kind: "response",
          base,
          gateway: "gw-02",
          endpoint,
        });
      }
    }
  });

  it("rejects names with wildcards, separators, control characters or nothing in them", () => {
    for (const bad of ["", "a+b", "a#", "a/b", "x\u0000", "tab\there", "$SYS", " padded"]) {
      expect(nameProblem(bad), JSON.stringify(bad)).toBeTypeOf("string");
      expect(() => new Topics("bacmqtt", bad)).toThrow(/gateway id/);
    }
    expect(() => new Topics("a//b", "gw")).toThrow(/base topic level/);
    expect(() => new Topics("", "gw")).toThrow(/base topic/);
    expect(nameProblem("gw_1.site-A")).toBeUndefined();
    expect(() => t.device(4194304, "meta")).toThrow(/device instance/);
    expect(() => t.device(1.5, "meta")).toThrow(/device instance/);
  });

  it("explains why a topic is not part of the contract", () => {
    const cases: [string, RegExp][] = [
      ["other/gw1/bridge/state", /not under base/],
      ["bacmqtt/gw1", /too short/],
      ["bacmqtt/gw1/bridge/nope", /unknown bridge topic/],
      ["bacmqtt/gw1/bridge/request/device/explode", /unknown endpoint/],
      ["bacmqtt/gw1/abc/meta", /neither "bridge" nor a device/],
      ["bacmqtt/gw1/9999999/meta", /out of range/],
      ["bacmqtt/gw1/007/meta", /no leading zeros/],
      ["bacmqtt/gw1/-1/meta", /neither "bridge" nor a device/],
      ["bacmqtt/gw1/1001/meta/extra", /unknown device topic/],
      ["bacmqtt/gw1/1001/nothing", /unknown device topic/],
      ["bacmqtt/g+1/1001/meta", /gateway id/],
    ];
    for (const [topic, re] of cases) {
      const parsed = parseTopic(topic);
      expect("error" in parsed, topic).toBe(true);
      expect((parsed as { error: string }).error).toMatch(re);
    }
  });

  it("matches MQTT filters like a broker does", () => {
    expect(topicMatches("bacmqtt/+/bridge/state", "bacmqtt/gw1/bridge/state")).toBe(true);
    expect(topicMatches("bacmqtt/gw1/#", "bacmqtt/gw1/1001/meta")).toBe(true);
    expect(topicMatches("bacmqtt/gw1/#", "bacmqtt/gw1")).toBe(true);
    expect(topicMatches("bacmqtt/gw1/#", "bacmqtt/gw2/1001/meta")).toBe(false);
    expect(topicMatches("bacmqtt/+/+/meta", "bacmqtt/gw1/1001/state")).toBe(false);
    expect(topicMatches("bacmqtt/+", "bacmqtt/gw1/x")).toBe(false);
    expect(topicMatches("#", "$SYS/broker/uptime")).toBe(false);
    expect(topicMatches("+/broker/uptime", "$SYS/broker/uptime")).toBe(false);
  });
});

describe("point ids", () => {
  it("round-trips standard and proprietary object types", () => {
    for (const [type, inst, id] of [
      [0, 3, "analog_input_3"],
      [19, 0, "multi_state_value_0"],
      [40, 12, "characterstring_value_12"],
      [130, 7, "proprietary_130_7"],
    ] as const) {
      expect(pointId(type, inst)).toBe(id);
      expect(parsePointId(id)).toMatchObject({ objectType: type, instance: inst });
    }
  });

  it("accepts field-engineer spellings and rejects nonsense", () => {
    expect(parsePointId("analog-output:1")).toMatchObject({ objectType: 1, instance: 1 });
    expect(parsePointId("4:2")).toMatchObject({
      objectType: 4,
      instance: 2,
      objectTypeName: "binary_output",
    });
    for (const bad of [
      "",
      "analog_input",
      "foo_bar_1",
      "analog_input_-1",
      "analog_input_4194304",
      "2000:1",
      "_1",
    ]) {
      expect(parsePointId(bad), bad).toBeUndefined();
    }
  });
});
