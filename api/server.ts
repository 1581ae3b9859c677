// Creates the app, listens, and closes with grace. Nothing else: the app itself is in app.ts.
import { CodedError, errorMessage } from "../common/errors.ts";
import { type ApiOptions, buildApp } from "./app.ts";

export interface ApiServer {
  url: string;
  close(): Promise<void>;
}

export async function startApi(
  options: ApiOptions & { host?: string; port?: number } = {},
): Promise<ApiServer> {
  const app = await buildApp(options);
  try {
    await checkSchema(app.db, app.log);
    await app.listen({ host: options.host ?? "127.0.0.1", port: options.port ?? 8080 });
  } catch (err) {
    await app.close();
    throw err;
  }
  const address = app.server.address();
  const port = typeof address === "object" && address ? address.port : options.port;
  const host =
    options.host && options.host !== "0.0.0.0" && options.host !== "::" ? options.host : "127.0.0.1";
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;
  let closing: Promise<void> | undefined;
  return {
    url,
    close: () => {
      closing ??= app.close();
      return closing;
    },
  };
}

/**
 * A database without the schema is a setup mistake worth stopping for; an unreachable one is not
 * (the api starts degraded, /api/health says so, and queries work once the database is back).
 */
async function checkSchema(
  db: { query: (sql: string) => Promise<{ rows: { ok: boolean }[] }> },
  log: { warn: (o: object, m: string) => void },
): Promise<void> {
  let ok: boolean | undefined;
  try {
    ok = (
      await db.query(
        "SELECT to_regclass('api_keys') IS NOT NULL AND to_regclass('devices') IS NOT NULL AS ok",
      )
    ).rows[0]?.ok;
  } catch (err) {
    log.warn({ err: errorMessage(err) }, "database unreachable at start; serving degraded until it is back");
    return;
  }
  if (!ok)
    throw new CodedError(
      "API_ERR_NOT_MIGRATED",
      "the database has no bacmqtt schema: run `bacmqtt migrate` (with the same --database-url) first",
    );
}
