// Graceful shutdown for long-running commands: SIGINT/SIGTERM (and Ctrl+C / Ctrl+Break on Windows)
// run the stop function once; a second signal forces exit.
export function onShutdown(
  stop: (signal: string) => Promise<void>,
  log?: { info: (o: object, m: string) => void },
): void {
  let stopping = false;
  const handler = (signal: string) => {
    if (stopping) {
      process.exit(130);
    }
    stopping = true;
    log?.info({ signal }, "shutting down");
    stop(signal).then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`error during shutdown: ${String(err)}\n`);
        process.exit(1);
      },
    );
  };
  for (const sig of ["SIGINT", "SIGTERM", "SIGBREAK"] as const) process.on(sig, () => handler(sig));
}
