-- TRUNCATE fires no row triggers: without these, an operator emptying routes, workers or
-- api_keys by hand would leave routers serving the old snapshot (its version unchanged).
CREATE TRIGGER "routes_bump_version_on_truncate" AFTER TRUNCATE ON "routes"
  FOR EACH STATEMENT EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "workers_bump_version_on_truncate" AFTER TRUNCATE ON "workers"
  FOR EACH STATEMENT EXECUTE FUNCTION "fleet_bump_routes_version"();
--> statement-breakpoint
CREATE TRIGGER "api_keys_bump_version_on_truncate" AFTER TRUNCATE ON "api_keys"
  FOR EACH STATEMENT EXECUTE FUNCTION "fleet_bump_routes_version"();
