/**
 * The one logger of every service: one JSON object per line with `time`, `level`,
 * `service` and `msg` first, then the fields. Written with `console` so it works the same on
 * Bun, Node and workerd; `npm start` (manager + mounted router) prints one format.
 */
export type LogLevel = "debug" | "info" | "warn" | "error";
export type LogFields = Record<string, unknown>;

export type Logger = {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  /** The same logger with another `service` name (the manager's mounted router). */
  child(service: string): Logger;
};

export const logLevels = ["debug", "info", "warn", "error"] as const;
const rank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LoggerOptions = {
  service: string;
  level?: LogLevel;
  /** Receives each finished line (without a newline); console.error by default (stderr). */
  write?: (line: string, level: LogLevel) => void;
  now?: () => Date;
};

export function createLogger(options: LoggerOptions): Logger {
  const min = rank[options.level ?? "info"];
  const write = options.write ?? ((line: string) => console.error(line));
  const now = options.now ?? (() => new Date());
  const emit = (level: LogLevel, message: string, fields?: LogFields) => {
    if (rank[level] < min) return;
    const record: Record<string, unknown> = {
      time: now().toISOString(),
      level,
      service: options.service,
      msg: message,
    };
    if (fields) {
      for (const [key, value] of Object.entries(fields)) {
        if (value === undefined) continue;
        record[key] = value instanceof Error ? describeError(value) : value;
      }
    }
    write(JSON.stringify(record), level);
  };
  return {
    debug: (message, fields) => emit("debug", message, fields),
    info: (message, fields) => emit("info", message, fields),
    warn: (message, fields) => emit("warn", message, fields),
    error: (message, fields) => emit("error", message, fields),
    child: (service) => createLogger({ ...options, service }),
  };
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
  child: () => silentLogger,
};

/** An error's message with its cause's, the way it reads in a log line. */
export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : "";
    return `${error.message}${cause}`;
  }
  return String(error);
}
