import type { FastifyInstance } from "fastify";
import type { ServeContext } from "../context.js";

/** GET /metrics: the Prometheus text exposition (src/serve/metrics.ts lists what is measured). */
export function metricsRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.get("/metrics", async (_request, reply) => {
    const { contentType, body } = await ctx.metrics.exposition();
    return reply.type(contentType).send(body);
  });
}
