// `bacmqtt simulate`: runs simulated BACnet/IP devices (and routers) until Ctrl+C and prints where
// each one listens.
import { defineCommand, intOption } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { catchShutdown } from "../common/shutdown.ts";
import { configFromOptions } from "./config.ts";
import type { SimDeviceHandle } from "./simulator.ts";

function describe(d: SimDeviceHandle): string {
  const where = `${d.address}:${d.port}`;
  return d.network === null
    ? `device ${d.instance} at ${where}`
    : `device ${d.instance} at ${where} network ${d.network} mac ${d.mac}`;
}

export const simulateCommand = defineCommand({
  name: "simulate",
  summary: "Run simulated BACnet/IP devices and routers for tests, benchmarks and demos",
  description: `
Each device answers Who-Is, ReadProperty, ReadPropertyMultiple, WriteProperty and SubscribeCOV
like a real controller. Flag devices take consecutive addresses from --address on one port
(127.0.0.1, 127.0.0.2, ... all live on lo on Linux), or consecutive ports with --spread port.
--router adds one BACnet router (at the next address) fronting the given remote networks.
A YAML/JSON --config file holds the same keys as startSimulator() (see docs/simulator.md).`,
  options: {
    devices: {
      env: "BACMQTT_SIM_DEVICES",
      type: "string",
      value: "N",
      description: "Number of devices to simulate (default 1, 0 with --config)",
    },
    "first-instance": {
      env: "BACMQTT_SIM_FIRST_INSTANCE",
      type: "string",
      value: "N",
      description: "Instance of the first device",
      default: "1001",
    },
    address: {
      env: "BACMQTT_SIM_ADDRESS",
      type: "string",
      value: "IP",
      description: "Address of the first device",
      default: "127.0.0.1",
    },
    port: {
      env: "BACMQTT_SIM_PORT",
      type: "string",
      value: "N",
      description: "UDP port (0 = any free port)",
      default: "47808",
    },
    spread: {
      env: "BACMQTT_SIM_SPREAD",
      type: "string",
      value: "MODE",
      description: 'Give devices consecutive "address"es or "port"s',
    },
    objects: {
      env: "BACMQTT_SIM_OBJECTS",
      type: "string",
      value: "LIST",
      description: 'Objects per device, e.g. "analog_input=10,binary_output=4"',
    },
    router: {
      env: "BACMQTT_SIM_ROUTER",
      type: "string",
      value: "NET:COUNT",
      multiple: true,
      description: "Add a router with COUNT devices on remote network NET",
    },
    config: {
      env: "BACMQTT_SIM_CONFIG",
      type: "string",
      value: "FILE",
      description: "YAML or JSON file with devices and routers",
    },
    "no-segmentation": {
      env: "BACMQTT_SIM_NO_SEGMENTATION",
      type: "boolean",
      description: "Devices cannot segment replies",
    },
    "no-rpm": {
      env: "BACMQTT_SIM_NO_RPM",
      type: "boolean",
      description: "Devices reject ReadPropertyMultiple",
    },
    "no-cov": { env: "BACMQTT_SIM_NO_COV", type: "boolean", description: "Devices reject SubscribeCOV" },
    "max-apdu": {
      env: "BACMQTT_SIM_MAX_APDU",
      type: "string",
      value: "N",
      description: "Max APDU length accepted (50..1476)",
    },
    loss: {
      env: "BACMQTT_SIM_LOSS",
      type: "string",
      value: "P",
      description: "Drop probability per datagram (0..1)",
    },
    latency: {
      env: "BACMQTT_SIM_LATENCY",
      type: "string",
      value: "MS",
      description: "Delay added to every reply",
    },
    jitter: {
      env: "BACMQTT_SIM_JITTER",
      type: "string",
      value: "MS",
      description: "Random extra delay 0..MS per reply (replies arrive out of order)",
    },
    duplicate: {
      env: "BACMQTT_SIM_DUPLICATE",
      type: "string",
      value: "P",
      description: "Probability (0..1) that a reply is sent twice, the copy later",
    },
    "change-interval": {
      env: "BACMQTT_SIM_CHANGE_INTERVAL",
      type: "string",
      value: "MS",
      description: "How often inputs drift (0 = static)",
    },
    "broadcast-address": {
      env: "BACMQTT_SIM_BROADCAST_ADDRESS",
      type: "string",
      value: "IP",
      description: "Subnet broadcast address to listen on as well (for broadcast Who-Is)",
    },
    "i-am-broadcast": {
      env: "BACMQTT_SIM_I_AM_BROADCAST",
      type: "boolean",
      description: "Broadcast I-Am to --broadcast-address instead of answering the requester",
    },
    seed: { env: "BACMQTT_SIM_SEED", type: "string", value: "N", description: "Seed of the simulated plant" },
    processes: {
      env: "BACMQTT_SIM_PROCESSES",
      type: "string",
      value: "N",
      description: "Spread the devices over N processes",
      default: "1",
    },
    json: { env: "BACMQTT_SIM_JSON", type: "boolean", description: "Print the device list as JSON" },
  },
  examples: [
    "bacmqtt simulate --devices 10 --address 127.0.1.1",
    'bacmqtt simulate --objects "analog_input=400" --no-segmentation --max-apdu 480',
    "bacmqtt simulate --devices 0 --router 100:20 --router 200:5 --address 127.0.2.1",
    "bacmqtt simulate --config plant.yaml --processes 4",
  ],
  async run({ values }) {
    const problems: string[] = [];
    const processes = intOption(values, "processes", problems, { min: 1, max: 64 }) ?? 1;
    if (problems.length) throw new ConfigError(problems);
    const config = configFromOptions(values);
    const log = createLogger("simulator");
    // Child processes are started below: a signal during their start must still stop them.
    const shutdown = catchShutdown(log);
    let handles: SimDeviceHandle[];
    let close: () => Promise<void>;
    if (processes > 1) {
      const { spawnSimulatorProcesses } = await import("./processes.ts");
      const sim = await spawnSimulatorProcesses(config, processes);
      handles = sim.devices();
      close = () => sim.close();
    } else {
      const { startSimulator } = await import("./simulator.ts");
      const sim = await startSimulator(config);
      handles = sim.devices();
      close = () => sim.close();
    }
    if (values.json) process.stdout.write(`${JSON.stringify(handles, null, 2)}\n`);
    else {
      for (const d of handles) process.stdout.write(`${describe(d)}\n`);
      process.stdout.write(`${handles.length} simulated device(s) running; Ctrl+C to stop\n`);
    }
    shutdown.ready(close);
    // Keep the command pending until a signal ends the process through onShutdown.
    await new Promise<never>(() => {});
    return 0;
  },
});
