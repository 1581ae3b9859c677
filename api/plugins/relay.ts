// The command relay (api/relay.ts) as a shared plugin: `app.relay`. Given one (embedding, tests
// that share a client) it is used as is; otherwise it is created from the MQTT URL and stopped when
// the app closes.
import fp from "fastify-plugin";
import type { Logger } from "../../common/logger.ts";
import { CommandRelay } from "../relay.ts";

declare module "fastify" {
  interface FastifyInstance {
    relay: CommandRelay;
  }
}

export interface RelayPluginOptions {
  relay?: CommandRelay;
  mqttUrl: string;
  baseTopic: string;
  mqttUsername?: string;
  mqttPassword?: string;
  log: Logger;
}

export const relayPlugin = fp<RelayPluginOptions>(
  async (app, opts) => {
    let relay = opts.relay;
    if (!relay) {
      relay = new CommandRelay({
        url: opts.mqttUrl,
        baseTopic: opts.baseTopic,
        log: opts.log,
        ...(opts.mqttUsername ? { username: opts.mqttUsername } : {}),
        ...(opts.mqttPassword ? { password: opts.mqttPassword } : {}),
      });
      await relay.start();
      const owned = relay;
      app.addHook("onClose", async () => owned.stop());
    }
    app.decorate("relay", relay);
  },
  { name: "bacmqtt-relay" },
);
