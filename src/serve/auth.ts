import { createHash, timingSafeEqual } from "node:crypto";
import type { FastifyInstance } from "fastify";
import { ApiError, sendError } from "./errors.js";

/** Paths answered without the key: a health check or load balancer has none. */
const PUBLIC_PATHS = new Set(["/healthz"]);

const digest = (s: string) => createHash("sha256").update(s).digest();

/**
 * Optional API key, as llama-server's --api-key and OpenAI's: every request but GET /healthz must
 * send `Authorization: Bearer <key>`, else 401. Compared in constant time (over sha256 digests, so
 * the key's length does not leak either).
 */
export function requireApiKey(app: FastifyInstance, key: string): void {
  const expected = digest(key);
  app.addHook("onRequest", (request, reply, done) => {
    // A CORS preflight carries no credentials by design (the CORS hook answers it before this one).
    if (request.method === "OPTIONS" || PUBLIC_PATHS.has(request.url.split("?")[0]!)) return done();
    const header = request.headers.authorization ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (m && timingSafeEqual(digest(m[1]!.trim()), expected)) return done();
    sendError(
      reply,
      new ApiError(
        401,
        "authentication_error",
        header ? "the API key is not valid" : "this server needs an API key",
        "header.authorization",
        "send Authorization: Bearer <key>, the key the server was started with (ITERA_API_KEY or --api-key-file)",
        { "www-authenticate": "Bearer" },
      ),
    );
  });
}
