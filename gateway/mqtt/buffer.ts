// Store-and-forward buffer: readings that could not be published go to append-only segment files
// on disk and are replayed in order once the broker is back. Crash-safe without native code:
// - a record is one JSON line, written with a synchronous write (it survives SIGKILL of the process
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
  payload: unknown;
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
      for (let i = 0; i < usable; i++) {
        if (buf[i] === 0x0a) {
          records += 1;
          if (seq === this.cursor.seg && i < this.cursor.off) consumed += 1;
        }
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
  append(topic: string, payload: unknown): void {
    if (this.fd === undefined) throw new Error("buffer is not open");
    const line = `${JSON.stringify({ t: this.now(), topic, payload })}\n`;
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
    }
    if (this.stats.dropped > 0) this.saveCursor();
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
      let progressed = false;
      for (let i = 0; i < length && out.length < max; i++) {
        if (buf[i] !== 0x0a) continue;
        const end = { seg: seg.seq, off: pos.off + i + 1 };
        progressed = true;
        let rec: BufferedRecord | undefined;
        try {
          rec = JSON.parse(buf.subarray(start, i).toString("utf8")) as BufferedRecord;
        } catch {
          rec = undefined;
        }
        out.push(
          rec && typeof rec.topic === "string"
            ? { t: rec.t, topic: rec.topic, payload: rec.payload, end }
            : { t: 0, topic: "", payload: undefined, end },
        );
        start = i + 1;
      }
      if (!progressed) {
        // A record longer than the read chunk: read it whole.
        const whole = readFileSync(this.file(seg.seq)).subarray(pos.off, seg.bytes);
        const nl = whole.indexOf(0x0a);
        if (nl < 0) break;
        const end = { seg: seg.seq, off: pos.off + nl + 1 };
        try {
          const rec = JSON.parse(whole.subarray(0, nl).toString("utf8")) as BufferedRecord;
          out.push({ t: rec.t, topic: rec.topic, payload: rec.payload, end });
        } catch {
          out.push({ t: 0, topic: "", payload: undefined, end });
        }
      }
      pos = (out.at(-1) as ReadRecord).end;
    }
    return out;
  }

  /** Marks everything up to `end` as delivered (in order). `records` is how many that covers. */
  ack(end: Position, records: number): void {
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
    else this.saveCursor();
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
   * acknowledged), up to `window` in flight. Expired records are skipped and counted. Stops when
   * `publish` rejects or `shouldStop()` says so; the cursor only moves over acknowledged records.
   */
  async drain(
    publish: (topic: string, payload: unknown) => Promise<void>,
    options: { window?: number; shouldStop?: () => boolean } = {},
  ): Promise<number> {
    const window = options.window ?? 64;
    let delivered = 0;
    let from: Position = this.cursor;
    while (!options.shouldStop?.()) {
      const batch = this.read(window, from);
      if (batch.length === 0) break;
      const oldest = this.now() - this.o.maxAgeS * 1000;
      let expired = 0;
      let corrupt = 0;
      const sends: Promise<void>[] = [];
      for (const rec of batch) {
        if (!rec.topic) corrupt += 1;
        else if (rec.t < oldest) expired += 1;
        else sends.push(publish(rec.topic, rec.payload));
      }
      const results = await Promise.allSettled(sends);
      const firstFail = results.findIndex((r) => r.status === "rejected");
      if (firstFail >= 0) {
        // Acknowledge the contiguous delivered prefix only; the rest is sent again next time.
        let sent = 0;
        let count = 0;
        let end: Position | undefined;
        for (const rec of batch) {
          const isSend = rec.topic && rec.t >= oldest;
          if (isSend) {
            if (sent === firstFail) break;
            sent += 1;
          }
          count += 1;
          end = rec.end;
        }
        if (end) this.ack(end, count);
        delivered += firstFail;
        this.stats.replayed += firstFail;
        break;
      }
      this.ack((batch.at(-1) as ReadRecord).end, batch.length);
      this.drop("max_age", expired);
      this.drop("corrupt", corrupt);
      delivered += sends.length;
      this.stats.replayed += sends.length;
      from = this.cursor;
    }
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
