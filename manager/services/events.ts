import { type Db, schema } from "../../db/index.ts";

/** One `events` row: a state transition (worker, instance, model, reconciliation). */
export type EventInput = {
  kind: string;
  workerId?: string | null;
  alias?: string | null;
  instanceId?: string | null;
  fromStatus?: string | null;
  toStatus?: string | null;
  message?: string | null;
  detail?: Record<string, unknown> | null;
};

/** Appends events (state transitions only; callers never write one when nothing changed). */
export async function recordEvents(db: Db, ts: Date, events: EventInput[]): Promise<void> {
  if (events.length === 0) return;
  await db.insert(schema.events).values(
    events.map((e) => ({
      ts,
      kind: e.kind,
      workerId: e.workerId ?? null,
      alias: e.alias ?? null,
      instanceId: e.instanceId ?? null,
      fromStatus: e.fromStatus ?? null,
      toStatus: e.toStatus ?? null,
      message: e.message ?? null,
      detail: e.detail ?? null,
    })),
  );
}
