// Keeps docs/gateway.md honest: every setting of the configuration schema is documented, with its
// default, and every command-line flag appears.
import { readFileSync } from "node:fs";
import type { TSchema } from "@sinclair/typebox";
import { describe, expect, it } from "vitest";
import { gatewayCommand } from "../../../gateway/cli.ts";
import { GatewayConfigSchema } from "../../../gateway/config.ts";

const doc = readFileSync(new URL("../../../docs/gateway.md", import.meta.url), "utf8");
const yamlBlock = /## Configuration file[\s\S]*?```yaml\n([\s\S]*?)```/.exec(doc)?.[1] ?? "";

function settings(schema: TSchema, prefix = ""): { path: string; schema: TSchema }[] {
  const props = (schema as { properties?: Record<string, TSchema> }).properties ?? {};
  const out: { path: string; schema: TSchema }[] = [];
  for (const [key, sub] of Object.entries(props)) {
    const path = prefix ? `${prefix}.${key}` : key;
    if ((sub as { type?: string }).type === "object" && (sub as { properties?: unknown }).properties)
      out.push(...settings(sub, path));
    else out.push({ path, schema: sub });
  }
  return out;
}

/** The documented line for a setting: searched after its section's header, so repeated keys resolve. */
function docLine(path: string): string | undefined {
  const parts = path.split(".");
  const key = parts.at(-1) as string;
  let from = 0;
  if (parts.length > 1) {
    const section = new RegExp(`^${parts[0]}:`, "m").exec(yamlBlock);
    if (!section) return undefined;
    from = section.index;
  }
  return new RegExp(`^\\s*${key}:(.*)$`, "m").exec(yamlBlock.slice(from))?.[1]?.trim();
}

describe("docs/gateway.md", () => {
  it("documents every setting in the configuration block", () => {
    const missing: string[] = [];
    for (const { path } of settings(GatewayConfigSchema)) {
      if (docLine(path) === undefined) missing.push(path);
    }
    expect(missing).toEqual([]);
  });

  it("shows each scalar default as it is in the schema", () => {
    const wrong: string[] = [];
    for (const { path, schema } of settings(GatewayConfigSchema)) {
      const def = (schema as { default?: unknown }).default;
      if (def === undefined || typeof def === "object" || path === "gateway_id") continue;
      const line = docLine(path)?.split(/\s+/)[0];
      if (line !== String(def)) wrong.push(`${path}: doc ${line}, schema ${String(def)}`);
    }
    expect(wrong).toEqual([]);
  });

  it("lists every command-line flag", () => {
    for (const flag of Object.keys(gatewayCommand.options)) expect(doc).toContain(`--${flag}`);
  });
});
