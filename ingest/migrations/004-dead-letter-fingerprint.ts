// Dead letters once per message: a poison message delivered again (the ingest died before its
// PUBACK, a broker replayed its queue, a batch retried after a COMMIT whose answer was lost) used to
// add a row each time. Each row now has a fingerprint of what it is (topic, payload, reason) with a
// unique index; the writer folds a repeat into the existing row (`deliveries` + 1,
// `last_received_at`). Rows stored before this version are fingerprinted the same way and
// duplicates among them are merged into the oldest row, with their count in `deliveries`.
// DEAD_LETTER_FINGERPRINT is the one definition, shared with ingest/writer.ts.
import type { Migration } from "./index.ts";

/**
 * SHA-256 of the length-prefixed topic and payload followed by the error text, over columns (or
 * values) named `topic`, `payload`, `error`. Length prefixes keep "a/b" + "c" apart from "a" + "/bc".
 * The payload is stored losslessly (non-UTF-8 as `base64:…`), so equal text means equal bytes.
 */
export const DEAD_LETTER_FINGERPRINT = `sha256(convert_to(
  length(topic)::text || ':' || topic || length(coalesce(payload, ''))::text || ':' || coalesce(payload, '') || error,
  'UTF8'))`;

export const migration004: Migration = {
  version: 4,
  name: "dead letter fingerprint",
  statements: () => [
    "ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS fingerprint bytea",
    "ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS deliveries integer NOT NULL DEFAULT 1",
    "ALTER TABLE dead_letters ADD COLUMN IF NOT EXISTS last_received_at timestamptz",
    `UPDATE dead_letters SET fingerprint = ${DEAD_LETTER_FINGERPRINT} WHERE fingerprint IS NULL`,
    `WITH g AS (
       SELECT fingerprint, min(id) AS keep, sum(deliveries) AS n, max(coalesce(last_received_at, received_at)) AS last
       FROM dead_letters GROUP BY fingerprint HAVING count(*) > 1
     )
     UPDATE dead_letters d SET deliveries = g.n, last_received_at = g.last
     FROM g WHERE d.id = g.keep`,
    `DELETE FROM dead_letters d USING dead_letters k
     WHERE d.fingerprint = k.fingerprint AND d.id > k.id`,
    "CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_fingerprint_idx ON dead_letters (fingerprint)",
  ],
};
