// Request validation with TypeBox (the contract's validator, so messages read alike on MQTT and
// HTTP). Bodies are checked strictly: no coercion, unknown keys refused. Query strings and params
// arrive as text, so they are converted to the schema's types first and defaults are filled in.
import type { TSchema } from "@sinclair/typebox";
import { Value } from "@sinclair/typebox/value";
import type { FastifySchemaCompiler } from "fastify";
import { validate } from "../contract/validate.ts";

class ValidationError extends Error {
  readonly code = "API_ERR_VALIDATION";
  readonly statusCode = 400;
  readonly problems: string[];
  validationContext?: string;

  constructor(part: string, problems: string[]) {
    super(`invalid ${part}: ${problems.join("; ")}`);
    this.problems = problems;
    this.validationContext = part;
  }
}

/**
 * PostgreSQL's text and jsonb cannot hold U+0000, so a NUL in any accepted string would fail at the
 * database as a 500 (a lookup) or a 503 (the write audit). Found by test/faults/http-fuzz.test.ts.
 */
function nulProblem(value: unknown, where: string, depth = 0): string | undefined {
  if (typeof value === "string")
    return value.includes("\u0000") ? `${where}: must not contain U+0000` : undefined;
  if (value === null || typeof value !== "object" || depth > 32) return undefined;
  for (const [k, v] of Object.entries(value)) {
    const problem = k.includes("\u0000")
      ? `${where}: keys must not contain U+0000`
      : nulProblem(v, `${where}/${k}`, depth + 1);
    if (problem) return problem;
  }
  return undefined;
}

function result(part: string, checked: ReturnType<typeof validate>) {
  if (!checked.ok) return { error: new ValidationError(part, checked.errors) };
  const nul = nulProblem(checked.value, part);
  return nul ? { error: new ValidationError(part, [nul]) } : { value: checked.value };
}

export const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const part = httpPart ?? "request";
  if (part === "body") {
    // No body at all (no content-type) counts as `{}`: `curl -X POST …/refresh` must work.
    return (data: unknown) => result(part, validate(schema, data === undefined || data === null ? {} : data));
  }
  return (data: unknown) =>
    result(part, validate(schema, Value.Convert(schema, Value.Default(schema, Value.Clone(data)))));
};
