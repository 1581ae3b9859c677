// The broker's users file: who may connect, with which role, and salted scrypt password hashes.
// Owns reading, validating and (atomically) writing the file; knows nothing of MQTT.
import { randomBytes, scrypt, timingSafeEqual } from "node:crypto";
import { readFile, rename, writeFile } from "node:fs/promises";
import { CodedError, errorMessage } from "../common/errors.ts";
import { nameProblem } from "../contract/index.ts";

export const ROLES = ["gateway", "ingest", "api", "reader", "admin"] as const;
export type Role = (typeof ROLES)[number];

export interface UserEntry {
  username: string;
  role: Role;
  /** Gateway id the user publishes as; required for (and only for) role `gateway`. */
  gateway?: string;
  /** `scrypt$N$r$p$<salt base64>$<hash base64>` */
  password_hash: string;
}

export interface UsersFile {
  users: UserEntry[];
}

// N=2^14, r=8: ~16 MiB and a few tens of ms per check; cheap enough per CONNECT, costly to brute-force.
const SCRYPT = { N: 16384, r: 8, p: 1, keylen: 32 } as const;
const HASH_RE = /^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$/;

function scryptAsync(
  password: Buffer | string,
  salt: Buffer,
  keylen: number,
  N: number,
  r: number,
  p: number,
) {
  return new Promise<Buffer>((resolve, reject) => {
    scrypt(password, salt, keylen, { N, r, p, maxmem: 256 * N * r + 1024 * 1024 }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password, salt, SCRYPT.keylen, SCRYPT.N, SCRYPT.r, SCRYPT.p);
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString("base64")}$${key.toString("base64")}`;
}

// A valid hash of a random password, checked when the user is unknown so that the time taken does
// not tell whether a user name exists.
let decoyHash: Promise<string> | undefined;

export async function verifyPassword(hash: string | undefined, password: Buffer | string): Promise<boolean> {
  if (!decoyHash) decoyHash = hashPassword(randomBytes(12).toString("hex"));
  const target = hash ?? (await decoyHash);
  const m = HASH_RE.exec(target);
  if (!m) return false;
  const [, n, r, p, salt, expected] = m as unknown as [string, string, string, string, string, string];
  const want = Buffer.from(expected, "base64");
  const got = await scryptAsync(password, Buffer.from(salt, "base64"), want.length, +n, +r, +p);
  return hash !== undefined && got.length === want.length && timingSafeEqual(got, want);
}

export function hashProblem(hash: unknown): string | undefined {
  if (typeof hash !== "string") return "password_hash must be a string";
  const m = HASH_RE.exec(hash);
  if (!m) return "password_hash is not of the form scrypt$N$r$p$salt$hash";
  const N = Number(m[1]);
  if (N < 1024 || N > 1_048_576 || (N & (N - 1)) !== 0) return "password_hash has an invalid scrypt N";
  return undefined;
}

/** Every problem of a parsed users file, each naming the user. */
export function validateUsers(data: unknown): { users: UserEntry[]; problems: string[] } {
  const problems: string[] = [];
  if (typeof data !== "object" || data === null || !Array.isArray((data as UsersFile).users))
    return { users: [], problems: ['expected an object {"users": [...]}'] };
  const seen = new Set<string>();
  const users: UserEntry[] = [];
  (data as { users: unknown[] }).users.forEach((raw, i) => {
    const u = raw as Partial<UserEntry> & Record<string, unknown>;
    const who = typeof u?.username === "string" ? `user "${u.username}"` : `users[${i}]`;
    const before = problems.length;
    if (typeof u !== "object" || u === null) {
      problems.push(`${who}: expected an object`);
      return;
    }
    if (typeof u.username !== "string" || u.username.length === 0 || u.username.length > 128)
      problems.push(`${who}: username must be a non-empty string of at most 128 characters`);
    else if (seen.has(u.username)) problems.push(`${who}: listed twice`);
    else seen.add(u.username);
    if (!(ROLES as readonly unknown[]).includes(u.role))
      problems.push(`${who}: role ${JSON.stringify(u.role)} is not one of ${ROLES.join(", ")}`);
    if (u.role === "gateway") {
      const p = typeof u.gateway === "string" ? nameProblem(u.gateway) : "is missing";
      if (p) problems.push(`${who}: gateway id ${p} (role gateway needs one)`);
    } else if (u.gateway !== undefined) problems.push(`${who}: gateway is only allowed with role gateway`);
    const hp = hashProblem(u.password_hash);
    if (hp) problems.push(`${who}: ${hp}`);
    if (problems.length === before) users.push(u as UserEntry);
  });
  return { users, problems };
}

/** Reads and validates a users file; a missing or invalid file is one coded error on one line. */
export async function loadUsers(file: string): Promise<UserEntry[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (err) {
    throw new CodedError("BROKER_ERR_USERS_FILE", `cannot read users file ${file}: ${errorMessage(err)}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new CodedError(
      "BROKER_ERR_USERS_FILE",
      `users file ${file} is not valid JSON: ${errorMessage(err)}`,
    );
  }
  const { users, problems } = validateUsers(data);
  if (problems.length)
    throw new CodedError("BROKER_ERR_USERS_FILE", `users file ${file}: ${problems.join("; ")}`, {
      details: problems,
    });
  return users;
}

/** Reads a users file for editing; a file that does not exist yet is an empty one. */
export async function readUsersForEdit(file: string): Promise<UserEntry[]> {
  try {
    await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
  }
  return loadUsers(file);
}

/** Writes via a temporary file and rename so a running broker never reads half a file; mode 0600. */
export async function saveUsers(file: string, users: UserEntry[]): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  const sorted = [...users].sort((a, b) => a.username.localeCompare(b.username));
  await writeFile(tmp, `${JSON.stringify({ users: sorted }, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, file);
}
