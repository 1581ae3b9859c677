// Command-line plumbing shared by every `bacmqtt <command>`: option specs with descriptions,
// `BACMQTT_…` environment overrides, generated `--help`, and every argument error reported at once.
import { parseArgs } from "node:util";
import { ConfigError } from "./errors.ts";

export interface OptionSpec {
  type: "string" | "boolean";
  description: string;
  short?: string;
  multiple?: boolean;
  default?: string | boolean;
  /** Environment variable that supplies a value when the flag is absent; defaults to BACMQTT_<NAME>. */
  env?: string | false;
  /** Placeholder shown in help, e.g. "N" or "URL". */
  value?: string;
}

export type OptionValues = Record<string, string | boolean | string[] | undefined>;

export interface ParsedCommand {
  values: OptionValues;
  positionals: string[];
}

export interface CommandSpec {
  name: string;
  summary: string;
  /** e.g. "DEVICE POINT [options]" */
  usage?: string;
  description?: string;
  options: Record<string, OptionSpec>;
  /** Number of positionals accepted: [min, max]. Defaults to [0, 0]. */
  positionals?: [number, number];
  examples?: string[];
  run(parsed: ParsedCommand): Promise<number | undefined> | number | undefined;
}

export function defineCommand(spec: CommandSpec): CommandSpec {
  return spec;
}

export function envName(option: string): string {
  return `BACMQTT_${option.replace(/-/g, "_").toUpperCase()}`;
}

const HELP_OPTION: OptionSpec = {
  type: "boolean",
  short: "h",
  description: "Show this help and exit",
  env: false,
};

export function formatHelp(spec: CommandSpec): string {
  const lines = [`Usage: bacmqtt ${spec.name} ${spec.usage ?? "[options]"}`, "", spec.summary];
  if (spec.description) lines.push("", spec.description.trim());
  const rows: [string, string][] = [];
  for (const [name, opt] of Object.entries({ ...spec.options, help: HELP_OPTION })) {
    const flag = `${opt.short ? `-${opt.short}, ` : ""}--${name}${opt.type === "string" ? ` ${opt.value ?? "VALUE"}` : ""}`;
    const extras: string[] = [];
    if (opt.default !== undefined && opt.default !== false) extras.push(`default: ${String(opt.default)}`);
    if (opt.env !== false && name !== "help") extras.push(`env: ${opt.env ?? envName(name)}`);
    if (opt.multiple) extras.push("repeatable");
    rows.push([flag, `${opt.description}${extras.length ? ` (${extras.join("; ")})` : ""}`]);
  }
  const width = Math.min(34, Math.max(...rows.map(([f]) => f.length)) + 2);
  lines.push("", "Options:");
  for (const [flag, text] of rows) {
    lines.push(
      flag.length + 2 > width ? `  ${flag}\n  ${" ".repeat(width)}${text}` : `  ${flag.padEnd(width)}${text}`,
    );
  }
  if (spec.examples?.length) lines.push("", "Examples:", ...spec.examples.map((e) => `  ${e}`));
  return `${lines.join("\n")}\n`;
}

/**
 * Parses argv for a command. Flags win over environment variables, which win over defaults.
 * Throws ConfigError listing every problem (unknown flags, missing values, wrong positional count).
 */
export function parseCommand(
  spec: CommandSpec,
  argv: string[],
  env: NodeJS.ProcessEnv = process.env,
): ParsedCommand & { help: boolean } {
  const options: Record<string, { type: "string" | "boolean"; short?: string; multiple?: boolean }> = {
    help: { type: "boolean", short: "h" },
  };
  for (const [name, opt] of Object.entries(spec.options)) {
    options[name] = {
      type: opt.type,
      ...(opt.short ? { short: opt.short } : {}),
      ...(opt.multiple ? { multiple: true } : {}),
    };
  }
  const problems: string[] = [];
  let parsed: { values: OptionValues; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true }) as typeof parsed;
  } catch (err) {
    // node's parseArgs stops at the first problem; re-scan to list every unknown flag at once.
    const known = new Set(Object.keys(options).map((o) => `--${o}`));
    for (const opt of Object.values(options)) if (opt.short) known.add(`-${opt.short}`);
    for (const arg of argv) {
      if (!arg.startsWith("-") || arg === "-") continue;
      const flag = arg.split("=")[0] as string;
      if (!known.has(flag)) problems.push(`unknown option ${flag}`);
    }
    if (problems.length === 0) problems.push((err as Error).message);
    throw new ConfigError(problems);
  }
  const values: OptionValues = { ...parsed.values };
  if (values.help) return { values, positionals: parsed.positionals, help: true };
  for (const [name, opt] of Object.entries(spec.options)) {
    if (values[name] !== undefined) continue;
    const envVar = opt.env === false ? undefined : (opt.env ?? envName(name));
    const fromEnv = envVar ? env[envVar] : undefined;
    if (fromEnv !== undefined && fromEnv !== "") {
      if (opt.type === "boolean") {
        if (/^(1|true|yes|on)$/i.test(fromEnv)) values[name] = true;
        else if (/^(0|false|no|off)$/i.test(fromEnv)) values[name] = false;
        else problems.push(`${envVar}=${fromEnv}: expected true or false`);
      } else {
        values[name] = opt.multiple ? fromEnv.split(",").map((s) => s.trim()) : fromEnv;
      }
      continue;
    }
    if (opt.default !== undefined) values[name] = opt.default;
  }
  const [min, max] = spec.positionals ?? [0, 0];
  if (parsed.positionals.length < min)
    problems.push(`expected at least ${min} argument(s): ${spec.usage ?? ""}`.trim());
  if (parsed.positionals.length > max)
    problems.push(`unexpected argument(s): ${parsed.positionals.slice(max).join(" ")}`);
  if (problems.length) throw new ConfigError(problems);
  return { values, positionals: parsed.positionals, help: false };
}

/** Reads an integer option, adding a problem instead of throwing so callers can report all at once. */
export function intOption(
  values: OptionValues,
  name: string,
  problems: string[],
  range: { min?: number; max?: number } = {},
): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const text = String(raw);
  if (!/^-?\d+$/.test(text)) {
    problems.push(`--${name}: "${text}" is not an integer`);
    return undefined;
  }
  const n = Number(text);
  if ((range.min !== undefined && n < range.min) || (range.max !== undefined && n > range.max)) {
    problems.push(`--${name}: ${n} is outside ${range.min ?? "-∞"}..${range.max ?? "∞"}`);
    return undefined;
  }
  return n;
}

export function stringOption(values: OptionValues, name: string): string | undefined {
  const v = values[name];
  return typeof v === "string" ? v : undefined;
}

export function listOption(values: OptionValues, name: string): string[] {
  const v = values[name];
  if (Array.isArray(v)) return v;
  if (typeof v === "string") return [v];
  return [];
}
