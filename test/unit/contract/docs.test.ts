// Keeps docs/mqtt-api.md honest: every example validates against the schema it names, every
// schema has an example, and every topic and endpoint of the contract is documented.
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { BRIDGE_TOPICS, DEVICE_TOPICS, ENDPOINTS, SCHEMAS, validate } from "../../../contract/index.ts";

const doc = readFileSync(new URL("../../../docs/mqtt-api.md", import.meta.url), "utf8");
const examples = [...doc.matchAll(/<!-- schema: ([a-z_]+) -->\s*```json\n([\s\S]*?)```/g)].map((m) => ({
  schema: m[1] as string,
  json: m[2] as string,
}));

describe("docs/mqtt-api.md", () => {
  it("has examples to check", () => {
    expect(examples.length).toBeGreaterThanOrEqual(Object.keys(SCHEMAS).length);
  });

  it.each(examples.map((e, i) => [`${i + 1}: ${e.schema}`, e] as const))(
    "example %s validates",
    (_label, example) => {
      const schema = SCHEMAS[example.schema];
      expect(schema, `unknown schema name ${example.schema}`).toBeDefined();
      const parsed: unknown = JSON.parse(example.json);
      const result = validate(schema!, parsed);
      expect(result.ok ? [] : result.errors).toEqual([]);
    },
  );

  it("shows an example for every schema", () => {
    const documented = new Set(examples.map((e) => e.schema));
    expect(Object.keys(SCHEMAS).filter((s) => !documented.has(s))).toEqual([]);
  });

  it("documents every topic and endpoint", () => {
    for (const t of BRIDGE_TOPICS) expect(doc).toContain(`bridge/${t}`);
    for (const t of DEVICE_TOPICS) expect(doc).toContain(`{device}/${t}`);
    for (const e of ENDPOINTS) expect(doc).toContain(`### \`${e}\``);
  });
});
