import { readFile } from "node:fs/promises";
import type { Command } from "commander";
import { z } from "zod";
import { addModelOptions, agentContext, type ModelOptions } from "../../agent-host/context.js";
import { IteraError } from "../../errors.js";
import { checkThreads } from "../../profile/threads.js";
import { agentDefaultThreads } from "../../tune/defaults.js";
import { action, collect } from "../run.js";

interface ServeCliOptions extends ModelOptions {
  host: string;
  port: string;
  threads?: string;
  maxTokensLimit: string;
  queueTimeout: string;
  maxQueue: string;
  logLevel: string;
  apiKeyFile?: string;
  rateLimit?: string;
  rateWindow: string;
  corsOrigin?: string[];
  compression: boolean;
  stateDir?: string;
  feedback: boolean;
}

const wholeNumber = (min: number, max = Number.MAX_SAFE_INTEGER) => z.coerce.number().int().min(min).max(max);

/** The numeric options, checked before anything starts; the key is the flag a failure names. */
const optionsSchema = z.object({
  "--port": wholeNumber(0, 65535),
  "--threads": wholeNumber(1, 1024).optional(),
  "--max-tokens-limit": wholeNumber(1),
  "--queue-timeout": z.coerce.number().min(0).max(86_400),
  "--max-queue": wholeNumber(0, 10_000),
  "--log-level": z.enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"]),
  "--rate-limit": wholeNumber(0, 1_000_000).optional(),
  "--rate-window": z.coerce.number().gt(0).max(86_400),
  "--cors-origin": z
    .array(z.string().regex(/^https?:\/\/[^/\s]+$/, "an origin is scheme://host[:port], no path"))
    .optional(),
});

function parseOptions(opts: ServeCliOptions): z.infer<typeof optionsSchema> {
  const r = optionsSchema.safeParse({
    "--port": opts.port,
    "--threads": opts.threads,
    "--max-tokens-limit": opts.maxTokensLimit,
    "--queue-timeout": opts.queueTimeout,
    "--max-queue": opts.maxQueue,
    "--log-level": opts.logLevel,
    "--rate-limit": opts.rateLimit,
    "--rate-window": opts.rateWindow,
    "--cors-origin": opts.corsOrigin,
  });
  if (r.success) return r.data;
  const issue = r.error.issues[0]!;
  const flag = String(issue.path[0]);
  throw new IteraError(`invalid ${flag}: ${issue.message}`, {
    where: flag,
    fix: `see \`itera-agent serve --help\` for what ${flag} accepts`,
  });
}

/** The API key: the file's content (trimmed), else $ITERA_API_KEY, else none. */
async function readApiKey(file: string | undefined): Promise<string | undefined> {
  let key: string | undefined;
  if (file !== undefined) {
    try {
      key = (await readFile(file, "utf8")).trim();
    } catch (e) {
      throw new IteraError(`cannot read the API key: ${(e as Error).message}`, {
        where: file,
        fix: "give a readable file that holds the key (e.g. from `openssl rand -hex 32`)",
      });
    }
  } else key = process.env.ITERA_API_KEY?.trim() || undefined;
  if (key !== undefined && key.length < 16) {
    throw new IteraError("the API key is shorter than 16 characters", {
      where: file ?? "ITERA_API_KEY",
      fix: "use a long random key, e.g. from `openssl rand -hex 32`",
    });
  }
  return key;
}

/** The agent's store in its state folder (shared with `itera-agent agent`, docs/fleet.md). */
async function openFeedbackStore(dir: string | undefined) {
  const [{ AgentStore }, { defaultStateDir }] = await Promise.all([
    import("../../agent/store.js"),
    import("../../agent/state-dir.js"),
  ]);
  return new AgentStore(dir ?? defaultStateDir());
}

/** Why listen() failed, said for the user. */
function listenError(e: NodeJS.ErrnoException, host: string, port: number): IteraError {
  const where = `${host}:${port}`;
  switch (e.code) {
    case "EADDRINUSE":
      return new IteraError(`port ${port} is already in use`, {
        where,
        fix: "stop the other server or choose another --port (0: any free port)",
      });
    case "EACCES":
      return new IteraError(`not allowed to listen on port ${port}`, {
        where,
        fix: "use a port above 1023, or give the service CAP_NET_BIND_SERVICE",
      });
    case "EADDRNOTAVAIL":
    case "ENOTFOUND":
      return new IteraError(`cannot listen on host '${host}': no such local address`, {
        where: "--host",
        fix: "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of the machine's addresses",
      });
    default:
      return new IteraError(`cannot listen: ${e.message}`, { where, fix: "check --host and --port" });
  }
}

/**
 * `itera-agent serve`: the HTTP API (docs/serve.md) on the bundle's model until SIGINT/SIGTERM.
 * It listens at once and loads the model behind it (/healthz is 503 until then); a model that fails
 * to load ends the command with that error.
 */
export function registerServe(program: Command): void {
  addModelOptions(
    program
      .command("serve")
      .description(
        "serve the model over HTTP: /v1/generate (JSON or SSE), /v1/completions, /healthz, /v1/info, /metrics",
      )
      .option("--host <addr>", "address to listen on (0.0.0.0: every interface)", "127.0.0.1")
      .option("--port <n>", "TCP port (0: any free port, logged at start)", "8080")
      .option(
        "--threads <n>",
        "intra-op threads (default: tuned.json's (itera-agent tune, itera build --tuned), else the profile's, at most this host's cores)",
      )
      .option("--max-tokens-limit <n>", "largest max_tokens a request may ask for", "2048")
      .option(
        "--queue-timeout <s>",
        "seconds a request may wait for the model before a 503 (0: never wait)",
        "30",
      )
      .option("--max-queue <n>", "requests that may wait for the model at once (more get a 503)", "8")
      .option(
        "--log-level <level>",
        "fatal, error, warn, info, debug, trace or silent (JSON lines on stderr)",
        "info",
      )
      .option(
        "--api-key-file <file>",
        "require `Authorization: Bearer <key>` on every request but /healthz, the key read from this file (or set ITERA_API_KEY)",
      )
      .option(
        "--rate-limit <n>",
        "requests per client address per --rate-window, then 429 (0: off; default: off on a loopback --host, else 120)",
      )
      .option("--rate-window <s>", "the rate limit's window in seconds", "60")
      .option(
        "--cors-origin <origin>",
        "let browsers on this origin call the API (CORS; repeat for more; default: none)",
        collect,
      )
      .option("--no-compression", "do not compress answers (gzip/brotli for clients that accept it)")
      .option(
        "--state-dir <dir>",
        "the agent's state folder: generations and their feedback are kept in its agent.db, and the agent sends the feedback (default: the agent's)",
      )
      .option("--no-feedback", "do not record generations; POST /v1/feedback answers 404"),
  ).action(
    action(async (opts: ServeCliOptions) => {
      const o = parseOptions(opts);
      const apiKey = await readApiKey(opts.apiKeyFile);
      const ctx = await agentContext(opts);
      // The agent's store, opened before the model: a bad --state-dir fails at once.
      const store = opts.feedback ? await openFeedbackStore(opts.stateDir) : undefined;
      const threads =
        o["--threads"] === undefined
          ? await agentDefaultThreads(ctx, opts.stateDir)
          : checkThreads(o["--threads"], "--threads");
      // Loaded here, not at start-up: the server and onnxruntime are only needed by this command.
      const [{ createServer, stderrLogger, defaultRateLimit }, { loadModel }] = await Promise.all([
        import("../../serve/index.js"),
        import("../../runtime/index.js"),
      ]);
      const rateLimit = o["--rate-limit"] ?? defaultRateLimit(opts.host);
      const server = await createServer({
        model: () => loadModel(ctx.modelDir, { threads }),
        modelDir: ctx.modelDir,
        profile: ctx.profile,
        manifest: ctx.manifest,
        mode: ctx.mode,
        threads,
        maxTokensLimit: o["--max-tokens-limit"],
        queue: { maxWaitMs: o["--queue-timeout"] * 1000, maxWaiting: o["--max-queue"] },
        logger: stderrLogger(o["--log-level"]),
        ...(apiKey !== undefined && { apiKey }),
        ...(rateLimit > 0 && { rateLimit: { max: rateLimit, windowMs: o["--rate-window"] * 1000 } }),
        corsOrigins: o["--cors-origin"] ?? [],
        compression: opts.compression,
        ...(store && { feedback: store }),
      });
      let onSignal: (signal: NodeJS.Signals) => void = () => {};
      const stopped = new Promise<void>((resolve) => {
        onSignal = (signal) => {
          server.app.log.info({ signal }, "stopping: generations in progress are cancelled");
          resolve();
        };
        process.once("SIGINT", onSignal);
        process.once("SIGTERM", onSignal);
      });
      try {
        await server.listen(opts.host, o["--port"]).catch((e: NodeJS.ErrnoException) => {
          throw listenError(e, opts.host, o["--port"]);
        });
        // A model that cannot load ends the command; otherwise serve until a signal.
        await Promise.race([stopped, server.ready.then(() => stopped)]);
      } finally {
        process.off("SIGINT", onSignal);
        process.off("SIGTERM", onSignal);
        await server.close();
        store?.close();
        server.app.log.info("stopped");
      }
    }),
  );
}
