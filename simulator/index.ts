// Public surface of the BACnet device simulator (tests, benchmarks, `bacmqtt simulate`).
export {
  DEFAULT_OBJECTS,
  type SimDeviceConfig,
  type SimDeviceHandle,
  type SimObjectTypeName,
  type SimRouterConfig,
  type Simulator,
  type SimulatorConfig,
  type SimulatorStats,
  startSimulator,
  validateSimulatorConfig,
} from "./simulator.ts";
