import { afterAll, afterEach, describe, expect, spyOn, test } from "bun:test";
import { eventually } from "../../devkit/net.ts";
import { startGcPacer } from "../../runtime/gc-pacer.ts";

const MiB = 1024 * 1024;

type Collection = { pauseMs: number; before: number; after: number };

/** Makes `mib` MiB of garbage that really is resident (every page touched), then drops it. */
function churn(mib: number): number {
  const garbage = Array.from({ length: mib }, () => new Uint8Array(MiB).fill(1));
  return garbage.length;
}

/** Counts the pacer's looks at the resident size (it reads it once per tick). */
const rssReads = spyOn(process.memoryUsage, "rss");
afterEach(() => rssReads.mockClear());
afterAll(() => rssReads.mockRestore());

describe("gc pacer", () => {
  test("collects once resident memory grows past the threshold, gives the garbage back and reports the pause", async () => {
    const collections: Collection[] = [];
    const pacer = startGcPacer({
      intervalMs: 20,
      growthBytes: 8 * MiB,
      onCollect: (pauseMs, before, after) => collections.push({ pauseMs, before, after }),
    });
    try {
      const rssBefore = process.memoryUsage.rss();
      churn(64);
      const [first] = await eventually(() => (collections.length > 0 ? collections : undefined), {
        timeoutMs: 5000,
        what: "a paced collection",
      });
      // It waited for the growth before collecting...
      expect(first?.before ?? 0).toBeGreaterThanOrEqual(rssBefore + 8 * MiB);
      // ...and the collection returned most of the 64 MiB of dropped buffers.
      expect((first?.before ?? 0) - (first?.after ?? 0)).toBeGreaterThan(32 * MiB);
      // A full collection of a heap that held 64 MiB takes measurable time.
      expect(first?.pauseMs ?? 0).toBeGreaterThan(0);
      // The baseline moved to the collected size: ten more looks, no second collection.
      const reads = rssReads.mock.calls.length;
      await eventually(() => rssReads.mock.calls.length >= reads + 10, { what: "ten more ticks" });
      expect(collections).toHaveLength(1);
    } finally {
      pacer.stop();
    }
  });

  test("an idle process is left alone at the default threshold, and the same pacer still collects on growth", async () => {
    const collections: Collection[] = [];
    const pacer = startGcPacer({
      intervalMs: 20,
      onCollect: (pauseMs, before, after) => collections.push({ pauseMs, before, after }),
    });
    try {
      const rssAtStart = process.memoryUsage.rss();
      const reads = rssReads.mock.calls.length;
      await eventually(() => rssReads.mock.calls.length >= reads + 15, {
        what: "fifteen idle ticks",
      });
      expect(collections).toHaveLength(0);
      // Idle really was idle: the resident size stayed under the default 16 MiB threshold.
      expect(process.memoryUsage.rss() - rssAtStart).toBeLessThan(16 * MiB);

      churn(64);
      await eventually(() => collections.length > 0, {
        timeoutMs: 5000,
        what: "a collection after 64 MiB of growth",
      });
      expect(collections).toHaveLength(1);
    } finally {
      pacer.stop();
    }
  });
});
