// Store-and-forward buffer: readings that could not be published go to append-only segment files
// on disk and are replayed in order once the broker is back. Crash-safe without native code:
// - a record is one line `<ms>\t<topic>\t<JSON body>`, written with a synchronous write (it survives SIGKILL of the process
//   as soon as append() returns; `fsync` adds power-loss safety per the configured policy);
// - a torn last line (power loss mid-write) is cut off at open;
// - the replay position is a small cursor file replaced atomically (write + rename), advanced only
//   after the broker acknowledged; a crash between ack and cursor write replays a few records again
//   (at-least-once; readings are idempotent on point + ts downstream).
// Bounded by total bytes (oldest segment dropped, counted) and by age (expired records skipped,
// counted). Knows nothing of MQTT: the drain is given a publish function.
import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import path from "node:path";

export interface BufferOptions {
  dir: string;
  maxBytes: number;
  maxAgeS: number;
  segmentBytes: number;
  fsync: "always" | "interval" | "never";
  fsyncIntervalMs: number;
  /** Called when records are dropped (limit hit or expired), for events and metrics. */
  onDrop?: (info: { reason: "max_bytes" | "max_age" | "corrupt"; records: number }) => void;
  now?: () => number;
}

export interface BufferedRecord {
  /** When it was buffered, ms since epoch. */
  t: number;
  topic: string;
  /** The message body as published (JSON text, one line). */
  body: string;
}

interface Position {
  seg: number;
  off: number;
}

interface Segment {
  seq: number;
  bytes: number;
  records: number;
}

interface ReadRecord extends BufferedRecord {
  end: Position;
}

const SEGMENT_RE = /^(\d{16})\.seg$/;
const CURSOR = "cursor.json";
const READ_CHUNK = 1024 * 1024;

export class DiskBuffer {
  private readonly o: BufferOptions;
  private segments: Segment[] = [];
  private cursor: Position = { seg: 0, off: 0 };
  private fd: number | undefined;
  private dirty = false;
  private fsyncTimer: NodeJS.Timeout | undefined;
  private pending = 0;
  /** Records of the segment under the cursor that lie before it (already acknowledged). */
  private consumedInHead = 0;
  readonly stats = { appended: 0, replayed: 0, dropped: 0 };

  constructor(options: BufferOptions) {
    this.o = options;
  }

  private now(): number {
    return this.o.now ? this.o.now() : Date.now();
  }

  /** Records waiting to be replayed. */
  get depth(): number {
    return this.pending;
  }

  get bytes(): number {
    let total = 0;
    for (const s of this.segments) total += s.bytes;
    return total - this.cursor.off;
  }

  private file(seq: number): string {
    return path.join(this.o.dir, `${String(seq).padStart(16, "0")}.seg`);
  }

  /** Opens the folder, recovers from a crash (torn tail), counts what is pending. */
  open(): void {
    mkdirSync(this.o.dir, { recursive: true });
    const seqs = readdirSync(this.o.dir)
      .map((f) => SEGMENT_RE.exec(f)?.[1])
      .filter((s): s is string => s !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    try {
      const c = JSON.parse(readFileSync(path.join(this.o.dir, CURSOR), "utf8")) as Position;
      if (Number.isInteger(c.seg) && Number.isInteger(c.off) && c.off >= 0) this.cursor = c;
    } catch {
      this.cursor = { seg: seqs[0] ?? 1, off: 0 };
    }
    for (const seq of seqs) {
      if (seq < this.cursor.seg) {
        rmSync(this.file(seq), { force: true });
        continue;
      }
      const text = readFileSync(this.file(seq), "utf8");
      let usable = text.lastIndexOf("\n") + 1;
      if (usable < Buffer.byteLength(text)) {
        // Torn tail: a record cut short by a crash. Keep every complete line.
        const fd = openSync(this.file(seq), "r+");
        usable = Buffer.byteLength(text.slice(0, usable));
        ftruncateSync(fd, usable);
        closeSync(fd);
      }
      const buf = Buffer.from(text);
      let records = 0;
      let consumed = 0;
      for (let i = buf.indexOf(0x0a); i >= 0 && i < usable; i = buf.indexOf(0x0a, i + 1)) {
        records += 1;
        if (seq === this.cursor.seg && i < this.cursor.off) consumed += 1;
      }
      this.segments.push({ seq, bytes: usable, records });
      if (seq === this.cursor.seg) this.consumedInHead = consumed;
    }
    if (this.segments.length === 0 || (this.segments[0] as Segment).seq !== this.cursor.seg) {
      // The cursor's segment is gone (fully consumed and deleted): start at the oldest remaining one.
      this.cursor = { seg: this.segments[0]?.seq ?? this.cursor.seg + 1, off: 0 };
      this.consumedInHead = 0;
    }
    if (this.cursor.off > (this.segments[0]?.bytes ?? 0)) this.cursor.off = this.segments[0]?.bytes ?? 0;
    this.pending = this.segments.reduce((n, s) => n + s.records, 0) - this.consumedInHead;
    if (this.segments.length === 0) this.segments.push({ seq: this.cursor.seg, bytes: 0, records: 0 });
    const active = this.segments.at(-1) as Segment;
    this.fd = openSync(this.file(active.seq), "a");
    this.saveCursor();
    if (this.o.fsync === "interval") {
      this.fsyncTimer = setInterval(() => this.flush(), this.o.fsyncIntervalMs);
      this.fsyncTimer.unref();
    }
  }

  /** Appends one record; synchronous so that it is in the OS before the caller goes on. */
  append(topic: string, body: string): void {
    if (this.fd === undefined) throw new Error("buffer is not open");
    if (body.includes("\n") || topic.includes("\t")) throw new Error("a buffered record must be one line");
    const line = `${this.now()}\t${topic}\t${body}\n`;
    const bytes = Buffer.byteLength(line);
    let active = this.segments.at(-1) as Segment;
    if (active.bytes > 0 && active.bytes + bytes > this.o.segmentBytes) active = this.rotate();
    writeSync(this.fd, line);
    active.bytes += bytes;
    active.records += 1;
    this.pending += 1;
    this.stats.appended += 1;
    if (this.o.fsync === "always") fsyncSync(this.fd);
    else this.dirty = true;
    this.enforceSize();
  }

  private rotate(): Segment {
    if (this.fd !== undefined) {
      if (this.o.fsync !== "never") fsyncSync(this.fd);
      closeSync(this.fd);
    }
    const seg = { seq: (this.segments.at(-1) as Segment).seq + 1, bytes: 0, records: 0 };
    this.segments.push(seg);
    this.fd = openSync(this.file(seg.seq), "a");
    return seg;
  }

  /** Drops whole oldest segments while over the size limit (never the one being written). */
  private enforceSize(): void {
    let total = this.bytes;
    let droppedNow = false;
    while (total > this.o.maxBytes && this.segments.length > 1) {
      const oldest = this.segments.shift() as Segment;
      const lost = oldest.records - (oldest.seq === this.cursor.seg ? this.consumedInHead : 0);
      total -= oldest.bytes - (oldest.seq === this.cursor.seg ? this.cursor.off : 0);
      rmSync(this.file(oldest.seq), { force: true });
      const next = this.segments[0] as Segment;
      this.cursor = { seg: next.seq, off: 0 };
      this.consumedInHead = 0;
      this.pending -= lost;
      this.drop("max_bytes", lost);
      droppedNow = true;
    }
    if (droppedNow) this.saveCursor();
  }

  private drop(reason: "max_bytes" | "max_age" | "corrupt", records: number): void {
    if (records <= 0) return;
    this.stats.dropped += records;
    this.o.onDrop?.({ reason, records });
  }

  /** Reads up to `max` records after `from` (default: the cursor). */
  read(max: number, from: Position = this.cursor): ReadRecord[] {
    const out: ReadRecord[] = [];
    let pos = { ...from };
    while (out.length < max) {
      const segIndex = this.segments.findIndex((s) => s.seq === pos.seg);
      if (segIndex < 0) break;
      const seg = this.segments[segIndex] as Segment;
      if (pos.off >= seg.bytes) {
        const next = this.segments[segIndex + 1];
        if (!next) break;
        pos = { seg: next.seq, off: 0 };
        continue;
      }
      const length = Math.min(READ_CHUNK, seg.bytes - pos.off);
      const buf = Buffer.alloc(length);
      const fd = openSync(this.file(seg.seq), "r");
      try {
        readSync(fd, buf, 0, length, pos.off);
      } finally {
        closeSync(fd);
      }
      let start = 0;
      while (out.length < max) {
        const nl = buf.indexOf(0x0a, start);
        if (nl < 0) break;
        out.push({
          ...parseLine(buf.toString("utf8", start, nl)),
          end: { seg: seg.seq, off: pos.off + nl + 1 },
        });
        start = nl + 1;
      }
      const progressed = start > 0;
      if (!progressed) {
        // A record longer than the read chunk: read it whole.
        const whole = readFileSync(this.file(seg.seq)).subarray(pos.off, seg.bytes);
        const nl = whole.indexOf(0x0a);
        if (nl < 0) break;
        const end = { seg: seg.seq, off: pos.off + nl + 1 };
        out.push({ ...parseLine(whole.subarray(0, nl).toString("utf8")), end });
      }
      pos = (out.at(-1) as ReadRecord).end;
    }
    return out;
  }

  /** Marks everything up to `end` as delivered (in order). `records` is how many that covers. */
  ack(end: Position, records: number, persist = true): void {
    if (end.seg < this.cursor.seg || (end.seg === this.cursor.seg && end.off <= this.cursor.off)) return;
    let left = records;
    let consumed = this.consumedInHead;
    while (this.segments.length > 1 && (this.segments[0] as Segment).seq < end.seg) {
      const done = this.segments.shift() as Segment;
      left -= done.records - consumed;
      consumed = 0;
      rmSync(this.file(done.seq), { force: true });
    }
    this.cursor = { ...end };
    this.pending = Math.max(0, this.pending - records);
    this.consumedInHead = consumed + Math.max(0, left);
    const head = this.segments[0] as Segment;
    if (this.pending === 0 && head.bytes === end.off && this.segments.length === 1) this.reset();
    else if (persist) this.saveCursor();
  }

  /** Everything delivered: start a fresh segment so that disk space is returned at once. */
  private reset(): void {
    const old = this.segments[0] as Segment;
    if (this.fd !== undefined) closeSync(this.fd);
    const seg = { seq: old.seq + 1, bytes: 0, records: 0 };
    this.fd = openSync(this.file(seg.seq), "a");
    this.cursor = { seg: seg.seq, off: 0 };
    this.consumedInHead = 0;
    this.saveCursor();
    rmSync(this.file(old.seq), { force: true });
    this.segments = [seg];
  }

  private saveCursor(): void {
    const file = path.join(this.o.dir, CURSOR);
    writeFileSync(`${file}.tmp`, JSON.stringify(this.cursor));
    renameSync(`${file}.tmp`, file);
  }

  /**
   * Replays pending records in order through `publish` (which must resolve only once the broker
   * acknowledged), keeping up to `window` in flight. Expired and unreadable records are skipped and
   * counted. Stops when a publish fails or `shouldStop()` says so; the cursor only moves over the
   * acknowledged prefix, so what was not acknowledged is sent again by the next drain.
   */
  async drain(
    publish: (topic: string, body: string) => Promise<void>,
    options: { window?: number; shouldStop?: () => boolean } = {},
  ): Promise<number> {
    const window = Math.max(1, options.window ?? 1024);
    const inflight: { done: Promise<boolean>; end: Position; count: number }[] = [];
    let readPos: Position = this.cursor;
    let delivered = 0;
    let failed = false;
    let sinceSave = 0;
    let expired = 0;
    let corrupt = 0;
    const settleOldest = async () => {
      const f = inflight.shift() as (typeof inflight)[number];
      if (!(await f.done)) {
        failed = true;
        return;
      }
      this.ack(f.end, f.count, false);
      delivered += 1;
      this.stats.replayed += 1;
      sinceSave += f.count;
      if (sinceSave >= 256) {
        this.saveCursor();
        sinceSave = 0;
      }
    };
    while (!failed) {
      if (options.shouldStop?.()) break;
      const room = window - inflight.length;
      const batch = room >= window / 2 || inflight.length === 0 ? this.read(room, readPos) : [];
      if (batch.length === 0) {
        if (inflight.length === 0) break;
        await settleOldest();
        continue;
      }
      const oldest = this.now() - this.o.maxAgeS * 1000;
      for (const rec of batch) {
        readPos = rec.end;
        const skip = !rec.topic ? "corrupt" : rec.t < oldest ? "expired" : undefined;
        if (skip) {
          if (skip === "corrupt") corrupt += 1;
          else expired += 1;
          // Acknowledged together with the record before it (or at once when nothing is in flight).
          const last = inflight.at(-1);
          if (last) {
            last.end = rec.end;
            last.count += 1;
          } else this.ack(rec.end, 1, false);
          continue;
        }
        inflight.push({
          done: publish(rec.topic, rec.body).then(
            () => true,
            () => false,
          ),
          end: rec.end,
          count: 1,
        });
      }
      while (inflight.length >= window && !failed) await settleOldest();
    }
    while (inflight.length > 0 && !failed && !options.shouldStop?.()) await settleOldest();
    this.saveCursor();
    this.drop("max_age", expired);
    this.drop("corrupt", corrupt);
    return delivered;
  }

  flush(): void {
    if (this.fd !== undefined && this.dirty) {
      try {
        fsyncSync(this.fd);
      } catch {
        // fsync can fail on some file systems; the data is still in the OS cache.
      }
      this.dirty = false;
    }
  }

  close(): void {
    if (this.fsyncTimer) clearInterval(this.fsyncTimer);
    this.fsyncTimer = undefined;
    this.flush();
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }

  /** For diagnostics and tests. */
  segmentFiles(): string[] {
    return this.segments.map((s) => this.file(s.seq)).filter((f) => statSync(f, { throwIfNoEntry: false }));
  }
}

/** A record line; an unreadable one comes back with an empty topic (counted as corrupt). */
function parseLine(line: string): BufferedRecord {
  const a = line.indexOf("\t");
  const b = a < 0 ? -1 : line.indexOf("\t", a + 1);
  const t = Number(line.slice(0, a));
  const body = line.slice(b + 1);
  if (a < 1 || b < 0 || !Number.isFinite(t) || b === a + 1 || !body.startsWith("{") || !body.endsWith("}"))
    return { t: 0, topic: "", body: "" };
  return { t, topic: line.slice(a + 1, b), body };
}
