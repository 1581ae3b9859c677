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

export const validatorCompiler: FastifySchemaCompiler<TSchema> = ({ schema, httpPart }) => {
  const part = httpPart ?? "request";
  if (part === "body") {
    // No body at all (no content-type) counts as `{}`: `curl -X POST …/refresh` must work.
    return (data: unknown) => {
      const checked = validate(schema, data === undefined || data === null ? {} : data);
      return checked.ok ? { value: checked.value } : { error: new ValidationError(part, checked.errors) };
    };
  }
  return (data: unknown) => {
    const converted = Value.Convert(schema, Value.Default(schema, Value.Clone(data)));
    const checked = validate(schema, converted);
    return checked.ok ? { value: checked.value } : { error: new ValidationError(part, checked.errors) };
  };
};
