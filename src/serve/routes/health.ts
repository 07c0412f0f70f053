import { performance } from "node:perf_hooks";
import type { FastifyInstance } from "fastify";
import { VERSION } from "../../version.js";
import type { ServeContext } from "../context.js";

/**
 * GET /healthz: 200 once the model is loaded and can generate, 503 while it loads (or if loading
 * failed), as llama-server's /health. A deploy health check or load balancer polls it.
 */
export function healthRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.get("/healthz", async (_request, reply) => {
    const status = ctx.engine.status;
    const load = ctx.engine.loadMs;
    return reply.code(status === "ready" ? 200 : 503).send({
      status: status === "ready" ? "ok" : status,
      model_loaded: status === "ready",
      model: ctx.model.id,
      version: VERSION,
      uptime_s: Math.round(performance.now() / 100) / 10,
      ...(load !== null && { model_load_ms: Math.round(load) }),
      generating: ctx.engine.queue.busy,
      waiting: ctx.engine.queue.waiting,
    });
  });
}
