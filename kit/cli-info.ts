import type { z } from "zod";
import { fleetVersion } from "./version.ts";

export type InfoFlags = {
  /** The executable's name as a user types it (`fleet-agent`). */
  name: string;
  /** One or two lines on what it is and how it is configured. */
  summary: string;
  /** The service's env schema: every variable and its default come from it. */
  schema: z.ZodObject;
  /** Where the variables are described in full. */
  docs: string;
  /** `bun 1.4.5`: the runtime inside the executable. */
  runtime: string;
};

/**
 * `--version` and `--help` of a service's entry: the text to print, or undefined when the
 * arguments ask for neither (the service then starts). Anything else on the command line is
 * refused, since every setting is an environment variable.
 */
export function infoFlags(
  argv: readonly string[],
  info: InfoFlags,
): { text: string; exitCode: number } | undefined {
  const [first] = argv;
  if (first === undefined) return undefined;
  if (first === "--version" || first === "-v" || first === "version") {
    return { text: `${info.name} ${fleetVersion} (${info.runtime})`, exitCode: 0 };
  }
  if (first === "--help" || first === "-h" || first === "help") {
    return { text: helpText(info), exitCode: 0 };
  }
  return {
    text: `${info.name}: unknown argument ${JSON.stringify(first)}: it is configured by environment variables (see ${info.name} --help)`,
    exitCode: 2,
  };
}

function helpText(info: InfoFlags): string {
  const rows = envDefaults(info.schema);
  const width = Math.max(...rows.map(([name]) => name.length));
  return [
    `${info.name} ${fleetVersion}`,
    "",
    info.summary,
    "",
    `Environment (default in brackets; described in full in ${info.docs}):`,
    ...rows.map(([name, fallback]) => `  ${name.padEnd(width)}  [${fallback}]`),
    "",
    `  ${info.name} --version    prints the version`,
  ].join("\n");
}

/**
 * Each variable of `schema` with the value it takes when unset, read by parsing `undefined`
 * with the variable's own schema, so the list cannot drift from what the service does.
 */
export function envDefaults(schema: z.ZodObject): [string, string][] {
  return Object.entries(schema.shape).map(([name, field]) => {
    const parsed = (field as z.ZodType).safeParse(undefined);
    if (!parsed.success || parsed.data === undefined) return [name, "unset"];
    const value = parsed.data;
    return [name, typeof value === "object" ? JSON.stringify(value) : String(value)];
  });
}
