import { describe, expect, it } from "vitest";
import { errorTail, parseRows, renderTable } from "../../../bench/run.ts";

describe("bench runner", () => {
  it("collects BENCH_ROW lines and ignores everything else", () => {
    const out = [
      "warming up",
      'BENCH_ROW {"benchmark":"broker","row":"QoS 0, 1→1","unit":"msg/s","value":51234,"min":50000,"max":52000,"baseline":"mosquitto","baseline_value":60000,"ratio":0.85,"target":"≥ 0.5×","met":true}',
      "BENCH_ROW {not json",
      "done",
    ].join("\n");
    const rows = parseRows(out);
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ benchmark: "broker", value: 51234, ratio: 0.85 });
  });

  it("renders a table row per figure and lists benchmarks that did not finish", () => {
    const md = renderTable(
      [
        {
          benchmark: "ingest",
          row: "rows | s",
          unit: "readings/s",
          value: 123456.7,
          ratio: 0.71,
          met: false,
          target: "≥ 0.7×",
        },
      ],
      ["api.bench.ts: exit 1"],
      "test machine",
    );
    expect(md).toContain("| ingest | rows \\| s | 123,457 readings/s |");
    expect(md).toContain("0.71×");
    expect(md).toContain("**no**");
    expect(md).toContain("- api.bench.ts: exit 1");
    expect(md).toContain("Machine: test machine");
    // A missed target is listed again below the table, with its figures.
    expect(md).toContain("## Rows that miss their target");
    expect(md).toContain("- **ingest, rows | s**: 123,457 readings/s = 0.71× the baseline against ≥ 0.7×.");
    expect(renderTable([], [], "m")).toContain("None in this run.");
  });

  it("reports the error a failed benchmark printed, not Node's trailer", () => {
    const stderr = [
      '{"level":40,"msg":"noise"}',
      "node:events:497",
      "      throw er; // Unhandled 'error' event",
      "Error: Connection terminated unexpectedly",
      "    at Connection.<anonymous> (client.js:132:73)",
      "}",
      "",
      "Node.js v20.20.2",
    ].join("\n");
    expect(errorTail(stderr)).toMatch(/^Error: Connection terminated unexpectedly \| at Connection/);
    expect(errorTail("a\nb\nc\nd")).toBe("b | c | d");
  });
});
