// Point identifiers: `<object_type>_<instance>` with the BACnet object type in snake_case
// (ASHRAE 135 clause 21, BACnetObjectType). Owned by the contract so every process names points alike.

/** BACnetObjectType enumeration → snake_case name. */
export const OBJECT_TYPES: Readonly<Record<number, string>> = Object.freeze({
  0: "analog_input",
  1: "analog_output",
  2: "analog_value",
  3: "binary_input",
  4: "binary_output",
  5: "binary_value",
  6: "calendar",
  7: "command",
  8: "device",
  9: "event_enrollment",
  10: "file",
  11: "group",
  12: "loop",
  13: "multi_state_input",
  14: "multi_state_output",
  15: "notification_class",
  16: "program",
  17: "schedule",
  18: "averaging",
  19: "multi_state_value",
  20: "trend_log",
  21: "life_safety_point",
  22: "life_safety_zone",
  23: "accumulator",
  24: "pulse_converter",
  25: "event_log",
  26: "global_group",
  27: "trend_log_multiple",
  28: "load_control",
  29: "structured_view",
  30: "access_door",
  31: "timer",
  32: "access_credential",
  33: "access_point",
  34: "access_rights",
  35: "access_user",
  36: "access_zone",
  37: "credential_data_input",
  38: "network_security",
  39: "bitstring_value",
  40: "characterstring_value",
  41: "date_pattern_value",
  42: "date_value",
  43: "datetime_pattern_value",
  44: "datetime_value",
  45: "integer_value",
  46: "large_analog_value",
  47: "octetstring_value",
  48: "positive_integer_value",
  49: "time_pattern_value",
  50: "time_value",
  51: "notification_forwarder",
  52: "alert_enrollment",
  53: "channel",
  54: "lighting_output",
  55: "binary_lighting_output",
  56: "network_port",
  57: "elevator_group",
  58: "escalator",
  59: "lift",
  60: "staging",
  61: "audit_log",
  62: "audit_reporter",
  63: "color",
  64: "color_temperature",
});

const TYPE_BY_NAME: ReadonlyMap<string, number> = new Map(
  Object.entries(OBJECT_TYPES).map(([num, name]) => [name, Number(num)]),
);

export const MAX_INSTANCE = 4_194_303; // 22-bit object instance; 4194303 is the wildcard.

/** Name for an object type number; proprietary types (128–1023) become `proprietary_<n>`. */
export function objectTypeName(type: number): string {
  return OBJECT_TYPES[type] ?? `proprietary_${type}`;
}

export function objectTypeNumber(name: string): number | undefined {
  const known = TYPE_BY_NAME.get(name);
  if (known !== undefined) return known;
  const m = /^proprietary_(\d+)$/.exec(name);
  if (m) {
    const n = Number(m[1]);
    if (n >= 0 && n <= 1023) return n;
  }
  return undefined;
}

export function pointId(type: number, instance: number): string {
  return `${objectTypeName(type)}_${instance}`;
}

export interface ParsedPoint {
  objectType: number;
  objectTypeName: string;
  instance: number;
}

/** Parses `analog_input_3`; also accepts `analog-input:3` and `0:3` as a field engineer might type. */
export function parsePointId(text: string): ParsedPoint | undefined {
  let m = /^([a-z_]+?|proprietary_\d+)_(\d+)$/.exec(text);
  if (!m) m = /^([a-z-]+):(\d+)$/.exec(text);
  let type: number | undefined;
  let instance: number;
  if (m) {
    type = objectTypeNumber((m[1] as string).replace(/-/g, "_"));
    instance = Number(m[2]);
  } else {
    const n = /^(\d+):(\d+)$/.exec(text);
    if (!n) return undefined;
    type = Number(n[1]);
    instance = Number(n[2]);
    if (type > 1023) return undefined;
  }
  if (type === undefined || !Number.isInteger(instance) || instance < 0 || instance > MAX_INSTANCE)
    return undefined;
  return { objectType: type, objectTypeName: objectTypeName(type), instance };
}

/** Object types whose present-value is commandable through a priority array (when the device says so). */
export const COMMANDABLE_TYPES: ReadonlySet<number> = new Set([1, 2, 4, 5, 14, 19, 40, 45, 46, 48, 54, 55]);
