// Shared plumbing of the BACnet benchmarks (discovery, catalogue, polling): simulated devices spread
// over child processes, the stock library client used as the baseline, statistics and BENCH_ROW
// output. Not a benchmark itself (run.ts only runs *.bench.ts).
import BacnetModule from "@bacnet-js/client";
import { type SimulatorCluster, spawnSimulatorProcesses } from "../simulator/processes.ts";

export const BENCH_OBJECTS = {
  analog_input: 20,
  analog_value: 10,
  binary_input: 10,
  binary_value: 5,
  multi_state_value: 5,
} as const; // 50 points per device

/** `count` devices on 127.0.0.1 free ports, split over `processes` simulator processes. */
export async function startDevices(
  count: number,
  processes: number,
  firstInstance = 100_000,
): Promise<SimulatorCluster> {
  return spawnSimulatorProcesses(
    {
      seed: 1,
      devices: Array.from({ length: count }, (_, i) => ({
        instance: firstInstance + i,
        address: "127.0.0.1",
        port: 0,
        objects: { ...BENCH_OBJECTS },
        // Static values: the simulator spends its CPU on answering, not on drifting inputs.
        changeIntervalMs: 0,
      })),
    },
    processes,
  );
}

// biome-ignore lint/suspicious/noExplicitAny: the library's class under native ESM lives on `.default`
type LibClient = any;

/**
 * The stock @bacnet-js/client, bound to loopback on a free port: the baseline of every row.
 * `apduTimeoutMs` is the library's own request timeout (its default, 3,000 ms, unless a row needs
 * otherwise and says why).
 */
export function libraryClient(options: { apduTimeoutMs?: number } = {}): LibClient {
  // biome-ignore lint/suspicious/noExplicitAny: see LibClient
  const Ctor = ((BacnetModule as any).default ?? BacnetModule) as new (o: object) => LibClient;
  const c = new Ctor({
    port: 0,
    interface: "127.0.0.1",
    broadcastAddress: "127.255.255.255",
    apduTimeout: options.apduTimeoutMs ?? 3000,
    reuseAddr: false,
  });
  c.on("error", () => {});
  return c;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export interface Row {
  benchmark: string;
  row: string;
  unit: string;
  ours: number[];
  base: number[];
  baseline: string;
  target: string;
  /** true when larger is better (rates), false for durations. */
  higherIsBetter: boolean;
  met: (value: number, ratio: number) => boolean;
  saturated: string;
  notes: string;
  /** Runs are paired (same conditions); when set, the ratio is the median of per-run ratios. */
  paired?: boolean;
}

export function emit(r: Row): void {
  const value = round(median(r.ours));
  const baseValue = r.base.length ? round(median(r.base)) : null;
  const perRun = r.ours.map((x, i) => {
    const y = r.base[i] as number;
    return r.higherIsBetter ? x / y : y / x;
  });
  const ratio =
    r.paired && r.base.length === r.ours.length
      ? round(median(perRun), 3)
      : baseValue
        ? round(r.higherIsBetter ? value / baseValue : baseValue / value, 3)
        : null;
  const row = {
    benchmark: r.benchmark,
    row: r.row,
    unit: r.unit,
    value,
    min: round(Math.min(...r.ours)),
    max: round(Math.max(...r.ours)),
    baseline: r.baseline,
    baseline_value: baseValue,
    ratio,
    target: r.target,
    met: r.met(value, ratio ?? 0),
    saturated: r.saturated,
    notes: r.notes,
  };
  process.stdout.write(
    `${r.row}: ${value} ${r.unit} (min ${row.min}, max ${row.max}, runs ${r.ours.length}); baseline ${baseValue ?? "-"} → ratio ${ratio ?? "-"} (${r.higherIsBetter ? "ours/baseline" : "baseline/ours"}); target ${r.target}: ${row.met ? "met" : "NOT met"}\n`,
  );
  process.stdout.write(`BENCH_ROW ${JSON.stringify(row)}\n`);
}

export function round(n: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Aborts the whole benchmark if it runs past its bound (2 minutes by default). */
export function guard(ms = 115_000): NodeJS.Timeout {
  const t = setTimeout(() => {
    process.stderr.write(`benchmark exceeded ${ms} ms; aborting\n`);
    process.exit(2);
  }, ms);
  t.unref();
  return t;
}
