// One child process of spawnSimulatorProcesses: runs startSimulator on its share of the config and
// answers the parent's calls over the IPC channel. It exits when the parent goes away, so a killed
// benchmark never leaves devices bound behind it.
import { errorMessage } from "../common/errors.ts";
import type { WorkerReply, WorkerRequest } from "./processes.ts";
import { type Simulator, startSimulator } from "./simulator.ts";

let sim: Simulator | undefined;

function reply(msg: WorkerReply): void {
  process.send?.(msg);
}

async function handle(msg: WorkerRequest): Promise<void> {
  if (msg.type === "start") {
    try {
      sim = await startSimulator(msg.config);
      reply({ type: "ready", devices: sim.devices() });
    } catch (err) {
      reply({ type: "failed", message: errorMessage(err) });
    }
    return;
  }
  const s = sim;
  try {
    if (!s) throw new Error("simulator not started");
    let value: unknown;
    switch (msg.method) {
      case "stats":
        value = s.stats();
        break;
      case "presentValue":
        value = s.presentValue(msg.args[0] as number, msg.args[1] as string);
        break;
      case "setPresentValue":
        s.setPresentValue(
          msg.args[0] as number,
          msg.args[1] as string,
          msg.args[2] as number | boolean | string,
        );
        break;
      case "setOnline":
        s.setOnline(msg.args[0] as number, msg.args[1] as boolean);
        break;
      case "close":
        await s.close();
        reply({ type: "result", id: msg.id, value: null });
        process.disconnect?.();
        return;
    }
    reply({ type: "result", id: msg.id, value });
  } catch (err) {
    reply({ type: "result", id: msg.id, error: errorMessage(err) });
  }
}

process.on("message", (msg) => {
  handle(msg as WorkerRequest).catch((err: unknown) => {
    process.stderr.write(`simulator worker: ${errorMessage(err)}\n`);
  });
});
process.on("disconnect", () => {
  const done = () => process.exit(0);
  if (sim) sim.close().then(done, done);
  else done();
});
