// `bacmqtt schema`: prints the MQTT payload schemas as one JSON Schema document, for consumers
// written in other languages (code generators, validators in a BMS integration).
import { defineCommand } from "../common/cli.ts";
import { jsonSchemaDocument } from "../contract/json-schema.ts";

export const schemaCommand = defineCommand({
  name: "schema",
  summary: "Print the JSON Schema of every MQTT payload (requests, responses, state, readings)",
  options: {
    name: {
      type: "string",
      description: "Print only this schema (e.g. device_readings)",
      value: "NAME",
      env: false,
    },
  },
  run({ values }) {
    const doc = jsonSchemaDocument();
    const defs = doc.$defs as Record<string, unknown>;
    const name = values.name as string | undefined;
    if (name !== undefined && !(name in defs)) {
      process.stderr.write(`unknown schema "${name}"; known: ${Object.keys(defs).join(", ")}\n`);
      return 1;
    }
    process.stdout.write(`${JSON.stringify(name ? defs[name] : doc, null, 2)}\n`);
    return 0;
  },
});
