// The one root logger of a process, and child loggers per module. Logs go to stderr so that
// commands printing JSON on stdout (`scan --json`, `read --json`) stay machine-readable.
import pino, { type Logger } from "pino";

let root: Logger | undefined;

export function rootLogger(): Logger {
  if (!root) {
    root = pino(
      {
        level: process.env.BACMQTT_LOG_LEVEL ?? (process.env.VITEST ? "silent" : "info"),
        base: { pid: process.pid },
        redact: {
          paths: [
            "password",
            "*.password",
            "config.mqtt.password",
            "*.api_key",
            "authorization",
            "*.authorization",
          ],
          censor: "[redacted]",
        },
      },
      pino.destination({ fd: 2, sync: false }),
    );
  }
  return root;
}

export function createLogger(module: string): Logger {
  return rootLogger().child({ module });
}

export type { Logger };
