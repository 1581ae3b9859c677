// Every command of `bacmqtt` answers --help through the real entry point (bin/bacmqtt.mjs), the
// way a user runs it after `npm ci`.
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { COMMANDS } from "../../../cli/main.ts";

const bin = fileURLToPath(new URL("../../../bin/bacmqtt.mjs", import.meta.url));
const run = (...args: string[]) =>
  spawnSync(process.execPath, [bin, ...args], {
    encoding: "utf8",
    timeout: 60_000,
    env: { ...process.env, BACMQTT_LOG_LEVEL: "silent" },
  });

describe("bacmqtt CLI", () => {
  it("lists every command", () => {
    const r = run("--help");
    expect(r.status).toBe(0);
    for (const name of Object.keys(COMMANDS)) expect(r.stdout).toContain(`  ${name} `);
  });

  it.each(Object.keys(COMMANDS))("%s --help prints its usage and exits 0", (name) => {
    const r = run(name, "--help");
    expect(r.stderr).toBe("");
    expect(r.status).toBe(0);
    expect(r.stdout).toContain(`Usage: bacmqtt ${name}`);
    expect(r.stdout).toContain("--help");
  });

  it("refuses an unknown command with exit 2", () => {
    const r = run("frobnicate");
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it("reports every bad option at once and exits 1", () => {
    const r = run("schema", "--bogus", "--also-bogus");
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/unknown option --bogus/);
    expect(r.stderr).toMatch(/unknown option --also-bogus/);
  });

  it("prints the version", () => {
    const r = run("--version");
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
