// Store-and-forward buffer and write-ahead journal for readings. Every readings message goes to
// append-only segment files on disk before it is published: live messages are journalled and marked
// done when the broker acknowledged them (PUBACK); messages that could not be published (broker away,
// or a live publish that failed) wait here and are replayed in order once the broker is back. A
// process crash (SIGKILL, OOM) therefore loses no reading it had recorded: at the next open every
// record after the cursor counts as waiting, including live ones the broker had not acknowledged.
// Crash-safe without native code:
// - a record is one line `<ms>\t<topic>\t<JSON body>`, written with a synchronous write (it survives SIGKILL of the process
//   as soon as append() returns; `fsync` adds power-loss safety per the configured policy);
// - a torn last line (power loss mid-write) is cut off at open;
// - the replay position is a small cursor file replaced atomically (write + rename), advanced only
//   after the broker acknowledged; a crash between ack and cursor write replays a few records again
//   (at-least-once; readings are idempotent on point + ts downstream). Live acknowledgements move the
//   cursor in memory and persist it every CURSOR_SAVE_RECORDS records or CURSOR_SAVE_MS: a rename per
//   message would cost more than the journal write itself, and a stale cursor only means duplicates.
// Bounded by total bytes (oldest segment dropped, counted) and by age (expired records skipped,
// counted). Knows nothing of MQTT: the drain is given a publish function, live records are settled
// by the caller.
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

/**
 * A live message journalled before it was published. `inflight` until the caller settles it;
 * `acked` ones wait for earlier ones (the cursor moves over an acknowledged prefix only); `failed`
 * ones wait for the replay; `gone` ones were dropped by the size limit meanwhile.
 */
export interface LiveRecord {
  readonly end: Position;
  state: "inflight" | "acked" | "failed" | "gone";
}

const SEGMENT_RE = /^(\d{16})\.seg$/;
const CURSOR = "cursor.json";
const READ_CHUNK = 1024 * 1024;
const CURSOR_SAVE_RECORDS = 256;
const CURSOR_SAVE_MS = 1000;

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
  /** Live records after the cursor, in append order. */
  private live: LiveRecord[] = [];
  /** Live records neither failed nor gone: after the cursor but not waiting for the replay. */
  private liveOpen = 0;
  private liveInflight = 0;
  private liveIdle: (() => void)[] = [];
  private unsavedAcks = 0;
  private savedAt = 0;
  /** `appended`: records written to wait for the replay; `live`: records journalled ahead of a live publish. */
  readonly stats = { appended: 0, live: 0, replayed: 0, dropped: 0 };

  constructor(options: BufferOptions) {
    this.o = options;
  }

  private now(): number {
    return this.o.now ? this.o.now() : Date.now();
  }

  /** Records waiting to be replayed (live records in flight or acknowledged are not waiting). */
  get depth(): number {
    return this.pending - this.liveOpen;
  }

  /** Live records written ahead and not yet settled by the caller. */
  get inflight(): number {
    return this.liveInflight;
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

  /** Appends one record to wait for the replay; synchronous so that it is in the OS before the caller goes on. */
  append(topic: string, body: string): void {
    this.write(topic, body);
    this.stats.appended += 1;
    this.enforceSize();
  }

  /**
   * Journals a message that the caller is about to publish live; the caller must `settleLive` it
   * with the broker's answer. Until then it is not counted as waiting, but a crash leaves it on disk
   * to be replayed by the next process. Same write as `append`: in the OS when this returns.
   */
  appendLive(topic: string, body: string): LiveRecord {
    const rec: LiveRecord = { end: this.write(topic, body), state: "inflight" };
    this.live.push(rec);
    this.liveOpen += 1;
    this.liveInflight += 1;
    this.stats.live += 1;
    this.enforceSize();
    return rec;
  }

  /**
   * The broker's answer for a live record: acknowledged (the cursor moves over the acknowledged
   * prefix) or not (the record now waits for the replay, in its place).
   */
  settleLive(rec: LiveRecord, acknowledged: boolean): void {
    if (rec.state !== "inflight" && rec.state !== "gone") return;
    if (rec.state === "inflight") {
      if (acknowledged) rec.state = "acked";
      else {
        rec.state = "failed";
        this.liveOpen -= 1;
      }
    }
    this.liveInflight -= 1;
    // Closed: the cursor on disk stays where close() left it; the record is replayed by the next start.
    if (this.fd !== undefined) this.advanceLive();
    if (this.liveInflight === 0) for (const resolve of this.liveIdle.splice(0)) resolve();
  }

  /** Moves the cursor over the acknowledged live records at the head. */
  private advanceLive(): void {
    let count = 0;
    let end: Position | undefined;
    while (this.live[0]?.state === "acked") {
      end = (this.live.shift() as LiveRecord).end;
      this.liveOpen -= 1;
      count += 1;
    }
    if (end === undefined) return;
    this.ack(end, count, false, false);
    this.unsavedAcks += count;
    const now = Date.now();
    if (this.unsavedAcks >= CURSOR_SAVE_RECORDS || now - this.savedAt >= CURSOR_SAVE_MS) this.saveCursor();
  }

  /** Resolves once no live record is in flight (the replay must not overtake or repeat them). */
  private liveSettled(): Promise<void> {
    if (this.liveInflight === 0) return Promise.resolve();
    return new Promise((resolve) => this.liveIdle.push(resolve));
  }

  /** Writes one record line; returns the position after it. */
  private write(topic: string, body: string): Position {
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
    if (this.o.fsync === "always") fsyncSync(this.fd);
    else this.dirty = true;
    return { seg: active.seq, off: active.bytes };
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
      droppedNow = true;
      this.drop("max_bytes", lost - this.forgetLiveBefore(this.cursor));
    }
    if (droppedNow) this.saveCursor();
  }

  /**
   * Live records the size limit dropped (only possible with a backlog in front of them, so they
   * have failed and were waiting): no longer tracked. Returns how many were still in flight or
   * acknowledged, which are not counted as dropped: the broker has or may yet get them.
   */
  private forgetLiveBefore(cursor: Position): number {
    let open = 0;
    while (this.live.length > 0) {
      const rec = this.live[0] as LiveRecord;
      if (rec.end.seg > cursor.seg || (rec.end.seg === cursor.seg && rec.end.off > cursor.off)) break;
      this.live.shift();
      if (rec.state === "inflight" || rec.state === "acked") {
        open += 1;
        this.liveOpen -= 1;
      }
      if (rec.state === "inflight") rec.state = "gone";
    }
    return open;
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

  /**
   * Marks everything up to `end` as delivered (in order). `records` is how many that covers. With
   * `reset`, an emptied buffer starts a fresh segment at once (the replay's end); live traffic keeps
   * appending to the segment and lets rotation return the space, not a new file per message.
   */
  ack(end: Position, records: number, persist = true, reset = true): void {
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
    if (reset && this.pending === 0 && head.bytes === end.off && this.segments.length === 1) this.reset();
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
    this.unsavedAcks = 0;
    this.savedAt = Date.now();
  }

  /**
   * Replays pending records in order through `publish` (which must resolve only once the broker
   * acknowledged), keeping up to `window` in flight. Expired and unreadable records are skipped and
   * counted. Stops when a publish fails or `shouldStop()` says so; the cursor only moves over the
   * acknowledged prefix, so what was not acknowledged is sent again by the next drain. Starts once
   * the live records in flight are settled: the failed ones are replayed in their place, and live
   * ones acknowledged behind a failed one are sent again (a duplicate, not a gap).
   */
  async drain(
    publish: (topic: string, body: string) => Promise<void>,
    options: { window?: number; shouldStop?: () => boolean } = {},
  ): Promise<number> {
    const window = Math.max(1, options.window ?? 1024);
    await this.liveSettled();
    if (this.fd === undefined) return 0;
    // From here on every record after the cursor waits for this replay.
    this.live = [];
    this.liveOpen = 0;
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
    if (this.fd !== undefined && this.unsavedAcks > 0) this.saveCursor();
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
