import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkRecord } from "../../agent/lib/adoption.ts";
import { type EngineRecord, EngineRecords } from "../../agent/lib/engine-records.ts";
import { bootId, cmdlineMatches, readCmdline, readStat } from "../../agent/lib/procfs.ts";

const spec = { alias: "r", model_name: "m/r", gpu_ids: [], extra_args: [] };

function selfRecord(overrides: Partial<EngineRecord> = {}): EngineRecord {
  const stat = readStat(process.pid);
  if (!stat) throw new Error("no /proc");
  const argv = readCmdline(process.pid) ?? [];
  return {
    alias: "r",
    pid: process.pid,
    pgid: stat.pgid,
    start_time: stat.startTime,
    boot_id: bootId() ?? null,
    port: 8100,
    // As the agent would have run it: its own executable name first, then the arguments.
    argv: ["some-wrapper", ...argv.slice(1)],
    spec,
    started_at: new Date().toISOString(),
    ready_at: null,
    restarts: 0,
    ...overrides,
  };
}

describe("engine records", () => {
  test("are written whole, mode 0600, and read back; a broken record is skipped and named", () => {
    const dir = join(mkdtempSync(join(tmpdir(), "records-")), "nested");
    const store = new EngineRecords(dir);
    expect(store.load()).toEqual({ records: [], problems: [] });
    const record = selfRecord();
    store.save([record]);
    expect(statSync(store.path).mode & 0o777).toBe(0o600);
    expect(store.load()).toEqual({ records: [record], problems: [] });
    const file = JSON.parse(readFileSync(store.path, "utf8"));
    file.engines.push({ alias: "half" });
    writeFileSync(store.path, JSON.stringify(file));
    const loaded = store.load();
    expect(loaded.records).toEqual([record]);
    expect(loaded.problems).toEqual([`${store.path}: engine record 1 does not parse`]);
    writeFileSync(store.path, "{not json");
    expect(store.load().problems).toEqual([`${store.path} is not an engine records file`]);
  });
});

describe("matching a record against the live process", () => {
  test("the live process matches its own record", () => {
    expect(checkRecord(selfRecord())).toEqual({ ok: true });
  });

  test("another start time, process group, command line, boot or a gone pid do not", () => {
    const why = (record: EngineRecord) => {
      const check = checkRecord(record);
      return check.ok ? "matched" : check.why;
    };
    expect(why(selfRecord({ start_time: "1" }))).toContain("is another process now");
    expect(why(selfRecord({ pgid: 1 }))).toContain("not 1");
    expect(why(selfRecord({ argv: ["vllm", "serve", "m/other"] }))).toContain(
      "not the recorded engine",
    );
    expect(why(selfRecord({ boot_id: "another-boot" }))).toBe("recorded before the host rebooted");
    expect(why(selfRecord({ pid: 2 ** 22 + 1 }))).toContain("is gone");
  });

  test("the command line matches past the interpreter a #! line adds", () => {
    const argv = ["/usr/bin/vllm", "serve", "m/x", "--port", "8100"];
    expect(
      cmdlineMatches(argv, ["/usr/bin/python3", "/usr/bin/vllm", "serve", "m/x", "--port", "8100"]),
    ).toBe(true);
    expect(
      cmdlineMatches(argv, ["bun", "/x/agent/sim/main.ts", "serve", "m/x", "--port", "8100"]),
    ).toBe(true);
    expect(cmdlineMatches(argv, ["python3", "vllm", "serve", "m/x", "--port", "8101"])).toBe(false);
    expect(cmdlineMatches(argv, ["sleep", "300"])).toBe(false);
  });
});
