import { describe, expect, it } from "vitest";
import { defineCommand, formatHelp, intOption, parseCommand } from "../../../common/cli.ts";
import { ConfigError } from "../../../common/errors.ts";

const spec = defineCommand({
  name: "demo",
  summary: "A demo command",
  usage: "DEVICE [options]",
  positionals: [1, 1],
  options: {
    port: { type: "string", description: "Port", default: "1883", value: "N" },
    "mqtt-url": { type: "string", description: "Broker URL", value: "URL" },
    verbose: { type: "boolean", description: "More output" },
    target: { type: "string", multiple: true, description: "Targets" },
    secret: { type: "string", description: "Not from env", env: false },
  },
  run: () => 0,
});

describe("command-line parsing", () => {
  it("takes flags over environment over defaults", () => {
    const env = { BACMQTT_PORT: "2000", BACMQTT_MQTT_URL: "mqtt://env", BACMQTT_SECRET: "leak" };
    const a = parseCommand(spec, ["1001"], env);
    expect(a.values.port).toBe("2000");
    expect(a.values["mqtt-url"]).toBe("mqtt://env");
    expect(a.values.secret).toBeUndefined();
    const b = parseCommand(spec, ["1001", "--port", "3000"], env);
    expect(b.values.port).toBe("3000");
    expect(parseCommand(spec, ["1001"], {}).values.port).toBe("1883");
  });

  it("reads booleans and lists from the environment", () => {
    const a = parseCommand(spec, ["1"], {
      BACMQTT_VERBOSE: "yes",
      BACMQTT_TARGET: "10.0.0.1, 10.0.0.2:47809",
    });
    expect(a.values.verbose).toBe(true);
    expect(a.values.target).toEqual(["10.0.0.1", "10.0.0.2:47809"]);
  });

  it("reports every problem at once", () => {
    try {
      parseCommand(spec, ["--bogus", "--nope=1", "1"], {});
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).problems).toEqual(["unknown option --bogus", "unknown option --nope"]);
    }
    try {
      parseCommand(spec, ["a", "b"], { BACMQTT_VERBOSE: "maybe" });
      expect.unreachable();
    } catch (err) {
      const problems = (err as ConfigError).problems;
      expect(problems).toHaveLength(2);
      expect(problems[0]).toMatch(/BACMQTT_VERBOSE=maybe/);
      expect(problems[1]).toMatch(/unexpected argument/);
    }
  });

  it("collects integer problems instead of throwing at the first", () => {
    const problems: string[] = [];
    expect(intOption({ a: "12" }, "a", problems, { min: 1 })).toBe(12);
    expect(intOption({ a: "1.5" }, "a", problems)).toBeUndefined();
    expect(intOption({ a: "70000" }, "a", problems, { max: 65535 })).toBeUndefined();
    expect(problems).toHaveLength(2);
  });

  it("generates help with every option, its default and its environment variable", () => {
    const help = formatHelp(spec);
    expect(help).toMatch(/Usage: bacmqtt demo DEVICE \[options\]/);
    expect(help).toMatch(/--port N\s+Port \(default: 1883; env: BACMQTT_PORT\)/);
    expect(help).toMatch(/--mqtt-url URL\s+Broker URL \(env: BACMQTT_MQTT_URL\)/);
    expect(help).not.toMatch(/BACMQTT_SECRET/);
    expect(help).toMatch(/-h, --help/);
  });

  it("returns help without validating positionals", () => {
    expect(parseCommand(spec, ["--help"], {}).help).toBe(true);
  });
});
