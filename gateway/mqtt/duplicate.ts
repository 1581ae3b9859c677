// Two gateway processes with one gateway id (a copied configuration, a second service left running)
// would mix two sites under one set of topics. Each process carries a random instance id and its
// start time in every `bridge/state`; this module holds the rules the MQTT wrapper applies to the
// `bridge/state` messages of *other* instances: which claim wins, and the error and event that
// report a duplicate. It publishes nothing itself.
import { hostname } from "node:os";
import { CodedError } from "../../common/errors.ts";
import { BridgeState, type BridgeStatePayload, parsePayload } from "../../contract/index.ts";

export const DUPLICATE_GATEWAY = "GW_ERR_DUPLICATE_GATEWAY";

/** This process's side of a claim on a gateway id. */
export interface Identity {
  instance: string;
  startedAt: Date;
}

/**
 * What happened: `refused` — found another live instance before announcing itself; `lost` — both
 * announced, the other one stays; `won` — both announced, this one stays.
 */
export type DuplicateOutcome = "refused" | "lost" | "won";

export interface DuplicateInfo {
  outcome: DuplicateOutcome;
  other: BridgeStatePayload;
}

/** A `bridge/state` message, or undefined when it is empty (cleared) or not a valid state. */
export function parseClaim(payload: Buffer): BridgeStatePayload | undefined {
  if (payload.length === 0) return undefined;
  const v = parsePayload(BridgeState, payload);
  return v.ok ? v.value : undefined;
}

/**
 * Whether `ours` stays when `other` claims the same gateway id. The earlier start wins; equal
 * starts are settled by the instance ids, so both processes reach the same answer from the same two
 * messages. A claim without `started_at` comes from a gateway that cannot give way (an older
 * version): it is left to run, never fought.
 */
export function winsOver(ours: Identity, other: BridgeStatePayload): boolean {
  if (other.started_at === undefined || other.instance === undefined) return false;
  const a = ours.startedAt.getTime();
  const b = Date.parse(other.started_at);
  if (a !== b) return a < b;
  return ours.instance < other.instance;
}

/** The `data` of a `duplicate_gateway` event: both instances, and where this one runs. */
export function eventData(
  gatewayId: string,
  ours: Identity & { bdSeq: number },
  info: DuplicateInfo,
): Record<string, unknown> {
  return {
    gateway_id: gatewayId,
    outcome: info.outcome,
    instance: ours.instance,
    started_at: ours.startedAt.toISOString(),
    bd_seq: ours.bdSeq,
    host: hostname(),
    pid: process.pid,
    other_instance: info.other.instance ?? null,
    other_started_at: info.other.started_at ?? null,
    other_bd_seq: info.other.bd_seq,
  };
}

export function duplicateError(gatewayId: string, ours: Identity, info: DuplicateInfo): CodedError {
  const other = info.other.instance ?? "(no instance id: an older gateway)";
  const since = info.other.started_at ? `, running since ${info.other.started_at}` : "";
  const what =
    info.outcome === "refused"
      ? "refusing to start"
      : "it started first, so this one stops (nothing retained was overwritten)";
  return new CodedError(
    DUPLICATE_GATEWAY,
    `another gateway is online with gateway_id "${gatewayId}" (instance ${other}${since}); ${what}. ` +
      "Give each gateway its own gateway_id.",
    { details: { instance: ours.instance, other_instance: info.other.instance ?? null } },
  );
}
