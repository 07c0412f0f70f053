import { resolve } from "node:path";
import type { FastifyInstance } from "fastify";
import { env } from "onnxruntime-node";
import { detectHardware, type Hardware } from "../../profile/detect.js";
import { VERSION } from "../../version.js";
import type { ServeContext } from "../context.js";

/** GET /v1/info: the model card, bundle manifest, device profile, runtime versions, hardware, limits. */
export function infoRoutes(app: FastifyInstance, ctx: ServeContext): void {
  // Hardware detection takes tens of milliseconds: once, on first use.
  let hardware: Promise<Hardware> | undefined;
  app.get("/v1/info", async () => {
    hardware ??= detectHardware();
    const { options, engine } = ctx;
    const m = engine.loaded;
    return {
      agent: { version: VERSION, node: process.version, mode: options.mode ?? "dev", pid: process.pid },
      runtime: { onnxruntime: env.versions.node ?? env.versions.common ?? null },
      model: {
        ...ctx.model,
        dir: resolve(options.modelDir),
        status: engine.status,
        load_ms: engine.loadMs === null ? null : Math.round(engine.loadMs),
        ...(m && {
          context_length: m.contextLength,
          vocab_size: m.vocabSize,
          eos_token_ids: [...m.eosIds],
          state: m.io.states.map((s) => s.kind),
          kv_cache: m.io.hasKvCache,
          search_defaults: m.config.search ?? {},
          card: m.card ?? null,
        }),
      },
      profile: options.profile ?? null,
      manifest: options.manifest ?? null,
      hardware: await hardware,
      server: {
        threads: options.threads ?? null,
        max_tokens_limit: ctx.maxTokensLimit,
        queue: { max_wait_s: ctx.queueLimits.maxWaitMs / 1000, max_waiting: ctx.queueLimits.maxWaiting },
      },
    };
  });
}
