// The web console in headless Chromium against the whole stack: simulator (BACnet over loopback
// UDP) → gateway → broker → ingest → PostgreSQL → api → browser. Discovery from the button with
// live progress, devices appearing in the inventory, live point values, a write through the dialog
// that round-trips to the simulated device, and the write in the audit log. Screenshots go to
// $BACMQTT_E2E_SCREENSHOTS (default: a temp folder) for a person to look at.
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import pg from "pg";
import { type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { createKey } from "../../api/keys.ts";
import { type ApiServer, startApi } from "../../api/server.ts";
import { startBroker } from "../../broker/index.ts";
import { type Gateway, startGateway } from "../../gateway/index.ts";
import { IngestService } from "../../ingest/service.ts";
import { type Simulator, startSimulator } from "../../simulator/index.ts";
import { createPortableDatabase, type TestDatabase } from "../support/db-postgres.ts";

// Whole-stack steps wait on real BACnet, MQTT and database round trips; a busy CI box is slow.
vi.setConfig({ testTimeout: 120_000, hookTimeout: 120_000 });
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const BASE = `e2e-${process.pid}`;
const SHOTS = process.env.BACMQTT_E2E_SCREENSHOTS ?? path.join(os.tmpdir(), "bacmqtt-e2e-screenshots");

let sim: Simulator;
let broker: Awaited<ReturnType<typeof startBroker>>;
let gw: Gateway;
let ingest: IngestService;
let api: ApiServer;
let db: TestDatabase;
let pool: pg.Pool;
let context: BrowserContext;
let page: Page;
let key: string;
const temp: string[] = [];
let targets: string;
/** Errors the page logs (script errors, CSP violations): there must be none. */
const consoleErrors: string[] = [];

describe.skipIf(!existsSync(CHROMIUM))("web console in headless Chromium (whole stack)", () => {
  beforeAll(async () => {
    sim = await startSimulator({
      devices: [
        { instance: 5101, address: "127.0.0.81", port: 0, changeIntervalMs: 300, name: "AHU-1" },
        { instance: 5102, address: "127.0.0.82", port: 0, changeIntervalMs: 300, name: "VAV-2" },
      ],
    });
    targets = sim
      .devices()
      .map((d) => `${d.address}:${d.port}`)
      .join(", ");
    broker = await startBroker({ port: 0, host: "127.0.0.1", allowAnonymous: true, sysInterval: 0 });
    db = await createPortableDatabase("bacmqtt_e2e");
    pool = new pg.Pool({ connectionString: db.url, max: 6 });
    pool.on("error", () => undefined);
    ingest = new IngestService({
      mqttUrl: broker.url,
      pool,
      dialect: "portable",
      baseTopic: BASE,
      clientId: `bacmqtt-ingest-${BASE}`,
      batchWaitMs: 50,
    });
    await ingest.start();
    const dataDir = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-e2e-gw-"));
    temp.push(dataDir);
    gw = await startGateway({
      gateway_id: "gw1",
      data_dir: dataDir,
      mqtt: { url: broker.url, base_topic: BASE, reconnect_period_ms: 200, state_throttle_ms: 200 },
      bacnet: {
        interface: "127.0.0.1",
        port: 0,
        apdu_timeout_ms: 500,
        retries: 1,
        offline_after_failures: 2,
      },
      discovery: { on_start: false, interval_s: 0, timeout_s: 1 },
      polling: { interval_s: 1, cov: false },
      write: { allowlist: ["5101:analog_output_*"], min_priority: 8, default_priority: 16 },
      metrics: { enabled: false },
    });
    api = await startApi({
      port: 0,
      host: "127.0.0.1",
      pool,
      mqttUrl: broker.url,
      baseTopic: BASE,
      defaultMetrics: false,
    });
    key = (await createKey(pool, "e2e-operator", "operator")).key;
    mkdirSync(SHOTS, { recursive: true });
    const profile = mkdtempSync(path.join(os.tmpdir(), "bacmqtt-e2e-chromium-"));
    temp.push(profile);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1366, height: 800 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
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
    await gw?.stop();
    await ingest?.stop();
    await broker?.close();
    await sim?.close();
    await pool?.end();
    await db?.drop();
    for (const dir of temp) rmSync(dir, { recursive: true, force: true });
  });

  it("asks for a key, then shows the gateway", async () => {
    const requests: string[] = [];
    page.on("request", (r) => requests.push(r.url()));
    await page.goto(api.url);
    await page.locator("#key-dialog[open]").waitFor();
    await page.fill("#key-input", key);
    await page.click("#key-save");
    await page.locator('[data-gateway="gw1"]').waitFor();
    await expect.poll(() => page.textContent("#live")).toBe("live");
    // Everything the console loads comes from the api itself: no CDN.
    expect(requests.every((u) => u.startsWith(api.url))).toBe(true);
  });

  it("runs a discovery from the button with live progress; the devices appear", async () => {
    const card = page.locator('[data-gateway="gw1"]');
    await card.locator("summary").click();
    await card.locator('input[name="targets"]').fill(targets);
    await card.locator('input[name="timeout_s"]').fill("1");
    await card.locator('[data-discover="gw1"]').click();
    await expect
      .poll(() => card.locator(".status").textContent(), { timeout: 20_000 })
      .toMatch(/Discovery finished: 2 devices/);
    await page.locator('#devices tr[data-device="5101"]').waitFor({ timeout: 20_000 });
    await page.locator('#devices tr[data-device="5102"]').waitFor();
    await page.screenshot({ path: path.join(SHOTS, "inventory.png") });
  });

  it("shows a device with live point values and a chart", async () => {
    await page.click('#devices tr[data-device="5101"] a');
    await page.locator("#points").waitFor();
    const value = page.locator('#points tr[data-point="analog_input_1"] td.value');
    await expect.poll(async () => (await value.textContent())?.trim(), { timeout: 20_000 }).toMatch(/^-?\d/);
    const first = await value.textContent();
    // The simulator changes values every 300 ms and the gateway polls every second.
    await expect.poll(() => value.textContent(), { timeout: 20_000 }).not.toBe(first);
    await page.click('#points tr[data-point="analog_input_1"] button:has-text("Chart")');
    const line = page.locator("#chart-panel svg.chart polyline.line");
    await line.waitFor({ state: "attached", timeout: 20_000 });
    await page.locator('#chart-panel [data-option="1h"]').click();
    await line.waitFor({ state: "attached" });
    // Ingest keeps storing readings: the raw chart has several points and they are spread out.
    const points = async () => ((await line.getAttribute("points")) ?? "").trim().split(/\s+/);
    await expect.poll(async () => (await points()).length, { timeout: 20_000 }).toBeGreaterThan(3);
    const xs = (await points()).map((p) => Number(p.split(",")[0]));
    expect(Math.max(...xs) - Math.min(...xs)).toBeGreaterThan(100);
    await expect.poll(() => page.textContent("#chart-panel .chart-meta")).toMatch(/raw readings/);
    await page.screenshot({ path: path.join(SHOTS, "device.png"), fullPage: true });
  });

  it("writes through the dialog with a confirmation; the value round-trips", async () => {
    await page.click('[data-write="analog_output_1"]');
    await page.locator("#write-dialog[open]").waitFor();
    await page.fill("#write-value", "33.5");
    await page.selectOption("#write-priority", "9");
    await page.click("#write-submit");
    await expect.poll(() => page.textContent("#write-confirm")).toMatch(/Write 33\.5 .* at priority 9\?/);
    await page.screenshot({ path: path.join(SHOTS, "write-dialog.png") });
    await page.click("#write-submit");
    await expect.poll(() => page.textContent("#write-result")).toMatch(/Written: present value is now 33\.5/);
    // Read back from the device through a fresh request, not from the console's own state.
    const res = await fetch(`${api.url}/api/gateways/gw1/devices/5101/points/analog_output_1/read`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: "{}",
    });
    expect(((await res.json()) as { data: { value: unknown } }).data.value).toBe(33.5);
    await page.click("#write-cancel");
  });

  it("shows the write in the audit log", async () => {
    await page.click('a[data-nav="audit"]');
    const row = page.locator("#audit tbody tr", { hasText: "e2e-operator" }).first();
    await row.waitFor();
    const text = await row.textContent();
    expect(text).toContain("analog_output_1");
    expect(text).toContain("33.5");
    expect(text).toContain("ok");
    await page.screenshot({ path: path.join(SHOTS, "audit.png") });
  });

  it("serves the OpenAPI documentation, and nothing logged an error", async () => {
    await page.goto(`${api.url}/docs`);
    await page.locator(".opblock").first().waitFor();
    expect(await page.locator(".opblock").count()).toBeGreaterThan(20);
    // The first page load asks without a key (reads may be open) and gets 401s: that is how the
    // console learns it needs one. Anything else is a fault.
    expect(consoleErrors.filter((e) => !/status of 401/.test(e))).toEqual([]);
  });
});
