/**
 * Simulated `nvidia-smi`: `--query-gpu=FIELDS --format=csv[,noheader][,nounits]`, `-L`,
 * `-i IDS`, for GPUs described by SIM_GPUS (see docs/simulator.md).
 */
import { readSmiEnv, type SmiEnv } from "./env.ts";
import { hash32 } from "./text.ts";

export type SimGpu = {
  index: number;
  name: string;
  uuid: string;
  totalMib: number;
  usedMib: number;
  utilPct: number;
};

export const DEFAULT_GPU = { name: "NVIDIA GeForce RTX 4090", totalMib: 24_564 };
const DRIVER_VERSION = "550.127.05";

/** Memory the driver keeps for itself, so used + free < total as on real cards. */
export function reservedMib(totalMib: number): number {
  return Math.round(totalMib * 0.00675);
}

function uuidFor(index: number, name: string, seed: string): string {
  const hex = [0, 1, 2, 3]
    .map((part) => hash32(`${seed}|${index}|${name}|${part}`).toString(16).padStart(8, "0"))
    .join("");
  return `GPU-${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

function parsePairs(raw: string | undefined, what: string): Map<number, number> {
  const out = new Map<number, number>();
  if (!raw) return out;
  for (const item of raw.split(",")) {
    const match = /^\s*(\d+)\s*:\s*(\d+(?:\.\d+)?)\s*$/.exec(item);
    if (!match)
      throw new Error(
        `${what}: expected INDEX:VALUE[,INDEX:VALUE...], got ${JSON.stringify(item)}`,
      );
    out.set(Number(match[1]), Number(match[2]));
  }
  return out;
}

/**
 * SIM_GPUS: `;`-separated groups `[COUNTx ]NAME[:MIB]`, or a bare count of default GPUs.
 * E.g. `2x NVIDIA H100 80GB HBM3:81559;1x NVIDIA A10:23028`.
 */
export function simGpus(env: SmiEnv): SimGpu[] {
  const groups: { count: number; name: string; totalMib: number }[] = [];
  const spec = env.SIM_GPUS?.trim();
  if (!spec) groups.push({ count: 1, ...DEFAULT_GPU });
  else if (/^\d+$/.test(spec)) groups.push({ count: Number(spec), ...DEFAULT_GPU });
  else {
    for (const group of spec.split(";")) {
      const match = /^\s*(?:(\d+)\s*x\s+)?(.*?)(?::\s*(\d+))?\s*$/.exec(group);
      if (!match?.[2]) throw new Error(`SIM_GPUS: cannot parse ${JSON.stringify(group)}`);
      groups.push({
        count: match[1] ? Number(match[1]) : 1,
        name: match[2],
        totalMib: match[3] ? Number(match[3]) : DEFAULT_GPU.totalMib,
      });
    }
  }
  const used = parsePairs(env.SIM_GPU_USED_MIB, "SIM_GPU_USED_MIB");
  const util = parsePairs(env.SIM_GPU_UTIL_PCT, "SIM_GPU_UTIL_PCT");
  const seed = env.SIM_GPU_UUID_SEED ?? "";
  const gpus: SimGpu[] = [];
  for (const group of groups) {
    for (let i = 0; i < group.count; i++) {
      const index = gpus.length;
      gpus.push({
        index,
        name: group.name,
        uuid: uuidFor(index, group.name, seed),
        totalMib: group.totalMib,
        usedMib: Math.round(used.get(index) ?? 0),
        utilPct: Math.min(100, Math.round(util.get(index) ?? 0)),
      });
    }
  }
  return gpus;
}

type Field = { header: string; unit: string; value: (gpu: SimGpu, all: SimGpu[]) => string };

const mib =
  (value: (gpu: SimGpu) => number): Field["value"] =>
  (gpu) =>
    String(value(gpu));
const freeMib = (gpu: SimGpu) =>
  Math.max(0, gpu.totalMib - reservedMib(gpu.totalMib) - gpu.usedMib);

const FIELDS: Record<string, Field> = {
  index: { header: "index", unit: "", value: (gpu) => String(gpu.index) },
  uuid: { header: "uuid", unit: "", value: (gpu) => gpu.uuid },
  name: { header: "name", unit: "", value: (gpu) => gpu.name },
  count: { header: "count", unit: "", value: (_gpu, all) => String(all.length) },
  "memory.total": { header: "memory.total [MiB]", unit: " MiB", value: mib((gpu) => gpu.totalMib) },
  "memory.used": { header: "memory.used [MiB]", unit: " MiB", value: mib((gpu) => gpu.usedMib) },
  "memory.free": { header: "memory.free [MiB]", unit: " MiB", value: mib(freeMib) },
  "memory.reserved": {
    header: "memory.reserved [MiB]",
    unit: " MiB",
    value: mib((gpu) => reservedMib(gpu.totalMib)),
  },
  "utilization.gpu": {
    header: "utilization.gpu [%]",
    unit: " %",
    value: (gpu) => String(gpu.utilPct),
  },
  "utilization.memory": {
    header: "utilization.memory [%]",
    unit: " %",
    value: (gpu) => String(Math.round((gpu.usedMib / gpu.totalMib) * 100)),
  },
  "temperature.gpu": {
    header: "temperature.gpu",
    unit: "",
    value: (gpu) => String(35 + Math.round(gpu.utilPct / 3)),
  },
  "pci.bus_id": {
    header: "pci.bus_id",
    unit: "",
    value: (gpu) =>
      `00000000:${(0x18 + gpu.index * 0x10).toString(16).toUpperCase().padStart(2, "0")}:00.0`,
  },
  driver_version: { header: "driver_version", unit: "", value: () => DRIVER_VERSION },
  "mig.mode.current": { header: "mig.mode.current", unit: "", value: () => "[N/A]" },
};
const ALIASES: Record<string, string> = {
  gpu_name: "name",
  gpu_uuid: "uuid",
  gpu_bus_id: "pci.bus_id",
};

export type SmiResult = { stdout: string; stderr: string; code: number };

/** Runs one nvidia-smi invocation against `env`; pure, so tests and the entry share it. */
export function runNvidiaSmi(argv: string[], env: SmiEnv): SmiResult {
  let gpus: SimGpu[];
  try {
    gpus = simGpus(env);
  } catch (error) {
    return {
      stdout: "",
      stderr: `${error instanceof Error ? error.message : String(error)}\n`,
      code: 1,
    };
  }
  if (env.SIM_NVIDIA_SMI_NO_DEVICES || gpus.length === 0) {
    return { stdout: "No devices were found\n", stderr: "", code: 6 };
  }
  let query: string | undefined;
  let format: string | undefined;
  let ids: string | undefined;
  let list = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    const [name, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    const value = () => inline ?? argv[++i];
    if (name === "--query-gpu") query = value();
    else if (name === "--format") format = value();
    else if (name === "-i" || name === "--id") ids = value();
    else if (name === "-L" || name === "--list-gpus") list = true;
  }
  if (ids !== undefined) {
    const wanted = new Set(ids.split(",").map((id) => id.trim()));
    gpus = gpus.filter((gpu) => wanted.has(String(gpu.index)) || wanted.has(gpu.uuid));
    if (gpus.length === 0) return { stdout: "No devices were found\n", stderr: "", code: 6 };
  }
  if (list) {
    return {
      stdout: gpus.map((gpu) => `GPU ${gpu.index}: ${gpu.name} (UUID: ${gpu.uuid})\n`).join(""),
      stderr: "",
      code: 0,
    };
  }
  if (query !== undefined) {
    const options = new Set((format ?? "").split(",").map((part) => part.trim()));
    if (!options.has("csv")) {
      return {
        stdout: "",
        stderr: "Only CSV output is simulated: pass --format=csv[,noheader][,nounits]\n",
        code: 2,
      };
    }
    const names = query
      .split(",")
      .map((field) => field.trim())
      .filter((field) => field.length > 0);
    for (const field of names) {
      if (!/^[a-z0-9_.]+$/.test(field)) {
        return {
          stdout: "",
          stderr: `Field "${field}" is not a valid field to query.\n\n`,
          code: 2,
        };
      }
    }
    const fields = names.map(
      (field): Field =>
        FIELDS[ALIASES[field] ?? field] ?? { header: field, unit: "", value: () => "[N/A]" },
    );
    const units = !options.has("nounits");
    const lines: string[] = [];
    if (!options.has("noheader")) lines.push(fields.map((field) => field.header).join(", "));
    for (const gpu of gpus) {
      lines.push(
        fields
          .map((field) => {
            const value = field.value(gpu, gpus);
            return units && !value.startsWith("[") ? value + field.unit : value;
          })
          .join(", "),
      );
    }
    return { stdout: `${lines.join("\n")}\n`, stderr: "", code: 0 };
  }
  return { stdout: summaryTable(gpus), stderr: "", code: 0 };
}

/** A short version of the default table, enough for a person checking the simulator. */
function summaryTable(gpus: SimGpu[]): string {
  const rows = gpus.map(
    (gpu) =>
      `|   ${String(gpu.index).padEnd(2)} ${gpu.name.padEnd(30).slice(0, 30)} | ${`${gpu.usedMib}MiB / ${gpu.totalMib}MiB`.padStart(22)} | ${`${gpu.utilPct}%`.padStart(5)} |`,
  );
  return [
    `NVIDIA-SMI ${DRIVER_VERSION} (simulated)   Driver Version: ${DRIVER_VERSION}   CUDA Version: 12.4`,
    "| GPU  Name                           |           Memory-Usage | Util  |",
    ...rows,
    "",
  ].join("\n");
}

if (import.meta.main) {
  let env: SmiEnv;
  try {
    env = readSmiEnv(process.env);
  } catch (error) {
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
  const result = runNvidiaSmi(process.argv.slice(2), env);
  process.stdout.write(result.stdout);
  process.stderr.write(result.stderr);
  process.exit(result.code);
}
