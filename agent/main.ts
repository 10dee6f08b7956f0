import { EnvError } from "../kit/env.ts";
import { ensureFetchCapacity } from "../runtime/bun-fetch-capacity.ts";
import { inheritedEnv, loadAgentEnv, serviceOptionsFromEnv } from "./env.ts";
import { WorkerService } from "./service.ts";

/** In-flight engine requests the proxy may hold (Bun's default is 256). */
const maxHttpRequests = 4096;

let agent: WorkerService;
let reexecFailure: string | null = null;
try {
  const env = loadAgentEnv(inheritedEnv());
  // Returns only when nothing was needed or on failure (then Bun's default cap applies).
  reexecFailure = ensureFetchCapacity(inheritedEnv(), maxHttpRequests);
  agent = new WorkerService(serviceOptionsFromEnv(env, inheritedEnv()));
} catch (error) {
  console.error(`agent: ${error instanceof EnvError ? error.message : String(error)}`);
  process.exit(1);
}

if (reexecFailure) {
  agent.log.warn(
    "could not raise Bun's in-flight request cap; the proxy holds at most 256 engine requests (set BUN_CONFIG_MAX_HTTP_REQUESTS=4096 in the environment)",
    { reason: reexecFailure },
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

let signals = 0;
const shutdown = (signal: string) => {
  // A second signal means the operator does not want to wait for the grace period.
  if (++signals > 1) process.exit(130);
  agent.log.info("signal received: stopping engines", { signal });
  void agent.stop().then(() => process.exit(0));
};
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
