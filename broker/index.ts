// Programmatic API of the broker, used by `bacmqtt broker`, `bacmqtt all` and every test that needs
// a real broker: `const b = await startBroker({ port: 0, allowAnonymous: true }); … await b.close()`.
import type { Aedes } from "aedes";
import { type BrokerOptions, MqttBroker } from "./broker.ts";
import type { BrokerStats } from "./metrics.ts";
import type { UserEntry } from "./users.ts";

export { describeRoles, filterCovers, rulesFor } from "./acl.ts";
export type { BrokerLimits, BrokerOptions, TlsSettings } from "./broker.ts";
export { DEFAULT_LIMITS, MqttBroker } from "./broker.ts";
export type { Role, UserEntry } from "./users.ts";
export { hashPassword, loadUsers, ROLES, saveUsers, verifyPassword } from "./users.ts";

export interface RunningBroker {
  tcpPort: number;
  /** undefined when no WebSocket listener was asked for */
  wsPort: number | undefined;
  metricsPort: number | undefined;
  /** `mqtt://host:port` (or `mqtts://`), with 0.0.0.0 shown as 127.0.0.1 */
  url: string;
  wsUrl: string | undefined;
  /** Same as tcpPort (for callers that look for `port`). */
  port: number;
  aedes: Aedes;
  stats: BrokerStats;
  reloadUsers(users?: UserEntry[] | string): Promise<void>;
  close(): Promise<void>;
}

/** Starts a broker and resolves once every listener is bound; rejects (with nothing left running) otherwise. */
export async function startBroker(options: BrokerOptions): Promise<RunningBroker> {
  const broker = new MqttBroker(options);
  await broker.start();
  const host =
    !options.host || options.host === "0.0.0.0" || options.host === "::" ? "127.0.0.1" : options.host;
  const shown = host.includes(":") ? `[${host}]` : host;
  const secure = options.tls !== undefined;
  const tcpPort = broker.tcpPort as number;
  return {
    tcpPort,
    port: tcpPort,
    wsPort: broker.wsPort,
    metricsPort: broker.metricsPort,
    url: `${secure ? "mqtts" : "mqtt"}://${shown}:${tcpPort}`,
    wsUrl: broker.wsPort === undefined ? undefined : `${secure ? "wss" : "ws"}://${shown}:${broker.wsPort}`,
    aedes: broker.aedes as Aedes,
    stats: broker.stats as BrokerStats,
    reloadUsers: (users) => broker.reloadUsers(users),
    close: () => broker.stop(),
  };
}
