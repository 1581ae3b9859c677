// Coded errors shared by every process. A code is stable API (logs, MQTT error responses, HTTP
// bodies); the message is for people.

export class CodedError extends Error {
  readonly code: string;
  readonly details?: unknown;

  constructor(code: string, message: string, options?: { cause?: unknown; details?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "CodedError";
    this.code = code;
    this.details = options?.details;
  }
}

/** Thrown at startup when configuration is invalid; carries every problem found, not just the first. */
export class ConfigError extends CodedError {
  readonly problems: string[];

  constructor(problems: string[]) {
    super("CONFIG_INVALID", `invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}
