// Authentication and authorisation: `Authorization: Bearer <key>` or `X-API-Key: <key>`, checked
// against the hashed keys; each route says what it needs in `config.access`. Reads may be open by
// configuration; commands always need an operator key. 401 = no or unknown key, 403 = key with too
// small a role. Keys are cached for a few seconds so a busy console does not query per request.
import type { FastifyReply, FastifyRequest } from "fastify";
import fp from "fastify-plugin";
import { ApiError } from "../errors.ts";
import { findKey, type Role, roleAllows, touchKey } from "../keys.ts";

/** public: anyone; read: viewer (or anyone when reads are open); operator/admin: that role or higher. */
export type Access = "public" | "read" | "operator" | "admin";

export interface Principal {
  name: string;
  role: Role;
  id: number;
}

declare module "fastify" {
  interface FastifyInstance {
    /** Whether a key is known good right now (from the cache, without a query): for the rate limiter. */
    apiKeyKnown(key: string): boolean;
  }
  interface FastifyContextConfig {
    access?: Access;
  }
  interface FastifyRequest {
    principal: Principal | null;
  }
}

export interface AuthOptions {
  readAccess: "open" | "key";
}

const CACHE_MS = 5000;
const TOUCH_EVERY_MS = 60_000;

export function presentedKey(request: FastifyRequest): string | undefined {
  const auth = request.headers.authorization;
  if (typeof auth === "string") {
    const m = /^Bearer\s+(\S+)$/i.exec(auth);
    if (m) return m[1];
  }
  const header = request.headers["x-api-key"];
  if (typeof header === "string" && header.length > 0) return header;
  return undefined;
}

export const authPlugin = fp<AuthOptions>(
  async (app, opts) => {
    const cache = new Map<string, { principal: Principal | null; until: number }>();
    const touched = new Map<number, number>();
    app.decorateRequest("principal", null);
    app.decorate("apiKeyKnown", (key: string) => {
      const hit = cache.get(key);
      return hit !== undefined && hit.principal !== null && hit.until > Date.now();
    });

    async function resolve(key: string): Promise<Principal | null> {
      const now = Date.now();
      const hit = cache.get(key);
      if (hit && hit.until > now) return hit.principal;
      const row = await findKey(app.db, key);
      const principal = row ? { name: row.name, role: row.role, id: row.id } : null;
      if (cache.size > 1000) cache.clear();
      cache.set(key, { principal, until: now + CACHE_MS });
      if (principal && (touched.get(principal.id) ?? 0) + TOUCH_EVERY_MS < now) {
        touched.set(principal.id, now);
        touchKey(app.db, principal.id).catch((err: unknown) =>
          app.log.warn({ err: String(err) }, "could not record key use"),
        );
      }
      return principal;
    }

    // preValidation: after the rate limiter (a route-level onRequest hook, which runs after global
    // onRequest hooks) and after the size-limited body is read, before anything looks at its content.
    app.addHook("preValidation", async (request: FastifyRequest, _reply: FastifyReply) => {
      const access = request.routeOptions.config?.access ?? "public";
      const key = presentedKey(request);
      if (key !== undefined) {
        const principal = await resolve(key);
        if (!principal) throw new ApiError(401, "API_ERR_UNAUTHORIZED", "the API key is unknown or revoked");
        request.principal = principal;
      }
      if (access === "public") return;
      if (access === "read" && opts.readAccess === "open") return;
      const need: Role = access === "read" ? "viewer" : access;
      if (!request.principal)
        throw new ApiError(
          401,
          "API_ERR_UNAUTHORIZED",
          `this route needs an API key with role ${need} or higher (Authorization: Bearer <key>)`,
        );
      if (!roleAllows(request.principal.role, need))
        throw new ApiError(
          403,
          "API_ERR_FORBIDDEN",
          `the key "${request.principal.name}" has role ${request.principal.role}; this route needs ${need}`,
        );
    });
  },
  { name: "bacmqtt-auth", dependencies: ["bacmqtt-db"] },
);
