// Interop: Mosquitto's own command-line clients (Debian package mosquitto-clients) against our broker.
import { execFile } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type RunningBroker, startBroker } from "../../../broker/index.ts";
import { Topics } from "../../../contract/index.ts";
import { connect, record, subscribe, uniqueId, user, waitFor } from "./helpers.ts";

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

// Async on purpose: the broker runs in this process, so a synchronous child would starve it.
function run(cmd: string, args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === "number" ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

let broker: RunningBroker;
const topics = new Topics("bacmqtt", uniqueId("gw"));

beforeAll(async () => {
  broker = await startBroker({
    port: 0,
    users: [
      await user("gw", "gw-pass", "gateway", topics.gateway),
      await user("admin", "admin-pass", "admin"),
    ],
    sysInterval: 0,
  });
});

afterAll(async () => {
  await broker?.close();
});

const common = () => ["-h", "127.0.0.1", "-p", String(broker.tcpPort), "-V", "mqttv311"];

describe("mosquitto clients against our broker", () => {
  it("mosquitto_pub publishes as a gateway user, an MQTT.js client receives it", async () => {
    const watcher = await connect(broker.url, { username: "admin", password: "admin-pass" });
    const got = record(watcher);
    await subscribe(watcher, topics.allFilter());
    const res = await run("mosquitto_pub", [
      ...common(),
      ...["-u", "gw", "-P", "gw-pass", "-q", "1", "-t", topics.device(5, "readings"), "-m", '{"x":1}'],
    ]);
    expect(res).toMatchObject({ code: 0 });
    await waitFor("message from mosquitto_pub", () => got.length === 1);
    expect(got[0]).toMatchObject({ topic: topics.device(5, "readings"), payload: '{"x":1}', qos: 1 });
    await watcher.endAsync();
  });

  it("mosquitto_sub receives a retained message published by MQTT.js", async () => {
    const pub = await connect(broker.url, { username: "admin", password: "admin-pass" });
    await pub.publishAsync(topics.bridge("state"), '{"state":"online"}', { qos: 1, retain: true });
    const res = await run("mosquitto_sub", [
      ...common(),
      ...[
        "-u",
        "admin",
        "-P",
        "admin-pass",
        "-q",
        "1",
        "-t",
        topics.bridge("state"),
        "-C",
        "1",
        "-W",
        "10",
        "-v",
      ],
    ]);
    expect(res.code).toBe(0);
    expect(res.stdout.trim()).toBe(`${topics.bridge("state")} {"state":"online"}`);
    await pub.endAsync();
  });

  it("mosquitto_pub and mosquitto_sub are refused with a wrong password", async () => {
    const res = await run("mosquitto_sub", [
      ...common(),
      ...["-u", "admin", "-P", "wrong", "-t", "#", "-C", "1", "-W", "5"],
    ]);
    expect(res.code).not.toBe(0);
    expect(res.stderr).toMatch(/bad user name or password/i);
    const anon = await run("mosquitto_pub", [...common(), "-t", "x", "-m", "y"]);
    expect(anon.code).not.toBe(0);
    expect(anon.stderr).toMatch(/not authori[sz]ed/i);
  });
});
