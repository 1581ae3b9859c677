// Network interface choice: a NIC by name (`eth0`, `Ethernet 2`) or by IPv4 address, its netmask
// and the directed broadcast address computed from it. Binding to the chosen NIC's address (never
// 0.0.0.0 by default) is what makes broadcasts leave by the right card on a PC with several NICs.
import { networkInterfaces } from "node:os";
import { CodedError } from "../../common/errors.ts";
import { GW_ERR } from "./errors.ts";

export interface InterfaceInfo {
  name: string;
  address: string;
  netmask: string;
  broadcast: string;
  cidr: number;
  internal: boolean;
  mac: string;
}

const toInt = (ip: string) => ip.split(".").reduce((acc, o) => ((acc << 8) | Number(o)) >>> 0, 0);
const toIp = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join(".");

export function broadcastOf(address: string, netmask: string): string {
  return toIp((toInt(address) | ~toInt(netmask)) >>> 0);
}

export function isIpv4(text: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(text) && text.split(".").every((o) => Number(o) <= 255);
}

export function listInterfaces(): InterfaceInfo[] {
  const out: InterfaceInfo[] = [];
  for (const [name, addrs] of Object.entries(networkInterfaces())) {
    for (const a of addrs ?? []) {
      if (a.family !== "IPv4") continue;
      const cidr = Number((a.cidr ?? "/32").split("/")[1]);
      out.push({
        name,
        address: a.address,
        netmask: a.netmask,
        broadcast: broadcastOf(a.address, a.netmask),
        cidr,
        internal: a.internal,
        mac: a.mac,
      });
    }
  }
  // Non-internal first so the default pick is a real NIC; stable order otherwise.
  return out.sort((x, y) => Number(x.internal) - Number(y.internal));
}

export interface ResolvedInterface {
  name: string | null;
  address: string;
  broadcast: string | null;
}

/**
 * Resolves `--interface` (name or IP). An IP that is not itself listed but lies inside a listed
 * subnet (e.g. 127.0.0.5 on `lo`) takes that subnet's broadcast. Unknown names are an error that
 * lists the candidates, because a silent fallback would broadcast on the wrong LAN.
 */
export function resolveInterface(spec?: string, broadcast?: string): ResolvedInterface {
  const all = listInterfaces();
  const candidates = () => all.map((i) => `${i.name} ${i.address}/${i.cidr}`).join(", ") || "none";
  if (!spec) {
    const first = all.find((i) => !i.internal);
    if (!first) return { name: null, address: "0.0.0.0", broadcast: broadcast ?? "255.255.255.255" };
    return { name: first.name, address: first.address, broadcast: broadcast ?? first.broadcast };
  }
  if (spec === "0.0.0.0") return { name: null, address: spec, broadcast: broadcast ?? "255.255.255.255" };
  if (isIpv4(spec)) {
    const exact = all.find((i) => i.address === spec);
    if (exact) return { name: exact.name, address: spec, broadcast: broadcast ?? exact.broadcast };
    const within = all.find(
      (i) => (toInt(i.address) & toInt(i.netmask)) === (toInt(spec) & toInt(i.netmask)),
    );
    if (within)
      return { name: within.name, address: spec, broadcast: broadcast ?? broadcastOf(spec, within.netmask) };
    throw new CodedError(GW_ERR.INTERFACE, `no interface has address ${spec}; candidates: ${candidates()}`);
  }
  const byName =
    all.find((i) => i.name === spec) ?? all.find((i) => i.name.toLowerCase() === spec.toLowerCase());
  if (!byName)
    throw new CodedError(GW_ERR.INTERFACE, `no IPv4 interface named "${spec}"; candidates: ${candidates()}`);
  return { name: byName.name, address: byName.address, broadcast: broadcast ?? byName.broadcast };
}
