CREATE TABLE "routers" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"token_hash" text NOT NULL,
	"prefix" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_used_at" timestamp with time zone,
	"revoked_at" timestamp with time zone,
	CONSTRAINT "routers_name_unique" UNIQUE("name"),
	CONSTRAINT "routers_token_hash_unique" UNIQUE("token_hash")
);
--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "credential_hash" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "agent_token" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "pending_credential_hash" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "pending_agent_token" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "rotate_requested_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "internal_reachable" boolean;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "internal_rtt_ms" integer;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "internal_probe_error" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "public_reachable" boolean;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "public_rtt_ms" integer;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "public_probe_error" text;--> statement-breakpoint
ALTER TABLE "workers" ADD COLUMN "probed_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "workers" ADD CONSTRAINT "workers_credential_hash_unique" UNIQUE("credential_hash");--> statement-breakpoint
-- Routes carry their worker's agent credential: a rotation changes what routers hold.
DROP TRIGGER "workers_bump_version_on_update" ON "workers";
--> statement-breakpoint
CREATE TRIGGER "workers_bump_version_on_update" AFTER UPDATE ON "workers"
  FOR EACH ROW WHEN (
    OLD."status" IS DISTINCT FROM NEW."status"
    OR OLD."worker_url" IS DISTINCT FROM NEW."worker_url"
    OR OLD."public_worker_url" IS DISTINCT FROM NEW."public_worker_url"
    OR OLD."agent_token" IS DISTINCT FROM NEW."agent_token"
  ) EXECUTE FUNCTION "fleet_bump_routes_version"();
