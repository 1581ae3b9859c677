// The audit log (read) and API key management (admin).
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import { Type } from "@sinclair/typebox";
import { ApiError, notFound } from "../errors.ts";
import { createKey, listKeys, ROLES, revokeKey } from "../keys.ts";
import { ApiKeyInfo, AuditQuery, AuditRow, errors } from "../schemas.ts";

export const adminRoutes: FastifyPluginAsyncTypebox = async (app) => {
  app.get(
    "/api/audit",
    {
      config: { access: "read" },
      schema: {
        tags: ["audit"],
        summary: "Write attempts, newest first (who, when, what, priority, result)",
        querystring: AuditQuery,
        response: { 200: Type.Object({ items: Type.Array(AuditRow) }), ...errors(400, 401, 403) },
      },
    },
    async (request) => {
      const q = request.query;
      const { rows } = await app.db.query(
        `SELECT id, time, gateway_id, device_instance, point, value, priority, source, actor, result,
                error_code, error_message, transaction
         FROM write_audit
         WHERE ($1::text IS NULL OR gateway_id = $1)
           AND ($2::int IS NULL OR device_instance = $2)
           AND ($3::text IS NULL OR point = $3)
           AND ($4::text IS NULL OR result = $4)
           AND ($5::bigint IS NULL OR id < $5)
         ORDER BY id DESC LIMIT $6`,
        [q.gateway ?? null, q.device ?? null, q.point ?? null, q.result ?? null, q.before ?? null, q.limit],
      );
      return { items: rows };
    },
  );

  app.get(
    "/api/keys",
    {
      config: { access: "admin" },
      schema: {
        tags: ["keys"],
        summary: "API keys (never the keys themselves)",
        response: { 200: Type.Object({ items: Type.Array(ApiKeyInfo) }), ...errors(401, 403) },
      },
    },
    async () => ({ items: await listKeys(app.db) }),
  );

  app.post(
    "/api/keys",
    {
      config: { access: "admin" },
      schema: {
        tags: ["keys"],
        summary: "Create a key; the key is in this answer only",
        body: Type.Object(
          {
            name: Type.String({ pattern: "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$" }),
            role: Type.Union(ROLES.map((r) => Type.Literal(r))),
          },
          { additionalProperties: false },
        ),
        response: {
          201: Type.Object({ key: Type.String(), ...ApiKeyInfo.properties }),
          ...errors(400, 401, 403, 409),
        },
      },
    },
    async (request, reply) => {
      try {
        const { key, row } = await createKey(app.db, request.body.name, request.body.role);
        return reply.code(201).send({ key, ...row });
      } catch (err) {
        if ((err as { code?: string }).code === "API_ERR_KEY_EXISTS")
          throw new ApiError(409, "API_ERR_KEY_EXISTS", (err as Error).message);
        throw err;
      }
    },
  );

  app.delete(
    "/api/keys/:name",
    {
      config: { access: "admin" },
      schema: {
        tags: ["keys"],
        summary: "Revoke a key",
        params: Type.Object({ name: Type.String({ maxLength: 64 }) }),
        response: { 204: Type.Null(), ...errors(401, 403, 404) },
      },
    },
    async (request, reply) => {
      if (!(await revokeKey(app.db, request.params.name))) throw notFound(`key "${request.params.name}"`);
      return reply.code(204).send(null);
    },
  );
};
