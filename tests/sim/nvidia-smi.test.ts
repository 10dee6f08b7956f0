import { describe, expect, test } from "bun:test";
import { repoRoot } from "../../devkit/proc.ts";

const QUERY = "--query-gpu=index,uuid,name,memory.total,memory.used,memory.free,utilization.gpu";

async function smi(args: string[], env: Record<string, string> = {}) {
  const proc = Bun.spawn([`${repoRoot}/agent/sim/nvidia-smi`, ...args], {
    env: { ...process.env, ...env },
    stdout: "pipe",
    stderr: "pipe",
  });
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  return { stdout, stderr, code };
}

describe("nvidia-smi simulator", () => {
  test("defaults to one 24 GiB GPU, csv with header and units", async () => {
    const { stdout, code } = await smi([QUERY, "--format=csv"]);
    expect(code).toBe(0);
    const lines = stdout.trimEnd().split("\n");
    expect(lines[0]).toBe(
      "index, uuid, name, memory.total [MiB], memory.used [MiB], memory.free [MiB], utilization.gpu [%]",
    );
    expect(lines).toHaveLength(2);
    expect(lines[1]).toMatch(
      /^0, GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}, NVIDIA GeForce RTX 4090, 24564 MiB, 0 MiB, \d+ MiB, 0 %$/,
    );
  });

  test("noheader,nounits prints bare numbers in the order asked, for every simulated GPU", async () => {
    const { stdout } = await smi(
      ["--query-gpu=memory.used,index,name", "--format=csv,noheader,nounits"],
      {
        SIM_GPUS: "2x NVIDIA H100 80GB HBM3:81559",
        SIM_GPU_USED_MIB: "1:70000",
      },
    );
    expect(stdout).toBe("0, 0, NVIDIA H100 80GB HBM3\n70000, 1, NVIDIA H100 80GB HBM3\n");
  });

  test("used + free stays below total, like a real card's reserved memory", async () => {
    const { stdout } = await smi(
      ["--query-gpu=memory.total,memory.used,memory.free", "--format=csv,noheader,nounits"],
      { SIM_GPUS: "NVIDIA A10:23028", SIM_GPU_USED_MIB: "0:1000" },
    );
    const [total, used, free] = stdout.trim().split(", ").map(Number) as [number, number, number];
    expect(total).toBe(23028);
    expect(used).toBe(1000);
    expect(used + free).toBeLessThan(total);
    expect(used + free).toBeGreaterThan(total * 0.98);
  });

  test("mixed groups, -i filter, unknown fields as [N/A] and -L listing", async () => {
    const env = { SIM_GPUS: "1x NVIDIA A100-SXM4-40GB:40960;1x NVIDIA L4:23034" };
    const filtered = await smi(
      ["-i", "1", "--query-gpu=index,name,power.draw", "--format=csv,noheader"],
      env,
    );
    expect(filtered.stdout).toBe("1, NVIDIA L4, [N/A]\n");
    const list = await smi(["-L"], env);
    expect(list.stdout).toMatch(
      /^GPU 0: NVIDIA A100-SXM4-40GB \(UUID: GPU-[0-9a-f-]+\)\nGPU 1: NVIDIA L4 \(UUID: GPU-[0-9a-f-]+\)\n$/,
    );
    // UUIDs are stable across runs (agents re-register the same GPUs).
    expect((await smi(["-L"], env)).stdout).toBe(list.stdout);
  });

  test("'No devices were found' with exit code 6", async () => {
    const { stdout, code } = await smi([QUERY, "--format=csv"], { SIM_NVIDIA_SMI_NO_DEVICES: "1" });
    expect(code).toBe(6);
    expect(stdout).toContain("No devices were found");
  });

  test("a malformed GPU variable is an error, not made-up GPUs", async () => {
    const { code, stderr } = await smi([QUERY, "--format=csv"], { SIM_GPU_USED_MIB: "zero:1" });
    expect(code).not.toBe(0);
    expect(stderr).toContain("SIM_GPU_USED_MIB");
  });
});
