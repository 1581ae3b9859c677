// BACnet failures as coded errors. Every way a request can fail (our timer, an Error PDU, a Reject,
// an Abort, a malformed reply) maps to one stable `GW_ERR_…` code plus a readable message, so the
// MQTT side and the CLI can report it as data.
import { AbortReason, ErrorClass, ErrorCode, RejectReason } from "@bacnet-js/client/dist/lib/enum.js";
import { CodedError } from "../../common/errors.ts";

export const GW_ERR = {
  TIMEOUT: "GW_ERR_BACNET_TIMEOUT",
  UNKNOWN_OBJECT: "GW_ERR_BACNET_UNKNOWN_OBJECT",
  UNKNOWN_PROPERTY: "GW_ERR_BACNET_UNKNOWN_PROPERTY",
  WRITE_ACCESS_DENIED: "GW_ERR_BACNET_WRITE_ACCESS_DENIED",
  READ_ACCESS_DENIED: "GW_ERR_BACNET_READ_ACCESS_DENIED",
  VALUE_OUT_OF_RANGE: "GW_ERR_BACNET_VALUE_OUT_OF_RANGE",
  INVALID_DATA_TYPE: "GW_ERR_BACNET_INVALID_DATA_TYPE",
  INVALID_ARRAY_INDEX: "GW_ERR_BACNET_INVALID_ARRAY_INDEX",
  SERVICE_NOT_SUPPORTED: "GW_ERR_BACNET_SERVICE_NOT_SUPPORTED",
  SEGMENTATION_NOT_SUPPORTED: "GW_ERR_BACNET_SEGMENTATION_NOT_SUPPORTED",
  BUFFER_OVERFLOW: "GW_ERR_BACNET_BUFFER_OVERFLOW",
  DEVICE_BUSY: "GW_ERR_BACNET_DEVICE_BUSY",
  ERROR: "GW_ERR_BACNET_ERROR",
  REJECT: "GW_ERR_BACNET_REJECT",
  ABORT: "GW_ERR_BACNET_ABORT",
  MALFORMED_REPLY: "GW_ERR_BACNET_MALFORMED_REPLY",
  DEVICE_UNKNOWN: "GW_ERR_BACNET_DEVICE_UNKNOWN",
  DEVICE_OFFLINE: "GW_ERR_BACNET_DEVICE_OFFLINE",
  /** A router answered Reject-Message-To-Network (clause 6.4.4): unknown network, busy, … */
  NETWORK_REJECT: "GW_ERR_BACNET_NETWORK_REJECT",
  POINT_UNKNOWN: "GW_ERR_BACNET_POINT_UNKNOWN",
  PROPERTY_UNKNOWN_NAME: "GW_ERR_BACNET_PROPERTY_NAME",
  WRITE_NOT_ALLOWED: "GW_ERR_WRITE_NOT_ALLOWED",
  WRITE_PRIORITY: "GW_ERR_WRITE_PRIORITY",
  WRITE_VALUE: "GW_ERR_WRITE_VALUE",
  INTERFACE: "GW_ERR_BACNET_INTERFACE",
  BIND: "GW_ERR_BACNET_BIND",
  BBMD: "GW_ERR_BACNET_BBMD_REGISTRATION",
  STOPPED: "GW_ERR_BACNET_STOPPED",
} as const;

/** `network`: a router refused to carry the request (the device itself was never reached). */
export type BacnetFailureKind = "timeout" | "network" | "error" | "reject" | "abort" | "malformed" | "local";

/** The device was not reached (silence, or a router that cannot deliver): counts toward offline. */
export function unreached(err: unknown): boolean {
  const kind = (err as { kind?: unknown })?.kind;
  return kind === "timeout" || kind === "network";
}

/** A failed BACnet request. `kind` tells the scheduler whether the device answered at all. */
export class BacnetError extends CodedError {
  readonly kind: BacnetFailureKind;
  readonly errorClass?: number;
  readonly errorCode?: number;
  readonly reason?: number;

  constructor(
    code: string,
    message: string,
    kind: BacnetFailureKind,
    extra: { errorClass?: number; errorCode?: number; reason?: number; cause?: unknown } = {},
  ) {
    super(code, message, {
      cause: extra.cause,
      details: { errorClass: extra.errorClass, errorCode: extra.errorCode, reason: extra.reason },
    });
    this.name = "BacnetError";
    this.kind = kind;
    this.errorClass = extra.errorClass;
    this.errorCode = extra.errorCode;
    this.reason = extra.reason;
  }
}

const enumName = (e: Record<number, string>, n: number) =>
  (e[n] ?? String(n)).toLowerCase().replace(/_/g, "-");

const ERROR_CODE_MAP: Record<number, string> = {
  31: GW_ERR.UNKNOWN_OBJECT,
  32: GW_ERR.UNKNOWN_PROPERTY,
  40: GW_ERR.WRITE_ACCESS_DENIED,
  27: GW_ERR.READ_ACCESS_DENIED,
  37: GW_ERR.VALUE_OUT_OF_RANGE,
  9: GW_ERR.INVALID_DATA_TYPE,
  42: GW_ERR.INVALID_ARRAY_INDEX,
  45: GW_ERR.SERVICE_NOT_SUPPORTED,
  50: GW_ERR.INVALID_ARRAY_INDEX,
};

export function bacnetErrorFrom(errorClass: number, errorCode: number): BacnetError {
  const code = ERROR_CODE_MAP[errorCode] ?? GW_ERR.ERROR;
  return new BacnetError(
    code,
    `BACnet error: class ${enumName(ErrorClass as unknown as Record<number, string>, errorClass)}, code ${enumName(ErrorCode as unknown as Record<number, string>, errorCode)}`,
    "error",
    { errorClass, errorCode },
  );
}

export function rejectFrom(reason: number): BacnetError {
  const name = enumName(RejectReason as unknown as Record<number, string>, reason);
  const code = reason === 9 ? GW_ERR.SERVICE_NOT_SUPPORTED : GW_ERR.REJECT;
  return new BacnetError(code, `BACnet reject: ${name}`, "reject", { reason });
}

export function abortFrom(reason: number): BacnetError {
  const name = enumName(AbortReason as unknown as Record<number, string>, reason);
  const code =
    reason === 4
      ? GW_ERR.SEGMENTATION_NOT_SUPPORTED
      : reason === 1
        ? GW_ERR.BUFFER_OVERFLOW
        : reason === 11
          ? GW_ERR.BUFFER_OVERFLOW // apdu-too-long
          : GW_ERR.ABORT;
  return new BacnetError(code, `BACnet abort: ${name}`, "abort", { reason });
}

const NETWORK_REJECT_REASONS: Record<number, string> = {
  0: "other error",
  1: "the router is not connected to the network and knows no route to it",
  2: "the router is busy",
  3: "unknown network-layer message type",
  4: "message too long",
  5: "security error",
  6: "addressing error",
};

export function networkRejectFrom(router: string, network: number, reason: number): BacnetError {
  return new BacnetError(
    GW_ERR.NETWORK_REJECT,
    `router ${router} rejected the message to network ${network}: ${NETWORK_REJECT_REASONS[reason] ?? `reason ${reason}`}`,
    "network",
    { reason },
  );
}

export function timeoutError(what: string, attempts: number): BacnetError {
  return new BacnetError(GW_ERR.TIMEOUT, `no answer to ${what} after ${attempts} attempt(s)`, "timeout");
}

export function codeOf(err: unknown): string {
  const c = (err as { code?: unknown })?.code;
  return typeof c === "string" ? c : GW_ERR.ERROR;
}
