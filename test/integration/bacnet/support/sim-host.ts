// Runs one simulator from a JSON config given as argv[2], prints `READY <devices json>` on stdout,
// and closes on SIGTERM/SIGINT. Used to put simulated hosts inside network namespaces.
import { startSimulator } from "../../../../simulator/index.ts";

const sim = await startSimulator(JSON.parse(process.argv[2] ?? "{}"));
process.stdout.write(`READY ${JSON.stringify(sim.devices())}\n`);
let closing = false;
const stop = () => {
  if (closing) return;
  closing = true;
  sim.close().then(
    () => process.exit(0),
    () => process.exit(1),
  );
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
// Never outlive the test that started us.
setTimeout(stop, 120_000).unref();
