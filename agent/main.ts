import { EnvError } from "../protocol/index.ts";
import { inheritedEnv, loadAgentEnv, serviceOptionsFromEnv } from "./env.ts";
import { WorkerService } from "./service.ts";

let agent: WorkerService;
try {
  const env = loadAgentEnv(inheritedEnv());
  agent = new WorkerService(serviceOptionsFromEnv(env, inheritedEnv()));
} catch (error) {
  console.error(`agent: ${error instanceof EnvError ? error.message : String(error)}`);
  process.exit(1);
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
