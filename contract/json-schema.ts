// Exports every payload schema as plain JSON Schema (draft 2019-09 compatible) for consumers in
// other languages: `node bin/bacmqtt.mjs schema` prints this document.
import { SCHEMAS } from "./schemas.ts";

export function jsonSchemaDocument(): Record<string, unknown> {
  return {
    $schema: "https://json-schema.org/draft/2019-09/schema",
    title: "bacmqtt MQTT payloads",
    $defs: JSON.parse(JSON.stringify(SCHEMAS)) as Record<string, unknown>,
  };
}
