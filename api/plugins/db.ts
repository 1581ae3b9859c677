// The database pool, decorated on the instance as `app.db`. Given a pool (embedding, tests) it is
// used as is and left open; given a URL (or nothing: DATABASE_URL / PG* variables) the plugin
// creates the pool through ingest/db.ts and ends it when the app closes.
import fp from "fastify-plugin";
import type pg from "pg";
import type { Logger } from "../../common/logger.ts";
import { createPool } from "../../ingest/db.ts";

declare module "fastify" {
  interface FastifyInstance {
    db: pg.Pool;
  }
}

export interface DbPluginOptions {
  pool?: pg.Pool;
  databaseUrl?: string;
  log: Logger;
}

export const dbPlugin = fp<DbPluginOptions>(
  async (app, opts) => {
    const owned = !opts.pool;
    const pool =
      opts.pool ??
      createPool({ url: opts.databaseUrl, max: 8, applicationName: "bacmqtt-api", log: opts.log });
    app.decorate("db", pool);
    if (owned) app.addHook("onClose", async () => pool.end());
  },
  { name: "bacmqtt-db" },
);
