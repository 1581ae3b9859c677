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
const KNOWN_FOR_LIMITER_MS = 10 * 60_000;
const MAX_GOOD = 10_000;
const MAX_UNKNOWN = 1000;

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
    // Answers of the key table, kept CACHE_MS so a revoked key stops working within seconds. Unknown
    // keys are cached apart and bounded on their own: a flood of invented keys (from many addresses)
    // must not evict the good ones, or every real client would fall back to its address's budget.
    const good = new Map<string, { principal: Principal; until: number }>();
    const unknown = new Map<string, number>();
    // Keys seen good recently, for the rate limiter only (which budget a request counts against):
    // longer than CACHE_MS so a client's budget does not flip to its address every 5 s.
    const recentlyGood = new Map<string, number>();
    const touched = new Map<number, number>();
    app.decorateRequest("principal", null);
    app.decorate("apiKeyKnown", (key: string) => (recentlyGood.get(key) ?? 0) > Date.now());

    async function resolve(key: string): Promise<Principal | null> {
      const now = Date.now();
      const hit = good.get(key);
      if (hit && hit.until > now) return hit.principal;
      if ((unknown.get(key) ?? 0) > now) return null;
      const row = await findKey(app.db, key);
      const principal = row ? { name: row.name, role: row.role, id: row.id } : null;
      if (principal) {
        if (good.size >= MAX_GOOD) good.clear(); // more live keys than this: they are re-read, not wrong
        good.set(key, { principal, until: now + CACHE_MS });
        if (recentlyGood.size >= MAX_GOOD) recentlyGood.clear();
        recentlyGood.set(key, now + KNOWN_FOR_LIMITER_MS);
        unknown.delete(key);
      } else {
        good.delete(key);
        recentlyGood.delete(key);
        if (unknown.size >= MAX_UNKNOWN) unknown.clear();
        unknown.set(key, now + CACHE_MS);
      }
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
