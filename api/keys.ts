// API keys: generated once, shown once, stored only as a SHA-256 hash (the key carries 192 random
// bits, so a fast hash is enough; no salt is needed to stop dictionary attacks on random keys).
// Owns every statement on api_keys.
import { createHash, randomBytes } from "node:crypto";
import type pg from "pg";
import { CodedError } from "../common/errors.ts";

export const ROLES = ["viewer", "operator", "admin"] as const;
export type Role = (typeof ROLES)[number];

const RANK: Record<Role, number> = { viewer: 1, operator: 2, admin: 3 };

export function roleAllows(have: Role, need: Role): boolean {
  return RANK[have] >= RANK[need];
}

export function isRole(value: string): value is Role {
  return (ROLES as readonly string[]).includes(value);
}

const KEY_PREFIX = "bmq_";

export function generateKey(): string {
  return `${KEY_PREFIX}${randomBytes(24).toString("base64url")}`;
}

export function hashKey(key: string): string {
  return createHash("sha256").update(key, "utf8").digest("hex");
}

/** Cheap shape check before touching the database: anything else is refused outright. */
export function looksLikeKey(key: string): boolean {
  return /^bmq_[A-Za-z0-9_-]{32}$/.test(key);
}

export interface ApiKeyRow {
  id: number;
  name: string;
  role: Role;
  created_at: Date;
  last_used_at: Date | null;
  revoked: boolean;
}

export async function createKey(
  db: pg.Pool,
  name: string,
  role: Role,
): Promise<{ key: string; row: ApiKeyRow }> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/.test(name))
    throw new CodedError("API_ERR_KEY_NAME", `key name "${name}" must be 1-64 letters, digits, _ . @ -`);
  const key = generateKey();
  try {
    const { rows } = await db.query<ApiKeyRow>(
      `INSERT INTO api_keys (name, key_hash, role) VALUES ($1, $2, $3)
       RETURNING id::int AS id, name, role, created_at, last_used_at, revoked`,
      [name, hashKey(key), role],
    );
    return { key, row: rows[0] as ApiKeyRow };
  } catch (err) {
    if ((err as { code?: string }).code === "23505")
      throw new CodedError("API_ERR_KEY_EXISTS", `a key named "${name}" already exists`);
    throw err;
  }
}

export async function findKey(db: pg.Pool, key: string): Promise<ApiKeyRow | undefined> {
  if (!looksLikeKey(key)) return undefined;
  const { rows } = await db.query<ApiKeyRow>(
    `SELECT id::int AS id, name, role, created_at, last_used_at, revoked
     FROM api_keys WHERE key_hash = $1 AND NOT revoked`,
    [hashKey(key)],
  );
  return rows[0];
}

export async function touchKey(db: pg.Pool, id: number): Promise<void> {
  await db.query("UPDATE api_keys SET last_used_at = now() WHERE id = $1", [id]);
}

export async function listKeys(db: pg.Pool): Promise<ApiKeyRow[]> {
  const { rows } = await db.query<ApiKeyRow>(
    `SELECT id::int AS id, name, role, created_at, last_used_at, revoked FROM api_keys ORDER BY id`,
  );
  return rows;
}

/** Revokes by name; returns whether a live key was revoked. */
export async function revokeKey(db: pg.Pool, name: string): Promise<boolean> {
  const { rowCount } = await db.query("UPDATE api_keys SET revoked = true WHERE name = $1 AND NOT revoked", [
    name,
  ]);
  return (rowCount ?? 0) > 0;
}
