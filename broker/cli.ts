// `bacmqtt broker` (run the broker) and `bacmqtt broker-user` (edit a users file).

import { randomBytes } from "node:crypto";
import { defineCommand, intOption, type OptionValues, stringOption } from "../common/cli.ts";
import { ConfigError } from "../common/errors.ts";
import { createLogger } from "../common/logger.ts";
import { catchShutdown } from "../common/shutdown.ts";
import { nameProblem } from "../contract/index.ts";
import { describeRoles } from "./acl.ts";
import type { BrokerLimits, BrokerOptions } from "./broker.ts";
import { startBroker } from "./index.ts";
import { hashPassword, ROLES, type Role, readUsersForEdit, saveUsers, type UserEntry } from "./users.ts";

/** A port option that may also be `off`. */
function portOption(values: OptionValues, name: string, problems: string[]): number | false | undefined {
  if (typeof values[name] === "string" && /^(off|none|false|-)$/i.test(values[name] as string)) return false;
  return intOption(values, name, problems, { min: 0, max: 65535 });
}

export const brokerCommand = defineCommand({
  name: "broker",
  summary: "Run the MQTT broker (aedes: TCP, WebSocket, optional TLS, users and ACLs, $SYS, /metrics)",
  description: `Roles and what they may do (see docs/broker.md):
${describeRoles("{base}")
  .map(
    (r) =>
      `  ${r.role.padEnd(8)} publish: ${r.publish.join(", ") || "-"}; subscribe: ${r.subscribe.join(", ")}`,
  )
  .join("\n")}
SIGHUP re-reads the users file.`,
  options: {
    port: {
      type: "string",
      value: "N",
      default: "1883",
      description: "MQTT (or MQTTS with --tls-cert) port",
    },
    "ws-port": {
      type: "string",
      value: "N",
      default: "8083",
      description: "MQTT over WebSocket port, or off",
    },
    host: { type: "string", value: "ADDR", default: "0.0.0.0", description: "Address to listen on" },
    "allow-anonymous": { type: "boolean", description: "Accept clients without user name" },
    "anonymous-role": {
      type: "string",
      value: "ROLE",
      default: "admin",
      description: `Role of anonymous clients (${ROLES.filter((r) => r !== "gateway").join(", ")})`,
    },
    users: {
      type: "string",
      value: "FILE",
      description: "Users file (create it with `bacmqtt broker-user add`)",
    },
    "redis-url": {
      type: "string",
      value: "URL",
      description: "Keep sessions, queues and retained messages in Redis (redis://host:6379/0)",
    },
    "redis-prefix": {
      type: "string",
      value: "P",
      description: "Key prefix in Redis (several brokers sharing one)",
    },
    "metrics-port": {
      type: "string",
      value: "N",
      default: "9465",
      description: "Prometheus /metrics port, or off",
    },
    "base-topic": {
      type: "string",
      value: "T",
      default: "bacmqtt",
      description: "Base topic the ACLs protect",
    },
    "tls-cert": {
      type: "string",
      value: "FILE",
      description: "PEM certificate: MQTTS on --port, WSS on --ws-port",
    },
    "tls-key": { type: "string", value: "FILE", description: "PEM private key for --tls-cert" },
    "max-packet-size": {
      type: "string",
      value: "BYTES",
      default: "4194304",
      description: "Largest MQTT packet",
    },
    "max-connections": {
      type: "string",
      value: "N",
      default: "1000",
      description: "Connected clients at most",
    },
    "max-topic-depth": { type: "string", value: "N", default: "16", description: "Topic levels at most" },
    "rate-limit": {
      type: "string",
      value: "N",
      default: "1000",
      description: "Publishes per second per client, 0 for none (bursts are slowed, floods disconnected)",
    },
    "rate-burst": {
      type: "string",
      value: "N",
      description: "Publishes accepted at once (default 2 s worth)",
    },
    "sys-interval": {
      type: "string",
      value: "S",
      default: "10",
      description: "Seconds between $SYS updates, 0 off",
    },
  },
  examples: [
    "bacmqtt broker --users /data/users.json",
    "bacmqtt broker --allow-anonymous --host 127.0.0.1 --ws-port off",
    "bacmqtt broker --users users.json --tls-cert cert.pem --tls-key key.pem --redis-url redis://127.0.0.1:6379/0",
  ],
  async run({ values }) {
    const problems: string[] = [];
    const limits: Partial<BrokerLimits> = {};
    const limit = (key: keyof BrokerLimits, name: string, min: number) => {
      const n = intOption(values, name, problems, { min });
      if (n !== undefined) limits[key] = n;
    };
    limit("maxPacketSize", "max-packet-size", 64);
    limit("maxConnections", "max-connections", 1);
    limit("maxTopicDepth", "max-topic-depth", 1);
    limit("messagesPerSecond", "rate-limit", 0);
    limit("burst", "rate-burst", 1);
    const sys = intOption(values, "sys-interval", problems, { min: 0, max: 86_400 });
    const cert = stringOption(values, "tls-cert");
    const key = stringOption(values, "tls-key");
    if ((cert === undefined) !== (key === undefined)) problems.push("--tls-cert and --tls-key go together");
    const role = stringOption(values, "anonymous-role");
    if (role !== undefined && !(ROLES as readonly string[]).includes(role))
      problems.push(`--anonymous-role: "${role}" is not one of ${ROLES.join(", ")}`);
    const redisUrl = stringOption(values, "redis-url");
    const options: BrokerOptions = {
      port: intOption(values, "port", problems, { min: 0, max: 65535 }),
      wsPort: portOption(values, "ws-port", problems),
      metricsPort: portOption(values, "metrics-port", problems),
      host: stringOption(values, "host"),
      allowAnonymous: values["allow-anonymous"] === true,
      anonymousRole: role as Role | undefined,
      users: stringOption(values, "users"),
      baseTopic: stringOption(values, "base-topic"),
      redis: redisUrl ? { url: redisUrl, keyPrefix: stringOption(values, "redis-prefix") } : undefined,
      tls: cert && key ? { cert, key } : undefined,
      limits,
      sysInterval: sys === undefined ? undefined : sys * 1000,
    };
    if (problems.length) throw new ConfigError(problems);
    const log = createLogger("broker");
    const shutdown = catchShutdown(log);
    const broker = await startBroker({ ...options, logger: log });
    shutdown.ready(() => broker.close());
    if (options.users && process.platform !== "win32") {
      process.on("SIGHUP", () => {
        broker.reloadUsers().then(
          () => log.info({ users: options.users }, "users file reloaded"),
          (err: unknown) =>
            log.error({ err: (err as Error).message }, "users file not reloaded, keeping the old one"),
        );
      });
    }
    return undefined;
  },
});

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

export const brokerUserCommand = defineCommand({
  name: "broker-user",
  summary: "Add, update or remove a user in a broker users file",
  usage: "add|remove|list [NAME] --users FILE [--role R] [--gateway GW] [--password-stdin]",
  description: `add creates the user or updates it (role, gateway, password); without --password-stdin a new
user gets a random password, printed once. The file is written atomically with mode 0600;
a running broker picks changes up on SIGHUP or restart.`,
  positionals: [1, 2],
  options: {
    users: { type: "string", value: "FILE", description: "Users file (created if missing)" },
    role: { type: "string", value: "R", description: `Role: ${ROLES.join(", ")}`, env: false },
    gateway: { type: "string", value: "GW", description: "Gateway id (role gateway)", env: false },
    "password-stdin": { type: "boolean", description: "Read the password from standard input", env: false },
  },
  examples: [
    "bacmqtt broker-user add --users users.json gw1 --role gateway --gateway gw1",
    "printf '%s' \"$PASS\" | bacmqtt broker-user add --users users.json ingest --role ingest --password-stdin",
    "bacmqtt broker-user list --users users.json",
  ],
  async run({ values, positionals }) {
    const [action, name] = positionals as [string, string | undefined];
    const file = stringOption(values, "users");
    const problems: string[] = [];
    if (!file) problems.push("--users FILE is required");
    if (!["add", "remove", "list"].includes(action))
      problems.push(`unknown action "${action}" (add, remove, list)`);
    if (action !== "list" && !name) problems.push(`${action} needs a user NAME`);
    if (action === "list" && name) problems.push("list takes no NAME");
    const role = stringOption(values, "role");
    if (role !== undefined && !(ROLES as readonly string[]).includes(role))
      problems.push(`--role: "${role}" is not one of ${ROLES.join(", ")}`);
    const gateway = stringOption(values, "gateway");
    if (gateway !== undefined && nameProblem(gateway))
      problems.push(`--gateway: "${gateway}" ${nameProblem(gateway)}`);
    if (problems.length) throw new ConfigError(problems);
    const users = await readUsersForEdit(file as string);
    if (action === "list") {
      for (const u of users)
        process.stdout.write(`${u.username}\t${u.role}${u.gateway ? `\t${u.gateway}` : ""}\n`);
      return 0;
    }
    const username = name as string;
    const existing = users.find((u) => u.username === username);
    if (action === "remove") {
      if (!existing) {
        process.stderr.write(`bacmqtt broker-user: no user "${username}" in ${file}\n`);
        return 1;
      }
      await saveUsers(
        file as string,
        users.filter((u) => u !== existing),
      );
      process.stdout.write(`removed ${username}\n`);
      return 0;
    }
    const newRole = (role ?? existing?.role) as Role | undefined;
    if (!newRole) throw new ConfigError([`--role is required for a new user (${ROLES.join(", ")})`]);
    const newGateway = newRole === "gateway" ? (gateway ?? existing?.gateway) : undefined;
    if (newRole === "gateway" && !newGateway) throw new ConfigError(["role gateway needs --gateway GW"]);
    if (newRole !== "gateway" && gateway !== undefined)
      throw new ConfigError(["--gateway is only for role gateway"]);
    let password: string | undefined;
    let generated = false;
    if (values["password-stdin"]) {
      password = (await readStdin()).split(/\r?\n/)[0] ?? "";
      if (password.length === 0) throw new ConfigError(["--password-stdin: standard input held no password"]);
    } else if (!existing) {
      password = randomBytes(18).toString("base64url");
      generated = true;
    }
    const entry: UserEntry = {
      username,
      role: newRole,
      ...(newGateway ? { gateway: newGateway } : {}),
      password_hash:
        password === undefined ? (existing as UserEntry).password_hash : await hashPassword(password),
    };
    await saveUsers(file as string, [...users.filter((u) => u !== existing), entry]);
    process.stdout.write(
      `${existing ? "updated" : "added"} ${username} (${newRole}${newGateway ? ` ${newGateway}` : ""})\n`,
    );
    if (generated) process.stdout.write(`password: ${password}\n`);
    return 0;
  },
});
