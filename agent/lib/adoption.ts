/**
 * Adoption after an agent restart: which recorded engines are still the processes the agent
 * launched, and which processes carry this agent's marker without a record (they are
 * stopped). Linux only: without /proc nothing is adopted and nothing is swept.
 */
import type { EngineRecord } from "./engine-records.ts";
import { aliasVariable, ownerVariable } from "./engine-records.ts";
import { bootId, cmdlineMatches, listPids, readCmdline, readEnvVar, readStat } from "./procfs.ts";

/** Whether a record still names the live engine, and if not, why. */
export type RecordCheck = { ok: true } | { ok: false; why: string };

/**
 * A record matches when its pid is alive (not a zombie), started at the recorded clock tick
 * of the same boot (a pid reused by another process has another start time), still leads the
 * recorded process group, and runs the recorded arguments.
 */
export function checkRecord(record: EngineRecord): RecordCheck {
  const boot = bootId();
  if (record.boot_id !== null && boot !== undefined && record.boot_id !== boot) {
    return { ok: false, why: "recorded before the host rebooted" };
  }
  const stat = readStat(record.pid);
  if (!stat || stat.state === "Z") return { ok: false, why: `pid ${record.pid} is gone` };
  if (stat.startTime !== record.start_time) {
    return {
      ok: false,
      why: `pid ${record.pid} is another process now (started at tick ${stat.startTime}, the engine at ${record.start_time})`,
    };
  }
  if (stat.pgid !== record.pgid) {
    return {
      ok: false,
      why: `pid ${record.pid} is in process group ${stat.pgid}, not ${record.pgid}`,
    };
  }
  const cmdline = readCmdline(record.pid);
  if (!cmdline || !cmdlineMatches(record.argv, cmdline)) {
    const shown = (cmdline ?? []).join(" ").slice(0, 200);
    return { ok: false, why: `pid ${record.pid} runs "${shown}", not the recorded engine` };
  }
  return { ok: true };
}

/** A process group of engines this agent launched, found by the marker in its environment. */
export type MarkedGroup = { pgid: number; pids: number[]; alias: string | undefined };

/**
 * Process groups whose processes carry `FLEET_ENGINE_OWNER=owner`, other than `keep` (the
 * adopted engines) and the agent's own group.
 */
export function findMarkedGroups(owner: string, keep: ReadonlySet<number>): MarkedGroup[] {
  const own = readStat(process.pid)?.pgid;
  const groups = new Map<number, MarkedGroup>();
  for (const pid of listPids()) {
    if (pid === process.pid) continue;
    if (readEnvVar(pid, ownerVariable) !== owner) continue;
    const stat = readStat(pid);
    if (!stat || stat.state === "Z" || stat.pgid === own || keep.has(stat.pgid)) continue;
    const group = groups.get(stat.pgid) ?? {
      pgid: stat.pgid,
      pids: [],
      alias: readEnvVar(pid, aliasVariable),
    };
    group.pids.push(pid);
    groups.set(stat.pgid, group);
  }
  return [...groups.values()];
}

/** Whether a process of group `pgid` is alive (zombies waiting to be reaped do not count). */
export function groupRunning(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
  } catch {
    return false;
  }
  const listed = listPids();
  if (listed.length === 0) return true;
  return listed.some((pid) => {
    const stat = readStat(pid);
    return stat?.pgid === pgid && stat.state !== "Z";
  });
}

/** SIGTERM to the group, SIGKILL after `graceMs`; resolves once the group is gone. */
export async function stopGroup(pgid: number, graceMs: number): Promise<void> {
  const signal = (name: NodeJS.Signals) => {
    try {
      process.kill(-pgid, name);
    } catch {
      // Already gone.
    }
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (groupRunning(pgid) && Date.now() < deadline) await Bun.sleep(50);
  if (!groupRunning(pgid)) return;
  signal("SIGKILL");
  const killDeadline = Date.now() + 5000;
  while (groupRunning(pgid) && Date.now() < killDeadline) await Bun.sleep(20);
}
