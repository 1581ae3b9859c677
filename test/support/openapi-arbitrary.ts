// fast-check arbitraries from the subset of JSON Schema that our OpenAPI document uses (type,
// properties/required/additionalProperties, items/maxItems, anyOf, enum, pattern, min/maxLength,
// minimum/maximum/exclusiveMinimum, nullable, format date-time), for the HTTP fuzz. `valid` draws
// values the schema accepts; `mutated` draws values built to be refused (wrong types, missing or
// extra fields, out-of-range numbers, huge or odd strings). Mutations are not guaranteed invalid:
// the fuzz decides validity with ajv, never from how a value was made.
import fc from "fast-check";

export interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  additionalProperties?: boolean | JsonSchema;
  items?: JsonSchema;
  minItems?: number;
  maxItems?: number;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  exclusiveMinimum?: number;
  exclusiveMaximum?: number;
  nullable?: boolean;
  format?: string;
  default?: unknown;
  [k: string]: unknown;
}

const INT32 = 2 ** 31 - 1;
const len = (s: string) => [...s].length;

function integer(s: JsonSchema): fc.Arbitrary<number> {
  const lo = s.exclusiveMinimum !== undefined ? Math.floor(s.exclusiveMinimum) + 1 : (s.minimum ?? -INT32);
  const hi = s.exclusiveMaximum !== undefined ? Math.ceil(s.exclusiveMaximum) - 1 : (s.maximum ?? INT32);
  const inner = fc.integer({ min: Math.max(lo, -INT32), max: Math.min(hi, INT32) });
  // Ranges wider than 32 bits: the middle by fc.integer, the edges as constants.
  return fc.oneof({ arbitrary: inner, weight: 8 }, { arbitrary: fc.constantFrom(lo, hi), weight: 2 });
}

function number(s: JsonSchema): fc.Arbitrary<number> {
  const min = s.minimum ?? s.exclusiveMinimum ?? -1e9;
  const max = s.maximum ?? s.exclusiveMaximum ?? 1e9;
  return fc
    .oneof(
      fc.double({ min, max, noNaN: true, noDefaultInfinity: true }),
      integer({ minimum: min, maximum: max }),
    )
    .filter(
      (n) =>
        (s.exclusiveMinimum === undefined || n > s.exclusiveMinimum) &&
        (s.exclusiveMaximum === undefined || n < s.exclusiveMaximum) &&
        !Object.is(n, -0),
    );
}

function string(s: JsonSchema): fc.Arbitrary<string> {
  const minLength = s.minLength ?? 0;
  const maxLength = s.maxLength ?? 4096;
  if (s.format === "date-time")
    return fc
      .date({
        min: new Date("2020-01-01T00:00:00Z"),
        max: new Date("2030-01-01T00:00:00Z"),
        noInvalidDate: true,
      })
      .map((d) => d.toISOString());
  if (s.pattern) {
    return fc
      .stringMatching(new RegExp(s.pattern, "u"))
      .filter((v) => len(v) >= minLength && v.length <= maxLength);
  }
  const cap = Math.min(maxLength, minLength + 40);
  return fc.oneof(
    fc.string({ minLength, maxLength: cap }),
    fc.string({ unit: "grapheme", minLength, maxLength: cap }).filter((v) => v.length <= maxLength),
  );
}

/** Values the schema accepts. */
export function valid(schema: JsonSchema): fc.Arbitrary<unknown> {
  const s = schema;
  let arb: fc.Arbitrary<unknown>;
  if (s.const !== undefined) arb = fc.constant(s.const);
  else if (s.enum) arb = fc.constantFrom(...s.enum);
  else if (s.anyOf || s.oneOf) arb = fc.oneof(...(s.anyOf ?? s.oneOf ?? []).map(valid));
  else {
    const type = Array.isArray(s.type) ? s.type[0] : s.type;
    switch (type) {
      case "string":
        arb = string(s);
        break;
      case "integer":
        arb = integer(s);
        break;
      case "number":
        arb = number(s);
        break;
      case "boolean":
        arb = fc.boolean();
        break;
      case "null":
        arb = fc.constant(null);
        break;
      case "array":
        arb = fc.array(s.items ? valid(s.items) : fc.jsonValue({ maxDepth: 1 }), {
          minLength: s.minItems ?? 0,
          maxLength: Math.min(s.maxItems ?? 5, 5),
        });
        break;
      case "object": {
        const props = s.properties ?? {};
        const model = Object.fromEntries(Object.entries(props).map(([k, v]) => [k, valid(v)]));
        arb = fc.record(model, { requiredKeys: (s.required ?? []).filter((k) => k in props) });
        break;
      }
      default:
        arb = fc.jsonValue({ maxDepth: 2 });
    }
  }
  return s.nullable
    ? fc.oneof({ arbitrary: arb, weight: 9 }, { arbitrary: fc.constant(null), weight: 1 })
    : arb;
}

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = i % 2 ? [v] : { a: v };
  return v;
}

/** Strings that break naive code: control characters, bidi, surrogates, SQL, huge, prototype keys. */
export const nastyString: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom(
    "",
    " ",
    "\u0000",
    "\u202e\u0041",
    "\ud800",
    "💥🏳️‍🌈",
    "null",
    "true",
    "[]",
    "{}",
    "-1",
    "1.5",
    "1e400",
    "NaN",
    "Infinity",
    "0x10",
    " 7",
    "__proto__",
    "constructor",
    "'; DROP TABLE write_audit; --",
    "%s%n%x",
    "../../etc/passwd",
    "$" + "{jndi:ldap://127.0.0.1/x}",
    "2026-13-45T99:99:99Z",
    "+/#",
  ),
  fc.string({ unit: "grapheme", maxLength: 30 }),
  fc.string({ unit: "binary", maxLength: 30 }),
  fc.integer({ min: 1, max: 2_000 }).map((n) => "x".repeat(n)),
  fc.integer({ min: 1, max: 500 }).map((n) => "💥".repeat(n)),
  fc.integer({ min: 2_000, max: 70_000 }).map((n) => "x".repeat(n)),
);

/** JSON values of every kind, including big and deep ones. */
export const nastyValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom<unknown>(null, true, false, 0, -1, -0.5, 1e308, -1e308, 2 ** 53 + 2, [], {}, [null], {
    $gt: 1,
  }),
  nastyString,
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.jsonValue({ maxDepth: 3 }),
  fc.integer({ min: 50, max: 800 }).map(nested),
);

/** A value derived from a valid one by one mutation (or a nasty value outright). */
export function mutated(schema: JsonSchema): fc.Arbitrary<unknown> {
  const props = Object.keys(schema.properties ?? {});
  const isObject = schema.type === "object";
  return fc
    .tuple(valid(schema), fc.nat({ max: 5 }), fc.nat(), nastyValue, nastyString)
    .map(([base, how, pick, bad, badKey]) => {
      if (!isObject || base === null || typeof base !== "object" || Array.isArray(base)) return bad;
      const obj = { ...(base as Record<string, unknown>) };
      const required = schema.required ?? [];
      switch (how) {
        case 0: {
          // a required field missing (or, without one, any field missing)
          const from = required.length ? required : props;
          if (from.length) delete obj[from[pick % from.length] as string];
          return obj;
        }
        case 1:
          // an unknown field
          obj[badKey || "extra"] = bad;
          return obj;
        case 2:
          // a known field of the wrong type or out of range
          if (props.length) obj[props[pick % props.length] as string] = bad;
          return obj;
        case 3:
          return [obj];
        case 4: {
          // an own "__proto__" key, as JSON.parse makes it
          const rest = JSON.stringify(obj).slice(1);
          return JSON.parse(
            `{"__proto__":${JSON.stringify(bad) ?? "null"}${rest === "}" ? "}" : `,${rest}`}`,
          );
        }
        default:
          return bad;
      }
    });
}
