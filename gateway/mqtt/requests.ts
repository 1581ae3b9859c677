// The request handlers, one per endpoint of the contract. Each receives an already-validated
// request and returns the response's `data`, or throws a CodedError that the dispatcher turns into
// an error response. A request for an unknown or offline device is answered at once.
import { CodedError } from "../../common/errors.ts";
import type { Logger } from "../../common/logger.ts";
import type { Value } from "../../contract/index.ts";
import type { BacnetEngine } from "../bacnet/types.ts";
import type { CatalogueStore } from "../catalogue-store.ts";
import type { Discovery } from "../discovery.ts";
import type { WritePolicy } from "../write-policy.ts";
import type { Bridge, DeviceEntry } from "./bridge.ts";
import type { Handlers } from "./dispatcher.ts";

export interface HandlerContext {
  engine: BacnetEngine;
  bridge: Bridge;
  discovery: Discovery;
  store: CatalogueStore;
  writePolicy: WritePolicy;
  log: Logger;
  /** Problems the process itself knows of (e.g. the MQTT connection), for `health_check`. */
  problems?: () => string[];
}

function known(ctx: HandlerContext, device: number): DeviceEntry {
  const entry = ctx.bridge.devices.get(device);
  if (!entry) throw new CodedError("GW_ERR_UNKNOWN_DEVICE", `device ${device} is not known to this gateway`);
  return entry;
}

function online(ctx: HandlerContext, device: number): DeviceEntry {
  const entry = known(ctx, device);
  // A device not answered yet (availability unknown) is tried: only a known-offline one is refused.
  if (ctx.engine.availability(device) === "offline")
    throw new CodedError("GW_ERR_DEVICE_OFFLINE", `device ${device} is offline`);
  return entry;
}

function withPoint(entry: DeviceEntry, point: string): void {
  if (entry.catalogue && !entry.catalogue.points.some((p) => p.point === point))
    throw new CodedError(
      "GW_ERR_UNKNOWN_POINT",
      `device ${entry.instance} has no point ${point} in its catalogue`,
    );
}

export function createHandlers(ctx: HandlerContext): Handlers {
  return {
    discover: async (req) => {
      const { transaction: _t, ...options } = req;
      return ctx.discovery.scan(options);
    },

    "device/points": async ({ device }) => {
      const entry = online(ctx, device);
      const started = Date.now();
      const catalogue = await ctx.discovery.readAndAdopt(entry.discovered);
      return { device, points: catalogue.points.length, duration_ms: Date.now() - started };
    },

    "device/read": async ({ device, point, property, index }) => {
      const entry = online(ctx, device);
      withPoint(entry, point);
      const prop = property ?? "present_value";
      const value = await ctx.engine.read(device, point, prop, index);
      return { device, point, property: prop, value, ts: new Date().toISOString() };
    },

    "device/write": async ({ device, point, value, priority, transaction }) => {
      const audit = (result: "accepted" | "refused" | "failed", extra: Record<string, unknown>) =>
        ctx.bridge.event("write", {
          device,
          point,
          value,
          priority: priority ?? ctx.writePolicy.defaultPriority,
          result,
          ...(transaction !== undefined ? { transaction } : {}),
          ...extra,
        });
      let used: number;
      try {
        used = ctx.writePolicy.check(device, point, priority);
        const entry = online(ctx, device);
        withPoint(entry, point);
      } catch (err) {
        audit("refused", { error_code: (err as CodedError).code, message: (err as Error).message });
        ctx.log.warn({ device, point, priority, err: (err as Error).message }, "write refused");
        throw err;
      }
      try {
        const out = await ctx.engine.write(device, point, value as Value, used);
        audit("accepted", { present_value: out.presentValue });
        ctx.log.info({ device, point, value, priority: used }, "write");
        return {
          device: out.device,
          point: out.point,
          value: out.value,
          priority: out.priority,
          present_value: out.presentValue,
          priority_array: out.priorityArray,
          ts: out.ts,
        };
      } catch (err) {
        const code = (err as CodedError).code ?? "GW_ERR_INTERNAL";
        audit(code === "GW_ERR_WRITE_NOT_ALLOWED" ? "refused" : "failed", {
          error_code: code,
          message: (err as Error).message,
        });
        throw err;
      }
    },

    "device/options": async ({ device, poll_interval_s, cov, include, exclude }) => {
      const entry = known(ctx, device);
      const change = {
        ...(poll_interval_s !== undefined ? { pollIntervalS: poll_interval_s } : {}),
        ...(cov !== undefined ? { cov } : {}),
        ...(include !== undefined ? { include } : {}),
        ...(exclude !== undefined ? { exclude } : {}),
      };
      entry.runtimeOptions = { ...entry.runtimeOptions, ...change };
      const effective = ctx.bridge.deviceOptions(device);
      if (entry.catalogue) {
        ctx.engine.setOptions(device, ctx.bridge.engineOptions(device));
        ctx.store.save({ catalogue: entry.catalogue, options: entry.runtimeOptions });
        void ctx.bridge.publishMeta(entry);
      }
      return {
        device,
        poll_interval_s: effective.pollIntervalS,
        cov: effective.cov,
        include: effective.include,
        exclude: effective.exclude,
      };
    },

    rebirth: async () => ({ devices: await ctx.bridge.birth({ includeState: true }) }),

    health_check: async () => {
      const problems = [...(ctx.problems?.() ?? [])];
      const stats = ctx.engine.stats();
      if (stats.devices.offline > 0)
        problems.push(`${stats.devices.offline} of ${stats.devices.total} devices offline`);
      const h = ctx.bridge.health();
      if (h.buffer.depth > 0) problems.push(`${h.buffer.depth} readings messages waiting in the buffer`);
      if (h.buffer.dropped_total > 0) problems.push(`${h.buffer.dropped_total} buffered readings dropped`);
      return { healthy: problems.length === 0, problems };
    },
  };
}
