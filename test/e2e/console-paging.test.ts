// The console's device list pages through the api by cursor: 120 devices written straight into a
// fresh PostgreSQL database, the api on loopback, headless Chromium clicking Next and Previous.
// Checks the rows of every page against the database's own order and the "x–y of N" line.
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createKey } from "../../api/keys.ts";
import { type ApiServer, startApi } from "../../api/server.ts";
import { migrate } from "../../ingest/migrate.ts";
import { createPostgresDatabase, type TestDatabase } from "../support/db-postgres.ts";

vi.setConfig({ testTimeout: 60_000, hookTimeout: 60_000 });
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const DEVICES = 120;

let db: TestDatabase;
let pool: pg.Pool;
let api: ApiServer;
let context: BrowserContext;
let page: Page;
let key: string;
let profile: string;
/** Instances in the inventory's default order (name, case-insensitive), as the database sorts. */
let ordered: number[];
const consoleErrors: string[] = [];

describe.skipIf(!existsSync(CHROMIUM))("console inventory paging in headless Chromium", () => {
  beforeAll(async () => {
    db = await createPostgresDatabase("bacmqtt_e2e_paging");
    pool = new pg.Pool({ connectionString: db.url, max: 4 });
    pool.on("error", () => undefined);
    await migrate(pool, { dialect: "portable" });
    // Mixed case and a few unnamed devices, so the order is not the insertion order.
    await pool.query(
      `INSERT INTO devices (gateway_id, device_instance, object_name, online, last_seen)
       SELECT 'gw' || (1 + i % 3), 7000 + i,
              CASE WHEN i % 17 = 0 THEN NULL ELSE (ARRAY['ahu','VAV','Fcu'])[1 + i % 3] || '-' || (i * 7919 % 1000) END,
              true, now()
       FROM generate_series(0, $1 - 1) i`,
      [DEVICES],
    );
    ordered = (
      await pool.query<{ device_instance: number }>(
        `SELECT device_instance FROM devices
         ORDER BY object_name IS NULL, lower(object_name) COLLATE "C", gateway_id, device_instance`,
      )
    ).rows.map((r) => r.device_instance);
    key = (await createKey(pool, "e2e-viewer", "viewer")).key;
    api = await startApi({
      host: "127.0.0.1",
      port: 0,
      pool,
      mqttUrl: "mqtt://127.0.0.1:1",
      defaultMetrics: false,
    });
    profile = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-e2e-paging-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
      ],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(20_000);
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push(m.text());
    });
    page.on("pageerror", (err) => consoleErrors.push(err.message));
  });

  afterAll(async () => {
    await context?.close();
    await api?.close();
    await pool?.end();
    await db?.drop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  const rows = () =>
    page.$$eval("#devices tbody tr[data-device]", (trs) =>
      trs.map((tr) => Number(tr.getAttribute("data-device"))),
    );
  const pagerText = () => page.textContent(".pager span");
  const button = (name: string) => page.locator(".pager button", { hasText: name });

  it("walks every page with Next and back with Previous", async () => {
    await page.goto(api.url);
    await page.locator("#key-dialog[open]").waitFor();
    await page.fill("#key-input", key);
    await page.click("#key-save");
    await expect.poll(pagerText).toBe(`1–50 of ${DEVICES}`);
    expect(await rows()).toEqual(ordered.slice(0, 50));
    expect(await button("Previous").isDisabled()).toBe(true);

    await button("Next").click();
    await expect.poll(pagerText).toBe(`51–100 of ${DEVICES}`);
    expect(await rows()).toEqual(ordered.slice(50, 100));

    await button("Next").click();
    await expect.poll(pagerText).toBe(`101–${DEVICES} of ${DEVICES}`);
    expect(await rows()).toEqual(ordered.slice(100));
    expect(await button("Next").isDisabled()).toBe(true);

    await button("Previous").click();
    await expect.poll(pagerText).toBe(`51–100 of ${DEVICES}`);
    expect(await rows()).toEqual(ordered.slice(50, 100));

    // A new search starts again at the first page.
    await page.fill('input[type="search"]', "vav");
    const matching = (
      await pool.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM devices WHERE object_name ILIKE '%vav%'",
      )
    ).rows[0]?.n;
    await expect.poll(pagerText).toBe(`1–${Math.min(50, matching ?? 0)} of ${matching}`);
    expect(await button("Previous").isDisabled()).toBe(true);
    // The 401s are the console's first requests, before the key is entered.
    expect(consoleErrors.filter((e) => !/status of 401/.test(e))).toEqual([]);
  });
});
