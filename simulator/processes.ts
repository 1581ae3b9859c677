// Spreads a simulator configuration over several child processes, for benchmarks that need more
// requests per second than one event loop can answer (1,000 devices × 50 points and beyond). Each
// child runs startSimulator on its share; the parent keeps the device list and relays calls.
import { type ChildProcess, fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  type SimDeviceHandle,
  type SimulatorConfig,
  type SimulatorStats,
  validateSimulatorConfig,
} from "./simulator.ts";

export type WorkerRequest =
  | { type: "start"; config: SimulatorConfig }
  | {
      type: "call";
      id: number;
      method: "stats" | "presentValue" | "setPresentValue" | "setOnline" | "close";
      args: unknown[];
    };
export type WorkerReply =
  | { type: "ready"; devices: SimDeviceHandle[] }
  | { type: "failed"; message: string }
  | { type: "result"; id: number; value?: unknown; error?: string };

/** The multi-process counterpart of Simulator; calls cross a process boundary, so they are async. */
export interface SimulatorCluster {
  readonly pids: number[];
  devices(): SimDeviceHandle[];
  presentValue(instance: number, point: string): Promise<unknown>;
  setPresentValue(instance: number, point: string, value: number | boolean | string): Promise<void>;
  setOnline(instance: number, online: boolean): Promise<void>;
  /** Counters summed over all processes (requestRate too). */
  stats(): Promise<SimulatorStats>;
  close(): Promise<void>;
}

const WORKER = fileURLToPath(new URL("./worker.mjs", import.meta.url));
const START_TIMEOUT_MS = 120_000;
const CALL_TIMEOUT_MS = 30_000;

/** Splits devices into n contiguous blocks and routers round-robin; empty shares are dropped. */
export function splitConfig(config: SimulatorConfig, n: number): SimulatorConfig[] {
  const devices = config.devices ?? [];
  const routers = config.routers ?? [];
  const shares: SimulatorConfig[] = Array.from({ length: n }, () => ({
    ...config,
    devices: [],
    routers: [],
  }));
  devices.forEach((d, i) => {
    shares[Math.floor((i * n) / devices.length)]?.devices?.push(d);
  });
  routers.forEach((r, i) => {
    shares[i % n]?.routers?.push(r);
  });
  return shares.filter((s) => (s.devices?.length ?? 0) + (s.routers?.length ?? 0) > 0);
}

class Worker {
  readonly child: ChildProcess;
  readonly calls = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  nextId = 1;
  devices: SimDeviceHandle[] = [];

  constructor(child: ChildProcess) {
    this.child = child;
  }

  start(config: SimulatorConfig): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("simulator worker did not start in time")),
        START_TIMEOUT_MS,
      );
      const onExit = (code: number | null) => {
        clearTimeout(timer);
        reject(new Error(`simulator worker exited during start (code ${code})`));
      };
      this.child.once("exit", onExit);
      this.child.on("message", (raw) => {
        const msg = raw as WorkerReply;
        if (msg.type === "ready") {
          clearTimeout(timer);
          this.child.off("exit", onExit);
          this.devices = msg.devices;
          resolve();
        } else if (msg.type === "failed") {
          clearTimeout(timer);
          this.child.off("exit", onExit);
          reject(new Error(msg.message));
        } else if (msg.type === "result") {
          const call = this.calls.get(msg.id);
          if (!call) return;
          this.calls.delete(msg.id);
          if (msg.error !== undefined) call.reject(new Error(msg.error));
          else call.resolve(msg.value);
        }
      });
      this.child.send({ type: "start", config } satisfies WorkerRequest);
    });
  }

  call(method: Extract<WorkerRequest, { type: "call" }>["method"], args: unknown[]): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (!this.child.connected) {
        reject(new Error("simulator worker is gone"));
        return;
      }
      const id = this.nextId++;
      const timer = setTimeout(() => {
        this.calls.delete(id);
        reject(new Error(`simulator worker: ${method} timed out`));
      }, CALL_TIMEOUT_MS);
      this.calls.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.child.send({ type: "call", id, method, args } satisfies WorkerRequest);
    });
  }

  stop(): Promise<void> {
    return new Promise((resolve) => {
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        resolve();
        return;
      }
      const kill = setTimeout(() => this.child.kill("SIGKILL"), 5000);
      this.child.once("exit", () => {
        clearTimeout(kill);
        resolve();
      });
      this.call("close", []).catch(() => this.child.kill("SIGTERM"));
    });
  }
}

export async function spawnSimulatorProcesses(config: SimulatorConfig, n: number): Promise<SimulatorCluster> {
  validateSimulatorConfig(config);
  if (!Number.isInteger(n) || n < 1) throw new RangeError("process count must be a positive integer");
  const shares = splitConfig(config, n);
  const workers = shares.map(
    () =>
      new Worker(
        fork(WORKER, [], {
          stdio: ["ignore", "inherit", "inherit", "ipc"],
          env: { ...process.env, BACMQTT_LOG_LEVEL: process.env.BACMQTT_LOG_LEVEL ?? "warn" },
        }),
      ),
  );
  for (const w of workers) w.child.on("error", () => w.child.kill("SIGKILL"));
  const results = await Promise.allSettled(workers.map((w, i) => w.start(shares[i] as SimulatorConfig)));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) {
    await Promise.all(workers.map((w) => w.stop()));
    throw (failed as PromiseRejectedResult).reason;
  }
  const owner = new Map<number, Worker>();
  for (const w of workers) for (const d of w.devices) owner.set(d.instance, w);
  const of = (instance: number) => {
    const w = owner.get(instance);
    if (!w) throw new RangeError(`no simulated device ${instance}`);
    return w;
  };
  return {
    pids: workers.map((w) => w.child.pid ?? 0),
    devices: () => workers.flatMap((w) => w.devices),
    presentValue: (instance, point) => of(instance).call("presentValue", [instance, point]),
    setPresentValue: async (instance, point, value) => {
      await of(instance).call("setPresentValue", [instance, point, value]);
    },
    setOnline: async (instance, online) => {
      await of(instance).call("setOnline", [instance, online]);
    },
    stats: async () => {
      const all = (await Promise.all(workers.map((w) => w.call("stats", [])))) as SimulatorStats[];
      const sum = { ...(all[0] as SimulatorStats) };
      for (const s of all.slice(1))
        for (const k of Object.keys(sum) as (keyof SimulatorStats)[]) sum[k] += s[k];
      return sum;
    },
    close: async () => {
      await Promise.all(workers.map((w) => w.stop()));
    },
  };
}
