ALTER TABLE "instances" ADD COLUMN "failures" integer DEFAULT 0 NOT NULL;
--> statement-breakpoint
-- Until now the retry backoff counted an instance's failure events; carry that count over.
UPDATE "instances" i SET "failures" = (
  SELECT count(*)::int FROM "events" e
  WHERE e."alias" = i."alias" AND e."instance_id" = i."id"::text AND e."to_status" = 'failed'
);
