// `npm run bench`: runs every bench/*.bench.ts one after another (never in parallel: they would
// measure each other), collects their BENCH_ROW lines and writes docs/benchmarks.md.
// Usage: npm run bench [-- name ...]   (names filter by file, e.g. `npm run bench -- broker ingest`)
import { spawn } from "node:child_process";
import { readdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";

export interface BenchRow {
  benchmark: string;
  row: string;
  unit: string;
  value: number | null;
  min?: number | null;
  max?: number | null;
  baseline?: string | null;
  baseline_value?: number | null;
  ratio?: number | null;
  target?: string | null;
  met?: boolean | null;
  saturated?: string | null;
  notes?: string | null;
}

const benchDir = fileURLToPath(new URL(".", import.meta.url));
const root = fileURLToPath(new URL("..", import.meta.url));
const PER_BENCH_TIMEOUT_MS = Number(process.env.BENCH_TIMEOUT_MS ?? 6 * 60_000);

export function parseRows(output: string): BenchRow[] {
  const rows: BenchRow[] = [];
  for (const line of output.split("\n")) {
    const at = line.indexOf("BENCH_ROW ");
    if (at < 0) continue;
    try {
      rows.push(JSON.parse(line.slice(at + "BENCH_ROW ".length)) as BenchRow);
    } catch {
      // A malformed row is reported by its absence in the table, with the bench's exit status.
    }
  }
  return rows;
}

/** The error a failed benchmark printed: from its last line naming an error (Node's trailer is useless), else the last 3 lines. */
export function errorTail(stderr: string): string {
  const lines = stderr
    .trim()
    .split("\n")
    .filter((l) => l.trim() !== "" && !l.startsWith('{"level":'));
  let at = -1;
  for (let i = lines.length - 1; i >= 0 && at < 0; i--)
    if (/error|exception|reject/i.test(lines[i] as string)) at = i;
  return (at >= 0 ? lines.slice(at, at + 6) : lines.slice(-3)).map((l) => l.trim()).join(" | ");
}

function runOne(file: string): Promise<{ rows: BenchRow[]; code: number | null; ms: number; tail: string }> {
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ["--import", "tsx", `${benchDir}${file}`], {
      cwd: root,
      env: { ...process.env, BACMQTT_LOG_LEVEL: process.env.BACMQTT_LOG_LEVEL ?? "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      process.stdout.write(d);
    });
    child.stderr.on("data", (d: Buffer) => {
      err = (err + d.toString()).slice(-4000);
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), PER_BENCH_TIMEOUT_MS);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({
        rows: parseRows(out),
        code,
        ms: Date.now() - started,
        tail: errorTail(err),
      });
    });
  });
}

const fmt = (n: number | null | undefined, digits = 0): string => {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (Math.abs(n) >= 1000) return Math.round(n).toLocaleString("en-US");
  return n.toFixed(Math.abs(n) < 10 && digits === 0 ? 2 : digits);
};

export function renderTable(rows: BenchRow[], failures: string[], machine: string): string {
  const lines = [
    "# Benchmarks",
    "",
    "Written by `npm run bench` (bench/run.ts); each benchmark measures our code and its baseline in the",
    "same run, so the ratio holds on a noisy machine. Figures are medians of several runs (min–max).",
    "",
    `Machine: ${machine}`,
    "",
    "| benchmark | row | figure | min–max | baseline | baseline figure | ratio | target | met | saturated | notes |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  const esc = (s: string | null | undefined) => (s ?? "").replace(/\|/g, "\\|").replace(/\n/g, " ");
  for (const r of rows) {
    lines.push(
      `| ${esc(r.benchmark)} | ${esc(r.row)} | ${fmt(r.value)} ${esc(r.unit)} | ${fmt(r.min)}–${fmt(r.max)} | ${esc(r.baseline) || "—"} | ${fmt(r.baseline_value)} | ${r.ratio === null || r.ratio === undefined ? "—" : `${r.ratio.toFixed(2)}×`} | ${esc(r.target) || "—"} | ${r.met === true ? "yes" : r.met === false ? "**no**" : "—"} | ${esc(r.saturated)} | ${esc(r.notes)} |`,
    );
  }
  const missed = rows.filter((r) => r.met === false);
  lines.push(
    "",
    "## Rows that miss their target",
    "",
    ...(missed.length
      ? missed.map(
          (r) =>
            `- **${r.benchmark}, ${r.row}**: ${fmt(r.value)} ${r.unit}${r.ratio === null || r.ratio === undefined ? "" : ` = ${r.ratio.toFixed(2)}× ${r.baseline ?? "the baseline"}`} against ${r.target}. Saturated: ${r.saturated ?? "—"}. ${r.notes ?? ""}`,
        )
      : ["None in this run."]),
  );
  if (failures.length)
    lines.push("", "## Benchmarks that did not finish", "", ...failures.map((f) => `- ${f}`));
  return `${lines.join("\n")}\n`;
}

async function main(): Promise<void> {
  const filters = process.argv.slice(2);
  const files = readdirSync(benchDir)
    .filter((f) => f.endsWith(".bench.ts"))
    .filter((f) => filters.length === 0 || filters.some((n) => f.includes(n)))
    .sort();
  if (files.length === 0) {
    process.stderr.write("no benchmark matched\n");
    process.exitCode = 1;
    return;
  }
  const rows: BenchRow[] = [];
  const failures: string[] = [];
  for (const file of files) {
    process.stdout.write(`\n### ${file}\n`);
    const result = await runOne(file);
    rows.push(...result.rows);
    if (result.code !== 0 || result.rows.length === 0)
      failures.push(
        `${file}: exit ${result.code ?? "killed (timeout)"} after ${(result.ms / 1000).toFixed(0)} s, ${result.rows.length} rows${result.tail ? ` — ${result.tail}` : ""}`,
      );
  }
  const cpu = os.cpus()[0]?.model ?? "unknown CPU";
  const machine = `${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()}, Node ${process.version}, ${new Date().toISOString().slice(0, 16)}Z`;
  const out = new URL("../docs/benchmarks.md", import.meta.url);
  writeFileSync(out, renderTable(rows, failures, machine));
  process.stdout.write(`\nwrote docs/benchmarks.md: ${rows.length} rows, ${failures.length} failures\n`);
  if (failures.length) process.exitCode = 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
