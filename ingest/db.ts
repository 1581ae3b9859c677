// The one database module of the ingest (and of anything that stores through it: api, migrate):
// pool creation from `--database-url` / DATABASE_URL / the standard PG* variables, the pool's error
// listener, query timing, and transactions on one checked-out client. Every statement elsewhere is
// parameterised and goes through a client handed out here. Owns no schema: see migrate.ts.
import pg from "pg";
import { createLogger, type Logger } from "../common/logger.ts";

export type Db = pg.Pool | pg.Client | pg.PoolClient | pg.ClientBase;

export interface PoolOptions {
  /** postgres://user:pass@host:port/db; when absent, DATABASE_URL, then the PG* variables. */
  url?: string;
  max?: number;
  applicationName?: string;
  log?: Logger;
  env?: NodeJS.ProcessEnv;
}

/** The URL to use, or undefined when the standard PG* variables (read by `pg` itself) decide. */
export function resolveDatabaseUrl(
  url: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (url) return url;
  if (env.DATABASE_URL) return env.DATABASE_URL;
  return undefined;
}

/** Host/port/database of a URL without credentials, for logs. */
export function describeDatabase(url: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (!url) {
    return `${env.PGHOST ?? "localhost"}:${env.PGPORT ?? "5432"}/${env.PGDATABASE ?? env.PGUSER ?? "(default)"} (PG* variables)`;
  }
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || "5432"}${u.pathname}`;
  } catch {
    return "(unparsable database URL)";
  }
}

export function createPool(opts: PoolOptions = {}): pg.Pool {
  const log = opts.log ?? createLogger("db");
  const url = resolveDatabaseUrl(opts.url, opts.env);
  const pool = new pg.Pool({
    ...(url ? { connectionString: url } : {}),
    max: opts.max ?? 4,
    application_name: opts.applicationName ?? "bacmqtt",
    connectionTimeoutMillis: 10_000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
  });
  // An idle client losing its connection (database restart) must not crash the process; the next
  // checkout gets a fresh connection and the caller's retry loop handles the failure.
  pool.on("error", (err) => log.warn({ err: err.message }, "idle database connection failed"));
  return pool;
}

/** Runs fn inside BEGIN/COMMIT on one checked-out client; ROLLBACK on error; release in finally. */
export async function withTransaction<T>(
  pool: pg.Pool,
  fn: (client: pg.PoolClient) => Promise<T>,
): Promise<T> {
  const client = await pool.connect();
  let broken = false;
  // A checked-out client whose connection dies between two queries emits 'error'; the next query
  // rejects with it, so the event itself only needs a listener (else it would crash the process).
  const onError = () => {
    broken = true;
  };
  client.on("error", onError);
  try {
    await client.query("BEGIN");
    const result = await fn(client);
    await client.query("COMMIT");
    return result;
  } catch (err) {
    try {
      await client.query("ROLLBACK");
    } catch {
      broken = true; // connection is gone: discard it instead of returning it to the pool
    }
    throw err;
  } finally {
    client.off("error", onError);
    client.release(broken ? true : undefined);
  }
}

/** Runs fn with a client: the client itself, or one checked out of a pool (released in finally). */
export async function withClient<T>(db: Db, fn: (client: pg.ClientBase) => Promise<T>): Promise<T> {
  if (db instanceof pg.Pool) {
    const client = await db.connect();
    let broken = false;
    const onError = () => {
      broken = true;
    };
    client.on("error", onError);
    try {
      return await fn(client);
    } finally {
      client.off("error", onError);
      client.release(broken ? true : undefined);
    }
  }
  return fn(db);
}

/** A query with its duration logged at debug. */
export async function timedQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  db: Db,
  log: Logger,
  name: string,
  text: string,
  values?: unknown[],
): Promise<pg.QueryResult<R>> {
  const started = performance.now();
  const result = await db.query<R>(text, values);
  log.debug({ query: name, rows: result.rowCount, ms: Math.round(performance.now() - started) }, "query");
  return result;
}

/**
 * Whether the database rejected the data itself (data exception, integrity violation, program
 * limit): retrying the same rows fails the same way, so the message becomes a dead letter. Every
 * other failure (outage, refused connection, missing schema, deadlock) is retried: never dropped.
 */
export function isDataError(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === "string" && /^(22|23|54)[0-9A-Z]{3}$/.test(code);
}
