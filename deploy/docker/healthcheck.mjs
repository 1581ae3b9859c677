// Container health checks for the bacmqtt image, in plain Node (no tsx start-up cost, no curl in the
// slim image). Exit 0 = healthy, 1 = unhealthy; one line on stderr says why.
//   node deploy/docker/healthcheck.mjs tcp HOST PORT        a TCP connect succeeds
//   node deploy/docker/healthcheck.mjs http URL [REGEX…]    GET answers 2xx, and the body matches
//                                                           every REGEX (multiline, e.g. a metric line)
//   node deploy/docker/healthcheck.mjs mqtt URL             an MQTT 3.1.1 CONNECT is answered by a CONNACK
// MQTT: a CONNACK of any return code proves the broker is serving (auth refusals included), so
// the check needs no credentials.
import net from "node:net";

const TIMEOUT_MS = 4000;

function fail(message) {
  process.stderr.write(`unhealthy: ${message}\n`);
  process.exit(1);
}

function tcp(host, port) {
  const socket = net.connect({ host, port: Number(port) });
  socket.setTimeout(TIMEOUT_MS, () => fail(`tcp ${host}:${port}: timeout`));
  socket.on("connect", () => {
    socket.destroy();
    process.exit(0);
  });
  socket.on("error", (err) => fail(`tcp ${host}:${port}: ${err.message}`));
}

async function http(url, patterns) {
  let res;
  let body;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(TIMEOUT_MS) });
    body = await res.text();
  } catch (err) {
    fail(`GET ${url}: ${err.message}`);
    return;
  }
  if (res.status < 200 || res.status >= 300) fail(`GET ${url}: HTTP ${res.status}`);
  for (const p of patterns)
    if (!new RegExp(p, "m").test(body)) fail(`GET ${url}: body does not match /${p}/`);
  process.exit(0);
}

function mqtt(url) {
  const u = new URL(url);
  const port = Number(u.port || 1883);
  const clientId = `healthcheck-${process.pid}`;
  // CONNECT, MQTT 3.1.1, clean session, keepalive 10 s.
  const payload = Buffer.concat([
    Buffer.from([0x00, 0x04]),
    Buffer.from("MQTT"),
    Buffer.from([0x04, 0x02, 0x00, 0x0a]),
    Buffer.from([clientId.length >> 8, clientId.length & 0xff]),
    Buffer.from(clientId),
  ]);
  const packet = Buffer.concat([Buffer.from([0x10, payload.length]), payload]);
  const socket = net.connect({ host: u.hostname, port });
  socket.setTimeout(TIMEOUT_MS, () => fail(`mqtt ${u.host}: no CONNACK`));
  socket.on("connect", () => socket.write(packet));
  socket.on("data", (data) => {
    if (data[0] === 0x20) {
      socket.end(Buffer.from([0xe0, 0x00]));
      process.exit(0);
    }
    fail(`mqtt ${u.host}: unexpected packet type ${data[0] >> 4}`);
  });
  socket.on("error", (err) => fail(`mqtt ${u.host}: ${err.message}`));
}

const [kind, ...args] = process.argv.slice(2);
if (kind === "tcp" && args.length === 2) tcp(args[0], args[1]);
else if (kind === "http" && args.length >= 1) await http(args[0], args.slice(1));
else if (kind === "mqtt" && args.length === 1) mqtt(args[0]);
else fail("usage: healthcheck.mjs tcp HOST PORT | http URL [REGEX…] | mqtt URL");
