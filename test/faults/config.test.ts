// Invalid gateway YAML files given to the real CLI (`bacmqtt gateway --config …`): every problem is
// printed at once, and the process exits 1 before binding or connecting anything.
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import { tempDir } from "../integration/gateway/helpers.ts";
import { report } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const tmp = tempDir("bacmqtt-faults-config-");
afterAll(() => tmp.remove());

function run(name: string, text: string | null) {
  const file = path.join(tmp.dir, name);
  if (text !== null) writeFileSync(file, text);
  const r = spawnSync(process.execPath, [BIN, "gateway", "--config", file], {
    encoding: "utf8",
    timeout: 30_000,
    env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" },
  });
  return { status: r.status, signal: r.signal, out: `${r.stderr}${r.stdout}` };
}

const MANY = `gateway_id: "has spaces/and slash"
mqtt:
  url: ftp://example.invalid
  reconnect_period_ms: 5
bacnet:
  port: 99999
  retries: 42
polling:
  interval_s: -1
buffer:
  fsync: sometimes
`;

it("reports every problem of an invalid file at once and exits 1", { timeout: 60_000 }, () => {
  const r = run("many.yaml", MANY);
  const problems = r.out.split("\n").filter((l) => /^\s*-\s/.test(l));
  report("config: one file, several errors", { exit: r.status, problems_printed: problems.length });
  expect(r.status).toBe(1);
  for (const field of [
    "gateway id",
    "mqtt.url",
    "reconnect_period_ms",
    "port",
    "retries",
    "interval_s",
    "fsync",
  ])
    expect(r.out, field).toContain(field);
  expect(problems.length).toBeGreaterThanOrEqual(7);
});

it.each([
  ["not YAML", "bacnet: [unclosed\n  port: : :"],
  ["a list, not a mapping", "- gateway_id\n- bacnet\n"],
  ["a scalar", "42\n"],
  ["wrong types", "bacnet: yes\npolling: [1, 2]\nmqtt: 7\n"],
  ["missing file", null],
])("refuses %s with exit 1", { timeout: 60_000 }, (name, text) => {
  const r = run(`${name.replace(/\W+/g, "-")}.yaml`, text);
  report(`config: ${name}`, { exit: r.status, signal: r.signal, first_line: r.out.split("\n")[0] });
  expect(r.signal).toBeNull();
  expect(r.status).toBe(1);
  expect(r.out.length).toBeGreaterThan(0);
});
