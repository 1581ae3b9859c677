// The api's device inventory pages by key ("cursor"), not by OFFSET: each sort is a tuple of non-null
// keys ending in the primary key, and a page is an index walk starting after the previous page's
// last row. These indexes match the key expressions of api/routes/inventory.ts exactly (name and
// vendor; instance; gateway is the primary key). They replace version 2's name index, whose
// nullable key cannot start a walk from a row comparison. last_seen is left unindexed on purpose:
// it changes on every availability update and an index on it would end HOT updates of devices.
// Measured with bench/api.bench.ts (10,000 devices): see docs/api.md and docs/benchmarks.md.
import type { Migration } from "./index.ts";

export const migration003: Migration = {
  version: 3,
  name: "inventory keyset indexes",
  statements: () => [
    `CREATE INDEX IF NOT EXISTS devices_name_keyset_idx
       ON devices ((object_name IS NULL), (coalesce(lower(object_name), '') COLLATE "C"), gateway_id, device_instance)`,
    `CREATE INDEX IF NOT EXISTS devices_vendor_keyset_idx
       ON devices ((vendor_name IS NULL), (coalesce(lower(vendor_name), '') COLLATE "C"), gateway_id, device_instance)`,
    `CREATE INDEX IF NOT EXISTS devices_instance_keyset_idx ON devices (device_instance, gateway_id)`,
    `DROP INDEX IF EXISTS devices_name_order_idx`,
  ],
};
