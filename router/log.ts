/** Structured log lines; entries pass a real one, tests may pass a silent one. */
export type Logger = {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
};

/** One JSON object per line on the console: works the same on Bun, Node and workerd. */
export function consoleLogger(service = "router"): Logger {
  const write = (level: string, message: string, fields?: Record<string, unknown>) => {
    const line = JSON.stringify({
      ts: new Date().toISOString(),
      level,
      service,
      msg: message,
      ...fields,
    });
    if (level === "error") console.error(line);
    else console.log(line);
  };
  return {
    info: (message, fields) => write("info", message, fields),
    warn: (message, fields) => write("warn", message, fields),
    error: (message, fields) => write("error", message, fields),
  };
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {} };
