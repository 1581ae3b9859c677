import { describe, expect, it } from "vitest";
import { filterCovers, mayPublish, maySubscribe, rulesFor, topicDepth } from "../../../broker/acl.ts";
import { Filters, Topics } from "../../../contract/index.ts";

describe("filterCovers", () => {
  it.each([
    ["#", "a/b", true],
    ["#", "#", true],
    ["#", "$SYS/x", false],
    ["a/#", "a", true],
    ["a/#", "a/+/c", true],
    ["a/#", "a/#", true],
    ["a/#", "b/#", false],
    ["a/+", "a/b", true],
    ["a/+", "a/+", true],
    ["a/+", "a/#", false],
    ["a/+", "a/b/c", false],
    ["a/b", "a/+", false],
    ["a/b", "a/b", true],
    ["+/b", "$SYS/b", false],
    ["$SYS/#", "$SYS/id/clients/connected", true],
    ["a/+/c/#", "a/x/c", true],
    ["a/+/c/#", "a/x/d", false],
  ])("%s covers %s: %s", (outer, inner, expected) => {
    expect(filterCovers(outer, inner)).toBe(expected);
  });
});

describe("role rules", () => {
  const base = "site/bacmqtt";
  const gw = new Topics(base, "gw1");
  const other = new Topics(base, "gw2");

  it("keeps a gateway inside its own root, and its subscriptions to its own requests", () => {
    const rules = rulesFor({ role: "gateway", gateway: "gw1" }, base);
    expect(mayPublish(rules, gw.bridge("state"))).toBe(true);
    expect(mayPublish(rules, gw.device(3, "readings"))).toBe(true);
    expect(mayPublish(rules, other.bridge("state"))).toBe(false);
    expect(mayPublish(rules, "site/other")).toBe(false);
    expect(maySubscribe(rules, gw.requestFilter())).toBe(true);
    expect(maySubscribe(rules, gw.request("device/read"))).toBe(true);
    expect(maySubscribe(rules, other.requestFilter())).toBe(false);
    expect(maySubscribe(rules, `${base}/+/bridge/request/#`)).toBe(false);
  });

  it("lets the api publish requests only and read everything", () => {
    const rules = rulesFor({ role: "api" }, base);
    expect(mayPublish(rules, other.request("device/write"))).toBe(true);
    expect(mayPublish(rules, other.response("device/write"))).toBe(false);
    expect(maySubscribe(rules, Filters.all(base))).toBe(true);
    expect(maySubscribe(rules, Filters.sys())).toBe(true);
    expect(maySubscribe(rules, "#")).toBe(false);
  });

  it("judges a shared subscription by the filter it shares", () => {
    const rules = rulesFor({ role: "ingest" }, base);
    expect(maySubscribe(rules, Filters.shared("g", Filters.device(base, "readings")))).toBe(true);
    expect(maySubscribe(rules, Filters.shared("g", "#"))).toBe(false);
    expect(mayPublish(rules, gw.device(1, "readings"))).toBe(false);
  });

  it("never lets anyone publish to $ topics", () => {
    expect(mayPublish(rulesFor({ role: "admin" }, base), "$SYS/x")).toBe(false);
    expect(mayPublish(rulesFor({ role: "admin" }, base), "any/topic")).toBe(true);
  });

  it("counts topic levels", () => {
    expect(topicDepth("a")).toBe(1);
    expect(topicDepth("a/b/")).toBe(3);
    expect(topicDepth("/")).toBe(2);
  });
});
