import { expect, test } from "bun:test";
import { eventually } from "../../devkit/net.ts";
import { startGcPacer } from "../../runtime/gc-pacer.ts";

test("collects once resident memory grows past the threshold, and reports the pause", async () => {
  const pauses: number[] = [];
  const pacer = startGcPacer({
    intervalMs: 50,
    growthBytes: 8 * 1024 * 1024,
    onCollect: (pauseMs, before, after) => {
      expect(before).toBeGreaterThan(0);
      expect(after).toBeGreaterThan(0);
      pauses.push(pauseMs);
    },
  });
  try {
    // Touch 64 MiB so the resident size really grows, then drop it.
    let garbage: Uint8Array[] | undefined = Array.from({ length: 64 }, () =>
      new Uint8Array(1024 * 1024).fill(1),
    );
    expect(garbage.length).toBe(64);
    garbage = undefined;
    await eventually(() => pauses.length > 0, { timeoutMs: 5000, what: "a paced collection" });
    expect(pauses[0]).toBeGreaterThanOrEqual(0);
  } finally {
    pacer.stop();
  }
});

test("an idle process is left alone", async () => {
  let collections = 0;
  const pacer = startGcPacer({
    intervalMs: 20,
    growthBytes: 1024 * 1024 * 1024,
    onCollect: () => {
      collections++;
    },
  });
  await Bun.sleep(200);
  pacer.stop();
  expect(collections).toBe(0);
});
