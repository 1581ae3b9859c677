// The web console: a handful of static files from api/console/, read once at start, served with
// ETags. No CDN, no build step: plain JS modules and an SVG chart.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { ApiErrorBody } from "../errors.ts";

/** Sent as bytes, never serialised. */
const FileBody = Type.Unsafe<Buffer>({ type: "string" });

const DIR = new URL("../console/", import.meta.url);
const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  svg: "image/svg+xml",
};

interface Asset {
  body: Buffer;
  type: string;
  etag: string;
}

function loadAssets(): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const file of readdirSync(DIR)) {
    const ext = file.split(".").pop() ?? "";
    const type = TYPES[ext];
    if (!type) continue;
    const body = readFileSync(new URL(file, DIR));
    assets.set(file, {
      body,
      type,
      etag: `"${createHash("sha1").update(body).digest("base64url").slice(0, 16)}"`,
    });
  }
  return assets;
}

export const consoleRoutes: FastifyPluginAsyncTypebox = async (app) => {
  const assets = loadAssets();

  const serve = (name: string, ifNoneMatch: string | undefined) => {
    const asset = assets.get(name);
    if (!asset) return undefined;
    return { asset, fresh: ifNoneMatch === asset.etag };
  };

  app.get(
    "/",
    {
      config: { access: "public" },
      schema: { hide: true, response: { 200: FileBody, 304: Type.Null(), 404: Type.Null() } },
    },
    async (request, reply) => {
      const hit = serve("index.html", request.headers["if-none-match"]);
      if (!hit) return reply.code(404).send(null);
      void reply.header("etag", hit.asset.etag).header("cache-control", "no-cache").type(hit.asset.type);
      if (hit.fresh) return reply.code(304).send(null);
      return reply.send(hit.asset.body);
    },
  );

  app.get(
    "/console/:file",
    {
      config: { access: "public" },
      schema: {
        hide: true,
        params: Type.Object({ file: Type.String({ pattern: "^[a-z0-9-]+\\.(js|css|svg|html)$" }) }),
        response: { 200: FileBody, 304: Type.Null(), 400: ApiErrorBody, 404: ApiErrorBody },
      },
    },
    async (request, reply) => {
      const hit = serve(request.params.file, request.headers["if-none-match"]);
      if (!hit)
        return reply
          .code(404)
          .send({ error: { code: "API_ERR_NOT_FOUND", message: "no such console file" } });
      void reply.header("etag", hit.asset.etag).header("cache-control", "no-cache").type(hit.asset.type);
      if (hit.fresh) return reply.code(304).send(null);
      return reply.send(hit.asset.body);
    },
  );
};
