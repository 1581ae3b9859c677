// The real `bacmqtt ingest` process SIGKILLed mid-stream while the gateway keeps polling, then
// started again: its persistent session kept the unacknowledged and the new messages, nothing lost.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterAll, expect, it } from "vitest";
import { eventually, Pipeline, report, sleep } from "./support.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));
const DOWN_S = 10;
let p: Pipeline | undefined;
let child: ChildProcess | undefined;
let ingestStderr = "";
const step = (what: string) => process.stdout.write(`ingest-kill: ${what} at ${new Date().toISOString()}\n`);

const exited = (c: ChildProcess) =>
  new Promise<void>((resolve) =>
    c.exitCode !== null || c.signalCode !== null ? resolve() : c.once("exit", () => resolve()),
  );

afterAll(async () => {
  if (child) {
    child.kill("SIGKILL");
    await exited(child);
  }
  await p?.close();
});

function startIngest(pipe: Pipeline): ChildProcess {
  const c = spawn(
    process.execPath,
    [
      BIN,
      "ingest",
      "--mqtt-url",
      pipe.broker.url,
      "--database-url",
      pipe.db.url,
      "--client-id",
      "ingest-faults-kill",
      "--batch-wait-ms",
      "200",
      "--metrics-port",
      "off",
    ],
    { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, BACMQTT_LOG_LEVEL: "warn" } },
  );
  c.stderr?.on("data", (d: Buffer) => {
    ingestStderr = (ingestStderr + d.toString()).slice(-4000);
  });
  return c;
}

it("loses no reading when the ingest process is SIGKILLed and restarted", { timeout: 300_000 }, async () => {
  const started = Date.now();
  p = await Pipeline.start({ label: "ingestkill", subnet: 82, ingest: false });
  const pipe = p;
  child = startIngest(pipe);
  // The persistent session exists once the ingest has subscribed: rows appear.
  step("started");
  await eventually(async () => (await pipe.storedCount()) > 0, "first rows stored", 1200);
  step("first rows stored");
  await pipe.waitProduced(150, "steady polling");
  const storedAtKill = await pipe.storedCount();
  child.kill("SIGKILL");
  await exited(child);
  const atKill = pipe.produced.size;
  await sleep(DOWN_S * 1000);
  const whileDown = pipe.produced.size - atKill;
  child = startIngest(pipe);
  step("restarted");
  await pipe.waitProduced(100, "polling after the restart");
  step("finishing");
  const t = await pipe.finish(600);
  report("ingest SIGKILL + restart", {
    down_s: DOWN_S,
    stored_at_kill: storedAtKill,
    produced_while_down: whileDown,
    ...t,
    duration_s: Math.round((Date.now() - started) / 1000),
  });
  expect(whileDown).toBeGreaterThan(0);
  expect(t.lostSample, ingestStderr).toEqual([]);
  expect(t.lost).toBe(0);
});
