// Pure parts of the api: resolution choice, ranges, CSV cells, LIKE escaping, gateway error
// mapping, key format and roles.
import { describe, expect, it } from "vitest";
import { gatewayFailure } from "../../../api/errors.ts";
import { generateKey, hashKey, isRole, looksLikeKey, roleAllows } from "../../../api/keys.ts";
import { chooseResolution, csvCell, parseRange } from "../../../api/routes/history.ts";
import { contains } from "../../../api/routes/inventory.ts";

const DAY = 86_400_000;
const range = (days: number) => ({ from: new Date(0), to: new Date(days * DAY) });

describe("history resolution", () => {
  it("chooses raw up to 2 days, hourly up to 90 days, daily beyond; an explicit choice wins", () => {
    expect(chooseResolution("auto", range(2))).toBe("raw");
    expect(chooseResolution(undefined, range(2.01))).toBe("hourly");
    expect(chooseResolution("auto", range(90))).toBe("hourly");
    expect(chooseResolution("auto", range(91))).toBe("daily");
    expect(chooseResolution("raw", range(365))).toBe("raw");
    expect(chooseResolution("daily", range(1))).toBe("daily");
  });

  it("defaults to the last 24 hours and refuses an empty or inverted range", () => {
    const now = new Date("2026-11-27T12:00:00Z");
    expect(parseRange({}, now)).toEqual({ from: new Date("2026-11-26T12:00:00Z"), to: now });
    expect(parseRange({ to: "2026-01-02T00:00:00Z" }).from.toISOString()).toBe("2026-01-01T00:00:00.000Z");
    expect(() => parseRange({ from: "2026-01-02T00:00:00Z", to: "2026-01-01T00:00:00Z" })).toThrow(/before/);
    expect(() => parseRange({ from: "2026-01-01T00:00:00Z", to: "2026-01-01T00:00:00Z" })).toThrow(/before/);
  });
});

describe("csvCell", () => {
  it("quotes separators and defuses spreadsheet formulas", () => {
    expect(csvCell(null)).toBe("");
    expect(csvCell(1.5)).toBe("1.5");
    expect(csvCell(-3)).toBe("-3");
    expect(csvCell(new Date("2026-01-01T00:00:00Z"))).toBe("2026-01-01T00:00:00.000Z");
    expect(csvCell('a,"b"')).toBe('"a,""b"""');
    expect(csvCell("line\nbreak")).toBe('"line\nbreak"');
    expect(csvCell("=HYPERLINK(1)")).toBe("'=HYPERLINK(1)");
    expect(csvCell("@SUM(A1)")).toBe("'@SUM(A1)");
    expect(csvCell("-1+2")).toBe("'-1+2");
  });
});

describe("contains", () => {
  it("escapes LIKE wildcards so search text is literal", () => {
    expect(contains(undefined)).toBeNull();
    expect(contains("")).toBeNull();
    expect(contains("ahu")).toBe("%ahu%");
    expect(contains("100%_x\\")).toBe("%100\\%\\_x\\\\%");
  });
});

describe("gatewayFailure", () => {
  it("maps refusals and bad input to 4xx and everything else to 502", () => {
    expect(gatewayFailure("GW_ERR_WRITE_NOT_ALLOWED")).toEqual({
      status: 403,
      code: "API_ERR_WRITE_REFUSED",
      result: "refused",
    });
    expect(gatewayFailure("GW_ERR_BACNET_WRITE_ACCESS_DENIED").status).toBe(403);
    expect(gatewayFailure("GW_ERR_UNKNOWN_DEVICE").status).toBe(404);
    expect(gatewayFailure("GW_ERR_UNKNOWN_POINT").status).toBe(404);
    expect(gatewayFailure("GW_ERR_INVALID_REQUEST").status).toBe(400);
    expect(gatewayFailure("GW_ERR_BACNET_VALUE_OUT_OF_RANGE").status).toBe(422);
    // Faults of a request that passed the api's schema (found by the HTTP fuzz as 502s).
    for (const code of [
      "GW_ERR_BACNET_RANGE",
      "GW_ERR_BACNET_PROPERTY_NAME",
      "GW_ERR_BACNET_INVALID_ARRAY_INDEX",
      "GW_ERR_WRITE_VALUE",
      "GW_ERR_WRITE_PRIORITY",
    ])
      expect(gatewayFailure(code), code).toEqual({
        status: 422,
        code: "API_ERR_GATEWAY_REJECTED",
        result: "refused",
      });
    expect(gatewayFailure("GW_ERR_BACNET_TIMEOUT")).toEqual({
      status: 502,
      code: "API_ERR_GATEWAY_ERROR",
      result: "error",
    });
    expect(gatewayFailure("GW_ERR_DEVICE_OFFLINE").status).toBe(502);
  });
});

describe("keys", () => {
  it("generates distinct well-formed keys and stores only their hash", () => {
    const a = generateKey();
    const b = generateKey();
    expect(a).not.toBe(b);
    expect(looksLikeKey(a)).toBe(true);
    expect(looksLikeKey(`${a}x`)).toBe(false);
    expect(looksLikeKey("bmq_short")).toBe(false);
    expect(hashKey(a)).toMatch(/^[0-9a-f]{64}$/);
    expect(hashKey(a)).not.toBe(hashKey(b));
  });

  it("orders roles viewer < operator < admin", () => {
    expect(roleAllows("admin", "operator")).toBe(true);
    expect(roleAllows("operator", "operator")).toBe(true);
    expect(roleAllows("operator", "admin")).toBe(false);
    expect(roleAllows("viewer", "operator")).toBe(false);
    expect(isRole("operator")).toBe(true);
    expect(isRole("root")).toBe(false);
  });
});
