import { createEngine } from "../../../gateway/bacnet/index.ts";
import { startSimulator } from "../../../simulator/index.ts";

const sim = await startSimulator({
  devices: [
    { instance: 1001, address: "127.0.0.2", port: 47808 },
    {
      instance: 1002,
      address: "127.0.0.3",
      port: 47808,
      rpm: false,
      segmentation: false,
      maxApdu: 206,
      objects: { analog_input: 300, binary_output: 5 },
    },
  ],
  routers: [
    {
      address: "127.0.0.4",
      port: 47808,
      networks: [{ network: 5, devices: [{ instance: 2001 }, { instance: 2002 }] }],
    },
  ],
});
const engine = await createEngine({
  interface: "127.0.0.1",
  port: 0,
  apduTimeoutMs: 1000,
  writeAllowlist: ["*"],
});
console.log(engine.endpoint());
let t = Date.now();
const devs = await engine.discover({ targets: ["127.0.0.2", "127.0.0.3", "127.0.0.4"], timeoutS: 1 });
console.log("discovered", Date.now() - t, devs);
for (const d of devs) {
  t = Date.now();
  try {
    const cat = await engine.readCatalogue(d);
    console.log(
      d.deviceInstance,
      "catalogue",
      Date.now() - t,
      "ms",
      cat.objectName,
      cat.vendorName,
      cat.supportsRpm,
      cat.supportsCov,
      cat.points.length,
      JSON.stringify(cat.points[0]),
      JSON.stringify(cat.points.find((p) => p.writable)),
    );
    const r = await engine.readPoints(
      d.deviceInstance,
      cat.points.slice(0, 5).map((p) => p.point),
    );
    console.log(JSON.stringify(r));
  } catch (e) {
    console.log("ERR", d.deviceInstance, e);
  }
}
console.log(await engine.read(1001, "analog_output_1"));
console.log(await engine.write(1001, "analog_output_1", 42.5, 8));
console.log(await engine.write(2001, "binary_output_1", true, 9));
console.log(await engine.write(1001, "analog_output_1", null, 8));
console.log(engine.transportStats());
await engine.stop();
await sim.close();
