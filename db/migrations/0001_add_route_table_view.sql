-- The singleton row that carries the route snapshot's version.
INSERT INTO "fleet_state" ("id") VALUES (1) ON CONFLICT DO NOTHING;
--> statement-breakpoint
-- Bumps the version whenever something a router's snapshot holds changes. Row-level with
-- WHEN clauses so that no-op updates (a heartbeat rewriting the same values) do not bump it.
CREATE FUNCTION "fleet_bump_routes_version"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE "fleet_state" SET "routes_version" = "routes_version" + 1 WHERE "id" = 1;
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER "routes_bump_version_on_write" AFTER INSERT OR DELETE ON "routes"
  FOR EACH ROW EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "routes_bump_version_on_update" AFTER UPDATE ON "routes"
  FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "workers_bump_version_on_delete" AFTER DELETE ON "workers"
  FOR EACH ROW EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "workers_bump_version_on_update" AFTER UPDATE ON "workers"
  FOR EACH ROW WHEN (
    OLD."status" IS DISTINCT FROM NEW."status"
    OR OLD."worker_url" IS DISTINCT FROM NEW."worker_url"
    OR OLD."public_worker_url" IS DISTINCT FROM NEW."public_worker_url"
  ) EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_bump_version_on_write" AFTER INSERT OR DELETE ON "api_keys"
  FOR EACH ROW EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_bump_version_on_update" AFTER UPDATE ON "api_keys"
  FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
-- The dashboard view: one row per route, with the URL in use and whether it is the
-- worker's public (port-forwarding) URL, instance and worker state, and `serving`: whether
-- routers send traffic there now.
CREATE VIEW "route_table" AS
SELECT
  r."alias",
  r."model_name",
  r."worker_id",
  r."worker_url" AS "url",
  (w."public_worker_url" IS NOT NULL AND r."worker_url" = w."public_worker_url") AS "is_public",
  w."worker_url",
  w."public_worker_url",
  r."vllm_port",
  r."instance_id"::text AS "instance_id",
  i."status" AS "instance_status",
  r."ready",
  w."status" AS "worker_status",
  w."last_heartbeat",
  (r."ready" AND w."status" = 'online') AS "serving",
  r."created_at"
FROM "routes" r
JOIN "workers" w ON w."worker_id" = r."worker_id"
JOIN "instances" i ON i."id" = r."instance_id";
