// Graceful shutdown for long-running commands: SIGINT/SIGTERM (and Ctrl+C / Ctrl+Break on Windows)
// run the stop function once; a second signal forces exit.
//
// The handlers go in at the very start of a command (`catchShutdown()`), not once the service is up:
// a signal that arrives while it is still starting (waiting for the broker or the database, reading
// catalogues) would otherwise take the default action and kill the process half-started, exit code
// null, with no clean offline state and the disk buffer not closed. Such a signal is held until
// `ready(stop)` and then stops the service at once; start-up loops that can wait long poll
// `requested` or race `signalled` to give up early.

type Log = { info: (o: object, m: string) => void };

export interface ShutdownGate {
  /** A signal has arrived (during the start or after it). */
  readonly requested: boolean;
  /** Settles with the signal's name when the first one arrives. */
  readonly signalled: Promise<string>;
  /** Aborted when the first signal arrives: hand it to start-up code that waits. */
  readonly signal: AbortSignal;
  /** The service is up: stop it on the next signal, or now if one came during the start. */
  ready(stop: (signal: string) => Promise<void>): void;
  /** Removes the handlers (tests; a command that ends by itself). */
  dispose(): void;
}

export function catchShutdown(log?: Log): ShutdownGate {
  let stop: ((signal: string) => Promise<void>) | undefined;
  let pending: string | undefined;
  let stopping = false;
  const aborter = new AbortController();
  let settle: (signal: string) => void = () => undefined;
  const signalled = new Promise<string>((resolve) => {
    settle = (signal) => {
      resolve(signal);
      aborter.abort(new Error(`${signal} received`));
    };
  });
  const run = (signal: string, fn: (signal: string) => Promise<void>) => {
    stopping = true;
    log?.info({ signal }, "shutting down");
    fn(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`error during shutdown: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  const handler = (signal: string) => {
    // A second signal forces the exit: during the stop, or while still starting.
    if (stopping || pending !== undefined) process.exit(130);
    settle(signal);
    if (stop) {
      run(signal, stop);
      return;
    }
    pending = signal;
    log?.info({ signal }, "signal received while starting; stopping once started");
  };
  const signals = ["SIGINT", "SIGTERM", "SIGBREAK"] as const;
  const listeners = signals.map((sig) => [sig, () => handler(sig)] as const);
  for (const [sig, fn] of listeners) process.on(sig, fn);
  return {
    get requested() {
      return pending !== undefined || stopping;
    },
    signalled,
    signal: aborter.signal,
    ready(fn) {
      if (stop) throw new Error("ready() called twice");
      stop = fn;
      if (pending !== undefined) run(pending, fn);
    },
    dispose() {
      for (const [sig, fn] of listeners) process.off(sig, fn);
    },
  };
}

/** For commands whose start cannot be interrupted meaningfully: handlers from now on. */
export function onShutdown(stop: (signal: string) => Promise<void>, log?: Log): void {
  catchShutdown(log).ready(stop);
}
