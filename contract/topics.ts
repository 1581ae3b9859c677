// Every MQTT topic string of the system is built or parsed here; no other file builds one.
// Layout: `{base}/{gw}/bridge/...` and `{base}/{gw}/{device}/...` (see docs/mqtt-api.md).

export const DEFAULT_BASE_TOPIC = "bacmqtt";

export const BRIDGE_TOPICS = ["state", "info", "devices", "health", "event"] as const;
export type BridgeTopic = (typeof BRIDGE_TOPICS)[number];

export const DEVICE_TOPICS = ["meta", "availability", "state", "readings"] as const;
export type DeviceTopic = (typeof DEVICE_TOPICS)[number];

export const ENDPOINTS = [
  "discover",
  "device/points",
  "device/read",
  "device/write",
  "device/options",
  "rebirth",
  "health_check",
] as const;
export type Endpoint = (typeof ENDPOINTS)[number];

/** How each topic is published: retained state vs. transient events. */
export const TOPIC_QOS: Readonly<
  Record<BridgeTopic | DeviceTopic | "request" | "response", { retain: boolean; qos: 0 | 1 }>
> = {
  state: { retain: true, qos: 1 },
  info: { retain: true, qos: 1 },
  devices: { retain: true, qos: 1 },
  health: { retain: true, qos: 1 },
  event: { retain: false, qos: 0 },
  meta: { retain: true, qos: 1 },
  availability: { retain: true, qos: 1 },
  readings: { retain: false, qos: 1 },
  request: { retain: false, qos: 1 },
  response: { retain: false, qos: 1 },
};

export class TopicError extends Error {
  readonly code = "CONTRACT_ERR_TOPIC";
}

/**
 * A name usable as one topic level: non-empty, ≤ 64 chars, no wildcard, separator, control
 * characters or `$` prefix (reserved for broker topics). Returns a reason, or undefined when valid.
 */
export function nameProblem(name: string): string | undefined {
  if (typeof name !== "string" || name.length === 0) return "must not be empty";
  if (name.length > 64) return "must be at most 64 characters";
  if (/[+#/]/.test(name)) return "must not contain '+', '#' or '/'";
  if (/[\u0000-\u001f\u007f]/.test(name)) return "must not contain control characters";
  if (name.startsWith("$")) return "must not start with '$'";
  if (name !== name.trim()) return "must not start or end with white space";
  return undefined;
}

export function assertName(kind: string, name: string): void {
  const problem = nameProblem(name);
  if (problem) throw new TopicError(`${kind} "${name}" ${problem}`);
}

/** Base topics may have several levels (`site/bacmqtt`) but each must be a valid name. */
export function assertBase(base: string): void {
  if (typeof base !== "string" || base.length === 0) throw new TopicError("base topic must not be empty");
  for (const level of base.split("/")) assertName("base topic level", level);
}

function assertDevice(device: number): void {
  if (!Number.isInteger(device) || device < 0 || device > 4_194_303)
    throw new TopicError(`device instance ${device} must be an integer 0..4194303`);
}

/** Topic builders for one gateway. Full topics (for subscribers) and relative ones (for the MQTT wrapper). */
export class Topics {
  readonly base: string;
  readonly gateway: string;
  readonly root: string;

  constructor(base: string, gateway: string) {
    assertBase(base);
    assertName("gateway id", gateway);
    this.base = base;
    this.gateway = gateway;
    this.root = `${base}/${gateway}`;
  }

  /** `bridge/<name>` relative to the gateway root. */
  static bridgeRel(name: BridgeTopic): string {
    return `bridge/${name}`;
  }

  static requestRel(endpoint: Endpoint): string {
    return `bridge/request/${endpoint}`;
  }

  static responseRel(endpoint: Endpoint): string {
    return `bridge/response/${endpoint}`;
  }

  /** Wildcard for every request, relative to the gateway root. */
  static requestFilterRel(): string {
    return "bridge/request/#";
  }

  static deviceRel(device: number, name: DeviceTopic): string {
    assertDevice(device);
    return `${device}/${name}`;
  }

  full(relative: string): string {
    return `${this.root}/${relative}`;
  }

  bridge(name: BridgeTopic): string {
    return this.full(Topics.bridgeRel(name));
  }

  request(endpoint: Endpoint): string {
    return this.full(Topics.requestRel(endpoint));
  }

  response(endpoint: Endpoint): string {
    return this.full(Topics.responseRel(endpoint));
  }

  device(device: number, name: DeviceTopic): string {
    return this.full(Topics.deviceRel(device, name));
  }

  /** Wildcard for every request to this gateway. */
  requestFilter(): string {
    return this.full(Topics.requestFilterRel());
  }

  /** Wildcard for everything this gateway publishes. */
  allFilter(): string {
    return `${this.root}/#`;
  }
}

/** Subscription filters spanning every gateway under a base topic (for ingest, api). */
export const Filters = {
  all: (base: string) => `${base}/+/#`,
  bridge: (base: string, name: BridgeTopic) => `${base}/+/bridge/${name}`,
  device: (base: string, name: DeviceTopic) => `${base}/+/+/${name}`,
  responses: (base: string) => `${base}/+/bridge/response/#`,
  requests: (base: string) => `${base}/+/bridge/request/#`,
  /** Every broker statistics topic (`$SYS/<broker id>/…`). */
  sys: () => "$SYS/#",
  /** MQTT 5 / aedes-compatible shared subscription for load-sharing ingest instances. */
  shared: (group: string, filter: string) => `$share/${group}/${filter}`,
};

/** A broker statistics topic, `$SYS/<broker id>/<levels…>` (published by the broker, never by clients). */
export function sysTopic(brokerId: string, ...levels: string[]): string {
  return ["$SYS", brokerId, ...levels].join("/");
}

/** The group and inner filter of a shared subscription (`$share/<group>/<filter>`), else undefined. */
export function parseSharedFilter(filter: string): { group: string; filter: string } | undefined {
  const match = /^\$share\/([^/#+]+)\/(.+)$/.exec(filter);
  return match ? { group: match[1] as string, filter: match[2] as string } : undefined;
}

export type ParsedTopic =
  | { kind: "bridge"; base: string; gateway: string; name: BridgeTopic }
  | { kind: "request"; base: string; gateway: string; endpoint: Endpoint }
  | { kind: "response"; base: string; gateway: string; endpoint: Endpoint }
  | { kind: "device"; base: string; gateway: string; device: number; name: DeviceTopic };

/**
 * The one topic parser. `base` may span several levels; returns a readable error for anything
 * that is not a topic of the contract.
 */
export function parseTopic(
  topic: string,
  base: string = DEFAULT_BASE_TOPIC,
): ParsedTopic | { error: string } {
  if (typeof topic !== "string") return { error: "topic must be a string" };
  const prefix = `${base}/`;
  if (!topic.startsWith(prefix)) return { error: `topic "${topic}" is not under base "${base}"` };
  const rest = topic.slice(prefix.length).split("/");
  const [gateway, first, ...tail] = rest;
  if (gateway === undefined || first === undefined) return { error: `topic "${topic}" is too short` };
  const gwProblem = nameProblem(gateway);
  if (gwProblem) return { error: `gateway id "${gateway}" ${gwProblem}` };
  if (first === "bridge") {
    const [kind, ...endpointParts] = tail;
    if (kind === "request" || kind === "response") {
      const endpoint = endpointParts.join("/");
      if (!(ENDPOINTS as readonly string[]).includes(endpoint))
        return { error: `unknown endpoint "${endpoint}" (known: ${ENDPOINTS.join(", ")})` };
      return { kind, base, gateway, endpoint: endpoint as Endpoint };
    }
    if (tail.length === 1 && (BRIDGE_TOPICS as readonly string[]).includes(kind as string))
      return { kind: "bridge", base, gateway, name: kind as BridgeTopic };
    return { error: `unknown bridge topic "${tail.join("/")}"` };
  }
  // Canonical decimal only: "007" would be a second topic for device 7.
  if (!/^(0|[1-9]\d{0,6})$/.test(first))
    return { error: `"${first}" is neither "bridge" nor a device instance (decimal, no leading zeros)` };
  const device = Number(first);
  if (device > 4_194_303) return { error: `device instance ${device} is out of range` };
  const [name, ...extra] = tail;
  if (extra.length || !(DEVICE_TOPICS as readonly string[]).includes(name as string))
    return { error: `unknown device topic "${tail.join("/")}"` };
  return { kind: "device", base, gateway, device, name: name as DeviceTopic };
}

/** MQTT topic-filter matching (`+` one level, `#` the rest), as brokers do. */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    const part = f[i];
    if (part === "#") return i > 0 || !topic.startsWith("$");
    if (i >= t.length) return false;
    if (part === "+") {
      if (i === 0 && (t[0] as string).startsWith("$")) return false;
      continue;
    }
    if (part !== t[i]) return false;
  }
  return f.length === t.length;
}
