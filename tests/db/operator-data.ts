import { schema } from "../../db/index.ts";
import type { OpenTestDb } from "../../devkit/db.ts";

/**
 * The rows the operator dashboards read (docs/dashboards.md's SQL, the Grafana SQL panels):
 * a rented worker reached by its public URL and a lab one on loopback, a ready replica and a
 * loading one, a key with two requests in the last hour and one past the 30-day retention,
 * one event. Every query has something to find, so one that runs but selects nothing fails.
 */
export async function seedOperatorData(fleet: OpenTestDb): Promise<void> {
  const { workers, gpus, models, instances, routes, apiKeys, requestLogs, events } = schema;
  await fleet.db.insert(workers).values([
    {
      workerId: "rental",
      workerUrl: "http://127.0.0.1:6006",
      publicWorkerUrl: "https://rental.example.test:8443",
    },
    { workerId: "lab", workerUrl: "http://127.0.0.1:6007" },
  ]);
  await fleet.db.insert(gpus).values([
    {
      workerId: "rental",
      index: 0,
      name: "RTX 4090",
      memoryTotalMib: 24564,
      memoryUsedMib: 20000,
    },
    { workerId: "lab", index: 0, name: "A100", memoryTotalMib: 81920, memoryUsedMib: 0 },
  ]);
  await fleet.db.insert(models).values([
    { alias: "qwen-vl-2b", modelName: "Qwen/Qwen2-VL-2B-Instruct" },
    { alias: "llama", modelName: "meta-llama/Llama-3.1-8B-Instruct" },
  ]);
  const [instance, loading] = await fleet.db
    .insert(instances)
    .values([
      {
        alias: "qwen-vl-2b",
        workerId: "rental",
        gpuIds: [0],
        gpuMemoryUtilization: 0.8,
        status: "ready",
      },
      // Still loading: an alias with a route but no serving replica.
      {
        alias: "llama",
        workerId: "lab",
        gpuIds: [0],
        gpuMemoryUtilization: 0.5,
        status: "starting",
      },
    ])
    .returning();
  if (!instance || !loading) throw new Error("no instance");
  await fleet.db.insert(routes).values([
    {
      alias: "qwen-vl-2b",
      modelName: "Qwen/Qwen2-VL-2B-Instruct",
      workerId: "rental",
      workerUrl: "https://rental.example.test:8443",
      vllmPort: 40001,
      instanceId: instance.id,
      ready: true,
    },
    {
      alias: "llama",
      modelName: "meta-llama/Llama-3.1-8B-Instruct",
      workerId: "lab",
      workerUrl: "http://127.0.0.1:6007",
      vllmPort: 40002,
      instanceId: loading.id,
      ready: false,
    },
  ]);
  await fleet.db
    .insert(apiKeys)
    .values({ id: "key_a", keyHash: "c".repeat(64), prefix: "sk-fleet-Ab", name: "team-a" });
  await fleet.db.insert(requestLogs).values([
    {
      apiKeyId: "key_a",
      alias: "qwen-vl-2b",
      workerId: "rental",
      status: 200,
      latencyMs: 120,
      ttftMs: 30,
      promptTokens: 10,
      completionTokens: 20,
      stream: true,
    },
    {
      apiKeyId: "key_a",
      alias: "qwen-vl-2b",
      workerId: "rental",
      status: 503,
      latencyMs: 2,
      stream: false,
    },
    // Past the 30-day retention the doc's delete statement applies.
    {
      ts: new Date(Date.now() - 40 * 24 * 3600 * 1000),
      apiKeyId: "key_a",
      alias: "qwen-vl-2b",
      workerId: "rental",
      status: 200,
      latencyMs: 90,
      promptTokens: 1,
      completionTokens: 1,
      stream: false,
    },
  ]);
  await fleet.db
    .insert(events)
    .values({ kind: "worker.online", workerId: "rental", toStatus: "online" });
}
