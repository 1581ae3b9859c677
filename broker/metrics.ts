// Broker statistics: one set of counters feeds both the Prometheus registry (`/metrics`) and the
// `$SYS/<broker id>/…` topics, so the two never disagree.
import type { Socket } from "node:net";
import { Counter, collectDefaultMetrics, Gauge, Registry } from "prom-client";

export type RefusalKind = "connect" | "publish" | "subscribe";

export class BrokerStats {
  readonly registry = new Registry();
  readonly started = Date.now();
  messagesReceived = 0;
  messagesSent = 0;
  private bytesReceivedClosed = 0;
  private bytesSentClosed = 0;
  private readonly sockets = new Set<Socket>();
  private readonly refusals: Counter<"kind" | "reason">;
  private readonly rateHeld: Counter;

  constructor(private readonly connectedClients: () => number) {
    const stats = this;
    const registers = [this.registry];
    new Gauge({
      name: "bacmqtt_broker_clients_connected",
      help: "MQTT clients connected to this broker instance",
      registers,
      collect() {
        this.set(stats.connectedClients());
      },
    });
    new Gauge({
      name: "bacmqtt_broker_connections_open",
      help: "Open network connections (TCP, TLS and WebSocket), including ones not yet past CONNECT",
      registers,
      collect() {
        this.set(stats.sockets.size);
      },
    });
    new Counter({
      name: "bacmqtt_broker_messages_received_total",
      help: "PUBLISH packets received from clients and accepted",
      registers,
      collect() {
        this.reset();
        this.inc(stats.messagesReceived);
      },
    });
    new Counter({
      name: "bacmqtt_broker_messages_sent_total",
      help: "PUBLISH packets delivered to subscribed clients",
      registers,
      collect() {
        this.reset();
        this.inc(stats.messagesSent);
      },
    });
    new Counter({
      name: "bacmqtt_broker_bytes_received_total",
      help: "Bytes read from client connections (MQTT, TLS and WebSocket framing included)",
      registers,
      collect() {
        this.reset();
        this.inc(stats.bytesReceived());
      },
    });
    new Counter({
      name: "bacmqtt_broker_bytes_sent_total",
      help: "Bytes written to client connections (MQTT, TLS and WebSocket framing included)",
      registers,
      collect() {
        this.reset();
        this.inc(stats.bytesSent());
      },
    });
    this.refusals = new Counter({
      name: "bacmqtt_broker_refusals_total",
      help: "Refused connections, publishes and subscriptions, by reason",
      labelNames: ["kind", "reason"],
      registers,
    });
    this.rateHeld = new Counter({
      name: "bacmqtt_broker_rate_limit_held_total",
      help: "Publishes held back by the per-client rate limit (then delivered)",
      registers,
    });
    collectDefaultMetrics({ register: this.registry, prefix: "bacmqtt_broker_" });
  }

  track(socket: Socket): void {
    this.sockets.add(socket);
    socket.once("close", () => {
      this.sockets.delete(socket);
      this.bytesReceivedClosed += socket.bytesRead;
      this.bytesSentClosed += socket.bytesWritten;
    });
  }

  openConnections(): number {
    return this.sockets.size;
  }

  /** Destroys every tracked connection (at shutdown, after aedes said goodbye to its clients). */
  destroyAll(): void {
    for (const socket of this.sockets) socket.destroy();
  }

  bytesReceived(): number {
    let n = this.bytesReceivedClosed;
    for (const s of this.sockets) n += s.bytesRead;
    return n;
  }

  bytesSent(): number {
    let n = this.bytesSentClosed;
    for (const s of this.sockets) n += s.bytesWritten;
    return n;
  }

  refused(kind: RefusalKind, reason: string): void {
    this.refusals.inc({ kind, reason });
  }

  held(): void {
    this.rateHeld.inc();
  }

  /** Values published under `$SYS/<broker id>/`, keyed by the levels below it. */
  sysValues(): Record<string, string> {
    return {
      "clients/connected": String(this.connectedClients()),
      "messages/received": String(this.messagesReceived),
      "messages/sent": String(this.messagesSent),
      "bytes/received": String(this.bytesReceived()),
      "bytes/sent": String(this.bytesSent()),
      uptime: String(Math.floor((Date.now() - this.started) / 1000)),
    };
  }
}
