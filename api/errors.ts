// The api's coded errors and the one error handler: every failure leaves as
// `{"error":{"code":"API_ERR_…","message":…}}` with a stable code; 5xx messages are hidden from
// clients (logged instead). Owns the mapping of gateway error codes to HTTP statuses.
import { STATUS_CODES } from "node:http";
import type { Duplex } from "node:stream";
import { type Static, Type } from "@sinclair/typebox";
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import { CodedError } from "../common/errors.ts";

export const ApiErrorBody = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: "Stable error code, API_ERR_…" }),
      message: Type.String(),
      details: Type.Optional(Type.Unknown()),
    }),
  },
  { $id: "ApiError", description: "Every error response" },
);
export type ApiErrorPayload = Static<typeof ApiErrorBody>;

export class ApiError extends CodedError {
  readonly statusCode: number;

  constructor(statusCode: number, code: string, message: string, details?: unknown) {
    super(code, message, details === undefined ? undefined : { details });
    this.name = "ApiError";
    this.statusCode = statusCode;
  }
}

export const notFound = (what: string) => new ApiError(404, "API_ERR_NOT_FOUND", `${what} not found`);
export const badRequest = (message: string, details?: unknown) =>
  new ApiError(400, "API_ERR_BAD_REQUEST", message, details);

/** Gateway error codes that mean the request itself was wrong or refused, not that the gateway failed. */
const REFUSED = new Set(["GW_ERR_WRITE_NOT_ALLOWED", "GW_ERR_BACNET_WRITE_ACCESS_DENIED"]);
const UNKNOWN = new Set([
  "GW_ERR_UNKNOWN_DEVICE",
  "GW_ERR_UNKNOWN_POINT",
  "GW_ERR_BACNET_UNKNOWN_OBJECT",
  "GW_ERR_BACNET_UNKNOWN_PROPERTY",
]);

/**
 * Gateway codes for a request the api's schema lets through but the gateway finds wrong on its own
 * terms (found by test/faults/http-fuzz.test.ts, which answered them 502): an instance range with
 * low above high, a property name it does not know, an array index or a value the point's type
 * cannot take, a priority outside 1-16 or the configured minimum.
 */
const REQUEST_FAULT = new Set([
  "GW_ERR_BACNET_RANGE",
  "GW_ERR_BACNET_PROPERTY_NAME",
  "GW_ERR_BACNET_INVALID_ARRAY_INDEX",
  "GW_ERR_WRITE_VALUE",
  "GW_ERR_WRITE_PRIORITY",
]);

export interface GatewayFailure {
  status: number;
  code: string;
  /** The write_audit result this failure stands for. */
  result: "refused" | "error";
}

/** How an `{status:"error"}` answer from a gateway is returned to the HTTP client. */
export function gatewayFailure(gatewayCode: string): GatewayFailure {
  if (REFUSED.has(gatewayCode)) return { status: 403, code: "API_ERR_WRITE_REFUSED", result: "refused" };
  if (UNKNOWN.has(gatewayCode)) return { status: 404, code: "API_ERR_GATEWAY_NOT_FOUND", result: "refused" };
  if (gatewayCode === "GW_ERR_INVALID_REQUEST")
    return { status: 400, code: "API_ERR_GATEWAY_REJECTED", result: "refused" };
  if (REQUEST_FAULT.has(gatewayCode) || /OUT_OF_RANGE|INVALID_DATA_TYPE|INVALID_VALUE/.test(gatewayCode))
    return { status: 422, code: "API_ERR_GATEWAY_REJECTED", result: "refused" };
  return { status: 502, code: "API_ERR_GATEWAY_ERROR", result: "error" };
}

/** Fastify's own error codes that are the client's fault, with ours. */
const FASTIFY_CODES: Record<string, { status: number; code: string }> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: "API_ERR_BODY_TOO_LARGE" },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { status: 415, code: "API_ERR_UNSUPPORTED_MEDIA_TYPE" },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, code: "API_ERR_BAD_REQUEST" },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, code: "API_ERR_BAD_JSON" },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: "API_ERR_BAD_JSON" },
  FST_ERR_VALIDATION: { status: 400, code: "API_ERR_VALIDATION" },
};

/**
 * Fastify's `clientErrorHandler`: what Node's HTTP parser refuses before any route sees it (request
 * line and headers over 16 KiB, a broken request line, a client too slow) leaves in our error shape
 * too, instead of fastify's `{"error":"…","statusCode":…}`.
 */
export function clientErrorHandler(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === "ECONNRESET" || socket.destroyed) return;
  const [status, code, message] =
    err.code === "HPE_HEADER_OVERFLOW"
      ? [431, "API_ERR_HEADERS_TOO_LARGE", "the request line and headers exceed 16 KiB"]
      : err.code === "ERR_HTTP_REQUEST_TIMEOUT"
        ? [408, "API_ERR_REQUEST_TIMEOUT", "the request was not received in time"]
        : [400, "API_ERR_BAD_REQUEST", "malformed HTTP request"];
  const body = JSON.stringify({ error: { code, message } });
  if (socket.writable)
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    );
  socket.destroy(err);
}

/**
 * Fastify's `frameworkErrors`: the router's own refusals (a path segment that is not valid
 * percent-encoding, a parameter over `maxParamLength`) in our error shape, not fastify's.
 */
export function frameworkErrors(err: FastifyError, _request: FastifyRequest, reply: FastifyReply): void {
  const [status, code, message] =
    err.code === "FST_ERR_BAD_URL"
      ? [400, "API_ERR_BAD_URL", "the path is not valid percent-encoded UTF-8"]
      : err.code === "FST_ERR_MAX_PARAM_LENGTH"
        ? [414, "API_ERR_PATH_TOO_LONG", "a path parameter exceeds 200 characters"]
        : [500, "API_ERR_INTERNAL", "internal error"];
  if (status >= 500) reply.log.error({ err }, "router error");
  void reply.code(status).send({ error: { code, message } });
}

export function installErrorHandlers(app: FastifyInstance): void {
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).send({
      error: {
        code: "API_ERR_NOT_FOUND",
        message: `no route ${request.method} ${request.url.split("?")[0]}`,
      },
    });
  });

  app.setErrorHandler((err: FastifyError & { details?: unknown; problems?: string[] }, request, reply) => {
    if (err instanceof ApiError) {
      if (err.statusCode >= 500) request.log.warn({ code: err.code, err: err.message }, "request failed");
      return reply.code(err.statusCode).send({
        error: {
          code: err.code,
          message: err.message,
          ...(err.details === undefined ? {} : { details: err.details }),
        },
      });
    }
    if (err.validation || err.code === "FST_ERR_VALIDATION" || err.code === "API_ERR_VALIDATION") {
      const problems = err.problems ?? [err.message];
      return reply.code(400).send({
        error: {
          code: "API_ERR_VALIDATION",
          message: `invalid ${err.validationContext ?? "request"}: ${problems.join("; ")}`,
          details: { problems },
        },
      });
    }
    const mapped = err.code ? FASTIFY_CODES[err.code] : undefined;
    if (mapped) return reply.code(mapped.status).send({ error: { code: mapped.code, message: err.message } });
    if (err.statusCode === 429) {
      // @fastify/rate-limit throws what our errorResponseBuilder (app.ts) built, `{statusCode, error}`,
      // which has no `message` of its own: the 429 schema of the command routes needs one (found
      // by test/faults/http-fuzz.test.ts: a rate-limited discovery answered 500).
      const built = (err as { error?: { message?: unknown } }).error?.message;
      const message = typeof built === "string" ? built : err.message || "rate limit exceeded; retry later";
      return reply.code(429).send({ error: { code: "API_ERR_RATE_LIMITED", message } });
    }
    if (err.statusCode && err.statusCode >= 400 && err.statusCode < 500) {
      return reply
        .code(err.statusCode)
        .send({ error: { code: "API_ERR_BAD_REQUEST", message: err.message } });
    }
    request.log.error({ err }, "unhandled error");
    return reply.code(500).send({ error: { code: "API_ERR_INTERNAL", message: "internal error" } });
  });
}
