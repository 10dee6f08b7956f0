import { describe, expect, test } from "bun:test";
import { parseServeArgs, UsageError } from "../../agent/sim/config.ts";
import { readSimEnv } from "../../agent/sim/env.ts";
import { defaultStartupShares, phaseDurations } from "../../agent/sim/startup.ts";

const noEnv = readSimEnv({});

describe("engine simulator argv", () => {
  test("reads the agent's vllm serve argv", () => {
    const config = parseServeArgs(
      "serve /models/llama --host 127.0.0.1 --port 8101 --served-model-name llama8b alias2 --max-model-len 8k -tp 2 --gpu-memory-utilization 0.45 --dtype bfloat16 --trust-remote-code --max-num-seqs 64".split(
        " ",
      ),
      noEnv,
    );
    expect(config).toMatchObject({
      model: "/models/llama",
      host: "127.0.0.1",
      port: 8101,
      servedModelNames: ["llama8b", "alias2"],
      maxModelLen: 8000,
      tensorParallelSize: 2,
      gpuMemoryUtilization: 0.45,
      dtype: "bfloat16",
      maxNumSeqs: 64,
      ignored: [],
    });
  });

  test("legacy --model form, = values, and unknown flags kept as ignored", () => {
    const config = parseServeArgs(
      [
        "--model=/m",
        "--port=9000",
        "--swap-space",
        "4",
        "--no-enable-chunked-prefill",
        "--enforce-eager",
      ],
      noEnv,
    );
    expect(config.model).toBe("/m");
    expect(config.port).toBe(9000);
    expect(config.servedModelNames).toEqual(["/m"]);
    expect(config.ignored).toEqual(["--swap-space 4", "--no-enable-chunked-prefill"]);
  });

  test("simulator settings come from env when the flags are absent; flags win", () => {
    const env = readSimEnv({
      SIM_TTFT_MS: "7",
      SIM_ITL_MS: "0",
      SIM_MODE: "random",
      SIM_MAX_NUM_SEQS: "3",
      VLLM_API_KEY: "k",
    });
    const fromEnv = parseServeArgs(["serve", "m"], env);
    expect(fromEnv).toMatchObject({
      ttftMs: 7,
      itlMs: 0,
      mode: "random",
      maxNumSeqs: 3,
      apiKeys: ["k"],
    });
    const flags = parseServeArgs(
      ["serve", "m", "--time-to-first-token", "1", "--max-num-seqs", "9"],
      env,
    );
    expect(flags).toMatchObject({ ttftMs: 1, maxNumSeqs: 9 });
  });

  test("bad values and a missing model are usage errors; bad env names the variable", () => {
    expect(() => parseServeArgs(["serve"], noEnv)).toThrow(UsageError);
    expect(() => parseServeArgs(["serve", "m", "--port", "http"], noEnv)).toThrow(/--port/);
    expect(() => parseServeArgs(["serve", "m", "--mode", "loud"], noEnv)).toThrow(/--mode/);
    expect(() => readSimEnv({ SIM_TTFT_MS: "-1" })).toThrow(/SIM_TTFT_MS/);
  });

  test("a startup profile: the delay is the total, the phases share it, eager skips two", () => {
    const config = parseServeArgs(
      ["serve", "m", "--startup-delay", "10000", "--startup-phases", "downloading=25,compiling=0"],
      readSimEnv({ SIM_STARTUP_SHARDS: "7" }),
    );
    expect(config.startupShares).toEqual({
      ...defaultStartupShares,
      downloading: 25,
      compiling: 0,
    });
    expect(config.startupShards).toBe(7);
    const ms = phaseDurations(config.startupDelayMs, config.startupShares);
    expect(Object.values(ms).reduce((a, b) => a + b, 0)).toBeCloseTo(10_000);
    expect(ms.downloading).toBeCloseTo(2500);
    expect(ms.compiling).toBe(0);
    const eager = phaseDurations(
      10_000,
      defaultStartupShares,
      new Set(["compiling", "capturing_graphs"]),
    );
    expect(eager.capturing_graphs).toBe(0);
    expect(Object.values(eager).reduce((a, b) => a + b, 0)).toBeCloseTo(10_000);
    expect(() => parseServeArgs(["serve", "m", "--startup-phases", "warmup=3"], noEnv)).toThrow(
      /unknown phase warmup/,
    );
    expect(() => parseServeArgs(["serve", "m", "--startup-phases", "compiling=-1"], noEnv)).toThrow(
      UsageError,
    );
  });
});
