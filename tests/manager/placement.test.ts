import { describe, expect, test } from "bun:test";
import {
  gpuRefusal,
  type PlacementGpu,
  type PlacementInstance,
  type PlacementRequest,
  type PlacementResult,
  type PlacementWorker,
  place,
} from "../../manager/services/placement.ts";

const total = 80_000;
const gpu = (index: number, freeMib: number | null = total): PlacementGpu => ({
  index,
  memoryTotalMib: total,
  memoryFreeMib: freeMib,
});

function worker(
  workerId: string,
  gpus: PlacementGpu[],
  instances: PlacementInstance[] = [],
  options: { online?: boolean; aliases?: string[] } = {},
): PlacementWorker {
  return {
    workerId,
    online: options.online ?? true,
    gpus,
    instances,
    aliases: new Set([...instances.map((i) => i.alias), ...(options.aliases ?? [])]),
  };
}

const running = (alias: string, gpuIds: number[], claim: number): PlacementInstance => ({
  alias,
  gpuIds,
  claim,
});

const request = (overrides: Partial<PlacementRequest> = {}): PlacementRequest => ({
  alias: "m",
  claim: 0.5,
  tensorParallelSize: 1,
  replicas: 1,
  strategy: "binpack",
  ...overrides,
});

describe("gpuRefusal: claims sum to at most 1 and must fit the GPU's live free memory", () => {
  const cases: [string, PlacementGpu, number, number, string | undefined][] = [
    ["an empty GPU without live figures takes any claim up to 1", gpu(0, null), 0, 1, undefined],
    [
      "claims over 1 are refused even without live figures",
      gpu(0, null),
      0.6,
      0.5,
      "claims 0.6 + 0.5 > 1",
    ],
    ["claims summing to exactly 1 fit", gpu(0), 0.5, 0.5, undefined],
    // 0.2 + 0.4 + 0.3 + 0.1 is 1.0000000000000002 in floating point.
    [
      "float dust does not refuse a claim that sums to 1",
      gpu(0, null),
      0.2 + 0.4 + 0.3,
      0.1,
      undefined,
    ],
    ["free memory equal to the claim fits", gpu(0, 40_000), 0, 0.5, undefined],
    [
      "memory used outside the fleet refuses a claim that would fit by claims alone",
      gpu(0, 39_000),
      0,
      0.5,
      "needs 40000 MiB, 39000 MiB free (41000 MiB used outside the fleet)",
    ],
    [
      "our running engine's memory counts as ours, not as used by others",
      gpu(0, 40_000),
      0.5,
      0.5,
      undefined,
    ],
    [
      "an engine still loading (using less than its claim) is not counted twice",
      gpu(0, 70_000),
      0.5,
      0.5,
      undefined,
    ],
    [
      "outside use next to our engine is named in MiB",
      gpu(0, 20_000),
      0.5,
      0.4,
      "needs 32000 MiB, 20000 MiB free (20000 MiB used outside the fleet)",
    ],
  ];
  test.each(cases)("%s", (_name, device, claimed, claim, refusal) => {
    expect(gpuRefusal(device, claimed, claim)).toBe(refusal);
  });
});

type Case = {
  name: string;
  workers: PlacementWorker[];
  request: Partial<PlacementRequest>;
  expected: PlacementResult | { ok: false; reasons: { worker_id: string; reason: string }[] };
};

describe("place: which worker and GPUs, or why not, worker by worker", () => {
  const cases: Case[] = [
    {
      name: "one free GPU takes it",
      workers: [worker("w1", [gpu(0)])],
      request: {},
      expected: { ok: true, placements: [{ workerId: "w1", gpuIds: [0] }] },
    },
    {
      name: "tensor_parallel_size 2 takes two GPUs of one worker",
      workers: [worker("w1", [gpu(0), gpu(1), gpu(2)])],
      request: { tensorParallelSize: 2 },
      expected: { ok: true, placements: [{ workerId: "w1", gpuIds: [0, 1] }] },
    },
    {
      name: "tensor_parallel_size beyond a worker's GPUs is refused for that worker",
      workers: [worker("w1", [gpu(0)])],
      request: { tensorParallelSize: 2 },
      expected: {
        ok: false,
        reasons: [
          { worker_id: "w1", reason: "has 1 GPU, tensor_parallel_size 2 needs 2 on one worker" },
        ],
      },
    },
    {
      name: "offline workers, GPU-less workers and workers already running the alias are skipped",
      workers: [
        worker("a-offline", [gpu(0)], [], { online: false }),
        worker("b-no-gpus", []),
        worker("c-has-it", [gpu(0)], [running("m", [0], 0.2)]),
        worker("d-failed-copy", [gpu(0)], [], { aliases: ["m"] }),
      ],
      request: {},
      expected: {
        ok: false,
        reasons: [
          { worker_id: "a-offline", reason: "offline" },
          { worker_id: "b-no-gpus", reason: "has no GPUs" },
          { worker_id: "c-has-it", reason: "already runs m" },
          { worker_id: "d-failed-copy", reason: "already runs m" },
        ],
      },
    },
    {
      name: "an excluded worker (the one being replaced) is named as such",
      workers: [worker("w1", [gpu(0)])],
      request: { exclude: new Set(["w1"]) },
      expected: { ok: false, reasons: [{ worker_id: "w1", reason: "already ran m (excluded)" }] },
    },
    {
      name: "a full GPU is refused with each GPU's reason",
      workers: [worker("w1", [gpu(0), gpu(1, 10_000)], [running("x", [0], 0.9)])],
      request: {},
      expected: {
        ok: false,
        reasons: [
          {
            worker_id: "w1",
            reason:
              "no GPU fits: GPU 0 claims 0.9 + 0.5 > 1, GPU 1 needs 40000 MiB, 10000 MiB free (70000 MiB used outside the fleet)",
          },
        ],
      },
    },
    {
      name: "claims of several engines on one GPU add up, float dust included",
      workers: [
        worker(
          "w1",
          [gpu(0, null)],
          [running("x", [0], 0.2), running("y", [0], 0.4), running("z", [0], 0.3)],
        ),
      ],
      request: { claim: 0.1 },
      expected: { ok: true, placements: [{ workerId: "w1", gpuIds: [0] }] },
    },
    {
      name: "a pin to a worker that is not registered says so",
      workers: [worker("w1", [gpu(0)])],
      request: { workerId: "ghost" },
      expected: {
        ok: false,
        reasons: [{ worker_id: "ghost", reason: "pinned worker is not registered" }],
      },
    },
    {
      name: "pinned GPUs are taken as given when they fit",
      workers: [worker("w1", [gpu(0), gpu(1), gpu(2)]), worker("w2", [gpu(0)])],
      request: { workerId: "w1", gpuIds: [2] },
      expected: { ok: true, placements: [{ workerId: "w1", gpuIds: [2] }] },
    },
    {
      name: "pinned GPUs that do not exist or do not fit are refused",
      workers: [worker("w1", [gpu(0)], [running("x", [0], 0.8)])],
      request: { workerId: "w1", gpuIds: [0, 3] },
      expected: {
        ok: false,
        reasons: [
          { worker_id: "w1", reason: "pinned GPU 0 claims 0.8 + 0.5 > 1, GPU 3 does not exist" },
        ],
      },
    },
    {
      name: "binpack fills the busier worker that still fits",
      workers: [
        worker("idle", [gpu(0), gpu(1)]),
        worker("busy", [gpu(0), gpu(1)], [running("x", [0], 0.4)]),
      ],
      request: { strategy: "binpack" },
      expected: { ok: true, placements: [{ workerId: "busy", gpuIds: [0] }] },
    },
    {
      name: "spread takes the emptier worker and its emptiest GPU",
      workers: [
        worker("idle", [gpu(0), gpu(1)], [running("y", [0], 0.1)]),
        worker("busy", [gpu(0), gpu(1)], [running("x", [0], 0.4)]),
      ],
      request: { strategy: "spread" },
      expected: { ok: true, placements: [{ workerId: "idle", gpuIds: [1] }] },
    },
    {
      name: "equal load falls back to the worker id, so placement is deterministic",
      workers: [worker("b", [gpu(0)]), worker("a", [gpu(0)])],
      request: { strategy: "spread" },
      expected: { ok: true, placements: [{ workerId: "a", gpuIds: [0] }] },
    },
    {
      name: "replicas go to distinct workers",
      workers: [worker("w1", [gpu(0)]), worker("w2", [gpu(0)]), worker("w3", [gpu(0)])],
      request: { replicas: 2, strategy: "spread" },
      expected: {
        ok: true,
        placements: [
          { workerId: "w1", gpuIds: [0] },
          { workerId: "w2", gpuIds: [0] },
        ],
      },
    },
    {
      name: "more replicas than fitting workers lists the ones that fit too",
      workers: [worker("w1", [gpu(0)]), worker("w2", [gpu(0)], [], { online: false })],
      request: { replicas: 2 },
      expected: {
        ok: false,
        reasons: [
          { worker_id: "w1", reason: "fits" },
          { worker_id: "w2", reason: "offline" },
        ],
      },
    },
  ];

  test.each(cases.map((c) => [c.name, c] as const))("%s", (_name, c) => {
    const result = place(c.workers, request(c.request));
    if (c.expected.ok) expect(result).toEqual(c.expected);
    else expect(result).toMatchObject({ ok: false, reasons: c.expected.reasons });
  });

  test("the refusal message says what was asked and why each worker declined", () => {
    expect(place([], request())).toEqual({
      ok: false,
      reasons: [],
      message:
        "no capacity for 1 replica of m (tensor_parallel_size 1, gpu_memory_utilization 0.5): no workers are registered",
    });
    const some = place(
      [worker("w1", [gpu(0)]), worker("w2", [gpu(0)], [], { online: false })],
      request({ replicas: 2, claim: 0.3 }),
    );
    expect(some.ok ? "" : some.message).toBe(
      "no capacity for 2 replicas of m (tensor_parallel_size 1, gpu_memory_utilization 0.3): replicas go to distinct workers and only 1 fit. w1: fits; w2: offline",
    );
  });
});
