CREATE TABLE "api_keys" (
	"id" text PRIMARY KEY NOT NULL,
	"key_hash" text NOT NULL,
	"prefix" text NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"revoked_at" timestamp with time zone,
	CONSTRAINT "api_keys_key_hash_unique" UNIQUE("key_hash")
);
--> statement-breakpoint
CREATE TABLE "events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"ts" timestamp with time zone DEFAULT now() NOT NULL,
	"kind" text NOT NULL,
	"worker_id" text,
	"alias" text,
	"instance_id" text,
	"from_status" text,
	"to_status" text,
	"message" text,
	"detail" jsonb
);
--> statement-breakpoint
CREATE TABLE "fleet_state" (
	"id" integer PRIMARY KEY DEFAULT 1 NOT NULL,
	"epoch" uuid DEFAULT gen_random_uuid() NOT NULL,
	"routes_version" bigint DEFAULT 1 NOT NULL,
	CONSTRAINT "fleet_state_singleton_check" CHECK ("fleet_state"."id" = 1)
);
--> statement-breakpoint
CREATE TABLE "gpus" (
	"worker_id" text NOT NULL,
	"index" integer NOT NULL,
	"uuid" text,
	"name" text NOT NULL,
	"memory_total_mib" integer NOT NULL,
	"memory_used_mib" integer,
	"memory_free_mib" integer,
	"utilization_pct" integer,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "gpus_worker_id_index_pk" PRIMARY KEY("worker_id","index")
);
--> statement-breakpoint
CREATE TABLE "instances" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"alias" text NOT NULL,
	"worker_id" text NOT NULL,
	"gpu_ids" integer[] DEFAULT '{}'::integer[] NOT NULL,
	"gpu_memory_utilization" double precision NOT NULL,
	"port" integer,
	"pid" integer,
	"status" text DEFAULT 'pending' NOT NULL,
	"restarts" integer DEFAULT 0 NOT NULL,
	"last_error" text,
	"ready_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "instances_alias_worker_id_unique" UNIQUE("alias","worker_id"),
	CONSTRAINT "instances_status_check" CHECK ("instances"."status" in ('pending', 'starting', 'ready', 'failed', 'stopping', 'stopped', 'lost')),
	CONSTRAINT "instances_gpu_memory_utilization_check" CHECK ("instances"."gpu_memory_utilization" > 0 and "instances"."gpu_memory_utilization" <= 1)
);
--> statement-breakpoint
CREATE TABLE "models" (
	"alias" text PRIMARY KEY NOT NULL,
	"model_name" text NOT NULL,
	"max_model_len" integer,
	"gpu_memory_utilization" double precision DEFAULT 0.9 NOT NULL,
	"tensor_parallel_size" integer DEFAULT 1 NOT NULL,
	"replicas" integer DEFAULT 1 NOT NULL,
	"dtype" text,
	"worker_id" text,
	"gpu_ids" integer[],
	"extra_args" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"placement" text DEFAULT 'binpack' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "models_gpu_memory_utilization_check" CHECK ("models"."gpu_memory_utilization" > 0 and "models"."gpu_memory_utilization" <= 1),
	CONSTRAINT "models_tensor_parallel_size_check" CHECK ("models"."tensor_parallel_size" >= 1),
	CONSTRAINT "models_replicas_check" CHECK ("models"."replicas" >= 1),
	CONSTRAINT "models_placement_check" CHECK ("models"."placement" in ('binpack', 'spread'))
);
--> statement-breakpoint
CREATE TABLE "request_logs" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"ts" timestamp with time zone DEFAULT now() NOT NULL,
	"api_key_id" text,
	"alias" text NOT NULL,
	"worker_id" text,
	"status" integer NOT NULL,
	"latency_ms" integer NOT NULL,
	"ttft_ms" integer,
	"prompt_tokens" integer,
	"completion_tokens" integer,
	"stream" boolean DEFAULT false NOT NULL
);
--> statement-breakpoint
CREATE TABLE "routes" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"alias" text NOT NULL,
	"model_name" text NOT NULL,
	"worker_id" text NOT NULL,
	"worker_url" text NOT NULL,
	"vllm_port" integer,
	"instance_id" uuid NOT NULL,
	"ready" boolean DEFAULT false NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "routes_instance_id_unique" UNIQUE("instance_id")
);
--> statement-breakpoint
CREATE TABLE "workers" (
	"worker_id" text PRIMARY KEY NOT NULL,
	"worker_url" text NOT NULL,
	"public_worker_url" text,
	"status" text DEFAULT 'online' NOT NULL,
	"last_heartbeat" timestamp with time zone DEFAULT now() NOT NULL,
	"registered_at" timestamp with time zone DEFAULT now() NOT NULL,
	"agent_version" text,
	"labels" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"gpu_warning" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "workers_status_check" CHECK ("workers"."status" in ('online', 'offline'))
);
--> statement-breakpoint
ALTER TABLE "gpus" ADD CONSTRAINT "gpus_worker_id_workers_worker_id_fk" FOREIGN KEY ("worker_id") REFERENCES "public"."workers"("worker_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "instances" ADD CONSTRAINT "instances_alias_models_alias_fk" FOREIGN KEY ("alias") REFERENCES "public"."models"("alias") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "instances" ADD CONSTRAINT "instances_worker_id_workers_worker_id_fk" FOREIGN KEY ("worker_id") REFERENCES "public"."workers"("worker_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "request_logs" ADD CONSTRAINT "request_logs_api_key_id_api_keys_id_fk" FOREIGN KEY ("api_key_id") REFERENCES "public"."api_keys"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "routes" ADD CONSTRAINT "routes_alias_models_alias_fk" FOREIGN KEY ("alias") REFERENCES "public"."models"("alias") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "routes" ADD CONSTRAINT "routes_worker_id_workers_worker_id_fk" FOREIGN KEY ("worker_id") REFERENCES "public"."workers"("worker_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "routes" ADD CONSTRAINT "routes_instance_id_instances_id_fk" FOREIGN KEY ("instance_id") REFERENCES "public"."instances"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "api_keys_revoked_at_idx" ON "api_keys" USING btree ("revoked_at");--> statement-breakpoint
CREATE INDEX "events_ts_idx" ON "events" USING btree ("ts");--> statement-breakpoint
CREATE INDEX "events_worker_id_ts_idx" ON "events" USING btree ("worker_id","ts");--> statement-breakpoint
CREATE INDEX "events_alias_ts_idx" ON "events" USING btree ("alias","ts");--> statement-breakpoint
CREATE INDEX "instances_worker_id_idx" ON "instances" USING btree ("worker_id");--> statement-breakpoint
CREATE INDEX "request_logs_ts_idx" ON "request_logs" USING btree ("ts");--> statement-breakpoint
CREATE INDEX "request_logs_alias_ts_idx" ON "request_logs" USING btree ("alias","ts");--> statement-breakpoint
CREATE INDEX "request_logs_api_key_id_ts_idx" ON "request_logs" USING btree ("api_key_id","ts");--> statement-breakpoint
CREATE INDEX "routes_alias_idx" ON "routes" USING btree ("alias");--> statement-breakpoint
CREATE INDEX "routes_worker_id_idx" ON "routes" USING btree ("worker_id");--> statement-breakpoint
CREATE INDEX "workers_status_last_heartbeat_idx" ON "workers" USING btree ("status","last_heartbeat");