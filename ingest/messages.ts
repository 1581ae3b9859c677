// Turns one MQTT message into one storage operation: parse the topic with the contract's parser,
// validate the payload with the contract's schema, and classify. Never throws: anything that is not
// a valid message of the contract becomes a dead letter (raw payload + every error).
import {
  BridgeDevices,
  type BridgeDevicesPayload,
  BridgeEvent,
  type BridgeEventPayload,
  BridgeInfo,
  type BridgeInfoPayload,
  BridgeState,
  type BridgeStatePayload,
  DeviceAvailability,
  type DeviceAvailabilityPayload,
  DeviceMeta,
  type DeviceMetaPayload,
  DeviceReadings,
  type DeviceReadingsPayload,
  parsePayload,
  parseTopic,
} from "../contract/index.ts";

export type IngestOp =
  | { kind: "readings"; gateway: string; device: number; payload: DeviceReadingsPayload }
  | { kind: "meta"; gateway: string; device: number; payload: DeviceMetaPayload }
  | { kind: "availability"; gateway: string; device: number; payload: DeviceAvailabilityPayload }
  | { kind: "bridge_state"; gateway: string; base: string; payload: BridgeStatePayload }
  | { kind: "bridge_info"; gateway: string; base: string; payload: BridgeInfoPayload }
  | { kind: "bridge_devices"; gateway: string; base: string; payload: BridgeDevicesPayload }
  | { kind: "write_event"; gateway: string; payload: BridgeEventPayload }
  | { kind: "ignore" }
  | { kind: "dead_letter"; error: string };

/**
 * Readings whose timestamps no working clock gives: more than `maxFutureMs` ahead of the ingest's
 * clock, or before `minTimeMs`. A gateway whose clock jumped to 2099 or fell back to 1970 would
 * otherwise plant rows that retention never removes (future) or removes at once (past), and bend
 * every hourly and daily aggregate they land in. Such a message becomes a dead letter (raw payload
 * kept: nothing is lost, it can be replayed once the clock is fixed). 0 / -Infinity turn a side off.
 */
export interface TimeWindow {
  maxFutureMs: number;
  minTimeMs: number;
}

export const DEFAULT_TIME_WINDOW: TimeWindow = {
  maxFutureMs: 24 * 3600_000,
  minTimeMs: Date.UTC(2000, 0, 1),
};

function implausibleTime(
  readings: DeviceReadingsPayload["readings"],
  window: TimeWindow,
  now: number,
): string | undefined {
  const latest = window.maxFutureMs > 0 ? now + window.maxFutureMs : Number.POSITIVE_INFINITY;
  let last = "";
  for (const r of readings) {
    if (r.ts === last) continue; // a poll cycle's readings share one timestamp
    last = r.ts;
    const t = Date.parse(r.ts);
    if (t > latest)
      return `${r.point}: ts ${r.ts} is ${formatSpan(t - now)} ahead of the ingest's clock (limit ${formatSpan(window.maxFutureMs)}; check the gateway's clock)`;
    if (t < window.minTimeMs)
      return `${r.point}: ts ${r.ts} is before ${new Date(window.minTimeMs).toISOString()} (check the gateway's clock)`;
  }
  return undefined;
}

function formatSpan(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172_800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86_400)} days`;
}

function invalid(errors: string[]): IngestOp {
  return { kind: "dead_letter", error: errors.join("; ") };
}

export function classify(
  topic: string,
  payload: Buffer,
  base: string,
  window: TimeWindow = DEFAULT_TIME_WINDOW,
  now: number = Date.now(),
): IngestOp {
  const parsed = parseTopic(topic, base);
  if ("error" in parsed) return { kind: "dead_letter", error: `topic: ${parsed.error}` };
  // An empty retained payload clears broker state (a removed device); there is nothing to store.
  if (payload.length === 0) return { kind: "ignore" };
  if (parsed.kind === "device") {
    const { gateway, device } = parsed;
    switch (parsed.name) {
      case "readings": {
        const v = parsePayload(DeviceReadings, payload);
        if (!v.ok) return invalid(v.errors);
        if (v.value.device !== device) {
          return invalid([`device: payload says ${v.value.device} but the topic says ${device}`]);
        }
        for (const r of v.value.readings) {
          if (typeof r.value === "number" && !Number.isFinite(r.value))
            return invalid([`${r.point}: value is not finite`]);
        }
        const odd = implausibleTime(v.value.readings, window, now);
        if (odd) return invalid([odd]);
        return { kind: "readings", gateway, device, payload: v.value };
      }
      case "meta": {
        const v = parsePayload(DeviceMeta, payload);
        if (!v.ok) return invalid(v.errors);
        if (v.value.device_instance !== device) {
          return invalid([
            `device_instance: payload says ${v.value.device_instance} but the topic says ${device}`,
          ]);
        }
        return { kind: "meta", gateway, device, payload: v.value };
      }
      case "availability": {
        const v = parsePayload(DeviceAvailability, payload);
        return v.ok ? { kind: "availability", gateway, device, payload: v.value } : invalid(v.errors);
      }
      default:
        return { kind: "ignore" };
    }
  }
  if (parsed.kind === "bridge") {
    const { gateway, base: b } = parsed;
    switch (parsed.name) {
      case "state": {
        const v = parsePayload(BridgeState, payload);
        return v.ok ? { kind: "bridge_state", gateway, base: b, payload: v.value } : invalid(v.errors);
      }
      case "info": {
        const v = parsePayload(BridgeInfo, payload);
        return v.ok ? { kind: "bridge_info", gateway, base: b, payload: v.value } : invalid(v.errors);
      }
      case "devices": {
        const v = parsePayload(BridgeDevices, payload);
        return v.ok ? { kind: "bridge_devices", gateway, base: b, payload: v.value } : invalid(v.errors);
      }
      case "event": {
        const v = parsePayload(BridgeEvent, payload);
        if (!v.ok) return invalid(v.errors);
        return v.value.type === "write"
          ? { kind: "write_event", gateway, payload: v.value }
          : { kind: "ignore" };
      }
      default:
        return { kind: "ignore" };
    }
  }
  return { kind: "ignore" };
}

/** bit0 in_alarm, bit1 fault, bit2 overridden, bit3 out_of_service. */
export function statusFlagBits(
  flags: { in_alarm: boolean; fault: boolean; overridden: boolean; out_of_service: boolean } | undefined,
): number | null {
  if (!flags) return null;
  return (
    (flags.in_alarm ? 1 : 0) |
    (flags.fault ? 2 : 0) |
    (flags.overridden ? 4 : 0) |
    (flags.out_of_service ? 8 : 0)
  );
}

export interface PointTexts {
  active_text?: string | null;
  inactive_text?: string | null;
  state_texts?: string[] | null;
  object_type?: string | null;
}

/**
 * Storage form of a value: booleans as 0/1 (with the active/inactive text when known), multi-state
 * as its number (with its state text when known), strings only in value_text.
 */
export function storedValue(
  value: unknown,
  point: PointTexts | undefined,
): { value: number | null; text: string | null } {
  if (typeof value === "boolean") {
    const text = value ? point?.active_text : point?.inactive_text;
    return { value: value ? 1 : 0, text: text ?? null };
  }
  if (typeof value === "number") {
    let text: string | null = null;
    if (point?.state_texts && Number.isInteger(value) && value >= 1)
      text = point.state_texts[value - 1] ?? null;
    else if (point?.object_type?.includes("binary") && (value === 0 || value === 1)) {
      text = (value === 1 ? point.active_text : point.inactive_text) ?? null;
    }
    return { value, text };
  }
  if (typeof value === "string") return { value: null, text: value };
  return { value: null, text: null };
}
