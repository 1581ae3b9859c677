// Public entry of the BACnet engine. `createEngine` returns a STARTED engine (socket bound, BBMD
// registration attempted); call `stop()` to cancel COV subscriptions and close the socket.
import { Engine } from "./engine.ts";
import type { BacnetEngine, EngineOptions } from "./types.ts";

export async function createEngine(options: EngineOptions = {}): Promise<BacnetEngine & Engine> {
  const engine = new Engine(options);
  await engine.start();
  return engine;
}

export { Engine } from "./engine.ts";
export { BacnetError, GW_ERR } from "./errors.ts";
export { listInterfaces, resolveInterface } from "./interfaces.ts";
export type * from "./types.ts";
