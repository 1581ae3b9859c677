// The simulated point objects and device object: what each object holds, how its present value
// moves over time, and how each property is read and written (ASHRAE 135 clause 12 for the object
// types, clause 19.2 for command prioritisation). Values drift as pure functions of the clock tick,
// so 100,000 points cost nothing until somebody reads them; only COV-subscribed objects are checked
// on a timer (device.ts).
import { COMMANDABLE_TYPES, pointId } from "../contract/points.ts";
import { type AppValue, ErrorClass, ErrorCode, Segmentation, type Writer } from "./codec.ts";

/** BACnetPropertyIdentifier values used here (clause 21). */
export const Prop = {
  activeText: 4,
  all: 8,
  apduSegmentTimeout: 10,
  apduTimeout: 11,
  applicationSoftwareVersion: 12,
  covIncrement: 22,
  description: 28,
  deviceAddressBinding: 30,
  eventState: 36,
  firmwareRevision: 44,
  inactiveText: 46,
  location: 58,
  maxApduLengthAccepted: 62,
  modelName: 70,
  numberOfApduRetries: 73,
  numberOfStates: 74,
  objectIdentifier: 75,
  objectList: 76,
  objectName: 77,
  objectType: 79,
  optional: 80,
  outOfService: 81,
  polarity: 84,
  presentValue: 85,
  priorityArray: 87,
  protocolObjectTypesSupported: 96,
  protocolServicesSupported: 97,
  protocolVersion: 98,
  reliability: 103,
  relinquishDefault: 104,
  required: 105,
  segmentationSupported: 107,
  stateText: 110,
  statusFlags: 111,
  systemStatus: 112,
  units: 117,
  vendorIdentifier: 120,
  vendorName: 121,
  protocolRevision: 139,
  databaseRevision: 155,
  maxSegmentsAccepted: 167,
  propertyList: 371,
  currentCommandPriority: 431,
} as const;

export const OBJECT_DEVICE = 8;

/** Object types the simulator can create, by contract name. */
export const SIM_OBJECT_TYPES = {
  analog_input: 0,
  analog_output: 1,
  analog_value: 2,
  binary_input: 3,
  binary_output: 4,
  binary_value: 5,
  multi_state_input: 13,
  multi_state_output: 14,
  multi_state_value: 19,
  characterstring_value: 40,
  integer_value: 45,
} as const;
export type SimObjectTypeName = keyof typeof SIM_OBJECT_TYPES;

type Kind = "analog" | "binary" | "multistate" | "string" | "integer";

/** Internal present value: numbers for analog/integer/multi-state, 0/1 for binary, text for strings. */
export type Pv = number | string;

export interface SimObject {
  readonly type: number;
  readonly instance: number;
  readonly key: string;
  readonly kind: Kind;
  readonly input: boolean;
  readonly commandable: boolean;
  readonly name: string;
  description: string;
  outOfService: boolean;
  /** Commandable objects: 16 slots, null = relinquished. */
  readonly priority: (Pv | null)[] | null;
  relinquishDefault: Pv;
  /** Non-commandable value, or an input's frozen value while out of service. */
  value: Pv;
  /** Inputs: the level the drift moves around (analog), or the phase of the toggling (binary/multi-state). */
  base: number;
  readonly amplitude: number;
  readonly periodTicks: number;
  readonly phase: number;
  readonly noiseSeed: number;
  readonly units: number;
  covIncrement: number;
  readonly numberOfStates: number;
  readonly stateText: readonly string[];
  readonly activeText: string;
  readonly inactiveText: string;
  readonly props: readonly number[];
  readonly optionalProps: ReadonlySet<number>;
}

export type PropError = readonly [errorClass: number, errorCode: number];
const err = (cls: number, code: number): PropError => [cls, code];
export const E_UNKNOWN_PROPERTY = err(ErrorClass.property, ErrorCode.unknownProperty);
export const E_NOT_ARRAY = err(ErrorClass.property, ErrorCode.propertyIsNotAnArray);
export const E_INDEX = err(ErrorClass.property, ErrorCode.invalidArrayIndex);
export const E_WRITE_DENIED = err(ErrorClass.property, ErrorCode.writeAccessDenied);
export const E_DATA_TYPE = err(ErrorClass.property, ErrorCode.invalidDataType);
export const E_RANGE = err(ErrorClass.property, ErrorCode.valueOutOfRange);
export const E_READ_DENIED = err(ErrorClass.property, ErrorCode.readAccessDenied);

// ---------------------------------------------------------------------------------------------
// Deterministic pseudo-randomness (a seed gives the same plant every run).

export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function hash01(a: number, b: number): number {
  let h = Math.imul(a ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(b + 0x7f4a7c15, 0xc2b2ae35);
  h ^= h >>> 13;
  h = Math.imul(h, 0x27d4eb2f);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

const round2 = (v: number) => Math.round(v * 100) / 100;

// ---------------------------------------------------------------------------------------------
// Construction.

const ANALOG_FLAVOURS = [
  { label: "Temperature", units: 62, base: 21, amp: 1.5, cov: 0.1 }, // degrees-Celsius
  { label: "Valve Position", units: 98, base: 45, amp: 10, cov: 1 }, // percent
  { label: "Power", units: 48, base: 12, amp: 3, cov: 0.5 }, // kilowatts
  { label: "Pressure", units: 53, base: 250, amp: 20, cov: 2 }, // pascals
  { label: "Air Flow", units: 135, base: 800, amp: 60, cov: 5 }, // cubic-meters-per-hour
  { label: "CO2", units: 96, base: 600, amp: 80, cov: 10 }, // parts-per-million
] as const;
const MS_STATES = [
  ["Off", "Low", "Medium", "High"],
  ["Auto", "Heat", "Cool", "Fan Only", "Dry"],
  ["Occupied", "Unoccupied", "Standby"],
] as const;
const ABBREV: Record<number, string> = { 0: "AI", 1: "AO", 2: "AV", 3: "BI", 4: "BO", 5: "BV", 13: "MSI" };
Object.assign(ABBREV, { 14: "MSO", 19: "MSV", 40: "CSV", 45: "IV" });

const COMMON_PROPS: readonly number[] = [
  Prop.objectIdentifier,
  Prop.objectName,
  Prop.objectType,
  Prop.description,
  Prop.presentValue,
  Prop.statusFlags,
  Prop.eventState,
  Prop.reliability,
  Prop.outOfService,
];
const OPTIONAL_POINT_PROPS = new Set<number>([
  Prop.description,
  Prop.reliability,
  Prop.covIncrement,
  Prop.activeText,
  Prop.inactiveText,
  Prop.stateText,
]);

// Objects of one type share one property list: 100,000 points should not hold 100,000 arrays.
const PROPS_CACHE = new Map<string, readonly number[]>();

function propsFor(kind: Kind, commandable: boolean, type: number): readonly number[] {
  const key = `${kind}/${commandable}/${type}`;
  const cached = PROPS_CACHE.get(key);
  if (cached) return cached;
  const props: number[] = [...COMMON_PROPS];
  if (kind === "analog" || kind === "integer") props.push(Prop.units, Prop.covIncrement);
  if (kind === "binary") {
    // Polarity belongs to physical binary inputs and outputs only.
    if (type === 3 || type === 4) props.push(Prop.polarity);
    props.push(Prop.activeText, Prop.inactiveText);
  }
  if (kind === "multistate") props.push(Prop.numberOfStates, Prop.stateText);
  if (commandable) props.push(Prop.priorityArray, Prop.relinquishDefault, Prop.currentCommandPriority);
  props.push(Prop.propertyList);
  PROPS_CACHE.set(key, props);
  return props;
}

export function createObject(type: number, instance: number, rand: () => number): SimObject {
  const kind: Kind =
    type <= 2
      ? "analog"
      : type <= 5
        ? "binary"
        : type === 40
          ? "string"
          : type === 45
            ? "integer"
            : "multistate";
  const input = type === 0 || type === 3 || type === 13;
  const commandable = !input && COMMANDABLE_TYPES.has(type);
  const flavour = ANALOG_FLAVOURS[
    (instance - 1) % ANALOG_FLAVOURS.length
  ] as (typeof ANALOG_FLAVOURS)[number];
  const states = MS_STATES[(instance - 1) % MS_STATES.length] as readonly string[];
  let label: string = flavour.label;
  let initial: Pv = round2(flavour.base + (rand() - 0.5) * flavour.amp);
  let units: number = flavour.units;
  let covIncrement: number = flavour.cov;
  if (kind === "binary") {
    label = ["Fan Status", "Pump Command", "Alarm", "Occupancy"][(instance - 1) % 4] as string;
    initial = rand() < 0.5 ? 0 : 1;
  } else if (kind === "multistate") {
    label = ["Fan Speed", "Operating Mode", "Occupancy Mode"][(instance - 1) % 3] as string;
    initial = 1 + Math.floor(rand() * states.length);
  } else if (kind === "string") {
    label = "Message";
    initial = `message ${instance}`;
  } else if (kind === "integer") {
    label = "Counter";
    initial = Math.floor(rand() * 1000);
    units = 95; // no-units
    covIncrement = 1;
  }
  const abbrev = ABBREV[type] ?? "OBJ";
  return {
    type,
    instance,
    key: pointId(type, instance),
    kind,
    input,
    commandable,
    name: `${abbrev}${instance} ${label}`,
    description: `Simulated ${label.toLowerCase()} ${instance}`,
    outOfService: false,
    priority: commandable ? new Array<Pv | null>(16).fill(null) : null,
    relinquishDefault: initial,
    value: initial,
    base: typeof initial === "number" ? initial : 0,
    amplitude: kind === "analog" ? flavour.amp / 2 : 0,
    periodTicks: 30 + Math.floor(rand() * 150),
    phase: rand() * Math.PI * 2,
    noiseSeed: Math.floor(rand() * 0x7fffffff),
    units,
    covIncrement,
    numberOfStates: states.length,
    stateText: states,
    activeText: "On",
    inactiveText: "Off",
    props: propsFor(kind, commandable, type),
    optionalProps: OPTIONAL_POINT_PROPS,
  };
}

// ---------------------------------------------------------------------------------------------
// Present value.

/** The drift an input shows at `tick` (0 when values are static). */
function inputPv(o: SimObject, tick: number, moving: boolean): Pv {
  if (!moving) return o.base;
  if (o.kind === "analog") {
    const wave = o.amplitude * Math.sin(o.phase + (2 * Math.PI * tick) / o.periodTicks);
    const noise = (hash01(o.noiseSeed, tick) - 0.5) * o.amplitude * 0.1;
    return round2(o.base + wave + noise);
  }
  const flips = Math.floor((tick + Math.floor(o.phase * 10)) / o.periodTicks);
  if (o.kind === "binary") return (o.base + flips) & 1;
  if (o.kind === "multistate") return ((o.base - 1 + flips) % o.numberOfStates) + 1;
  return o.base;
}

export function activePriority(o: SimObject): number | null {
  if (!o.priority) return null;
  for (let i = 0; i < 16; i++) if (o.priority[i] !== null) return i + 1;
  return null;
}

export function presentValue(o: SimObject, tick: number, moving: boolean): Pv {
  if (o.priority) {
    const p = activePriority(o);
    return p === null ? o.relinquishDefault : (o.priority[p - 1] as Pv);
  }
  if (o.input && !o.outOfService) return inputPv(o, tick, moving);
  return o.value;
}

/** Sets the value as the plant would: inputs move their base, commandables their relinquish default. */
export function setPlantValue(o: SimObject, v: Pv, tick: number, moving: boolean): void {
  if (o.priority) {
    o.relinquishDefault = v;
    return;
  }
  if (o.input && !o.outOfService) {
    if (o.kind === "analog") {
      o.base = round2((v as number) - ((inputPv(o, tick, moving) as number) - o.base));
    } else if (o.kind === "binary") {
      // Choose the base whose toggling lands on v now.
      o.base = inputPv({ ...o, base: 0 }, tick, moving) === v ? 0 : 1;
    } else if (o.kind === "multistate") {
      const zero = (inputPv({ ...o, base: 1 }, tick, moving) as number) - 1;
      o.base = (((((v as number) - 1 - zero) % o.numberOfStates) + o.numberOfStates) % o.numberOfStates) + 1;
    } else o.base = v as number;
    return;
  }
  o.value = v;
}

/** Validates an API value for an object and converts it to the internal form. */
export function apiToPv(o: SimObject, v: number | boolean | string): Pv {
  switch (o.kind) {
    case "binary":
      if (typeof v === "boolean") return v ? 1 : 0;
      if (v === 0 || v === 1) return v;
      break;
    case "multistate":
      if (typeof v === "number" && Number.isInteger(v) && v >= 1 && v <= o.numberOfStates) return v;
      break;
    case "analog":
      if (typeof v === "number" && Number.isFinite(v)) return v;
      break;
    case "integer":
      if (typeof v === "number" && Number.isInteger(v) && Math.abs(v) <= 0x7fffffff) return v;
      break;
    case "string":
      if (typeof v === "string") return v;
      break;
  }
  throw new RangeError(`value ${JSON.stringify(v)} does not fit ${o.key}`);
}

export function pvToApi(o: SimObject, v: Pv): number | boolean | string {
  return o.kind === "binary" ? v === 1 : v;
}

// ---------------------------------------------------------------------------------------------
// Property encoding.

function writePvValue(w: Writer, o: SimObject, v: Pv): void {
  switch (o.kind) {
    case "analog":
      w.appReal(v as number);
      return;
    case "binary":
      w.appEnumerated(v as number);
      return;
    case "multistate":
      w.appUnsigned(v as number);
      return;
    case "integer":
      w.appSigned(v as number);
      return;
    case "string":
      w.appCharString(v as string);
      return;
  }
}

export function statusFlags(o: SimObject): boolean[] {
  // in-alarm, fault, overridden, out-of-service
  return [false, false, false, o.outOfService];
}

/**
 * Writes one array property, whole or one element; index 0 is the length (clause 12.1.5.1).
 * Returns an error without writing anything when the index is out of range.
 */
export function writeArray(
  w: Writer,
  length: number,
  index: number | undefined,
  element: (i: number) => void,
): PropError | undefined {
  if (index === undefined) {
    for (let i = 0; i < length; i++) element(i);
    return undefined;
  }
  if (index === 0) {
    w.appUnsigned(length);
    return undefined;
  }
  if (index > length) return E_INDEX;
  element(index - 1);
  return undefined;
}

const ARRAY_PROPS = new Set<number>([Prop.priorityArray, Prop.stateText, Prop.propertyList, Prop.objectList]);
export function isArrayProp(prop: number): boolean {
  return ARRAY_PROPS.has(prop);
}

/** Property-list contents: every property except the four the standard excludes (clause 12.1.1.4.1). */
export function propertyListOf(props: readonly number[]): number[] {
  return props.filter(
    (p) =>
      p !== Prop.objectIdentifier &&
      p !== Prop.objectName &&
      p !== Prop.objectType &&
      p !== Prop.propertyList,
  );
}

export function readObjectProperty(
  w: Writer,
  o: SimObject,
  prop: number,
  index: number | undefined,
  tick: number,
  moving: boolean,
): PropError | undefined {
  if (!o.props.includes(prop)) return E_UNKNOWN_PROPERTY;
  if (index !== undefined && !ARRAY_PROPS.has(prop)) return E_NOT_ARRAY;
  switch (prop) {
    case Prop.objectIdentifier:
      w.appObjectId(o.type, o.instance);
      return undefined;
    case Prop.objectName:
      w.appCharString(o.name);
      return undefined;
    case Prop.objectType:
      w.appEnumerated(o.type);
      return undefined;
    case Prop.description:
      w.appCharString(o.description);
      return undefined;
    case Prop.presentValue:
      writePvValue(w, o, presentValue(o, tick, moving));
      return undefined;
    case Prop.statusFlags:
      w.appBitString(statusFlags(o));
      return undefined;
    case Prop.eventState:
      w.appEnumerated(0); // normal
      return undefined;
    case Prop.reliability:
      w.appEnumerated(0); // no-fault-detected
      return undefined;
    case Prop.outOfService:
      w.appBoolean(o.outOfService);
      return undefined;
    case Prop.units:
      w.appEnumerated(o.units);
      return undefined;
    case Prop.covIncrement:
      if (o.kind === "integer") w.appUnsigned(o.covIncrement);
      else w.appReal(o.covIncrement);
      return undefined;
    case Prop.polarity:
      w.appEnumerated(0); // normal
      return undefined;
    case Prop.activeText:
      w.appCharString(o.activeText);
      return undefined;
    case Prop.inactiveText:
      w.appCharString(o.inactiveText);
      return undefined;
    case Prop.numberOfStates:
      w.appUnsigned(o.numberOfStates);
      return undefined;
    case Prop.stateText:
      return writeArray(w, o.stateText.length, index, (i) => w.appCharString(o.stateText[i] as string));
    case Prop.priorityArray: {
      const slots = o.priority as (Pv | null)[];
      return writeArray(w, 16, index, (i) => {
        const v = slots[i] ?? null;
        if (v === null) w.appNull();
        else writePvValue(w, o, v);
      });
    }
    case Prop.relinquishDefault:
      writePvValue(w, o, o.relinquishDefault);
      return undefined;
    case Prop.currentCommandPriority: {
      const p = activePriority(o);
      if (p === null) w.appNull();
      else w.appUnsigned(p);
      return undefined;
    }
    case Prop.propertyList: {
      const list = propertyListOf(o.props);
      return writeArray(w, list.length, index, (i) => w.appEnumerated(list[i] as number));
    }
  }
  return E_UNKNOWN_PROPERTY;
}

// ---------------------------------------------------------------------------------------------
// Writes (WriteProperty, clause 15.9; command prioritisation, clause 19.2).

function pvFromApp(o: SimObject, v: AppValue): Pv | PropError {
  switch (o.kind) {
    case "analog":
      if (v.tag !== "real") return E_DATA_TYPE;
      if (!Number.isFinite(v.value)) return E_RANGE;
      return v.value;
    case "binary":
      if (v.tag !== "enumerated") return E_DATA_TYPE;
      if (v.value > 1) return E_RANGE;
      return v.value;
    case "multistate":
      if (v.tag !== "unsigned") return E_DATA_TYPE;
      if (v.value < 1 || v.value > o.numberOfStates) return E_RANGE;
      return v.value;
    case "integer":
      if (v.tag !== "signed") return E_DATA_TYPE;
      return v.value;
    case "string":
      if (v.tag !== "string") return E_DATA_TYPE;
      return v.value;
  }
}

/**
 * Applies a WriteProperty to a point. `values` holds every application value found in the
 * request's [3] (a scalar property takes exactly one). Returns an error, or undefined on success.
 */
export function writeObjectProperty(
  o: SimObject,
  prop: number,
  index: number | undefined,
  values: AppValue[],
  priority: number | undefined,
  tick: number,
  moving: boolean,
): PropError | undefined {
  if (!o.props.includes(prop)) return E_UNKNOWN_PROPERTY;
  if (index !== undefined && !ARRAY_PROPS.has(prop)) return E_NOT_ARRAY;
  if (ARRAY_PROPS.has(prop)) return E_WRITE_DENIED;
  if (values.length !== 1) return E_DATA_TYPE;
  const v = values[0] as AppValue;
  switch (prop) {
    case Prop.presentValue: {
      if (o.priority) {
        const p = priority ?? 16;
        if (p < 1 || p > 16) return E_RANGE;
        if (v.tag === "null") {
          o.priority[p - 1] = null;
          return undefined;
        }
        const pv = pvFromApp(o, v);
        if (Array.isArray(pv)) return pv as PropError;
        o.priority[p - 1] = pv as Pv;
        return undefined;
      }
      // Inputs accept a present value only while out of service (clause 12.2.4 and its kin).
      if (o.input && !o.outOfService) return E_WRITE_DENIED;
      if (v.tag === "null") return E_DATA_TYPE;
      const pv = pvFromApp(o, v);
      if (Array.isArray(pv)) return pv as PropError;
      o.value = pv as Pv;
      return undefined;
    }
    case Prop.outOfService:
      if (v.tag !== "boolean") return E_DATA_TYPE;
      // Going out of service freezes an input at what it shows now; the value stays writable.
      if (v.value && !o.outOfService && o.input) o.value = presentValue(o, tick, moving);
      o.outOfService = v.value;
      return undefined;
    case Prop.relinquishDefault: {
      if (v.tag === "null") return E_DATA_TYPE;
      const pv = pvFromApp(o, v);
      if (Array.isArray(pv)) return pv as PropError;
      o.relinquishDefault = pv as Pv;
      return undefined;
    }
    case Prop.covIncrement:
      if (o.kind === "integer") {
        if (v.tag !== "unsigned") return E_DATA_TYPE;
        o.covIncrement = v.value;
        return undefined;
      }
      if (v.tag !== "real") return E_DATA_TYPE;
      if (!(v.value >= 0) || !Number.isFinite(v.value)) return E_RANGE;
      o.covIncrement = v.value;
      return undefined;
    case Prop.description:
      if (v.tag !== "string") return E_DATA_TYPE;
      o.description = v.value;
      return undefined;
  }
  return E_WRITE_DENIED;
}

export const SEGMENTATION_VALUE = (segmentation: boolean) =>
  segmentation ? Segmentation.transmit : Segmentation.none;
