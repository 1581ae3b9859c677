// The one migrations folder: every schema change is a numbered migration here, applied in order by
// `bacmqtt migrate` (ingest/migrate.ts) and recorded in schema_migrations. A migration never changes
// once released; add a new one instead.
import { migration001 } from "./001-schema.ts";
import { migration002 } from "./002-inventory-index.ts";
import { migration003 } from "./003-inventory-keyset.ts";
import { migration004 } from "./004-dead-letter-fingerprint.ts";

export type Dialect = "timescale" | "portable";

export interface Migration {
  version: number;
  name: string;
  /** Statements run in order inside one transaction. */
  statements(dialect: Dialect): string[];
}

export const MIGRATIONS: readonly Migration[] = [migration001, migration002, migration003, migration004];
