import { describe, expect, it } from "vitest";
import { hashPassword, validateUsers, verifyPassword } from "../../../broker/users.ts";

describe("password hashes", () => {
  it("verifies the right password only, with a fresh salt each time", async () => {
    const a = await hashPassword("secret");
    const b = await hashPassword("secret");
    expect(a).toMatch(/^scrypt\$16384\$8\$1\$/);
    expect(a).not.toBe(b);
    expect(await verifyPassword(a, "secret")).toBe(true);
    expect(await verifyPassword(a, Buffer.from("secret"))).toBe(true);
    expect(await verifyPassword(a, "Secret")).toBe(false);
    expect(await verifyPassword(a, "")).toBe(false);
  });

  it("never accepts an unknown user or a malformed hash", async () => {
    expect(await verifyPassword(undefined, "anything")).toBe(false);
    expect(await verifyPassword("plain-text", "plain-text")).toBe(false);
  });
});

describe("validateUsers", () => {
  it("lists every problem, naming the user", async () => {
    const hash = await hashPassword("x");
    const { users, problems } = validateUsers({
      users: [
        { username: "ok", role: "api", password_hash: hash },
        { username: "ok", role: "api", password_hash: hash },
        { username: "gw", role: "gateway", password_hash: hash },
        { username: "gw2", role: "gateway", gateway: "a/b", password_hash: hash },
        { username: "r", role: "reader", gateway: "gw1", password_hash: hash },
        { username: "boss", role: "root", password_hash: "md5$x" },
        { role: "api", password_hash: hash },
      ],
    });
    expect(users.map((u) => u.username)).toEqual(["ok"]);
    expect(problems).toEqual([
      'user "ok": listed twice',
      'user "gw": gateway id is missing (role gateway needs one)',
      `user "gw2": gateway id must not contain '+', '#' or '/' (role gateway needs one)`,
      'user "r": gateway is only allowed with role gateway',
      'user "boss": role "root" is not one of gateway, ingest, api, reader, admin',
      'user "boss": password_hash is not of the form scrypt$N$r$p$salt$hash',
      "users[6]: username must be a non-empty string of at most 128 characters",
    ]);
  });

  it("rejects a file that is not a users object", () => {
    expect(validateUsers([]).problems).toEqual(['expected an object {"users": [...]}']);
    expect(validateUsers(null).problems).toHaveLength(1);
  });
});
