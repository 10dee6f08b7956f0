CREATE TABLE "usage_dead_letters" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"received_at" timestamp with time zone DEFAULT now() NOT NULL,
	"source" text NOT NULL,
	"reason" text NOT NULL,
	"record" jsonb NOT NULL
);
--> statement-breakpoint
ALTER TABLE "request_logs" ALTER COLUMN "latency_ms" DROP NOT NULL;--> statement-breakpoint
CREATE INDEX "usage_dead_letters_received_at_idx" ON "usage_dead_letters" USING btree ("received_at");