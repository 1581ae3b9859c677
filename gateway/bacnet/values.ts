// Decoded BACnet application data → the JSON values the contract carries, and JSON values →
// application-tagged data for WriteProperty, chosen by object type (clause 12 datatypes).
import { EngineeringUnits, PropertyIdentifier } from "@bacnet-js/client/dist/lib/enum.js";
import type { StatusFlagsPayload, Value } from "../../contract/index.ts";
import { type AppValue, type DecodedValue, Tag } from "./codec.ts";

export const Prop = {
  ACTIVE_TEXT: 4,
  APPLICATION_SOFTWARE_VERSION: 12,
  COV_INCREMENT: 22,
  DESCRIPTION: 28,
  FIRMWARE_REVISION: 44,
  INACTIVE_TEXT: 46,
  LOCATION: 58,
  MAX_APDU_LENGTH_ACCEPTED: 62,
  MODEL_NAME: 70,
  NUMBER_OF_STATES: 74,
  OBJECT_LIST: 76,
  OBJECT_NAME: 77,
  OUT_OF_SERVICE: 81,
  PRESENT_VALUE: 85,
  PRIORITY_ARRAY: 87,
  PROTOCOL_SERVICES_SUPPORTED: 97,
  RELINQUISH_DEFAULT: 104,
  SEGMENTATION_SUPPORTED: 107,
  STATE_TEXT: 110,
  STATUS_FLAGS: 111,
  UNITS: 117,
  VENDOR_IDENTIFIER: 120,
  VENDOR_NAME: 121,
} as const;

/** Bits of Protocol_Services_Supported (clause 21, BACnetServicesSupported). */
export const ServiceBit = { SUBSCRIBE_COV: 5, READ_PROPERTY_MULTIPLE: 14 } as const;

export const SEGMENTATION_NAMES = ["both", "transmit", "receive", "none"] as const;
export type SegmentationName = (typeof SEGMENTATION_NAMES)[number];

const ANALOG_TYPES = new Set([0, 1, 2, 12, 23, 24, 46]);
const BINARY_TYPES = new Set([3, 4, 5, 55]);
const MULTISTATE_TYPES = new Set([13, 14, 19]);
/** Object types exposed as points (everything with a meaningful present-value). */
export const POINT_TYPES = new Set([
  0, 1, 2, 3, 4, 5, 12, 13, 14, 19, 23, 24, 39, 40, 42, 44, 45, 46, 47, 48, 50, 54, 55,
]);
/** Object types for which SubscribeCOV is defined (clause 13.1, Table 13-1). */
export const COV_TYPES = new Set([
  0, 1, 2, 3, 4, 5, 13, 14, 19, 21, 22, 23, 24, 39, 40, 42, 44, 45, 46, 47, 48, 50, 54, 55,
]);

export const isAnalog = (t: number) => ANALOG_TYPES.has(t) || t === 45 || t === 48;
export const isBinary = (t: number) => BINARY_TYPES.has(t);
export const isMultistate = (t: number) => MULTISTATE_TYPES.has(t);

export function unitsName(code: number | null): string | null {
  if (code === null) return null;
  const name = (EngineeringUnits as unknown as Record<number, string>)[code];
  return name ? name.toLowerCase().replace(/_/g, "-") : `units-${code}`;
}

const PROP_BY_NAME = new Map<string, number>();
for (const [k, v] of Object.entries(PropertyIdentifier as unknown as Record<string, number | string>)) {
  if (typeof v === "number") PROP_BY_NAME.set(k.toLowerCase(), v);
}

/** `present_value`, `present-value`, `PRESENT_VALUE` or a number → property identifier. */
export function propertyId(name: string): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  return PROP_BY_NAME.get(name.toLowerCase().replace(/-/g, "_"));
}

export function propertyName(id: number): string {
  const n = (PropertyIdentifier as unknown as Record<number, string>)[id];
  return n ? n.toLowerCase() : String(id);
}

interface BitString {
  bitsUsed: number;
  value: number[];
}

export function bitAt(bs: unknown, bit: number): boolean {
  const b = bs as BitString;
  if (!b || !Array.isArray(b.value)) return false;
  return (((b.value[bit >> 3] ?? 0) >> (bit & 7)) & 1) === 1;
}

export function bits(bs: unknown): boolean[] {
  const b = bs as BitString;
  if (!b || !Array.isArray(b.value)) return [];
  const out: boolean[] = [];
  for (let i = 0; i < (b.bitsUsed ?? b.value.length * 8); i++) out.push(bitAt(b, i));
  return out;
}

/** One decoded element → JSON. */
export function toJson(v: DecodedValue | undefined): unknown {
  if (!v) return null;
  switch (v.type) {
    case Tag.NULL:
      return null;
    case Tag.BOOLEAN:
      return Boolean(v.value);
    case Tag.REAL:
      // A REAL is a float32: print it with the 7 significant digits it actually carries.
      return typeof v.value === "number" && Number.isFinite(v.value)
        ? Number(v.value.toPrecision(7))
        : Number(v.value);
    case Tag.UNSIGNED:
    case Tag.SIGNED:
    case Tag.DOUBLE:
    case Tag.ENUMERATED:
      return typeof v.value === "number" ? v.value : Number(v.value);
    case Tag.CHARACTER_STRING:
      return String(v.value);
    case Tag.BIT_STRING:
      return bits(v.value);
    case Tag.OCTET_STRING:
      return Buffer.from(v.value as number[]).toString("hex");
    case Tag.OBJECT_ID: {
      const o = v.value as { type: number; instance: number };
      return { type: o.type, instance: o.instance };
    }
    default:
      return v.value instanceof Date ? v.value.toISOString() : (v.value ?? null);
  }
}

/** A property's values → JSON: scalar when one element, array otherwise. */
export function valuesToJson(values: DecodedValue[], asArray = false): unknown {
  if (!asArray && values.length === 1) return toJson(values[0]);
  if (!asArray && values.length === 0) return null;
  return values.map(toJson);
}

/** Present-value in contract form: booleans for binary objects, numbers, strings, null. */
export function presentValue(objectType: number, values: DecodedValue[]): Value {
  const v = toJson(values[0]);
  if (isBinary(objectType) && typeof v === "number") return v === 1;
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "string" || v === null) return v;
  return JSON.stringify(v);
}

export function statusFlags(values: DecodedValue[]): StatusFlagsPayload | undefined {
  const v = values[0];
  if (!v || v.type !== Tag.BIT_STRING) return undefined;
  return {
    in_alarm: bitAt(v.value, 0),
    fault: bitAt(v.value, 1),
    overridden: bitAt(v.value, 2),
    out_of_service: bitAt(v.value, 3),
  };
}

/** JSON value → application-tagged value for present-value of this object type. Throws on a bad value. */
export function encodeForType(objectType: number, value: Value): AppValue {
  if (value === null) return { type: Tag.NULL, value: null };
  if (isBinary(objectType)) {
    if (value === true || value === 1 || (typeof value === "string" && /^(1|true|on|active)$/i.test(value)))
      return { type: Tag.ENUMERATED, value: 1 };
    if (
      value === false ||
      value === 0 ||
      (typeof value === "string" && /^(0|false|off|inactive)$/i.test(value))
    )
      return { type: Tag.ENUMERATED, value: 0 };
    throw new Error(`binary value must be true/false, 1/0 or active/inactive, got ${JSON.stringify(value)}`);
  }
  const num =
    typeof value === "number"
      ? value
      : typeof value === "string" && value.trim() !== ""
        ? Number(value)
        : Number.NaN;
  if (isMultistate(objectType) || objectType === 48) {
    if (!Number.isInteger(num) || num < (objectType === 48 ? 0 : 1))
      throw new Error(
        `value must be an integer${objectType === 48 ? " ≥ 0" : " ≥ 1 (a state number)"}, got ${JSON.stringify(value)}`,
      );
    return { type: Tag.UNSIGNED, value: num };
  }
  if (objectType === 45) {
    if (!Number.isInteger(num)) throw new Error(`value must be an integer, got ${JSON.stringify(value)}`);
    return { type: Tag.SIGNED, value: num };
  }
  if (objectType === 46) {
    if (!Number.isFinite(num)) throw new Error(`value must be a number, got ${JSON.stringify(value)}`);
    return { type: Tag.DOUBLE, value: num };
  }
  if (objectType === 40) return { type: Tag.CHARACTER_STRING, value: String(value) };
  if (ANALOG_TYPES.has(objectType)) {
    if (!Number.isFinite(num)) throw new Error(`value must be a number, got ${JSON.stringify(value)}`);
    return { type: Tag.REAL, value: num };
  }
  if (typeof value === "boolean") return { type: Tag.ENUMERATED, value: value ? 1 : 0 };
  if (typeof value === "number") return { type: Tag.REAL, value };
  return { type: Tag.CHARACTER_STRING, value: String(value) };
}
