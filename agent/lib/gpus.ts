import type { Gpu, GpuInfo } from "../../protocol/index.ts";

export const nvidiaSmiQuery =
  "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu";

export type GpuDiscoveryOptions = {
  /** The nvidia-smi executable, looked up on PATH unless it holds a slash. */
  bin?: string;
  /** The environment nvidia-smi runs with (its PATH decides where a bare `bin` is found). */
  env?: Record<string, string | undefined>;
  /** A wedged driver can hang nvidia-smi; it is killed after this long. */
  timeoutMs?: number;
};

/**
 * Reads the host's GPUs with `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`.
 * No nvidia-smi, "No devices were found", a non-zero exit or a hang all mean zero GPUs
 * with a `warning` for the operator, never a crash.
 */
export async function discoverGpus(options: GpuDiscoveryOptions = {}): Promise<GpuInfo> {
  const bin = options.bin ?? "nvidia-smi";
  const env = definedEnv(options.env);
  const resolved = bin.includes("/") ? bin : Bun.which(bin, { PATH: env.PATH ?? "" });
  if (!resolved) return { gpus: [], warning: `${bin} not found on PATH: reporting no GPUs` };

  let proc: ReturnType<typeof Bun.spawn<"ignore", "pipe", "pipe">>;
  try {
    proc = Bun.spawn([resolved, nvidiaSmiQuery, "--format=csv,noheader,nounits"], {
      env,
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
      timeout: options.timeoutMs ?? 10_000,
      killSignal: "SIGKILL",
    });
  } catch (error) {
    return { gpus: [], warning: `could not run ${bin}: ${messageOf(error)}` };
  }
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  if (proc.signalCode) {
    return { gpus: [], warning: `${bin} killed by ${proc.signalCode} (hung?): reporting no GPUs` };
  }
  if (code !== 0) {
    const said = firstLine(stdout) || firstLine(stderr) || `exit code ${code}`;
    return { gpus: [], warning: `${bin} failed: ${said}` };
  }
  return parseNvidiaSmi(stdout);
}

/** Parses `nvidia-smi` CSV rows; `[N/A]`-style fields become null, bad rows a warning. */
export function parseNvidiaSmi(text: string): GpuInfo {
  const gpus: Gpu[] = [];
  const problems: string[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    if (/no devices were found/i.test(line)) return { gpus: [], warning: line };
    const fields = line.split(",").map((field) => field.trim());
    const index = intOrNull(fields[0]);
    if (fields.length < 7 || index === null) {
      problems.push(line.slice(0, 200));
      continue;
    }
    const uuid = fields[1];
    const utilization = numberOrNull(fields[6]);
    gpus.push({
      index,
      uuid: uuid && !isNotAvailable(uuid) ? uuid : null,
      name: fields[2] ?? "",
      memory_total_mib: intOrNull(fields[3]) ?? 0,
      memory_used_mib: intOrNull(fields[4]),
      memory_free_mib: intOrNull(fields[5]),
      utilization_pct: utilization === null ? null : Math.min(100, Math.max(0, utilization)),
    });
  }
  if (gpus.length === 0 && problems.length === 0) {
    return { gpus, warning: "nvidia-smi listed no GPUs" };
  }
  const warning = problems.length > 0 ? `unparsed nvidia-smi lines: ${problems.join(" | ")}` : null;
  return { gpus: gpus.slice(0, 64), warning };
}

function isNotAvailable(field: string): boolean {
  return field.startsWith("[") || field === "N/A";
}

function numberOrNull(field: string | undefined): number | null {
  if (field === undefined || isNotAvailable(field) || field === "") return null;
  const value = Number(field);
  return Number.isFinite(value) && value >= 0 ? value : null;
}

function intOrNull(field: string | undefined): number | null {
  const value = numberOrNull(field);
  return value === null ? null : Math.round(value);
}

function firstLine(text: string): string {
  return text.trim().split("\n")[0]?.trim().slice(0, 300) ?? "";
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function definedEnv(env: Record<string, string | undefined> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, value] of Object.entries(env ?? {})) if (value !== undefined) out[key] = value;
  return out;
}
