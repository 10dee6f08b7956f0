import { describe, expect, test } from "bun:test";
import type { RouteEntry } from "../../protocol/index.ts";
import { Balancer, type BalancerOptions, hash32, rendezvousScore } from "../../router/balancer.ts";
import { route } from "./route-entry.ts";

/** A balancer on a clock the test moves by hand; `random` defaults to Math.random. */
function balancer(options: Partial<BalancerOptions> = {}) {
  let now = 1_000_000;
  const ejections: { worker: string; cooldownMs: number }[] = [];
  const made = new Balancer({
    ejectAfter: 3,
    cooldownMs: 1000,
    maxCooldownMs: 5000,
    now: () => now,
    onEject: (ejected, cooldownMs) => ejections.push({ worker: ejected.worker_id, cooldownMs }),
    ...options,
  });
  return {
    balancer: made,
    ejections,
    advance(ms: number) {
      now += ms;
    },
  };
}

const replicas = (...workers: string[]): RouteEntry[] =>
  workers.map((workerId) => route({ alias: "qwen", workerId, url: `http://${workerId}.test` }));

const none = new Set<string>();

/** The worker that `pick` chooses, or null when it declines. */
function pickWorker(b: Balancer, candidates: RouteEntry[], session?: string): string | null {
  return b.pick(candidates, none, session)?.route.worker_id ?? null;
}

/** `count` transport failures in a row on `worker`'s replica (as the proxy reports them). */
function fail(b: Balancer, candidates: RouteEntry[], worker: string, count: number): void {
  const failing = candidates.find((candidate) => candidate.worker_id === worker);
  if (!failing) throw new Error(`no replica ${worker}`);
  for (let index = 0; index < count; index++) b.failed(failing, b.state(failing));
}

describe("Balancer: least in-flight (every replica scored up to eight, two random ones beyond)", () => {
  test("of two replicas the one with fewer requests in flight wins, whatever the coin says", () => {
    for (const coin of [0, 0.49, 0.5, 0.99]) {
      const { balancer: b } = balancer({ random: () => coin });
      const [a, busy] = replicas("a", "busy");
      if (!a || !busy) throw new Error("replicas");
      b.state(busy).inflight = 2;
      b.state(a).inflight = 1;
      expect(pickWorker(b, [a, busy])).toBe("a");
      expect(pickWorker(b, [busy, a])).toBe("a");
    }
  });

  test("a tie is settled by the coin", () => {
    const candidates = replicas("a", "b");
    expect(pickWorker(balancer({ random: () => 0.2 }).balancer, candidates)).toBe("b");
    expect(pickWorker(balancer({ random: () => 0.7 }).balancer, candidates)).toBe("a");
  });

  test("never sends to the busiest of three, and spreads over the others", () => {
    const { balancer: b } = balancer();
    const candidates = replicas("a", "b", "c");
    const [busy] = candidates;
    if (!busy) throw new Error("replicas");
    b.state(busy).inflight = 5;
    const counts = new Map<string | null, number>();
    for (let index = 0; index < 3000; index++) {
      const worker = pickWorker(b, candidates);
      counts.set(worker, (counts.get(worker) ?? 0) + 1);
    }
    expect(counts.get("a")).toBeUndefined();
    // Two random choices among three: b and c each win half of the draws they tie in.
    expect(counts.get("b") ?? 0).toBeGreaterThan(1200);
    expect(counts.get("c") ?? 0).toBeGreaterThan(1200);
  });

  test("beyond eight replicas two random choices: never the busiest, not always the idlest", () => {
    const { balancer: b } = balancer();
    const candidates = replicas(...Array.from({ length: 12 }, (_, i) => `r${i}`));
    candidates.forEach((candidate, i) => {
      b.state(candidate).inflight = i === 0 ? 9 : i === 1 ? 0 : 4;
    });
    const counts = new Map<string | null, number>();
    for (let index = 0; index < 3000; index++) {
      const worker = pickWorker(b, candidates);
      counts.set(worker, (counts.get(worker) ?? 0) + 1);
    }
    expect(counts.get("r0")).toBeUndefined();
    // r1 wins every draw it is in: about 2/12 of them, far from all.
    expect(counts.get("r1") ?? 0).toBeGreaterThan(300);
    expect(counts.get("r1") ?? 0).toBeLessThan(800);
  });

  test("skips replicas already tried for this request, and declines when none is left", () => {
    const { balancer: b } = balancer();
    const candidates = replicas("a", "b");
    const first = b.pick(candidates, none);
    if (!first) throw new Error("no pick");
    const second = b.pick(candidates, new Set([first.state.key]));
    expect(second?.route.worker_id).not.toBe(first.route.worker_id);
    expect(b.pick(candidates, new Set(candidates.map((c) => b.state(c).key)))).toBeUndefined();
    expect(b.pick([], none)).toBeUndefined();
  });
});

describe("Balancer: passive ejection", () => {
  test("ejects a replica after ejectAfter consecutive failures and stops choosing it", () => {
    const { balancer: b, ejections } = balancer();
    const candidates = replicas("a", "b");
    fail(b, candidates, "a", 2);
    expect(ejections).toEqual([]);
    fail(b, candidates, "a", 1);
    expect(ejections).toEqual([{ worker: "a", cooldownMs: 1000 }]);
    expect(b.ejectedCount()).toBe(1);
    for (let index = 0; index < 50; index++) expect(pickWorker(b, candidates)).toBe("b");
  });

  test("a success in between resets the count: failures must be consecutive", () => {
    const { balancer: b, ejections } = balancer();
    const candidates = replicas("a", "b");
    const [a] = candidates;
    if (!a) throw new Error("replicas");
    fail(b, candidates, "a", 2);
    b.succeeded(b.state(a));
    fail(b, candidates, "a", 2);
    expect(ejections).toEqual([]);
    expect(b.ejectedCount()).toBe(0);
  });

  test("further failures of an ejected replica do not extend its cool-down", () => {
    const { balancer: b, ejections, advance } = balancer();
    const candidates = replicas("a");
    fail(b, candidates, "a", 3);
    advance(500);
    fail(b, candidates, "a", 5);
    expect(ejections).toHaveLength(1);
    expect(b.retryAfterMs(candidates)).toBe(500);
  });

  test("an ejected replica's only candidate declines with the time until it may be probed", () => {
    const { balancer: b, advance } = balancer();
    const candidates = replicas("a");
    fail(b, candidates, "a", 3);
    expect(pickWorker(b, candidates)).toBeNull();
    expect(b.retryAfterMs(candidates)).toBe(1000);
    advance(400);
    expect(b.retryAfterMs(candidates)).toBe(600);
  });
});

describe("Balancer: half-open probes and the doubling cool-down", () => {
  test("after the cool-down exactly one request probes the replica; a success brings it back", () => {
    const { balancer: b, advance } = balancer();
    const candidates = replicas("a");
    fail(b, candidates, "a", 3);
    advance(999);
    expect(pickWorker(b, candidates)).toBeNull();
    advance(1);
    const probe = b.pick(candidates, none);
    expect(probe?.probe).toBe(true);
    // While the probe is out, nobody else is sent there.
    expect(pickWorker(b, candidates)).toBeNull();
    if (!probe) throw new Error("no probe");
    b.succeeded(probe.state);
    expect(b.ejectedCount()).toBe(0);
    const next = b.pick(candidates, none);
    expect(next?.probe).toBe(false);
    expect(next?.route.worker_id).toBe("a");
  });

  test("each failed probe doubles the cool-down up to the maximum; a success resets it", () => {
    const { balancer: b, ejections, advance } = balancer();
    const candidates = replicas("a");
    const [a] = candidates;
    if (!a) throw new Error("replicas");
    fail(b, candidates, "a", 3);
    for (const cooldown of [1000, 2000, 4000, 5000, 5000]) {
      expect(ejections.at(-1)?.cooldownMs).toBe(cooldown);
      advance(cooldown - 1);
      expect(pickWorker(b, candidates)).toBeNull();
      advance(1);
      const probe = b.pick(candidates, none);
      expect(probe?.probe).toBe(true);
      // One failed probe is enough to go back out (no three strikes for a probe).
      b.failed(a, b.state(a));
    }
    advance(5000);
    const probe = b.pick(candidates, none);
    if (!probe) throw new Error("no probe");
    b.succeeded(probe.state);
    // Healthy again: the next ejection starts from the first cool-down.
    fail(b, candidates, "a", 3);
    expect(ejections.at(-1)?.cooldownMs).toBe(1000);
  });

  test("a probe whose client went away frees the slot for the next request", () => {
    const { balancer: b, advance } = balancer();
    const candidates = replicas("a");
    fail(b, candidates, "a", 3);
    advance(1000);
    const probe = b.pick(candidates, none);
    if (!probe) throw new Error("no probe");
    expect(pickWorker(b, candidates)).toBeNull();
    b.released(probe.state);
    const again = b.pick(candidates, none);
    expect(again?.probe).toBe(true);
  });
});

describe("Balancer: session affinity", () => {
  const sessions = Array.from({ length: 60 }, (_, index) => `session-${index}`);

  test("a session lands on the same replica every time, and sessions spread over all replicas", () => {
    const { balancer: b } = balancer();
    const candidates = replicas("a", "b", "c");
    const homes = new Map(sessions.map((s) => [s, pickWorker(b, candidates, s)]));
    for (const s of sessions) expect(pickWorker(b, candidates, s)).toBe(homes.get(s) ?? null);
    // The order of the route table does not matter either.
    const reversed = [...candidates].reverse();
    for (const s of sessions) expect(pickWorker(b, reversed, s)).toBe(homes.get(s) ?? null);
    expect(new Set(homes.values())).toEqual(new Set(["a", "b", "c"]));
  });

  test("the rendezvous ranking spreads keys evenly, and a replica's keys evenly over the others when it leaves", () => {
    const replicaHashes = ["a", "b", "c", "d"].map((name) =>
      hash32(`qwen|${name}-1|http://${name}`),
    );
    const first = [0, 0, 0, 0];
    // second[i][j]: keys ranked first on replica i and second on replica j.
    const second = replicaHashes.map(() => [0, 0, 0, 0]);
    const keys = 4000;
    for (let index = 0; index < keys; index++) {
      const keyHash = hash32(`p:\u0000user\u0000conversation ${index}`);
      const ranked = replicaHashes
        .map((hash, replica) => ({ replica, score: rendezvousScore(keyHash, hash) }))
        .sort((x, y) => y.score - x.score);
      const [top, next] = [ranked[0]?.replica ?? -1, ranked[1]?.replica ?? -1];
      first[top] = (first[top] ?? 0) + 1;
      const row = second[top] ?? [];
      row[next] = (row[next] ?? 0) + 1;
    }
    // A fair share is 25% first, and a third of each replica's keys second on each other.
    for (const count of first) expect(Math.abs(count / keys - 0.25)).toBeLessThan(0.04);
    for (const [replica, row] of second.entries()) {
      const own = first[replica] ?? 0;
      for (const [other, count] of row.entries()) {
        if (other === replica) expect(count).toBe(0);
        else expect(Math.abs(count / own - 1 / 3)).toBeLessThan(0.07);
      }
    }
  });

  test("only the sessions of an ejected replica move, and they come back after it recovers", () => {
    const { balancer: b, advance } = balancer();
    const candidates = replicas("a", "b", "c");
    const homes = new Map(sessions.map((s) => [s, pickWorker(b, candidates, s)]));
    fail(b, candidates, "b", 3);
    for (const s of sessions) {
      const now = pickWorker(b, candidates, s);
      if (homes.get(s) === "b") expect(now).not.toBe("b");
      else expect(now).toBe(homes.get(s) ?? null);
    }
    advance(1000);
    const homeOfB = sessions.find((s) => homes.get(s) === "b") ?? "";
    const probe = b.pick(candidates, none, homeOfB);
    expect(probe?.probe).toBe(true);
    if (!probe) throw new Error("no probe");
    b.succeeded(probe.state);
    for (const s of sessions) expect(pickWorker(b, candidates, s)).toBe(homes.get(s) ?? null);
  });

  test("a new replica takes only its share of sessions (no global reshuffle)", () => {
    const { balancer: b } = balancer();
    const three = replicas("a", "b", "c");
    const four = replicas("a", "b", "c", "d");
    let moved = 0;
    for (const s of sessions) {
      const before = pickWorker(b, three, s);
      const after = pickWorker(b, four, s);
      if (after !== before) {
        expect(after).toBe("d");
        moved++;
      }
    }
    expect(moved).toBeGreaterThan(0);
    expect(moved).toBeLessThan(sessions.length / 2);
  });
});

describe("Balancer: route table changes", () => {
  test("forgets a replica that left the table: back in it, it starts healthy", () => {
    const { balancer: b } = balancer();
    const candidates = replicas("a", "b");
    const [a, other] = candidates;
    if (!a || !other) throw new Error("replicas");
    fail(b, candidates, "a", 3);
    expect(b.ejectedCount()).toBe(1);
    b.retain([other]);
    expect(b.ejectedCount()).toBe(0);
    expect(b.state(a).consecutiveFailures).toBe(0);
    expect(pickWorker(b, [a])).toBe("a");
  });
});
