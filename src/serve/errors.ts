import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from "fastify";
import type { z } from "zod";
import { IteraError } from "../errors.js";
import { Cancelled } from "./queue.js";

/**
 * Every error the HTTP API answers, in one JSON shape (llama-server's and OpenAI's `error` envelope,
 * plus where and how to fix, as the CLI's errors):
 *
 *   {"error": {"code": 400, "type": "invalid_request_error", "message": "...", "where": "body.top_p", "fix": "..."}}
 */
export type ApiErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "method_not_allowed_error"
  | "unavailable_error"
  | "rate_limit_error"
  | "request_cancelled"
  | "server_error";

export interface ApiErrorBody {
  error: { code: number; type: ApiErrorType; message: string; where?: string; fix?: string };
}

export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly type: ApiErrorType,
    message: string,
    readonly where?: string,
    readonly fix?: string,
    /** Extra response headers (Retry-After, Allow). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  toJSON(): ApiErrorBody {
    return {
      error: {
        code: this.statusCode,
        type: this.type,
        message: this.message,
        ...(this.where ? { where: this.where } : {}),
        ...(this.fix ? { fix: this.fix } : {}),
      },
    };
  }
}

export function badRequest(message: string, where?: string, fix?: string): ApiError {
  return new ApiError(400, "invalid_request_error", message, where, fix);
}

/** 503 with Retry-After (seconds): the model is loading, or the queue is full or waited too long. */
export function unavailable(message: string, retryAfterS: number, fix?: string): ApiError {
  return new ApiError(503, "unavailable_error", message, undefined, fix, {
    "retry-after": String(Math.max(1, Math.ceil(retryAfterS))),
  });
}

/** A misspelt field's likely meaning: `maxTokens` or `max-tokens` for `max_tokens`. */
function suggestion(key: string, accepted: readonly string[]): string | undefined {
  const snake = key
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .replace(/-/g, "_")
    .toLowerCase();
  return accepted.find((a) => a === snake);
}

/**
 * A zod failure (parsed with `reportInput: true`) as one 400 naming the first offending field
 * (`body.max_tokens`); `help` says how to fix a field (undefined: the part as a whole); `accepted`
 * are the part's field names, to suggest the intended one for a misspelt field.
 */
export function fromZodError(
  error: z.ZodError,
  part: string,
  help: (field: string | undefined) => string,
  accepted: readonly string[] = [],
): ApiError {
  const issue = error.issues[0]!;
  const top = issue.path[0] === undefined ? undefined : String(issue.path[0]);
  const field = issue.path.map(String).join(".");
  const where = field ? `${part}.${field}` : part;
  if (issue.code === "unrecognized_keys") {
    const keys = issue.keys.map((k) => `'${k}'`).join(", ");
    const meant = issue.keys.flatMap((k) => {
      const s = suggestion(k, accepted);
      return s ? [`'${s}' for '${k}'`] : [];
    });
    return badRequest(
      `unknown field${issue.keys.length > 1 ? "s" : ""} ${keys}`,
      issue.keys.length === 1 ? `${where}.${issue.keys[0]}` : where,
      meant.length > 0 ? `write ${meant.join(", ")}` : `remove ${keys}; ${help(undefined)}`,
    );
  }
  const input = (issue as { input?: unknown }).input;
  let message: string;
  if (field && input === undefined) message = `missing field '${field}'`;
  else if (issue.code === "invalid_union") {
    const kind =
      input === null ? "null" : Array.isArray(input) ? "an array of the wrong items" : typeof input;
    message = `field '${field}' has the wrong type (${kind})`;
  } else message = field ? `field '${field}': ${issue.message}` : `${part}: ${issue.message}`;
  return badRequest(message, where, help(top));
}

/** Fastify's own request errors (bad JSON, wrong content type, too large) as the API's error shape. */
function fromFastifyError(e: FastifyError): ApiError | undefined {
  switch (e.code) {
    case "FST_ERR_CTP_INVALID_JSON_BODY":
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return badRequest(`the body is not valid JSON: ${e.message}`, "body", "send a JSON object");
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return new ApiError(
        415,
        "invalid_request_error",
        e.message,
        "header.content-type",
        "send the body as JSON with Content-Type: application/json",
      );
    case "FST_ERR_CTP_BODY_TOO_LARGE":
      return new ApiError(413, "invalid_request_error", e.message, "body", "send a smaller request");
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return badRequest(e.message, "header.content-length", "send a Content-Length that matches the body");
    default:
      return e.statusCode && e.statusCode >= 400 && e.statusCode < 500
        ? new ApiError(e.statusCode, "invalid_request_error", e.message)
        : undefined;
  }
}

/** Map anything a handler throws to an ApiError: user errors keep their message, the rest is a 500. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  // nginx's 499: the client closed the connection; nobody reads this answer.
  if (e instanceof Cancelled) return new ApiError(499, "request_cancelled", e.message);
  // The engine checks the prompt before the runtime sees it, so an IteraError from the runtime is the
  // model's fault (its files, its graph): a 500 that still says what and where, for the operator.
  if (e instanceof IteraError) return new ApiError(500, "server_error", e.message, e.where, e.fix);
  const fastify = (e as FastifyError)?.code ? fromFastifyError(e as FastifyError) : undefined;
  if (fastify) return fastify;
  return new ApiError(500, "server_error", "internal error (see the server's log)");
}

export function sendError(reply: FastifyReply, error: ApiError): FastifyReply {
  return reply.code(error.statusCode).headers(error.headers).send(error.toJSON());
}

/**
 * The error handler and the 404/405 handler: every failure answers the API's JSON shape; a 500 is
 * logged with its stack, a 4xx only at debug level.
 */
export function installErrorHandlers(app: FastifyInstance, routes: ReadonlyMap<string, readonly string[]>) {
  app.setErrorHandler((e: unknown, request: FastifyRequest, reply: FastifyReply) => {
    const api = toApiError(e);
    if (api.statusCode >= 500 && api.statusCode !== 503) request.log.error({ err: e }, "request failed");
    else if (api.statusCode === 499) request.log.info("the client left: generation cancelled");
    else request.log.debug({ err: e }, "request refused");
    return sendError(reply, api);
  });
  app.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) => {
    const path = request.url.split("?")[0]!;
    const methods = routes.get(path);
    const list = [...routes].map(([p, m]) => `${m.join("|")} ${p}`).join(", ");
    // OpenAI clients default to chat; the house models have no chat template to serve it with.
    const chat =
      path === "/v1/chat/completions" ? "chat completions are not served: use POST /v1/completions; " : "";
    if (methods) {
      return sendError(
        reply,
        new ApiError(
          405,
          "method_not_allowed_error",
          `${request.method} is not allowed on ${path}`,
          path,
          `use ${methods.join(" or ")}`,
          { allow: methods.join(", ") },
        ),
      );
    }
    return sendError(
      reply,
      new ApiError(
        404,
        "not_found_error",
        `no endpoint ${request.method} ${path}`,
        path,
        `${chat}endpoints: ${list}`,
      ),
    );
  });
}
