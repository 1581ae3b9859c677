// Topic access rules per role. Every rule is built from the contract's topic builders, so the ACL
// follows the contract when it changes. Pure logic: no sockets, no aedes.
import { Filters, parseSharedFilter, Topics, topicMatches } from "../contract/index.ts";
import type { Role } from "./users.ts";

export interface Identity {
  /** undefined for anonymous clients */
  username?: string;
  role: Role;
  /** gateway id, for role `gateway` */
  gateway?: string;
}

export interface AclRules {
  /** Topic filters the client may publish to. */
  publish: string[];
  /** Filters that must cover every subscription filter the client asks for. */
  subscribe: string[];
}

/** What each role may do; `base` is the deployment's base topic. */
export function rulesFor(identity: Identity, base: string): AclRules {
  switch (identity.role) {
    case "admin":
      // `#` never matches `$` topics, so statistics are listed on their own.
      return { publish: ["#"], subscribe: ["#", Filters.sys()] };
    case "gateway": {
      const topics = new Topics(base, identity.gateway as string);
      // Its own bridge/state and health_check responses: how a second instance of one gateway id is
      // noticed (gateway/mqtt/duplicate.ts).
      return {
        publish: [topics.allFilter()],
        subscribe: [topics.requestFilter(), topics.bridge("state"), topics.response("health_check")],
      };
    }
    case "api":
      return { publish: [Filters.requests(base)], subscribe: [Filters.all(base), Filters.sys()] };
    case "ingest":
      return { publish: [], subscribe: [Filters.all(base)] };
    case "reader":
      return { publish: [], subscribe: [Filters.all(base), Filters.sys()] };
  }
}

/** One row per role for docs and `--help`: what it may publish and subscribe to. */
export function describeRoles(base: string): { role: Role; publish: string[]; subscribe: string[] }[] {
  const roles: Role[] = ["gateway", "ingest", "api", "reader", "admin"];
  return roles.map((role) => ({
    role,
    ...rulesFor({ role, gateway: role === "gateway" ? "{gw}" : undefined }, base),
  }));
}

/**
 * True when every topic matched by filter `inner` is also matched by filter `outer`, so a
 * subscription to `inner` can never deliver a message outside `outer`.
 */
export function filterCovers(outer: string, inner: string): boolean {
  const o = outer.split("/");
  const i = inner.split("/");
  for (let k = 0; k < o.length; k++) {
    const a = o[k] as string;
    if (a === "#") return k > 0 || !(i[0] as string).startsWith("$");
    if (k >= i.length) return false;
    const b = i[k] as string;
    if (b === "#") return false;
    if (a === "+") {
      if (k === 0 && b.startsWith("$")) return false;
      continue;
    }
    if (a !== b) return false;
  }
  return o.length === i.length;
}

export function topicDepth(topic: string): number {
  let depth = 1;
  for (let k = 0; k < topic.length; k++) if (topic.charCodeAt(k) === 47) depth++;
  return depth;
}

export function mayPublish(rules: AclRules, topic: string): boolean {
  if (topic.startsWith("$")) return false;
  return rules.publish.some((rule) => topicMatches(rule, topic));
}

/** Shared subscriptions are judged by the filter they share. */
export function maySubscribe(rules: AclRules, filter: string): boolean {
  const inner = parseSharedFilter(filter)?.filter ?? filter;
  return rules.subscribe.some((rule) => filterCovers(rule, inner));
}
