// Creates the app, listens, and closes with grace. Nothing else: the app itself is in app.ts.
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
