// The gateway as users run it (`bin/bacmqtt.mjs gateway --config …`), for fault tests that kill it
// or run it under another clock: its config file, start/kill/exit, and the readings a subscriber on
// the broker saw from it. Owns only the processes it starts.
import { type ChildProcess, spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { stringify } from "yaml";
import { type RunningBroker, startBroker } from "../../broker/index.ts";
import { IngestService } from "../../ingest/service.ts";
import type { Received } from "../integration/gateway/helpers.ts";

const BIN = fileURLToPath(new URL("../../bin/bacmqtt.mjs", import.meta.url));

export function writeGatewayConfig(dir: string, config: Record<string, unknown>): string {
  const file = path.join(dir, "gateway.yaml");
  writeFileSync(file, stringify(config));
  return file;
}

export class GatewayProcess {
  child: ChildProcess | undefined;
  stderr = "";
  constructor(
    readonly config: string,
    readonly env: NodeJS.ProcessEnv = {},
  ) {}

  start(): ChildProcess {
    const c = spawn(process.execPath, [BIN, "gateway", "--config", this.config], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, BACMQTT_LOG_LEVEL: "warn", ...this.env },
    });
    c.stderr?.on("data", (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-8000);
    });
    this.child = c;
    return c;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Sends a signal and waits for the exit (SIGKILL after 10 s if it is still there). */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const c = this.child;
    if (!c || !this.running) return;
    const exited = new Promise<void>((resolve) => c.once("exit", () => resolve()));
    c.kill(signal);
    const timer = setTimeout(() => c.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }
}

export interface SeenReading {
  device: number;
  point: string;
  ts: string;
  historical: boolean;
  /** Index of the MQTT message in the recorder (arrival order). */
  index: number;
}

/** Readings (without error) in the messages of a recorder subscribed to `{base}/{gw}/#`. */
export function readingsIn(messages: Received[], from = 0, to = messages.length): SeenReading[] {
  const out: SeenReading[] = [];
  for (let i = from; i < to; i++) {
    const m = messages[i] as Received;
    if (!m.topic.endsWith("/readings")) continue;
    const p = JSON.parse(m.payload) as {
      device: number;
      historical?: boolean;
      readings: { point: string; ts: string; error?: unknown }[];
    };
    for (const r of p.readings)
      if (r.error === undefined)
        out.push({ device: p.device, point: r.point, ts: r.ts, historical: p.historical === true, index: i });
  }
  return out;
}

export const readingKey = (r: { device: number; point: string; ts: string }) =>
  `${r.device}/${r.point}@${new Date(r.ts).toISOString()}`;

/**
 * A broker on port 0 and an ingest writing to `dbUrl` with the fixed client id, as the fault tests
 * that run the gateway as a process use them; both are registered in `closers` (run in reverse).
 */
export async function startBrokerAndIngest(
  dbUrl: string,
  clientId: string,
  closers: (() => Promise<unknown>)[],
): Promise<{ broker: RunningBroker; ingest: IngestService }> {
  const broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
  closers.push(() => broker.close());
  const ingestPool = new pg.Pool({ connectionString: dbUrl, max: 2 });
  const ingest = new IngestService({
    mqttUrl: broker.url,
    pool: ingestPool,
    dialect: "portable",
    clientId,
    retentionIntervalMs: 0,
  });
  await ingest.start();
  closers.push(() => ingestPool.end());
  closers.push(() => ingest.stop());
  return { broker, ingest };
}
