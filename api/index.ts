// The api's public surface: `buildApp` (the fastify app, for inject and embedding) and `startApi`
// (listening server, for `bacmqtt api` and `bacmqtt all`).
export { type ApiOptions, buildApp, DEFAULT_TIMEOUTS } from "./app.ts";
export { CommandRelay } from "./relay.ts";
export { type ApiServer, startApi } from "./server.ts";
