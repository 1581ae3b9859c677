// A small, deterministic site for the dashboards test: two gateways, four devices, five points each,
// readings every 10 minutes over the last 50 hours, availability changes and audited writes (some
// failed). Written through the shared relation names only; raw readings go through `writeReadings`
// so that each dialect's rollups (continuous aggregates, or the portable same-transaction rollups)
// are maintained the way the ingest maintains them.
import type pg from "pg";

export const SEED = {
  gateways: ["gw1", "gw2"],
  devices: [
    { gateway: "gw1", device: 1001, name: "AHU-1", online: true },
    { gateway: "gw1", device: 1002, name: "AHU-2", online: true },
    { gateway: "gw1", device: 1003, name: "Boiler", online: false },
    { gateway: "gw2", device: 2001, name: "Chiller", online: false },
  ],
  points: [
    {
      point: "analog_input_1",
      type: "analog_input",
      instance: 1,
      name: "Supply temp",
      units: "degrees-celsius",
      writable: false,
    },
    {
      point: "analog_input_2",
      type: "analog_input",
      instance: 2,
      name: "Return temp",
      units: "degrees-celsius",
      writable: false,
    },
    {
      point: "binary_input_1",
      type: "binary_input",
      instance: 1,
      name: "Fan status",
      units: null,
      writable: false,
    },
    {
      point: "multi_state_value_1",
      type: "multi_state_value",
      instance: 1,
      name: "Mode",
      units: null,
      writable: false,
    },
    {
      point: "analog_output_1",
      type: "analog_output",
      instance: 1,
      name: "Setpoint",
      units: "degrees-celsius",
      writable: true,
    },
  ],
  hours: 50,
  stepMinutes: 10,
} as const;

export interface SeededRange {
  from: Date;
  to: Date;
  readings: number;
}

export interface ReadingRow {
  time: Date;
  point_id: number;
  value: number | null;
  value_text: string | null;
}

export type ReadingWriter = (client: pg.ClientBase, rows: ReadingRow[]) => Promise<void>;

/** Seeds the site with readings up to `end` (a whole hour); the range ends an hour after it. */
export async function seed(
  client: pg.ClientBase,
  writeReadings: ReadingWriter,
  end: Date,
): Promise<SeededRange> {
  const from = new Date(end.getTime() - SEED.hours * 3_600_000);
  const to = new Date(end.getTime() + 3_600_000);
  for (const gw of SEED.gateways) {
    await client.query(
      `INSERT INTO gateways (gateway_id, base_topic, state, bd_seq, info, last_seen)
       VALUES ($1, 'bacmqtt', $2, 3, $3, $4)`,
      [gw, gw === "gw1" ? "online" : "offline", JSON.stringify({ version: "0.1.0" }), end],
    );
  }
  const pointIds: { id: number; device: (typeof SEED.devices)[number]; index: number }[] = [];
  for (const d of SEED.devices) {
    await client.query(
      `INSERT INTO devices (gateway_id, device_instance, object_name, vendor_name, model_name, address, online, last_seen)
       VALUES ($1, $2, $3, 'Acme', 'Sim', '192.0.2.10:47808', $4, $5)`,
      [d.gateway, d.device, d.name, d.online, end],
    );
    for (const [index, p] of SEED.points.entries()) {
      const { rows } = await client.query<{ point_id: string }>(
        `INSERT INTO points (gateway_id, device_instance, point, object_type, object_instance, name, units, writable)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING point_id`,
        [d.gateway, d.device, p.point, p.type, p.instance, p.name, p.units, p.writable],
      );
      pointIds.push({ id: Number(rows[0]?.point_id), device: d, index });
    }
  }
  const rows: ReadingRow[] = [];
  for (let t = from.getTime(); t < end.getTime(); t += SEED.stepMinutes * 60_000) {
    for (const p of pointIds) {
      const k = (t - from.getTime()) / 600_000;
      const kind = SEED.points[p.index]?.type;
      const value =
        kind === "binary_input"
          ? k % 7 < 4
            ? 1
            : 0
          : kind === "multi_state_value"
            ? 1 + (k % 3)
            : 20 + p.index + Math.sin(k / 9) * 3;
      rows.push({
        time: new Date(t),
        point_id: p.id,
        value,
        value_text: kind === "binary_input" ? (value ? "active" : "inactive") : null,
      });
    }
  }
  await writeReadings(client, rows);
  for (const d of SEED.devices) {
    const events: [number, string, string | null][] = [
      [-40, "online", "discovered"],
      [-20, "offline", "timeout"],
      [-19, "online", null],
    ];
    if (!d.online) events.push([-2, "offline", "timeout"]);
    for (const [h, state, reason] of events)
      await client.query(
        `INSERT INTO availability_events (time, gateway_id, device_instance, state, reason) VALUES ($1, $2, $3, $4, $5)`,
        [new Date(end.getTime() + h * 3_600_000), d.gateway, d.device, state, reason],
      );
  }
  for (let i = 0; i < 12; i++) {
    const d = SEED.devices[i % SEED.devices.length] as (typeof SEED.devices)[number];
    const ok = i % 3 !== 2;
    await client.query(
      `INSERT INTO write_audit (time, gateway_id, device_instance, point, value, priority, source, actor, result,
                                error_code, error_message, transaction)
       VALUES ($1, $2, $3, 'analog_output_1', $4, 8, 'api', 'operator', $5, $6, $7, $8)`,
      [
        new Date(end.getTime() - (i + 1) * 3 * 3_600_000),
        d.gateway,
        d.device,
        JSON.stringify(21 + i / 2),
        ok ? "ok" : "error",
        ok ? null : "GW_ERR_WRITE_DENIED",
        ok ? null : "write access denied",
        `t${i}`,
      ],
    );
  }
  return { from, to, readings: rows.length };
}
