import { createPrivateKey, type KeyObject } from "node:crypto";
import { renameSync } from "node:fs";
import { chmod, copyFile, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { hostname, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { AGENT_CODE_CACHE_OUT_ENV } from "../agent-host/agent-script-asset.js";
import {
  BUNDLE_INDEX_ASSET,
  RUNTIME_INDEX_SCHEMA,
  type RuntimeIndex,
  type StoredAsset,
} from "../agent-host/bundle-index.js";
import {
  BUNDLE_SCHEMA,
  type BundleParts,
  canonicalJson,
  type Manifest,
  manifestSchema,
  signManifest,
} from "../bundle/manifest.js";
import { MODEL_PACK_FILE, runtimeId } from "../bundle/model-pack.js";
import { IteraError } from "../errors.js";
import { loadProfile } from "../profile/load.js";
import type { DeviceProfile } from "../profile/schema.js";
import { sha256File, tempPathFor } from "../util/fs.js";
import { execTracked, removeOnInterrupt, tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { checkOutputDir, checkOutputFile, type DirTarget, writeDirAtomic } from "../util/output.js";
import { progress } from "../util/progress.js";
import { VERSION } from "../version.js";
import { bundleAgentScript, packageRoot } from "./agent-script.js";
import {
  type AssetSource,
  nativeAddonFiles,
  type PreparedAsset,
  prepareAsset,
  profileAsset,
} from "./assets.js";
import {
  type BundleFacts,
  DEFAULT_SERVICE_ARGS,
  installScript,
  readme,
  systemdUnit,
} from "./bundle-files.js";
import { loadGenaiConfig } from "../model/genai-config.js";
import { checkModelRuns, firstPromptId, type ModelCheck } from "./model-check.js";
import { readModelInput } from "./model-input.js";
import { describeNodeBinary, type IcuChoice, NODE_VERSION, nodeBinary } from "./node-binary.js";
import { type QuantizationDecision, resolveQuantization } from "./quantization.js";
import { readBuildTuned, tunedQuant, withTuned } from "./tuned.js";
import { writeModelPack } from "./model-pack.js";
import { verifyBundle } from "./verify.js";
import { makeSeaExecutable, type SeaExecutable, v8HeapFlags } from "./sea.js";
import { executableName, hostTarget, type Target, targetKey, targetOf } from "./target.js";

/**
 * `itera build`: model folder + device profile -> firmware-bundles/<model>-<version>-<profile>/
 * (DESIGN.md §5) and a .tar.gz of it beside the folder. Inputs are all checked before the long
 * work starts; the folder is filled under a temp name and renamed into place only when complete.
 */
// Children are killed on SIGINT/SIGTERM, so none writes into the work folder after its cleanup.
const run = execTracked;

export interface BuildOptions {
  model: string;
  profile: string;
  quant?: string;
  /** Allowed perplexity increase when quantizing here ("2%" default, "none"). */
  quantBudget?: string;
  /** The quantizer's options when quantizing here (`itera quantize --exclude/--calib/--eval`). */
  exclude?: string[];
  calib?: string;
  eval?: string;
  /** Path to an Ed25519 private key (PKCS#8 PEM) made by `itera keygen`. */
  sign?: string;
  out?: string;
  /** Write into a bundle folder that holds other files, replacing only the bundle's own files. */
  force?: boolean;
  /** Overrides the model card's version in the bundle id and the release folder name. */
  version?: string;
  serviceArgs?: string;
  /**
   * An earlier v2 bundle whose runtime (the executable) this build reuses byte for byte, so that a
   * device running it takes only the new model pack (`itera flash` sends what changed). Its profile
   * and target must be this build's.
   */
  runtime?: string;
  /** A tuned.json (`itera tune`) carried in the bundle's model folder, where the agent reads it. */
  tuned?: string;
  /** Embed the official Node's full ICU data instead of English only (src/package/icu-data.ts). */
  fullIcu?: boolean;
  quiet?: boolean;
}

export interface BuildResult {
  dir: string;
  tarball: string;
  manifest: Manifest;
  sizes: {
    executable: number;
    tarball: number;
    node_raw: number;
    node_stripped: number;
    agent_script: number;
    assets_raw: number;
    assets_stored: number;
  };
  strip: string;
  /** The runtime part: built here, or reused from the --runtime bundle (its path). */
  runtime: { id: string; reused_from: string | null };
  /** Bytes of each part: the runtime (the executable) and the model pack (model/ + model-pack.json). */
  parts: { runtime_bytes: number; model_pack_bytes: number };
  /** What the build did to check that the executable starts. */
  self_check: string;
  /** The model as given, run once before anything was written (and the embedded one, if quantized). */
  model_check: ModelCheck;
  /** The precision chosen, and the size and quality change the quantizer measured. */
  quantization: QuantizationDecision;
  seconds: number;
}

export async function buildBundle(opts: BuildOptions): Promise<BuildResult> {
  const started = Date.now();
  const profile = await loadProfile(opts.profile);
  const target = targetOf(profile, opts.profile);
  const modelIn = await readModelInput(opts.model);
  const signingKey = opts.sign === undefined ? undefined : await readSigningKey(opts.sign);
  const reuse =
    opts.runtime === undefined ? undefined : await readRuntimeBundle(opts.runtime, profile.name, target);
  // Checked before any long work; its pick's precision is the build's when --quant is not given.
  const tuned = opts.tuned === undefined ? undefined : await readBuildTuned(opts.tuned, profile.name);
  const quant = await resolveQuantization(modelIn, profile, opts.quant ?? tunedQuant(tuned), {
    budget: opts.quantBudget,
    exclude: opts.exclude,
    calib: opts.calib,
    eval: opts.eval,
  });
  const version = opts.version ?? modelIn.version;
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(version)) {
    throw new IteraError(`--version '${version}' cannot name a release folder`, {
      fix: "use letters, digits, '.', '_', '+' and '-' only",
    });
  }
  // Cheap, and before any long work: the model must run here before it is quantized or packaged.
  const modelCheck = await checkModelRuns(modelIn.dir);
  const bundleId = `${modelIn.id}-${version}-${profile.name}`;
  const outRoot = resolve(opts.out ?? "firmware-bundles");
  const dir = join(outRoot, bundleId);
  const tarball = `${dir}.tar.gz`;
  const outTarget = await checkOutputs(opts, bundleId, dir, tarball);
  const exe = executableName(target);
  const facts: BundleFacts = {
    bundleId,
    version,
    profile: profile.name,
    platform: target.platform,
    arch: target.arch,
    exe,
    modelId: modelIn.id,
    quant: "",
    serviceArgs: opts.serviceArgs ?? DEFAULT_SERVICE_ARGS,
  };

  const steps = progress(`build ${bundleId}`, 6, { quiet: opts.quiet === true });
  // Interrupted (Ctrl-C, SIGTERM): the work folder and the archive's temp name go too.
  const { path: work, release: releaseWork } = tempDirRemovedOnInterrupt(join(tmpdir(), "itera-build-"));
  const tarTmp = tempPathFor(tarball);
  const releaseTar = removeOnInterrupt(tarTmp);
  let result: Omit<BuildResult, "seconds" | "self_check" | "model_check" | "quantization"> | undefined;
  let decision: QuantizationDecision | undefined;
  let selfCheck = "";
  try {
    const model = await quant.prepare(work, opts.quiet === true);
    decision = model.decision;
    facts.quant = decision.mode;
    // The quantizer ran the new graph already; this also checks it with the tokenizer it ships with.
    if (model.dir !== modelIn.dir) await checkModelRuns(model.dir);
    if (tuned) model.dir = await withTuned(model.dir, tuned, work);
    const runtime =
      reuse ?? (await buildRuntime(work, profile, target, opts.fullIcu ? "full" : "english", steps));
    const commit = await gitCommitOf(packageRoot);
    steps.update(4, "single executable");
    // The archive moves in the same synchronous step as the folder: both or neither.
    await writeDirAtomic({ ...outTarget, alsoSync: () => renameSync(tarTmp, tarball) }, async (tmp) => {
      const made = await runtime.write(join(tmp, exe));
      const pem = signingKey?.export({ type: "pkcs8", format: "pem" }).toString();
      const pack = await writeModelPack(
        tmp,
        model.dir,
        { id: modelIn.id, quant: decision!.mode, card: model.card ?? {} },
        pem,
      );
      // The bundle's files and its manifest (install.sh and the manifest hold the executable's sha256).
      const writeRelease = async () => {
        steps.update(5, "bundle files");
        const names = await writeBundleFiles(tmp, facts, Object.keys(pack.files));
        const files: Manifest["files"] = { ...pack.files };
        for (const f of names) {
          files[f] = { sha256: await sha256File(join(tmp, f)), bytes: (await stat(join(tmp, f))).size };
        }
        const exeEntry = files[exe]!;
        const parts: BundleParts = {
          runtime: {
            file: exe,
            sha256: exeEntry.sha256,
            bytes: exeEntry.bytes,
            id: runtimeId(exeEntry.sha256),
            itera_version: runtime.index.build.itera_version,
            index_sha256: runtime.indexSha256,
          },
          model_pack: {
            manifest: MODEL_PACK_FILE,
            sha256: pack.sha256,
            bytes: pack.bytes,
            id: modelIn.id,
            quant: decision!.mode,
          },
        };
        let manifest: Manifest = manifestSchema.parse({
          schema: BUNDLE_SCHEMA,
          bundle_id: bundleId,
          version,
          model: { id: modelIn.id, quant: decision!.mode, card: model.card ?? {} },
          profile: profile.name,
          target: runtime.index.target,
          files,
          assets: runtime.assets,
          build: {
            itera_version: VERSION,
            ...(commit ? { git_commit: commit } : {}),
            built_at: new Date().toISOString(),
            host: `${hostname()} ${process.platform}-${process.arch} node ${process.version}`,
          },
          parts,
        });
        if (pem) manifest = signManifest(manifest, pem);
        await writeFile(join(tmp, "manifest.json"), `${JSON.stringify(manifest, null, 2)}\n`);
        return { manifest, exeEntry, parts };
      };
      let { manifest, exeEntry, parts } = await writeRelease();
      // The agent needs its release beside it (manifest, model pack): run once everything is written.
      if (made.remakeWithRunCaches) {
        // Code caches made before anything ran hold only what V8 compiles eagerly; every function
        // first called at run time would be compiled at each start. So the new executable runs once
        // as a device would (run --max-tokens 1), writing its parts' caches at exit, and is made
        // again with them (docs/packaging.md, "Memory and start-up").
        steps.update(5, "code caches after a run");
        const caches = join(work, "code-caches-after-run");
        await mkdir(caches);
        await startCheck(join(tmp, exe), target, work, model.dir, caches);
        await made.remakeWithRunCaches(caches);
        ({ manifest, exeEntry, parts } = await writeRelease());
      }
      selfCheck = await startCheck(join(tmp, exe), target, work, model.dir);
      // The archive holds the folder under its final name; it is renamed beside the folder at the end.
      await run("tar", ["-czf", tarTmp, "-C", tmp, `--transform=s,^\\.,${bundleId},`, "."]);
      result = {
        dir,
        tarball,
        manifest,
        sizes: {
          executable: exeEntry.bytes,
          tarball: 0,
          ...runtime.sizes,
        },
        strip: runtime.strip,
        runtime: { id: parts.runtime.id, reused_from: reuse ? resolve(opts.runtime!) : null },
        parts: { runtime_bytes: exeEntry.bytes, model_pack_bytes: pack.bytes },
      };
    });
  } catch (e) {
    await rm(tarTmp, { force: true });
    throw e;
  } finally {
    await rm(work, { recursive: true, force: true });
    releaseTar();
    releaseWork();
  }
  const r = result!;
  r.sizes.tarball = (await stat(tarball)).size;
  steps.done(`${(r.sizes.executable / 1e6).toFixed(1)} MB executable`);
  return {
    ...r,
    self_check: selfCheck,
    model_check: modelCheck,
    quantization: decision!,
    seconds: (Date.now() - started) / 1000,
  };
}

/**
 * The bundle folder and its archive, checked before any long work (src/util/output.ts): never inside
 * the model folder or over another input, never over files that are not an earlier bundle's. An
 * earlier bundle is recognised by its manifest.json (bundle_id = the folder's name; its files are the
 * bundle's own), an earlier archive by its first entry (the bundle folder).
 */
async function checkOutputs(
  opts: BuildOptions,
  bundleId: string,
  dir: string,
  tarball: string,
): Promise<DirTarget> {
  const spec = {
    command: "itera build",
    option: "--out",
    inputs: [
      opts.model,
      ...(opts.runtime ? [opts.runtime] : []),
      ...(opts.sign ? [opts.sign] : []),
      ...(opts.tuned ? [opts.tuned] : []),
      ...(opts.profile.endsWith(".json") ? [opts.profile] : []),
    ],
    force: opts.force === true,
  };
  const target = await checkOutputDir(dir, {
    ...spec,
    marker: false,
    owned: (d) => bundleFiles(d, bundleId),
  });
  await checkOutputFile(tarball, {
    ...spec,
    owned: async (f) => {
      const list = await run("tar", ["-tzf", f], { maxBuffer: 64 << 20 }).catch(() => undefined);
      return list?.stdout.split("\n")[0]?.startsWith(`${bundleId}/`) === true;
    },
  });
  return target;
}

/** The files of an earlier bundle `bundleId` in `dir` (its manifest's files and the manifest). */
async function bundleFiles(dir: string, bundleId: string): Promise<string[] | undefined> {
  try {
    const m = manifestSchema.safeParse(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")));
    if (!m.success || m.data.bundle_id !== bundleId) return undefined;
    return [...Object.keys(m.data.files), "manifest.json"];
  } catch {
    return undefined;
  }
}

/**
 * When the target is the build host, start the new executable once (`run`, one token: every
 * embedded asset is checked as it is extracted, the native add-ons are loaded, the model generates;
 * `--version` loads none of that), with a private cache folder, so that a bundle that cannot start
 * is never written. With `codeCachesOut`, this is the run after which the executable writes its
 * parts' code caches there (AGENT_CODE_CACHE_OUT_ENV), with a cache folder of its own.
 */
async function startCheck(
  exe: string,
  target: Target,
  work: string,
  modelDir: string,
  codeCachesOut?: string,
): Promise<string> {
  if (targetKey(target) !== hostTarget().key) return `skipped: ${targetKey(target)} cannot run on this host`;
  try {
    // A model without tokenizer.json takes token ids only: the check gives it one id (checkModelRuns's).
    const prompt = (await stat(join(modelDir, "tokenizer.json")).catch(() => undefined))
      ? ["--prompt", "The "]
      : ["--ids", String(firstPromptId(await loadGenaiConfig(modelDir)))];
    const args = ["run", ...prompt, "--max-tokens", "1", "--threads", "1", "--json"];
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: work };
    if (codeCachesOut) env[AGENT_CODE_CACHE_OUT_ENV] = codeCachesOut;
    env.ITERA_AGENT_CACHE = join(work, codeCachesOut ? "code-cache-run-cache" : "start-check-cache");
    const { stdout } = await run(exe, args, { env });
    const ids = (JSON.parse(stdout) as { ids?: unknown }).ids;
    if (!Array.isArray(ids)) throw new Error(`printed no generated ids: ${stdout.slice(0, 200)}`);
  } catch (e) {
    const what = codeCachesOut ? "in the run that makes its code caches" : "";
    throw new IteraError(`the built executable does not start${what ? ` ${what}` : ""}`, {
      where: exe,
      fix: `this is a bug in itera build; its output: ${(e as { stderr?: string }).stderr || (e as Error).message}`,
    });
  }
  return "started on the build host and generated a token (run --max-tokens 1)";
}

/**
 * README.txt, and on Linux the systemd unit and install.sh (which checks the other files' sha256,
 * the model pack's included). Windows bundles get no unit or installer: run itera-agent.exe
 * directly. Returns the names of these files and the executable.
 */
async function writeBundleFiles(tmp: string, facts: BundleFacts, packFiles: string[]): Promise<string[]> {
  await writeFile(join(tmp, "README.txt"), readme(facts));
  if (facts.platform === "win32") return [facts.exe, "README.txt"];
  await writeFile(join(tmp, "itera-agent.service"), systemdUnit(facts));
  const sums: Record<string, string> = {};
  for (const f of [facts.exe, "itera-agent.service", "README.txt", ...packFiles.sort()]) {
    sums[f] = await sha256File(join(tmp, f));
  }
  await writeFile(join(tmp, "install.sh"), installScript(facts, sums));
  await chmod(join(tmp, "install.sh"), 0o755);
  return [facts.exe, "itera-agent.service", "README.txt", "install.sh"];
}

/** The runtime part of a bundle: how to write its executable, its embedded index and assets. */
interface RuntimePart {
  index: RuntimeIndex;
  indexSha256: string;
  /** The embedded assets as the manifest records them (bundle.json included). */
  assets: Manifest["assets"];
  /** Write the executable; a host build's can be made again with code caches made by a run. */
  write(dest: string): Promise<SeaExecutable | Record<string, never>>;
  sizes: Pick<
    BuildResult["sizes"],
    "node_raw" | "node_stripped" | "agent_script" | "assets_raw" | "assets_stored"
  >;
  strip: string;
}

/**
 * Build the runtime: Node for the target, the agent script, the embedded assets (profile, native
 * add-ons) and bundle.json. Nothing in it depends on the model, the version or the time, so the same
 * checkout, profile and target give the same bundle.json.
 */
async function buildRuntime(
  work: string,
  profile: DeviceProfile,
  target: Target,
  icu: IcuChoice,
  steps: { update(n: number, what: string): void },
): Promise<RuntimePart> {
  steps.update(1, "node binary");
  const node = await nodeBinary(target, icu);
  steps.update(2, "agent script");
  const script = join(work, "agent-script"); // a folder: the agent's parts (src/package/agent-script.ts)
  const agent = await bundleAgentScript(script, VERSION);
  steps.update(3, "assets");
  const sources: AssetSource[] = [profileAsset(profile), ...(await nativeAddonFiles(target))];
  const prepared: PreparedAsset[] = [];
  for (const [i, s] of sources.entries()) prepared.push(await prepareAsset(s, work, i));
  const commit = await gitCommitOf(packageRoot);
  const index: RuntimeIndex = {
    schema: RUNTIME_INDEX_SCHEMA,
    profile: profile.name,
    target: { platform: target.platform, arch: target.arch, node: NODE_VERSION },
    build: { itera_version: VERSION, ...(commit ? { git_commit: commit } : {}) },
    assets: Object.fromEntries(prepared.map((a) => [a.key, storedEntry(a)])),
  };
  const indexBytes = Buffer.from(canonicalJson(index));
  const indexAsset = await prepareAsset(
    { key: BUNDLE_INDEX_ASSET, content: indexBytes },
    work,
    prepared.length,
  );
  return {
    index,
    indexSha256: indexAsset.sha256,
    assets: { ...index.assets, [indexAsset.key]: storedEntry(indexAsset) },
    write: (dest) =>
      makeSeaExecutable({
        target,
        script,
        assets: Object.fromEntries([...prepared, indexAsset].map((a) => [a.key, a.file])),
        nodeBinary: node.path,
        out: dest,
        workDir: work,
        execArgv: v8HeapFlags(profile.memory_mb),
      }),
    sizes: {
      node_raw: node.rawBytes,
      node_stripped: node.bytes,
      agent_script: agent.bytes,
      assets_raw: prepared.reduce((n, a) => n + a.bytes, 0),
      assets_stored: prepared.reduce((n, a) => n + a.stored_bytes, 0),
    },
    strip: describeNodeBinary(node),
  };
}

/**
 * `--runtime BUNDLE`: the runtime of an earlier v2 bundle, verified (every file and its signature),
 * for the same profile and target; its executable is copied unchanged.
 */
async function readRuntimeBundle(path: string, profile: string, target: Target): Promise<RuntimePart> {
  const dir = resolve(path);
  const report = await verifyBundle(dir);
  if (!report.ok) {
    throw new IteraError(`the --runtime bundle does not verify: ${report.problems.join("; ")}`, {
      where: dir,
      fix: "give --runtime a bundle folder made by `itera build` that `itera verify` accepts",
    });
  }
  const m = manifestSchema.parse(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")));
  if (!m.parts) {
    throw new IteraError(
      "the --runtime bundle has its model inside its executable (an itera.bundle/v1 bundle)",
      {
        where: dir,
        fix: "build once without --runtime; later builds can take that bundle's runtime with --runtime",
      },
    );
  }
  if (m.profile !== profile || m.target.platform !== target.platform || m.target.arch !== target.arch) {
    throw new IteraError(
      `the --runtime bundle is for ${m.profile} (${m.target.platform}-${m.target.arch}), this build for ${profile} (${target.platform}-${target.arch})`,
      { where: dir, fix: "give --runtime a bundle built for the same --profile, or leave --runtime out" },
    );
  }
  const { [BUNDLE_INDEX_ASSET]: _index, ...assets } = m.assets;
  const exe = m.parts.runtime.file;
  return {
    index: {
      schema: RUNTIME_INDEX_SCHEMA,
      profile: m.profile,
      target: m.target,
      build: { itera_version: m.parts.runtime.itera_version },
      assets: assets as RuntimeIndex["assets"],
    },
    indexSha256: m.parts.runtime.index_sha256,
    assets: m.assets,
    // Copied byte for byte (a device that runs it takes only the new model pack).
    write: async (dest) => {
      await copyFile(join(dir, exe), dest);
      await chmod(dest, 0o755);
      return {};
    },
    sizes: { node_raw: 0, node_stripped: 0, agent_script: 0, assets_raw: 0, assets_stored: 0 },
    strip: `reused runtime ${m.parts.runtime.id} from ${dir}`,
  };
}

/** An asset as bundle.json and manifest.json record it: both hashes, both sizes, the encoding. */
function storedEntry(a: PreparedAsset): StoredAsset {
  return {
    sha256: a.sha256,
    bytes: a.bytes,
    encoding: a.encoding,
    stored_sha256: a.stored_sha256,
    stored_bytes: a.stored_bytes,
  };
}

/** The signing key, checked before the build starts: it must be an Ed25519 private key. */
export async function readSigningKey(path: string): Promise<KeyObject> {
  let pem: string;
  try {
    pem = await readFile(path, "utf8");
  } catch (e) {
    throw new IteraError(`cannot read the signing key (${(e as NodeJS.ErrnoException).code ?? e})`, {
      where: path,
      fix: "pass the private key made by `itera keygen` (itera-signing.key) and check its permissions",
    });
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(pem);
  } catch {
    throw new IteraError("the signing key is not a PEM private key", {
      where: path,
      fix: "pass the private key made by `itera keygen` (a PKCS#8 PEM file), not the public key",
    });
  }
  if (key.asymmetricKeyType !== "ed25519") {
    throw new IteraError(`the signing key is ${key.asymmetricKeyType}, not Ed25519`, {
      where: path,
      fix: "make an Ed25519 key with `itera keygen`",
    });
  }
  return key;
}

/** The git commit of the itera checkout doing the build, when it is one. */
async function gitCommitOf(cwd: string): Promise<string | undefined> {
  try {
    return (await run("git", ["rev-parse", "HEAD"], { cwd })).stdout.trim() || undefined;
  } catch {
    return undefined;
  }
}
