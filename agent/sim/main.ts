/**
 * The engine simulator: `bun agent/sim/main.ts serve MODEL [vllm serve flags]`.
 * See docs/simulator.md. Thin entry: parse argv + env, wait out the simulated model load,
 * then serve the app from app.ts on Bun.serve.
 */
import { createSimApp } from "./app.ts";
import { parseServeArgs, type SimConfig, UsageError } from "./config.ts";
import { readSimEnv } from "./env.ts";
import { simulateStartup } from "./startup.ts";

function stamp(): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, "0");
  return `${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
const info = (where: string, text: string) =>
  console.log(`(APIServer pid=${process.pid}) INFO ${stamp()} [${where}] ${text}`);
/** uvicorn logs to stderr (its default logging config), without vLLM's prefix. */
const uvicorn = (text: string) => console.error(`INFO:     ${text}`);
const warn = (where: string, text: string) => console.log(`WARNING ${stamp()} [${where}] ${text}`);

function failStartup(config: SimConfig): never {
  const totalGiB = 23.57;
  const wantGiB = (totalGiB * config.gpuMemoryUtilization).toFixed(2);
  console.error(
    [
      `(EngineCore_DP0 pid=${process.pid}) ERROR ${stamp()} [core.py:708] EngineCore failed to start.`,
      "Traceback (most recent call last):",
      '  File "/usr/local/lib/python3.12/site-packages/vllm/v1/worker/gpu_worker.py", line 237, in determine_available_memory',
      "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.57 GiB of which 1.02 GiB is free. Including non-PyTorch memory, this process has 22.54 GiB memory in use.",
      `ValueError: Free memory on device (1.02/${totalGiB} GiB) on startup is less than desired GPU memory utilization (${config.gpuMemoryUtilization}, ${wantGiB} GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.`,
      "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
      "[simulator: --fail-startup / SIM_FAIL_STARTUP]",
    ].join("\n"),
  );
  process.exit(1);
}

function main(): void {
  const argv = process.argv.slice(2);
  let config: SimConfig;
  try {
    config = parseServeArgs(argv, readSimEnv(process.env));
  } catch (error) {
    const text = error instanceof Error ? error.message : String(error);
    console.error(`usage: vllm serve MODEL [options]\nvllm: error: ${text}`);
    process.exit(2);
  }
  info("api_server.py:1839", `vLLM API server version ${config.version} (simulator)`);
  info(
    "utils.py:233",
    `non-default args: ${JSON.stringify({ model: config.model, host: config.host, port: config.port, served_model_name: config.servedModelNames, max_model_len: config.maxModelLen, max_num_seqs: config.maxNumSeqs })}`,
  );
  if (config.ignored.length > 0) {
    warn("sim", `ignoring vLLM flags the simulator does not model: ${config.ignored.join(", ")}`);
  }
  info(
    "sim",
    `latency: ttft=${config.ttftMs}ms itl=${config.itlMs}ms, mode=${config.mode}, startup delay ${config.startupDelayMs}ms (${Object.entries(
      config.startupShares,
    )
      .map(([phase, share]) => `${phase}=${share}`)
      .join(",")}), failure rate ${config.failureRate}%`,
  );

  if (config.exitAfterMs !== null) {
    setTimeout(() => {
      console.error(
        `ERROR ${stamp()} [core_client.py:564] Engine core proc EngineCore_DP0 died unexpectedly, shutting down client. [simulator: --crash-after ${config.exitAfterMs} ms]`,
      );
      process.exit(config.exitCode);
    }, config.exitAfterMs);
  }

  let stop: () => void = () => process.exit(0);
  const onSignal = () => {
    uvicorn("Shutting down");
    stop();
  };
  process.on("SIGTERM", onSignal);
  process.on("SIGINT", onSignal);

  // When the agent that launched this engine dies, its end of our stdout and stderr goes
  // with it. vLLM (Python ignores SIGPIPE; logging reports the failed write and goes on)
  // keeps loading and serving for the next agent to adopt; so does the simulator.
  process.stdout.on("error", () => {});
  process.stderr.on("error", () => {});
  const sleep = (ms: number) => (ms > 0 ? Bun.sleep(ms) : Promise.resolve());
  const out = {
    stdout: (text: string) => process.stdout.write(text),
    stderr: (text: string) => process.stderr.write(text),
    sleep,
  };
  void simulateStartup(config, out).then((loaded) => {
    if (!loaded) failStartup(config);
    const app = createSimApp(config, { log: (line) => console.log(line) });
    const server = Bun.serve({
      hostname: config.host,
      port: config.port,
      // Queued non-stream requests can wait far longer than Bun's 10 s default idle timeout.
      idleTimeout: 0,
      fetch: app.fetch,
    });
    stop = () => {
      void server.stop(true);
      uvicorn(`Finished server process [${process.pid}]`);
      process.exit(0);
    };
    info("api_server.py:1912", `Starting vLLM server on http://${config.host}:${server.port}`);
    info("launcher.py:37", "Available routes are:");
    uvicorn(`Started server process [${process.pid}]`);
    uvicorn("Waiting for application startup.");
    uvicorn("Application startup complete.");

    // vLLM's periodic throughput line, printed while there is activity.
    let last = performance.now();
    setInterval(() => {
      const now = performance.now();
      const seconds = (now - last) / 1000;
      last = now;
      const { engine } = app;
      const { prompt, generation } = engine.interval;
      if (prompt === 0 && generation === 0 && engine.running.size === 0 && engine.waiting === 0)
        return;
      engine.interval = { prompt: 0, generation: 0 };
      info(
        "loggers.py:123",
        `Engine 000: Avg prompt throughput: ${(prompt / seconds).toFixed(1)} tokens/s, Avg generation throughput: ${(generation / seconds).toFixed(1)} tokens/s, Running: ${engine.running.size} reqs, Waiting: ${engine.waiting} reqs, GPU KV cache usage: ${(engine.kvCacheUsage() * 100).toFixed(1)}%, Prefix cache hit rate: 0.0%`,
      );
    }, 10_000).unref();
  });
}

if (import.meta.main) {
  try {
    main();
  } catch (error) {
    if (error instanceof UsageError) process.exit(2);
    throw error;
  }
}
