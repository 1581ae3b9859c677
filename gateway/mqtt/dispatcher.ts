// The request/response API: one lookup table endpoint → handler and one dispatcher that validates
// the payload against the contract, runs the handler, and answers on `bridge/response/<endpoint>`
// with the request's `transaction`. A throw becomes `{status:"error", error, transaction}`; an
// invalid request is answered, never dropped. Knows nothing of BACnet: handlers do the work.
import type { Logger } from "../../common/logger.ts";
import {
  type Endpoint,
  type ErrorBodyPayload,
  parsePayload,
  parseTopic,
  type RequestPayloads,
  Requests,
  type ResponseDataPayloads,
  Topics,
} from "../../contract/index.ts";

export type Handler<E extends Endpoint> = (request: RequestPayloads[E]) => Promise<ResponseDataPayloads[E]>;
export type Handlers = { [E in Endpoint]: Handler<E> };

export type Transaction = string | number;

export interface DispatcherOptions {
  topics: Topics;
  handlers: Handlers;
  /** Sends a response (relative topic, payload). */
  respond: (relativeTopic: string, payload: unknown) => Promise<unknown>;
  /** Told about every refused request (invalid payload or unknown endpoint), for `bridge/event`. */
  onRejected?: (info: { endpoint: string; errors: string[]; transaction?: Transaction }) => void;
  log: Logger;
}

export function errorBody(err: unknown): ErrorBodyPayload {
  const e = err as { code?: unknown; message?: unknown; details?: unknown };
  const code = typeof e?.code === "string" && /^[A-Z][A-Z0-9_]*$/.test(e.code) ? e.code : "GW_ERR_INTERNAL";
  const message = typeof e?.message === "string" ? e.message : String(err);
  return e?.details === undefined ? { code, message } : { code, message, details: e.details };
}

/** Pulls a usable transaction out of a payload that failed validation, so the error can be correlated. */
function salvageTransaction(payload: Buffer): Transaction | undefined {
  try {
    const json = JSON.parse(payload.toString("utf8")) as { transaction?: unknown };
    const t = json?.transaction;
    if (typeof t === "string" && t.length <= 128) return t;
    if (typeof t === "number" && Number.isInteger(t)) return t;
  } catch {
    // not JSON: nothing to echo
  }
  return undefined;
}

export class Dispatcher {
  private readonly o: DispatcherOptions;
  /** Requests being handled now (for tests and graceful stop). */
  private readonly running = new Set<Promise<void>>();

  constructor(options: DispatcherOptions) {
    this.o = options;
  }

  /** Handles one message on a relative topic under `bridge/request/`. Never throws. */
  handle(relativeTopic: string, payload: Buffer): Promise<void> {
    const p = this.dispatch(relativeTopic, payload).catch((err: unknown) =>
      this.o.log.error({ err: String(err) }, "request dispatch failed"),
    );
    this.running.add(p);
    void p.finally(() => this.running.delete(p));
    return p;
  }

  async idle(): Promise<void> {
    await Promise.allSettled([...this.running]);
  }

  private async dispatch(relativeTopic: string, payload: Buffer): Promise<void> {
    const { topics } = this.o;
    const parsed = parseTopic(topics.full(relativeTopic), topics.base);
    if ("error" in parsed || parsed.kind !== "request") {
      // No response topic exists for an unknown endpoint; the refusal is still made visible.
      const errors = ["error" in parsed ? parsed.error : `"${relativeTopic}" is not a request topic`];
      this.o.log.warn({ topic: relativeTopic, errors }, "request refused");
      this.o.onRejected?.({
        endpoint: relativeTopic.replace(/^bridge\/request\//, ""),
        errors,
        transaction: salvageTransaction(payload),
      });
      return;
    }
    const endpoint = parsed.endpoint;
    const responseTopic = Topics.responseRel(endpoint);
    // An empty payload is the same as `{}` (e.g. `mosquitto_pub -n -t …/request/rebirth`).
    const body = payload.length === 0 ? Buffer.from("{}") : payload;
    const checked = parsePayload(Requests[endpoint], body);
    if (!checked.ok) {
      const transaction = salvageTransaction(body);
      this.o.log.debug({ endpoint, errors: checked.errors }, "invalid request");
      this.o.onRejected?.({ endpoint, errors: checked.errors, transaction });
      await this.o.respond(responseTopic, {
        status: "error",
        error: {
          code: "GW_ERR_INVALID_REQUEST",
          message: `invalid ${endpoint} request: ${checked.errors.join("; ")}`,
          details: { problems: checked.errors },
        },
        ...(transaction !== undefined ? { transaction } : {}),
      });
      return;
    }
    const request = checked.value as { transaction?: Transaction };
    const transaction = request.transaction;
    const echo = transaction !== undefined ? { transaction } : {};
    let response: unknown;
    try {
      const handler = this.o.handlers[endpoint] as Handler<Endpoint>;
      const data = await handler(request as RequestPayloads[Endpoint]);
      response = { status: "ok", data, ...echo };
    } catch (err) {
      const error = errorBody(err);
      if (error.code === "GW_ERR_INTERNAL")
        this.o.log.error({ endpoint, err: String(err) }, "handler failed");
      response = { status: "error", error, ...echo };
    }
    await this.o.respond(responseTopic, response);
  }
}
