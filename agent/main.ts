import { infoFlags } from "../kit/cli-info.ts";
import { EnvError } from "../kit/env.ts";
import { onShutdownSignals } from "../kit/shutdown.ts";
import { agentEnvSchema, inheritedEnv, loadAgentEnv, serviceOptionsFromEnv } from "./env.ts";
import { WorkerService } from "./service.ts";

const info = infoFlags(process.argv.slice(2), {
  name: "fleet-agent",
  summary:
    "The vllm-fleet agent of a GPU host: registers with the manager (MANAGER_URL), launches vLLM\n(VLLM_BIN) on the host's GPUs and serves their OpenAI API to the fleet's routers.",
  schema: agentEnvSchema,
  docs: "docs/agent.md",
  runtime: `bun ${Bun.version}, ${process.platform}-${process.arch}`,
});
if (info) {
  console.log(info.text);
  process.exit(info.exitCode);
}

let agent: WorkerService;
let fetchCap: number | undefined;
try {
  const env = loadAgentEnv(inheritedEnv());
  fetchCap = env.BUN_CONFIG_MAX_HTTP_REQUESTS;
  agent = new WorkerService(serviceOptionsFromEnv(env, inheritedEnv()));
} catch (error) {
  console.error(`agent: ${error instanceof EnvError ? error.message : String(error)}`);
  process.exit(1);
}

// Bun reads its in-flight fetch cap only at startup, and the proxy makes one fetch per engine
// request: `npm run agent` sets it (docs/agent.md "In-flight cap").
if (fetchCap === undefined) {
  agent.log.warn(
    "BUN_CONFIG_MAX_HTTP_REQUESTS is not set: Bun's fetch keeps at most 256 requests in flight, so the proxy holds at most 256 engine requests (start with `npm run agent`, or set BUN_CONFIG_MAX_HTTP_REQUESTS=4096)",
  );
}

try {
  await agent.run();
} catch (error) {
  // Typically EADDRINUSE: another agent already listens on WORKER_PORT.
  console.error(
    `agent: could not start: ${error instanceof Error ? error.message : String(error)}`,
  );
  process.exit(1);
}

// Drain (the manager withdraws this worker's routes, in-flight requests finish), then stop
// within SHUTDOWN_TIMEOUT_S. SIGUSR2 (or AGENT_KEEP_ENGINES=1) is an upgrade: the same drain,
// but the engines keep running and the next agent adopts them (docs/operations.md,
// "Upgrading an agent"). A second signal means the operator does not want to wait.
const exit = (code: number) => process.exit(code);
onShutdownSignals(
  (signal) => {
    const keepEngines = signal === "SIGUSR2" || agent.keepsEngines;
    void agent.shutdown(signal, { keepEngines }).then(exit);
  },
  { log: agent.log, exit, signals: ["SIGTERM", "SIGINT", "SIGUSR2"] },
);
