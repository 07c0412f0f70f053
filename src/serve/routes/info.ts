import type { FastifyInstance } from "fastify";
import type { ServeContext } from "../context.js";

/** GET /v1/info: the model card, bundle manifest, device profile, runtime versions, hardware, limits. */
export function infoRoutes(app: FastifyInstance, ctx: ServeContext): void {
  app.get("/v1/info", async () => ctx.info());
}
