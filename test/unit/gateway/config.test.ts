import { writeFileSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ConfigError } from "../../../common/errors.ts";
import { loadConfig, publicConfig, redactUrl, resolveConfig } from "../../../gateway/config.ts";
import { WritePolicy } from "../../../gateway/write-policy.ts";
import { tempDir } from "../../integration/gateway/helpers.ts";

const tmps: Array<{ remove(): void }> = [];
afterEach(() => {
  for (const t of tmps.splice(0)) t.remove();
});

function yamlFile(text: string): string {
  const t = tempDir();
  tmps.push(t);
  const file = path.join(t.dir, "gateway.yaml");
  writeFileSync(file, text);
  return file;
}

function problemsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error("expected a ConfigError");
}

describe("gateway configuration", () => {
  it("fills documented defaults", () => {
    const c = resolveConfig({ gateway_id: "gw1" });
    expect(c.mqtt).toMatchObject({
      url: "mqtt://127.0.0.1:1883",
      base_topic: "bacmqtt",
      state_throttle_ms: 1000,
    });
    expect(c.bacnet.port).toBe(47808);
    expect(c.polling).toEqual({ interval_s: 10, cov: true, cov_lifetime_s: 300, include: [], exclude: [] });
    expect(c.write).toEqual({ allowlist: [], min_priority: 8, default_priority: 16 });
    expect(c.buffer.fsync).toBe("interval");
    expect(c.devices).toEqual({});
  });

  it("layers file < BACMQTT_GATEWAY__ environment < flags", () => {
    const file = yamlFile(
      "gateway_id: from-file\nmqtt:\n  url: mqtt://file:1883\n  base_topic: site\npolling:\n  interval_s: 30\n",
    );
    const c = loadConfig({
      file,
      env: {
        BACMQTT_GATEWAY__POLLING__INTERVAL_S: "5",
        BACMQTT_GATEWAY__MQTT__PASSWORD: "123",
        BACMQTT_GATEWAY__POLLING__EXCLUDE: "[analog_value_*, 'name:Spare*']",
      },
      overrides: { mqtt: { url: "mqtt://flag:1883" } },
    });
    expect(c.gateway_id).toBe("from-file");
    expect(c.mqtt.url).toBe("mqtt://flag:1883");
    expect(c.mqtt.base_topic).toBe("site");
    expect(c.mqtt.password).toBe("123");
    expect(c.polling.interval_s).toBe(5);
    expect(c.polling.exclude).toEqual(["analog_value_*", "name:Spare*"]);
  });

  it("reports every problem at once", () => {
    const file = yamlFile(
      [
        "gateway_id: 'bad/id'",
        "mqtt:",
        "  url: http://x",
        "  keepalive_s: -1",
        "bacnet:",
        "  bbmd: nonsense:port",
        "discovery:",
        "  low: 10",
        "  high: 5",
        "write:",
        "  min_priority: 20",
        "unknown_section: 1",
      ].join("\n"),
    );
    const problems = problemsOf(() => loadConfig({ file, env: {} }));
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/mqtt\.keepalive_s/),
        expect.stringMatching(/write\.min_priority/),
        expect.stringMatching(/unknown_section|additional/i),
      ]),
    );
    // Schema errors first; semantic checks run once the shape is right.
    const semantic = problemsOf(() =>
      resolveConfig({
        gateway_id: "bad/id",
        mqtt: { url: "http://x" },
        bacnet: { bbmd: "nonsense" },
        discovery: { low: 10, high: 5 },
      }),
    );
    expect(semantic).toEqual([
      `gateway id "bad/id" must not contain '+', '#' or '/'`,
      "mqtt.url: protocol http: is not one of mqtt:, mqtts:, ws:, wss:",
      'bacnet.bbmd: "nonsense" is not ip:port',
      "discovery.low (10) is above discovery.high (5)",
    ]);
  });

  it("reports an unreadable or malformed file", () => {
    expect(problemsOf(() => loadConfig({ file: "/nonexistent/gw.yaml", env: {} }))[0]).toMatch(
      /^\/nonexistent\/gw\.yaml: ENOENT/,
    );
    expect(problemsOf(() => loadConfig({ file: yamlFile("a: [1,\n"), env: {} }))).toHaveLength(1);
  });

  it("never publishes secrets", () => {
    const c = resolveConfig({
      gateway_id: "gw1",
      mqtt: { url: "mqtts://user:s3cret@broker:8883", password: "pw", username: "u", key: "/k.pem" },
    });
    const pub = JSON.stringify(publicConfig(c));
    expect(pub).not.toContain("s3cret");
    expect(pub).not.toContain('"pw"');
    expect(pub).not.toContain("/k.pem");
    expect((publicConfig(c).mqtt as { url: string }).url).toBe("mqtts://broker:8883");
    expect(redactUrl("mqtt://a:b@h:1883")).toBe("mqtt://h:1883");
  });
});

describe("write policy", () => {
  const policy = new WritePolicy(
    resolveConfig({
      gateway_id: "gw1",
      write: { allowlist: ["1001:analog_output_*"], min_priority: 8, default_priority: 16 },
      devices: {
        "1002": { points: { binary_output_1: { writable: true } } },
        "1001": { points: { analog_output_9: { writable: false } } },
      },
    }),
  );
  it("allows listed points at or below the minimum priority", () => {
    expect(policy.check(1001, "analog_output_1", 8)).toBe(8);
    expect(policy.check(1001, "analog_output_1", undefined)).toBe(16);
    expect(policy.check(1002, "binary_output_1", 10)).toBe(10);
  });
  it("refuses points outside the list, points marked not writable, and high priorities", () => {
    expect(() => policy.check(1001, "binary_output_1", 8)).toThrow(/not in the gateway's write allowlist/);
    expect(() => policy.check(1001, "analog_output_9", 8)).toThrow(/not in the gateway's write allowlist/);
    expect(() => policy.check(1001, "analog_output_1", 3)).toThrow(
      "priority 3 is above the configured minimum priority 8",
    );
  });
});
