import { describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../../kit/log.ts";
import { openFileSpool } from "../../runtime/file-spool.ts";

const freshDir = () => mkdtempSync(join(tmpdir(), "fleet-spool-test-"));
const open = (dir: string, maxBytes = 1024 * 1024) =>
  openFileSpool({ dir, maxBytes, log: silentLogger });
const records = (from: number, count: number) =>
  Array.from({ length: count }, (_, i) => ({ n: from + i, alias: "qwen" }));

/** Every record a spool holds, oldest first, removing each segment as a delivery would. */
async function drain(spool: ReturnType<typeof open>): Promise<unknown[]> {
  const out: unknown[] = [];
  for (let segment = await spool.oldest(); segment; segment = await spool.oldest()) {
    out.push(...segment.records);
    await spool.remove(segment.id);
  }
  return out;
}

describe("file spool", () => {
  test("what was appended is there after a restart, oldest first, and gone once delivered", async () => {
    const dir = freshDir();
    const first = open(dir);
    await first.append(records(0, 3));
    await first.append(records(3, 2));
    expect(first.size().records).toBe(5);
    // A new process over the same directory (same pid here: a container restart looks so).
    const second = open(dir);
    expect(second.size()).toEqual(first.size());
    expect(await drain(second)).toEqual(records(0, 5));
    expect(second.size()).toEqual({ records: 0, bytes: 0 });
    expect(readdirSync(dir)).toEqual([]);
  });

  test("past its cap the oldest segments go first, and are counted", async () => {
    const dir = freshDir();
    const one = `${JSON.stringify(records(0, 10)[0])}\n`.length;
    const spool = open(dir, one * 25);
    await spool.append(records(0, 10));
    await spool.append(records(10, 10));
    await spool.append(records(20, 10));
    expect(spool.dropped()).toBe(10);
    expect(spool.size().records).toBe(20);
    expect(((await drain(spool)) as { n: number }[]).map((r) => r.n)).toEqual(
      records(10, 20).map((r) => r.n),
    );
    // A batch larger than the whole cap cannot be kept at all.
    await spool.append(records(0, 30));
    expect(spool.dropped()).toBe(40);
  });

  test("claims the segments of a process that is gone, leaves a live one's, and clears half-written ones", async () => {
    const dir = freshDir();
    const gone = 2 ** 22 + 12_345; // above Linux's pid_max default: no such process
    const line = `${JSON.stringify({ n: 1 })}\n`;
    writeFileSync(join(dir, `1700000000000-000000-${gone}.ndjson`), line);
    writeFileSync(join(dir, `1700000000001-000000-${process.ppid}.ndjson`), line);
    writeFileSync(join(dir, `.1700000000002-000000-${gone}.ndjson.tmp`), '{"n":');
    const spool = open(dir);
    expect(spool.size().records).toBe(1);
    expect(await drain(spool)).toEqual([{ n: 1 }]);
    expect(readdirSync(dir)).toEqual([`1700000000001-000000-${process.ppid}.ndjson`]);
  });

  test("a line that cannot be read is skipped and counted; the rest are delivered", async () => {
    const dir = freshDir();
    writeFileSync(
      join(dir, `1700000000000-000000-${process.pid}.ndjson`),
      '{"n":1}\n{"n":\n{"n":3}\n',
    );
    const spool = open(dir);
    expect(await drain(spool)).toEqual([{ n: 1 }, { n: 3 }]);
    expect(spool.dropped()).toBe(1);
  });
});
