// A minimal BBMD for tests (ASHRAE 135 Annex J.4/J.5): a foreign-device table with TTL + 30 s grace,
// Register-Foreign-Device → BVLC-Result, Distribute-Broadcast-To-Network → Forwarded-NPDU to every
// "local" node (the simulated devices, standing in for the BBMD's own subnet broadcast) and to the
// other foreign devices. Written against the standard, independently of the engine's codec.
import { createSocket, type Socket } from "node:dgram";

export interface TestBbmd {
  address: string;
  port: number;
  registrations: { ip: string; port: number; ttl: number; at: number }[];
  fdt(): { ip: string; port: number; expires: number }[];
  close(): Promise<void>;
}

function forwarded(npdu: Buffer, ip: string, port: number): Buffer {
  const out = Buffer.alloc(10 + npdu.length);
  out[0] = 0x81;
  out[1] = 0x04;
  out.writeUInt16BE(out.length, 2);
  ip.split(".").forEach((o, i) => {
    out[4 + i] = Number(o);
  });
  out.writeUInt16BE(port, 8);
  npdu.copy(out, 10);
  return out;
}

export async function startTestBbmd(
  address: string,
  localNodes: { address: string; port: number }[],
): Promise<TestBbmd> {
  const fdt = new Map<string, { ip: string; port: number; expires: number }>();
  const registrations: TestBbmd["registrations"] = [];
  const s: Socket = createSocket("udp4");
  await new Promise<void>((r) => s.bind(0, address, () => r()));
  const result = (ip: string, port: number, code: number) => {
    const b = Buffer.from([0x81, 0x00, 0x00, 0x06, code >> 8, code & 0xff]);
    s.send(b, port, ip);
  };
  s.on("message", (msg, rinfo) => {
    if (msg.length < 4 || msg[0] !== 0x81 || msg.readUInt16BE(2) !== msg.length) return;
    const now = Date.now();
    for (const [k, e] of fdt) if (e.expires < now) fdt.delete(k);
    const key = `${rinfo.address}:${rinfo.port}`;
    switch (msg[1]) {
      case 0x05: {
        if (msg.length !== 6) return result(rinfo.address, rinfo.port, 0x0030);
        const ttl = msg.readUInt16BE(4);
        registrations.push({ ip: rinfo.address, port: rinfo.port, ttl, at: now });
        fdt.set(key, { ip: rinfo.address, port: rinfo.port, expires: now + (ttl + 30) * 1000 });
        return result(rinfo.address, rinfo.port, 0x0000);
      }
      case 0x09: {
        // Only registered foreign devices may distribute (J.4.5); others get a NAK.
        if (!fdt.has(key)) return result(rinfo.address, rinfo.port, 0x0060);
        const f = forwarded(msg.subarray(4), rinfo.address, rinfo.port);
        for (const n of localNodes) s.send(f, n.port, n.address);
        for (const [k, e] of fdt) if (k !== key) s.send(f, e.port, e.ip);
        return;
      }
      case 0x0b: {
        // A local broadcast reaching the BBMD is forwarded to the foreign devices.
        const f = forwarded(msg.subarray(4), rinfo.address, rinfo.port);
        for (const e of fdt.values()) s.send(f, e.port, e.ip);
        return;
      }
      default:
        return;
    }
  });
  const a = s.address();
  return {
    address: a.address,
    port: a.port,
    registrations,
    fdt: () => [...fdt.values()],
    close: () => new Promise<void>((r) => s.close(() => r())),
  };
}
