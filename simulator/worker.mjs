// Child-process entry of spawnSimulatorProcesses: registers tsx (as bin/bacmqtt.mjs does) and runs
// the TypeScript worker, so children need no build step either.
import { register } from "tsx/esm/api";

register();
await import("./worker.ts");
