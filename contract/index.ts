// The MQTT contract: topic builders and parser, payload schemas, validation. Imported by every
// process; it imports nothing of theirs.
export * from "./points.ts";
export * from "./schemas.ts";
export * from "./topics.ts";
export * from "./validate.ts";
