/**
 * Launching and stopping engines on agents (`POST` / `DELETE /v1/instances` on the internal
 * worker_url). The launcher owns what this process has in flight: the launch calls it is
 * making and when it last asked an agent to stop an alias. What the agent answers becomes
 * an instance transition through the lifecycle.
 */
import { eq } from "drizzle-orm";
import { type Db, schema } from "../../db/index.ts";
import type { InstanceRow, ModelRow } from "../../db/schema/index.ts";
import type { Clock } from "../../kit/clock.ts";
import type { Logger } from "../../kit/log.ts";
import type { InstanceReport, InstanceSpecInput } from "../../protocol/index.ts";
import type { AgentAddress, AgentCallResult, AgentClient } from "./agent-client.ts";
import type { Lifecycle } from "./lifecycle.ts";

export type LauncherDeps = {
  db: Db;
  agents: AgentClient;
  lifecycle: Lifecycle;
  clock: Clock;
  log: Logger;
};

export class Launcher {
  /** Instance ids with a launch call in flight from this process. */
  private readonly launching = new Set<string>();
  /** `${workerId}/${alias}` → when this process last asked the agent to stop it. */
  private readonly stopRequested = new Map<string, number>();

  constructor(private readonly deps: LauncherDeps) {}

  isLaunching(instanceId: string): boolean {
    return this.launching.has(instanceId);
  }

  /**
   * Asks the instance's agent to launch it. Only `pending` instances launch; on success they
   * become what the agent says (starting), on failure `failed` with the agent's error, an
   * event, and a retry later. An agent that already has the alias (409) keeps a live engine
   * of the same spec (adopted as the launch), else its stale one is stopped and the launch
   * tried once more. A reply that reports another spec than the one sent is a failed launch.
   */
  async launch(instanceId: string): Promise<void> {
    if (this.launching.has(instanceId)) return;
    this.launching.add(instanceId);
    try {
      const { db, agents, lifecycle, clock, log } = this.deps;
      const [row] = await db
        .select({ instance: schema.instances, model: schema.models, worker: schema.workers })
        .from(schema.instances)
        .innerJoin(schema.models, eq(schema.models.alias, schema.instances.alias))
        .innerJoin(schema.workers, eq(schema.workers.workerId, schema.instances.workerId))
        .where(eq(schema.instances.id, instanceId));
      if (row?.instance.status !== "pending") return;
      const { instance, model, worker } = row;
      const spec = instanceSpec(model, instance);
      let result = await agents.launch(worker, spec);
      if (!result.ok && result.status === 409) {
        const listed = await agents.list(worker);
        const existing = listed.ok ? listed.value.find((r) => r.alias === model.alias) : undefined;
        if (
          existing &&
          specMismatch(spec, existing) === undefined &&
          (existing.status === "starting" || existing.status === "ready")
        ) {
          result = { ok: true, value: existing };
        } else {
          await agents.stop(worker, model.alias);
          result = await agents.launch(worker, spec);
        }
      }
      // An agent that answers with an engine of another spec did not do what was asked: its
      // engine is not ours to serve (stopped), and the launch counts as failed.
      const mismatch = result.ok && result.value ? specMismatch(spec, result.value) : undefined;
      if (mismatch) {
        await agents.stop(worker, model.alias);
        result = { ok: false, status: null, error: mismatch };
      }
      const outcome = result;
      if (!outcome.ok) {
        log.warn(`launch on worker ${worker.workerId} failed: ${outcome.error}`, {
          instance_id: instance.id,
          alias: instance.alias,
        });
      }
      // A heartbeat may have recorded the engine first; then the row is no longer pending,
      // holds newer facts, and the transition leaves it alone.
      await lifecycle.write(clock.now(), (w) =>
        outcome.ok
          ? w.launched(instance, outcome.value)
          : w.launchFailed(
              instance,
              `launch on worker ${worker.workerId} failed: ${outcome.error}`,
            ),
      );
    } finally {
      this.launching.delete(instanceId);
    }
  }

  /**
   * Asks a worker's agent to stop an alias. With `unlessAskedWithinMs`, a request this process
   * made that recently is not repeated (the answer is then undefined).
   */
  async stop(
    worker: AgentAddress,
    alias: string,
    options: { unlessAskedWithinMs?: number } = {},
  ): Promise<AgentCallResult<null> | undefined> {
    const key = `${worker.workerId}/${alias}`;
    const now = this.deps.clock.now().getTime();
    const last = this.stopRequested.get(key);
    if (
      options.unlessAskedWithinMs !== undefined &&
      last !== undefined &&
      now - last < options.unlessAskedWithinMs
    ) {
      return undefined;
    }
    this.stopRequested.set(key, now);
    return this.deps.agents.stop(worker, alias);
  }
}

/** The spec the agent gets: engine options only when the model sets them. */
export function instanceSpec(
  model: ModelRow,
  instance: Pick<InstanceRow, "gpuIds" | "gpuMemoryUtilization">,
): InstanceSpecInput {
  const spec: InstanceSpecInput = {
    alias: model.alias,
    model_name: model.modelName,
    gpu_memory_utilization: instance.gpuMemoryUtilization,
    tensor_parallel_size: model.tensorParallelSize,
    gpu_ids: instance.gpuIds,
    extra_args: model.extraArgs,
  };
  if (model.maxModelLen !== null) spec.max_model_len = model.maxModelLen;
  if (model.dtype !== null) spec.dtype = model.dtype;
  return spec;
}

/**
 * How an engine an agent reports differs from the spec the manager asked for, as
 * "spec mismatch: <field> reported X, expected Y" (every differing field), or undefined when
 * it runs what was asked. Compared: model_name and gpu_ids (always reported) and, when the
 * report carries the spec it was launched with, tensor_parallel_size, extra_args,
 * max_model_len, dtype and gpu_memory_utilization; an option left unset counts as vLLM's
 * default. The port is the agent's to choose.
 */
export function specMismatch(
  expected: InstanceSpecInput,
  report: InstanceReport,
): string | undefined {
  const reported = report.spec;
  const differences: string[] = [];
  const compare = (field: string, got: unknown, want: unknown) => {
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      differences.push(`${field} reported ${shown(got)}, expected ${shown(want)}`);
    }
  };
  const sorted = (ids: readonly number[] | undefined) => [...(ids ?? [])].sort((a, b) => a - b);
  compare("model_name", report.model_name, expected.model_name);
  if (reported && reported.model_name !== report.model_name) {
    compare("model_name", reported.model_name, expected.model_name);
  }
  compare("gpu_ids", sorted(report.gpu_ids), sorted(expected.gpu_ids));
  if (reported) {
    if (!sameNumbers(sorted(reported.gpu_ids), sorted(report.gpu_ids))) {
      compare("gpu_ids", sorted(reported.gpu_ids), sorted(expected.gpu_ids));
    }
    compare(
      "tensor_parallel_size",
      reported.tensor_parallel_size ?? 1,
      expected.tensor_parallel_size ?? 1,
    );
    compare("extra_args", reported.extra_args, expected.extra_args ?? []);
    compare("max_model_len", reported.max_model_len, expected.max_model_len);
    compare("dtype", reported.dtype ?? "auto", expected.dtype ?? "auto");
    compare(
      "gpu_memory_utilization",
      reported.gpu_memory_utilization ?? 0.9,
      expected.gpu_memory_utilization ?? 0.9,
    );
  }
  return differences.length > 0 ? `spec mismatch: ${differences.join("; ")}` : undefined;
}

function shown(value: unknown): string {
  if (value === undefined) return "unset";
  const text = JSON.stringify(value);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

function sameNumbers(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((value, i) => value === b[i]);
}
