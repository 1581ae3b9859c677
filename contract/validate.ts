// Validation that reports every problem at once, in words a person can act on.
import type { Static, TSchema } from "@sinclair/typebox";
import { FormatRegistry } from "@sinclair/typebox";
import { type TypeCheck, TypeCompiler } from "@sinclair/typebox/compiler";

if (!FormatRegistry.Has("date-time")) {
  // The readings of one message usually share one time: remember the last string found valid.
  let lastValid = "";
  FormatRegistry.Set("date-time", (v) => {
    if (v === lastValid) return true;
    const ok =
      /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(v) &&
      !Number.isNaN(Date.parse(v));
    if (ok) lastValid = v;
    return ok;
  });
}

const compiled = new WeakMap<TSchema, TypeCheck<TSchema>>();

function checker<T extends TSchema>(schema: T): TypeCheck<T> {
  let c = compiled.get(schema);
  if (!c) {
    c = TypeCompiler.Compile(schema);
    compiled.set(schema, c);
  }
  return c as TypeCheck<T>;
}

export type Validation<T> = { ok: true; value: T } | { ok: false; errors: string[] };

/** At most this many problems are listed; a hostile payload must not produce a megabyte of errors. */
const MAX_ERRORS = 20;

export function validate<T extends TSchema>(schema: T, value: unknown): Validation<Static<T>> {
  const c = checker(schema);
  if (c.Check(value)) return { ok: true, value: value as Static<T> };
  const errors: string[] = [];
  const seen = new Set<string>();
  for (const e of c.Errors(value)) {
    const where = e.path === "" ? "payload" : e.path;
    const line = `${where}: ${e.message}`;
    if (seen.has(line)) continue;
    seen.add(line);
    errors.push(line);
    if (errors.length >= MAX_ERRORS) {
      errors.push("… more errors omitted");
      break;
    }
  }
  return { ok: false, errors };
}

export const MAX_PAYLOAD_BYTES = 1024 * 1024;

/** Parses an MQTT payload as JSON then validates it. Never throws. */
export function parsePayload<T extends TSchema>(schema: T, payload: Buffer | string): Validation<Static<T>> {
  const size = typeof payload === "string" ? Buffer.byteLength(payload) : payload.length;
  if (size > MAX_PAYLOAD_BYTES)
    return { ok: false, errors: [`payload: ${size} bytes exceeds ${MAX_PAYLOAD_BYTES}`] };
  let json: unknown;
  try {
    json = JSON.parse(typeof payload === "string" ? payload : payload.toString("utf8"));
  } catch (err) {
    return { ok: false, errors: [`payload: not valid JSON (${(err as Error).message})`] };
  }
  return validate(schema, json);
}
