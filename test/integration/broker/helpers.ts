// Test support for the broker suites: MQTT.js clients that never reconnect on their own, message
// recorders and bounded waits. Loopback only.
import mqtt, { type IClientOptions, type MqttClient } from "mqtt";
import { hashPassword, type UserEntry } from "../../../broker/index.ts";

export const WAIT_MS = 10_000;

export async function connect(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: WAIT_MS, ...options });
}

/** Connects with a recorder attached before CONNACK, so messages sent right after it are not missed. */
export async function connectRecording(
  url: string,
  options: IClientOptions = {},
): Promise<{ client: MqttClient; messages: Message[] }> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: WAIT_MS, ...options });
  const messages = record(client);
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => resolve());
    client.once("error", reject);
    client.once("close", () => reject(new Error("closed before CONNACK")));
  });
  return { client, messages };
}

/** Resolves with why a connection attempt failed ("closed" when it just closed); rejects if it connects. */
export function connectFailure(url: string, options: IClientOptions = {}): Promise<string> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, connectTimeout: WAIT_MS, ...options });
  return new Promise((resolve, reject) => {
    client.once("connect", () => {
      client.end(true);
      reject(new Error("connected"));
    });
    client.once("error", (err) => {
      client.end(true);
      resolve(err.message);
    });
    client.once("close", () => resolve("closed"));
  });
}

/** The CONNACK return code a connection attempt is refused with (0 when it is accepted). */
export async function connackCode(url: string, options: IClientOptions = {}): Promise<number> {
  try {
    const client = await connect(url, options);
    await client.endAsync();
    return 0;
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (typeof code !== "number") throw err;
    return code;
  }
}

export async function waitFor(what: string, predicate: () => boolean, timeoutMs = WAIT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface Message {
  topic: string;
  payload: string;
  retain: boolean;
  qos: number;
}

/** Records every message a client receives. */
export function record(client: MqttClient): Message[] {
  const messages: Message[] = [];
  client.on("message", (topic, payload, packet) => {
    messages.push({ topic, payload: payload.toString(), retain: packet.retain, qos: packet.qos });
  });
  return messages;
}

/** Resolves when the client's connection closes (the broker cut it or it ended). */
export function closed(client: MqttClient): Promise<void> {
  return new Promise((resolve) => {
    if (!client.connected && client.disconnected) resolve();
    client.once("close", () => resolve());
  });
}

/** Granted QoS per filter (128 = refused). */
export async function subscribe(client: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<number> {
  try {
    const granted = await client.subscribeAsync(filter, { qos });
    return (granted[0] as { qos: number }).qos;
  } catch (err) {
    // MQTT.js turns a SUBACK 0x80 into an error that carries the packet.
    const granted = (err as { packet?: { granted?: number[] } }).packet?.granted;
    if (Array.isArray(granted) && typeof granted[0] === "number") return granted[0];
    throw err;
  }
}

export async function user(
  username: string,
  password: string,
  role: UserEntry["role"],
  gateway?: string,
): Promise<UserEntry> {
  return { username, role, ...(gateway ? { gateway } : {}), password_hash: await hashPassword(password) };
}

/** A unique prefix so suites sharing Redis or Mosquitto never see each other's messages. */
export function uniqueId(label: string): string {
  return `${label}${process.pid}${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
}
