// Commands relayed to a gateway over MQTT (api/relay.ts): discovery, re-reading a device's points,
// reading a point now, writing and relinquishing. 200 carries the gateway's result; a gateway's
// refusal or bad-input error is a 4xx, any other gateway error 502, no answer 504, no broker 503.
// Every write attempt is recorded in write_audit before it is sent (so an unrecordable write is
// never sent) and completed with its result afterwards.
import type { FastifyPluginAsyncTypebox } from "@fastify/type-provider-typebox";
import type { FastifyRequest } from "fastify";
import type { Endpoint } from "../../contract/index.ts";
import { ApiError, gatewayFailure, notFound } from "../errors.ts";
import { newTransaction, type RelayOutcome } from "../relay.ts";
import {
  CommandResult,
  DeviceParams,
  DiscoverBody,
  EmptyBody,
  errors,
  GatewayParams,
  PointParams,
  ReadBody,
  RelinquishBody,
  WriteBody,
} from "../schemas.ts";

export interface CommandTimeouts {
  /** read, write, relinquish. */
  commandMs: number;
  /** device/points: a large device's object list takes a while. */
  pointsMs: number;
  /** Added to the discovery's own `timeout_s` (default discoveryDefaultS). */
  discoveryDefaultS: number;
}

const COMMAND_ERRORS = errors(400, 401, 403, 404, 422, 429, 502, 503, 504);

type AuditResult = "ok" | "refused" | "error" | "timeout";

export const commandRoutes: FastifyPluginAsyncTypebox<{ timeouts: CommandTimeouts }> = async (app, opts) => {
  const { timeouts } = opts;

  async function assertGatewayKnown(gateway: string): Promise<void> {
    if (app.relay.gatewayStates.has(gateway)) return;
    const { rows } = await app.db.query("SELECT 1 FROM gateways WHERE gateway_id = $1", [gateway]);
    if (!rows[0]) throw notFound(`gateway "${gateway}"`);
  }

  /** Turns a relay outcome into the HTTP answer (or a thrown ApiError), counting it. */
  function answer(gateway: string, endpoint: Endpoint, outcome: RelayOutcome) {
    app.metrics.commands.inc({ endpoint, outcome: outcome.kind });
    switch (outcome.kind) {
      case "ok":
        return { gateway_id: gateway, transaction: outcome.transaction, data: outcome.data };
      case "error": {
        const f = gatewayFailure(outcome.error.code);
        throw new ApiError(
          f.status,
          f.code,
          `gateway "${gateway}" answered ${outcome.error.code}: ${outcome.error.message}`,
          {
            gateway_error: outcome.error,
            transaction: outcome.transaction,
          },
        );
      }
      case "timeout":
        throw new ApiError(
          504,
          "API_ERR_GATEWAY_TIMEOUT",
          `gateway "${gateway}" did not answer ${endpoint} in time`,
          {
            transaction: outcome.transaction,
          },
        );
      case "unavailable":
        throw new ApiError(503, "API_ERR_BROKER_UNAVAILABLE", outcome.reason, {
          transaction: outcome.transaction,
        });
    }
  }

  function auditResult(outcome: RelayOutcome): {
    result: AuditResult;
    code: string | null;
    message: string | null;
  } {
    switch (outcome.kind) {
      case "ok":
        return { result: "ok", code: null, message: null };
      case "error":
        return {
          result: gatewayFailure(outcome.error.code).result,
          code: outcome.error.code,
          message: outcome.error.message,
        };
      case "timeout":
        return { result: "timeout", code: "API_ERR_GATEWAY_TIMEOUT", message: "no answer from the gateway" };
      case "unavailable":
        return { result: "error", code: "API_ERR_BROKER_UNAVAILABLE", message: outcome.reason };
    }
  }

  async function write(
    request: FastifyRequest,
    params: { gateway: string; device: number; point: string },
    value: number | boolean | string | null,
    priority: number | undefined,
  ) {
    const { gateway, device, point } = params;
    await assertGatewayKnown(gateway);
    const transaction = newTransaction();
    const actor = request.principal?.name ?? "anonymous";
    let auditId: string;
    try {
      const { rows } = await app.db.query<{ id: string }>(
        `INSERT INTO write_audit (time, gateway_id, device_instance, point, value, priority, source, actor, transaction)
         VALUES (now(), $1, $2, $3, $4::jsonb, $5, 'api', $6, $7) RETURNING id`,
        [gateway, device, point, JSON.stringify(value), priority ?? null, actor, transaction],
      );
      auditId = (rows[0] as { id: string }).id;
    } catch (err) {
      request.log.error({ err: String(err) }, "write not sent: the audit record could not be stored");
      throw new ApiError(
        503,
        "API_ERR_AUDIT_UNAVAILABLE",
        "the write was not sent: it could not be recorded",
      );
    }
    const outcome = await app.relay.request(
      gateway,
      "device/write",
      { device, point, value, ...(priority === undefined ? {} : { priority }) },
      timeouts.commandMs,
      transaction,
    );
    const a = auditResult(outcome);
    const done = outcome.kind === "ok" ? (outcome.data as { priority?: number }) : undefined;
    await app.db
      .query(
        `UPDATE write_audit SET result = $2, error_code = $3, error_message = $4, priority = coalesce(priority, $5)
         WHERE id = $1`,
        [auditId, a.result, a.code, a.message?.slice(0, 1000) ?? null, done?.priority ?? null],
      )
      .catch((err: unknown) =>
        request.log.error({ err: String(err), auditId }, "could not complete the audit record"),
      );
    request.log.info({ gateway, device, point, priority, actor, result: a.result, transaction }, "write");
    return answer(gateway, "device/write", outcome);
  }

  app.post(
    "/api/gateways/:gateway/discover",
    {
      config: { access: "operator", rateLimit: { max: 10, timeWindow: 60_000 } },
      schema: {
        tags: ["commands"],
        summary: "Start a discovery (Who-Is) and wait for its result; progress streams on /api/events",
        params: GatewayParams,
        body: DiscoverBody,
        response: { 200: CommandResult, ...COMMAND_ERRORS },
      },
    },
    async (request) => {
      const { gateway } = request.params;
      await assertGatewayKnown(gateway);
      const waitMs = (request.body.timeout_s ?? timeouts.discoveryDefaultS) * 1000 + timeouts.commandMs;
      const outcome = await app.relay.request(gateway, "discover", request.body, waitMs);
      return answer(gateway, "discover", outcome);
    },
  );

  app.post(
    "/api/gateways/:gateway/devices/:device/refresh",
    {
      config: { access: "operator" },
      schema: {
        tags: ["commands"],
        summary: "Re-read a device's object list and point metadata",
        params: DeviceParams,
        body: EmptyBody,
        response: { 200: CommandResult, ...COMMAND_ERRORS },
      },
    },
    async (request) => {
      const { gateway, device } = request.params;
      await assertGatewayKnown(gateway);
      const outcome = await app.relay.request(gateway, "device/points", { device }, timeouts.pointsMs);
      return answer(gateway, "device/points", outcome);
    },
  );

  app.post(
    "/api/gateways/:gateway/devices/:device/points/:point/read",
    {
      config: { access: "operator" },
      schema: {
        tags: ["commands"],
        summary: "Read a point now (present_value unless `property` says otherwise)",
        params: PointParams,
        body: ReadBody,
        response: { 200: CommandResult, ...COMMAND_ERRORS },
      },
    },
    async (request) => {
      const { gateway, device, point } = request.params;
      await assertGatewayKnown(gateway);
      const outcome = await app.relay.request(
        gateway,
        "device/read",
        { device, point, ...request.body },
        timeouts.commandMs,
      );
      return answer(gateway, "device/read", outcome);
    },
  );

  app.post(
    "/api/gateways/:gateway/devices/:device/points/:point/write",
    {
      config: { access: "operator" },
      schema: {
        tags: ["commands"],
        summary: "Write a value at a priority (recorded in the audit log)",
        params: PointParams,
        body: WriteBody,
        response: { 200: CommandResult, ...COMMAND_ERRORS },
      },
    },
    async (request) => write(request, request.params, request.body.value, request.body.priority),
  );

  app.post(
    "/api/gateways/:gateway/devices/:device/points/:point/relinquish",
    {
      config: { access: "operator" },
      schema: {
        tags: ["commands"],
        summary: "Relinquish a priority (write null; recorded in the audit log)",
        params: PointParams,
        body: RelinquishBody,
        response: { 200: CommandResult, ...COMMAND_ERRORS },
      },
    },
    async (request) => write(request, request.params, null, request.body.priority),
  );
};
