import { createHash } from "node:crypto";
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  statfsSync,
  writeSync,
} from "node:fs";
import {
  chmod,
  copyFile,
  link,
  mkdir,
  readFile,
  readlink,
  realpath,
  rename,
  rm,
  writeFile,
} from "node:fs/promises";
import { dirname, join } from "node:path";
import { type Manifest, manifestSchema, verifyManifestSignature } from "../../bundle/manifest.js";
import { runtimeId } from "../../bundle/model-pack.js";
import { AGENT_FILE, deviceLayout, MANIFEST_FILE, releaseLinkTarget } from "../../deploy/layout.js";
import {
  chunkSchema,
  decode,
  PROTOCOL_VERSION,
  type UpdateParams,
  type UpdateResult,
  updatePayloadFiles,
  variantSchema,
} from "../../protocol/schemas.js";
import { runningRelease } from "../../agent-host/release.js";
import { type DocOf, type JobContext, type JobEnd, type JobExecutor, RESTART_EXIT_CODE } from "./types.js";

export interface UpdateExecutorOptions {
  /** The device's install root: `/` on a device, a temporary folder in tests (src/deploy/layout.ts). */
  installRoot: string;
  /** Ed25519 public key (PEM or base64 SPKI) the bundle must be signed by; undefined: any valid signature. */
  trustedKey?: string;
  device: string;
  /** Starts of an unhealthy release the guard allows before it rolls back. */
  maxAttempts?: number;
  log?: (line: string) => void;
}

/**
 * The rollback guard, a fixed POSIX sh script the supervisor runs before every start of the agent
 * (systemd `ExecStartPre=`; the test supervisor's loop): while an update waits for its health check it
 * counts starts, and when the new release has started too often or its health timeout passed, it
 * points `current` back at the previous release (atomic rename) and leaves `update-outcome` for the
 * previous agent to report. It lives outside every release, so a release that cannot even start
 * is still rolled back.
 */
export const UPDATE_GUARD = `#!/bin/sh
# itera update guard (written by itera-agent; run before each start of the agent)
set -u
base="$1"
m="$base/update-pending"
[ -f "$m" ] || exit 0
get() { sed -n "s/^$1=//p" "$m" | head -n 1; }
job=$(get job); to=$(get to); prev=$(get previous); deadline=$(get deadline)
attempts=$(( $(get attempts) + 1 )); max=$(get max_attempts)
reason=""
if [ "$attempts" -gt "$max" ]; then
  reason="release $to did not come up healthy (online with its version) after $max starts"
elif [ "$(date +%s)" -gt "$deadline" ]; then
  reason="release $to did not come up healthy (online with its version) within its health timeout"
fi
if [ -z "$reason" ]; then
  sed "s/^attempts=.*/attempts=$attempts/" "$m" > "$m.tmp" && mv "$m.tmp" "$m"
  exit 0
fi
ln -s "$prev" "$base/.current.guard.$$" && mv -T "$base/.current.guard.$$" "$base/current" || exit 1
printf 'job=%s\\nto=%s\\nrunning=%s\\nreason=%s\\n' "$job" "$to" "\${prev#releases/}" "$reason" > "$base/update-outcome.tmp"
mv "$base/update-outcome.tmp" "$base/update-outcome"
rm -f "$m"
echo "itera update guard: rolled back to $prev: $reason" >&2
exit 0
`;

function keyValues(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

function readKeyValues(path: string): Record<string, string> | undefined {
  try {
    return keyValues(readFileSync(path, "utf8"));
  } catch {
    return undefined;
  }
}

/** Index ranges (ends inclusive) of the chunks not received yet. */
function missingRanges(received: Set<number>, chunks: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let i = 0; i < chunks; i++) {
    if (received.has(i)) continue;
    let j = i;
    while (j + 1 < chunks && !received.has(j + 1)) j++;
    out.push([i, j]);
    i = j;
  }
  return out;
}

/** Why this manifest may not be installed here, or undefined. */
function refuseManifest(
  raw: unknown,
  trustedKey: string | undefined,
  payloadBytes: number,
  kind: UpdateParams["payload"],
): string | undefined {
  const m = manifestSchema.safeParse(raw);
  if (!m.success) {
    const i = m.error.issues[0]!;
    return `the bundle's manifest is invalid: ${i.path.join(".") || "(top level)"}: ${i.message}`;
  }
  const t = m.data.target;
  if (t.platform !== process.platform || t.arch !== process.arch) {
    return `the bundle is for ${t.platform}-${t.arch}, this device is ${process.platform}-${process.arch}`;
  }
  if (!m.data.signature) return "the bundle is not signed";
  if (!verifyManifestSignature(m.data)) return "the bundle's signature does not match its manifest";
  if (trustedKey !== undefined && !verifyManifestSignature(m.data, trustedKey)) {
    return "the bundle is signed by a different key than the one this device trusts (--trusted-key)";
  }
  if (kind === "model-pack" && !m.data.parts) {
    return `a model-pack update needs an itera.bundle/v2 manifest (runtime and model pack as parts), not ${m.data.schema}`;
  }
  const files = updatePayloadFiles(m.data, kind);
  const total = files.reduce((a, f) => a + m.data.files[f]!.bytes, 0);
  if (total !== payloadBytes)
    return `payload_bytes ${payloadBytes} differs from the manifest's files${kind === "model-pack" ? " without the runtime" : ""} (${total} bytes)`;
  return undefined;
}

/**
 * A model-pack update takes the runtime from the current release: why that release cannot give it
 * (another runtime, or no readable manifest), or undefined. Its bytes are checked again, with every
 * other file, when the new release folder is verified.
 */
function runtimeProblem(currentDir: string, next: Manifest): string | undefined {
  const want = next.parts!.runtime;
  let running = "no release with a readable manifest";
  try {
    const cur = manifestSchema.parse(JSON.parse(readFileSync(join(currentDir, MANIFEST_FILE), "utf8")));
    const sha = cur.parts?.runtime.sha256 ?? cur.files[want.file]?.sha256;
    if (sha === want.sha256) return undefined;
    if (sha) running = runtimeId(sha);
  } catch {}
  return `runtime ${want.id} needed, this device runs ${running}: send the whole bundle (itera fleet update --bundle)`;
}

/**
 * `update` jobs: a whole bundle over MQTT, or (`payload: "model-pack"`) all of it but the runtime,
 * which is hard-linked from the current release when that runs the same one. The payload arrives in
 * chunks on this job's `chunk` topic, each checked against its sha256 and written at its offset in
 * `.staging/<version>-<sha>/payload` (the received indices are kept beside it, so a restart or
 * reconnect asks only for what is missing);
 * once complete, the payload's sha256 is checked, its files are laid out as a bundle folder and
 * checked as `itera verify` does (every file against the signed manifest, the signer by the trusted
 * key), moved to `releases/<version>`, `current` is switched atomically (`previous` kept), and the
 * agent exits for its supervisor to start the new release. That agent finishes the job once it is
 * online; the guard (UPDATE_GUARD) rolls back a release that does not get there.
 */
export function updateExecutor(o: UpdateExecutorOptions): JobExecutor<"update"> {
  const L = deviceLayout(o.installRoot);
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  let onChunk: ((payload: Buffer) => void) | undefined;

  const result = (doc: DocOf<"update">, r: Partial<UpdateResult>): UpdateResult => {
    const out: UpdateResult = {
      device: o.device,
      from: null,
      to: String((doc.params.manifest as { version?: unknown }).version),
      running: runningRelease(),
      rolled_back: false,
      bytes: 0,
      chunks_refused: 0,
      reason: null,
      ...r,
    };
    const variant = installedVariant(o.installRoot, out.running);
    return variant ? { ...out, variant } : out;
  };

  return {
    type: "update",
    validate(doc) {
      const p = doc.params;
      const why = refuseManifest(p.manifest, o.trustedKey, p.payload_bytes, p.payload);
      if (why) return why;
      if (p.chunks !== Math.ceil(p.payload_bytes / p.chunk_bytes)) {
        return `chunks ${p.chunks} does not cover ${p.payload_bytes} bytes in chunks of ${p.chunk_bytes}`;
      }
      if (!existsSync(L.current)) {
        return `no release is installed under ${L.base} (no current link): install one with \`itera flash\` first, so that an update has something to roll back to`;
      }
      if (p.payload === "model-pack") {
        const runtime = runtimeProblem(L.current, p.manifest as Manifest);
        if (runtime) return runtime;
      }
      const version = String((p.manifest as { version?: unknown }).version);
      const variant = installedVariant(o.installRoot, version);
      if (version === runningRelease() && p.variant !== undefined && p.variant !== variant) {
        // A variant is bound to its release: the same build cannot be two variants at once.
        return `release ${version} already runs here${variant ? ` as variant '${variant}'` : " without a variant"}; give variant '${p.variant}' a build with its own version`;
      }
      return spaceProblem(p.payload_bytes);
    },
    onMessage(_kind, payload) {
      onChunk?.(payload);
    },
    async run(doc, progress, signal, ctx) {
      const m = doc.params.manifest as Manifest;
      const pending = readKeyValues(L.updatePending);
      const outcome = readKeyValues(L.updateOutcome);
      // After a restart: this job was installed and the process restarted into the new release.
      if (outcome?.job === ctx.jobId) {
        await rm(L.updateOutcome, { force: true });
        return {
          status: "FAILED",
          error: `rolled back to ${outcome.running}: ${outcome.reason}`,
          results: [
            result(doc, {
              from: outcome.running ?? null,
              rolled_back: true,
              // Installed only once complete: the whole payload had arrived.
              bytes: doc.params.payload_bytes,
              reason: outcome.reason ?? null,
            }),
          ],
        };
      }
      if (pending?.job === ctx.jobId) return confirmHealthy(doc, pending, signal, ctx);
      if (
        runningRelease() === m.version &&
        (await readlink(L.current).catch(() => null)) === releaseLinkTarget(m.version)
      ) {
        return {
          status: "SUCCEEDED",
          results: [result(doc, { from: runningRelease(), reason: "already running this release" })],
        };
      }
      const space = spaceProblem(doc.params.payload_bytes);
      if (space) throw new Error(space);
      const { bytes, refused } = await receive(doc, progress, signal, ctx);
      progress("verifying the payload against the signed manifest");
      const { bundle, linked } = await layOut(doc, m);
      progress(`installing release ${m.version}`);
      const from = await install(bundle, m, doc, ctx, refused, linked);
      progress(`restarting into ${m.version}`);
      log(
        `agent ${o.device}: update ${from} -> ${m.version} installed (${bytes} bytes, ${refused} chunks refused); restarting`,
      );
      ctx.restart(`update to ${m.version}`);
      // The process ends; this job stays IN_PROGRESS on disk and the new release finishes it.
      await new Promise((_, reject) =>
        signal.addEventListener("abort", () => reject(signal.reason), { once: true }),
      );
      throw new Error("unreachable");
    },
  };

  /** The staged payload plus the release made from it, and a margin (as itera flash); undefined: it fits. */
  function spaceProblem(payloadBytes: number): string | undefined {
    const need = 2 * payloadBytes + Math.max(256 * 1024, Math.ceil(payloadBytes * 0.05));
    const fs = statfsSync(existingAncestor(L.base));
    const free = fs.bavail * fs.bsize;
    if (free >= need) return undefined;
    return `not enough free space under ${L.base}: ${Math.floor(free / 1024)} KiB free, ${Math.ceil(need / 1024)} KiB needed`;
  }

  function stagingDir(doc: DocOf<"update">, m: Manifest): string {
    return join(L.staging, `${m.version}-${doc.params.payload_sha256.slice(0, 12)}`);
  }

  async function receive(
    doc: DocOf<"update">,
    progress: (d: string) => void,
    signal: AbortSignal,
    ctx: JobContext,
  ): Promise<{ bytes: number; refused: number }> {
    const p = doc.params;
    const dir = stagingDir(doc, doc.params.manifest as Manifest);
    mkdirSync(dir, { recursive: true });
    const payloadPath = join(dir, "payload");
    const receivedPath = join(dir, "received");
    if (!existsSync(payloadPath)) closeSync(openSync(payloadPath, "w"));
    // Indices already on disk from an earlier try (each line written after its chunk).
    const received = new Set<number>(
      (existsSync(receivedPath) ? readFileSync(receivedPath, "utf8") : "")
        .split("\n")
        .filter((l) => /^\d+$/.test(l))
        .map(Number)
        .filter((i) => i < p.chunks),
    );
    let refused = 0;
    let lastNote = -1;
    const fd = openSync(payloadPath, "r+");
    const ask = () => {
      const missing = missingRanges(received, p.chunks).slice(0, 4096);
      if (missing.length > 0) {
        ctx.publish("need", {
          v: PROTOCOL_VERSION,
          jobId: ctx.jobId,
          execNo: ctx.execNo,
          missing,
          ts: Date.now(),
        });
      }
    };
    try {
      await new Promise<void>((resolve, reject) => {
        let idle: NodeJS.Timeout | undefined;
        const rearm = () => {
          clearTimeout(idle);
          // Nothing for a while (chunks lost with a coordinator that went away): ask again.
          idle = setTimeout(() => {
            ask();
            rearm();
          }, 5000);
        };
        const done = () => {
          clearTimeout(idle);
          onChunk = undefined;
          resolve();
        };
        signal.addEventListener(
          "abort",
          () => {
            clearTimeout(idle);
            onChunk = undefined;
            reject(signal.reason);
          },
          { once: true },
        );
        onChunk = (payload) => {
          const d = decode(chunkSchema, payload);
          const refuse = (why: string) => {
            refused++;
            log(`agent ${o.device}: refused a chunk of update ${ctx.jobId}: ${why}`);
          };
          if (!d.ok) return refuse(d.error);
          const c = d.value;
          if (c.jobId !== ctx.jobId) return refuse(`its jobId is '${c.jobId}'`);
          if (c.index >= p.chunks) return refuse(`index ${c.index} is beyond ${p.chunks} chunks`);
          if (received.has(c.index)) return;
          const data = Buffer.from(c.data, "base64");
          const want = c.index === p.chunks - 1 ? p.payload_bytes - c.index * p.chunk_bytes : p.chunk_bytes;
          const got = createHash("sha256").update(data).digest("hex");
          if (data.length !== want || got !== c.sha256) {
            refuse(
              `chunk ${c.index} has ${data.length} bytes with sha256 ${got}; it says ${c.sha256} (${want} bytes expected)`,
            );
            ctx.publish("need", {
              v: PROTOCOL_VERSION,
              jobId: ctx.jobId,
              execNo: ctx.execNo,
              missing: [[c.index, c.index]],
              ts: Date.now(),
            });
            return;
          }
          // On disk before the PUBACK (the agent takes chunks synchronously): a restart keeps it.
          writeSync(fd, data, 0, data.length, c.index * p.chunk_bytes);
          appendFileSync(receivedPath, `${c.index}\n`);
          received.add(c.index);
          rearm();
          const tenth = Math.floor((received.size * 10) / p.chunks);
          if (tenth !== lastNote) {
            lastNote = tenth;
            progress(`received ${received.size}/${p.chunks} chunks`);
          }
          if (received.size === p.chunks) done();
        };
        if (received.size === p.chunks) return done();
        ctx.onReconnect(ask);
        void ctx.online().then(() => {
          if (!signal.aborted) ask();
        });
        rearm();
      });
    } finally {
      closeSync(fd);
    }
    return { bytes: p.payload_bytes, refused };
  }

  /**
   * Check the whole payload, split it into the bundle's files (a model-pack payload: all but the
   * runtime, taken from the current release) and verify that folder as `itera verify` does.
   */
  async function layOut(doc: DocOf<"update">, m: Manifest): Promise<{ bundle: string; linked: string[] }> {
    const p = doc.params;
    const dir = stagingDir(doc, m);
    const payload = await readFile(join(dir, "payload"));
    const got = createHash("sha256").update(payload).digest("hex");
    if (payload.length !== p.payload_bytes || got !== p.payload_sha256) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(
        `the assembled payload has sha256 ${got} (${payload.length} bytes), the job says ${p.payload_sha256} (${p.payload_bytes} bytes); nothing was installed`,
      );
    }
    const bundle = join(dir, "bundle");
    await rm(bundle, { recursive: true, force: true });
    let offset = 0;
    for (const name of updatePayloadFiles(m, p.payload)) {
      const bytes = m.files[name]!.bytes;
      const dest = join(bundle, name);
      await mkdir(dirname(dest), { recursive: true });
      await writeFile(dest, payload.subarray(offset, offset + bytes));
      await chmod(dest, name === AGENT_FILE || name.endsWith(".sh") ? 0o755 : 0o644);
      offset += bytes;
    }
    const linked = p.payload === "model-pack" ? [await takeRuntime(m, bundle)] : [];
    await writeFile(join(bundle, MANIFEST_FILE), `${JSON.stringify(m, null, 2)}\n`);
    // The same check as `itera verify` and `itera flash`: every file (the taken runtime too), the
    // manifest's signature and, for a v2 bundle, the model pack's own (by the trusted key when set).
    const { verifyBundle } = await import("../../package/verify.js");
    const report = await verifyBundle(bundle, o.trustedKey);
    if (!report.ok || (o.trustedKey !== undefined && report.trusted_key !== true)) {
      await rm(dir, { recursive: true, force: true });
      throw new Error(
        `the received ${p.payload === "model-pack" ? "model pack" : "bundle"} does not verify: ${report.problems.join("; ")}; nothing was installed`,
      );
    }
    return { bundle, linked };
  }

  /** The current release's executable into the new release folder: a hard link, else a copy. */
  async function takeRuntime(m: Manifest, bundle: string): Promise<string> {
    const file = m.parts!.runtime.file;
    const from = join(await realpath(L.current), file);
    const to = join(bundle, file);
    await link(from, to).catch(() => copyFile(from, to));
    return file;
  }

  /** releases/<version> by rename, then `previous` and `current` switched atomically, and the guard armed. */
  async function install(
    bundle: string,
    m: Manifest,
    doc: DocOf<"update">,
    ctx: JobContext,
    refused: number,
    linked: string[],
  ): Promise<string> {
    const { atomicSymlink } = await import("../../deploy/rootfs.js");
    const target = releaseLinkTarget(m.version);
    const rel = join(L.releases, m.version);
    const currentLink = await readlink(L.current);
    if (currentLink === target) {
      throw new Error(
        `release ${m.version} is already current but this agent is ${runningRelease()}: give the new build its own version`,
      );
    }
    await mkdir(L.releases, { recursive: true });
    await rm(rel, { recursive: true, force: true });
    await rename(bundle, rel);
    // The variant beside the release, not in it (its files are exactly the signed manifest's).
    await recordVariant(o.installRoot, m.version, doc.params.variant);
    await rm(dirname(bundle), { recursive: true, force: true });
    // The guard and its marker first: from the switch on, a release that fails is rolled back.
    await writeFile(`${L.updateGuard}.tmp`, UPDATE_GUARD, { mode: 0o755 });
    await rename(`${L.updateGuard}.tmp`, L.updateGuard);
    const deadline = Math.ceil(Date.now() / 1000 + doc.params.health_timeout_s);
    const marker = [
      `job=${ctx.jobId}`,
      `exec=${ctx.execNo}`,
      `from=${runningRelease()}`,
      `to=${m.version}`,
      `previous=${currentLink}`,
      `deadline=${deadline}`,
      "attempts=0",
      // Reported by the new release, which did not see the transfer.
      `chunks_refused=${refused}`,
      `linked=${linked.join(",")}`,
      `max_attempts=${o.maxAttempts ?? 3}`,
      "",
    ].join("\n");
    await writeFile(`${L.updatePending}.tmp`, marker);
    await rename(`${L.updatePending}.tmp`, L.updatePending);
    await atomicSymlink(currentLink, L.previous);
    await atomicSymlink(target, L.current);
    return runningRelease();
  }

  /**
   * In the new release: healthy once online with its birth out (the coordinator checks that birth's
   * version). Not online by the health deadline: exit, so that the guard rolls back.
   */
  async function confirmHealthy(
    doc: DocOf<"update">,
    pending: Record<string, string>,
    signal: AbortSignal,
    ctx: JobContext,
  ): Promise<JobEnd> {
    if (runningRelease() !== pending.to) {
      await rm(L.updatePending, { force: true });
      return {
        status: "FAILED",
        error: `the device runs ${runningRelease()} after the update to ${pending.to}`,
        results: [result(doc, { from: pending.from ?? null, reason: `running ${runningRelease()}` })],
      };
    }
    const left = Number(pending.deadline) * 1000 - Date.now();
    let timer: NodeJS.Timeout | undefined;
    const healthy = await Promise.race([
      ctx.online().then(() => true),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(false), Math.max(0, left));
      }),
      new Promise<boolean>((_, reject) =>
        signal.addEventListener("abort", () => reject(signal.reason), { once: true }),
      ),
    ]).finally(() => clearTimeout(timer));
    if (!healthy) {
      ctx.restart(`release ${runningRelease()} not online within its health timeout: the guard rolls back`);
      await new Promise((_, reject) =>
        signal.addEventListener("abort", () => reject(signal.reason), { once: true }),
      );
    }
    await rm(L.updatePending, { force: true });
    await rm(L.staging, { recursive: true, force: true });
    return {
      status: "SUCCEEDED",
      results: [
        result(doc, {
          from: pending.from ?? null,
          bytes: doc.params.payload_bytes,
          chunks_refused: Number(pending.chunks_refused ?? 0),
          ...(pending.linked ? { linked: pending.linked.split(",") } : {}),
        }),
      ],
    };
  }
}

/** Where the A/B variant of an installed release is kept: `opt/itera/variants/<version>`, outside the release. */
function variantFile(installRoot: string, version: string): string {
  return join(deviceLayout(installRoot).base, "variants", version);
}

/** The A/B variant a release was installed as (`itera fleet update --variant`), or undefined. */
export function installedVariant(installRoot: string, version = runningRelease()): string | undefined {
  try {
    const name = readFileSync(variantFile(installRoot, version), "utf8").trim();
    return variantSchema.safeParse(name).success ? name : undefined;
  } catch {
    return undefined;
  }
}

async function recordVariant(installRoot: string, version: string, variant: string | undefined) {
  const file = variantFile(installRoot, version);
  if (variant === undefined) {
    await rm(file, { force: true });
    return;
  }
  await mkdir(dirname(file), { recursive: true });
  await writeFile(`${file}.tmp`, `${variant}\n`);
  await rename(`${file}.tmp`, file);
}

function existingAncestor(path: string): string {
  let dir = path;
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

export { RESTART_EXIT_CODE };

/**
 * Called once the agent is online: an update marker naming this very version means this release came
 * up healthy, whatever became of its job (its deadline may have passed during the restart), so the
 * guard must not roll it back at some later start.
 */
export async function settleHealthyUpdate(installRoot: string): Promise<void> {
  const L = deviceLayout(installRoot);
  if (readKeyValues(L.updatePending)?.to === runningRelease()) await rm(L.updatePending, { force: true });
}
