// The embedded database of `bacmqtt all`: PGlite persisted in a folder, served over the wire and
// used through the normal `pg` driver by several connections at once (ingest and api share it).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { startEmbeddedPostgres } from "../../../ingest/embedded-db.ts";
import { migrate } from "../../../ingest/migrate.ts";

const dir = mkdtempSync(join(tmpdir(), "bacmqtt-embedded-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("embedded PostgreSQL (PGlite over pglite-socket)", () => {
  // One connection at a time: concurrent transactions from several connections can still stall
  // PGlite over the socket (see ingest/embedded-db.ts, docs/storage.md "Known limits").
  it("migrates as portable, commits and rolls back through the pg driver, and persists across restarts", async () => {
    const data = join(dir, "pg");
    let embedded = await startEmbeddedPostgres({ dataDir: data });
    let pool = new pg.Pool({ connectionString: embedded.url, max: 1 });
    try {
      expect(await migrate(pool)).toEqual({ dialect: "portable", applied: [1, 2, 3, 4] });
      await Promise.all(
        Array.from({ length: 4 }, async (_, worker) => {
          for (let i = 0; i < 8; i++) {
            const client = await pool.connect();
            try {
              await client.query("BEGIN");
              await client.query("INSERT INTO dead_letters (topic, payload, error) VALUES ($1, $2, 'x')", [
                `w${worker}`,
                String(i),
              ]);
              await client.query(i % 4 === 3 ? "ROLLBACK" : "COMMIT");
            } finally {
              client.release();
            }
          }
        }),
      );
      const { rows } = await pool.query(
        "SELECT topic, count(*)::int AS n FROM dead_letters GROUP BY topic ORDER BY topic",
      );
      expect(rows).toEqual(Array.from({ length: 4 }, (_, w) => ({ topic: `w${w}`, n: 6 })));
    } finally {
      await pool.end();
      await embedded.close();
    }
    embedded = await startEmbeddedPostgres({ dataDir: data });
    pool = new pg.Pool({ connectionString: embedded.url, max: 1 });
    try {
      expect(await migrate(pool)).toEqual({ dialect: "portable", applied: [] });
      const { rows } = await pool.query("SELECT count(*)::int AS n FROM dead_letters");
      expect(rows[0].n).toBe(24);
    } finally {
      await pool.end();
      await embedded.close();
    }
  }, 180_000); // two WASM starts on a shared 2-core machine
});
