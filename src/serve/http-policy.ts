import compress from "@fastify/compress";
import cors from "@fastify/cors";
import rateLimit from "@fastify/rate-limit";
import type { FastifyInstance } from "fastify";
import { ApiError } from "./errors.js";

/**
 * What the API does for clients beyond its endpoints (docs/serve.md, "Rate limit, CORS,
 * compression"): a per-client rate limit, CORS for an allow-list of browser origins, and compressed
 * responses. Registered before the routes and the API-key hook, so a CORS preflight is answered
 * without a key and every route gets the limit.
 */
export interface HttpPolicy {
  /** Requests per client address per window; undefined: no limit. */
  rateLimit?: { max: number; windowMs: number };
  /** Browser origins allowed to call the API (`https://app.example.org`); empty: CORS off. */
  corsOrigins?: readonly string[];
  /** gzip/brotli/deflate for answers over 1 KiB when the client accepts it (default on). */
  compression?: boolean;
}

/** Paths a rate limit never applies to: a health check must not be refused by its own polling. */
const UNLIMITED = new Set(["/healthz"]);

/** Loopback listen addresses: only this machine's clients reach the server. */
export function isLoopback(host: string): boolean {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

/** The default limit: off on loopback (only local clients), else 120 requests a minute per client. */
export function defaultRateLimit(host: string): number {
  return isLoopback(host) ? 0 : 120;
}

export async function registerHttpPolicy(app: FastifyInstance, policy: HttpPolicy): Promise<void> {
  if (policy.corsOrigins && policy.corsOrigins.length > 0) {
    const allowed = new Set(policy.corsOrigins);
    await app.register(cors, {
      // An origin not in the list gets no Access-Control-* headers: the browser blocks the answer.
      origin: (origin, cb) => cb(null, origin !== undefined && allowed.has(origin)),
      methods: ["GET", "HEAD", "POST"],
      allowedHeaders: ["content-type", "authorization", "x-request-id"],
      exposedHeaders: ["x-request-id", "retry-after", "x-ratelimit-limit", "x-ratelimit-remaining"],
      maxAge: 600,
    });
  }
  if (policy.rateLimit) {
    const { max, windowMs } = policy.rateLimit;
    await app.register(rateLimit, {
      max,
      timeWindow: windowMs,
      allowList: (request) => UNLIMITED.has(request.url.split("?")[0]!),
      errorResponseBuilder: (_request, context) =>
        new ApiError(
          429,
          "rate_limit_error",
          `too many requests: at most ${context.max} per ${context.after} from one client`,
          "client",
          `retry after ${Math.max(1, Math.ceil(context.ttl / 1000))} s (Retry-After), or ask the operator to raise --rate-limit`,
        ),
    });
  }
  if (policy.compression !== false) {
    // Server-Sent Events take the reply over (hijack), so tokens are never held in a compressor.
    // Request bodies stay plain JSON: no decompression, so the 1 MiB body limit means 1 MiB.
    await app.register(compress, { globalCompression: true, globalDecompression: false, threshold: 1024 });
  }
}
