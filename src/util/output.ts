/**
 * Output paths: nothing lost, nothing overwritten (issue #15). The one rule of every command that
 * writes a folder or a file, checked before any long work starts:
 *
 * - an output is never one of the command's inputs, never contains one and never lies inside one;
 * - a folder output may be absent, an empty folder, or the command's own earlier output holding
 *   nothing else: then it is replaced as a whole. A folder holding anything else is refused; with
 *   `--force` (where the command has it) only the command's own files are replaced (the files of its
 *   earlier output, and files with the names it writes) and every other file is kept;
 * - a file output may be absent, an empty file, or the command's own earlier file; never a folder;
 * - a folder is filled under a temp name beside the target and moved into place only when complete;
 *   the temp name is removed on failure and on SIGINT/SIGTERM (`interrupt.ts`).
 *
 * "Own earlier output" is recognised by the marker file `.itera-output.json` (the command and the
 * files it wrote), or by a command's own signature (a bundle's `manifest.json`, whose `files` it lists).
 */
import { constants, lstatSync, mkdirSync, readdirSync, renameSync, rmdirSync, rmSync } from "node:fs";
import { access, lstat, mkdir, readdir, readFile, realpath, rm, stat, writeFile } from "node:fs/promises";
import { basename, dirname, join, relative, resolve, sep } from "node:path";
import { IteraError } from "../errors.js";
import { tempPathFor } from "./fs.js";
import { onInterrupt, removeOnInterrupt } from "./interrupt.js";

/** The marker a command leaves in a folder it wrote: which command, and which files are its own. */
export const OUTPUT_MARKER = ".itera-output.json";
const MARKER_SCHEMA = "itera.output/v1";

export interface OutputSpec {
  /** The command as messages and the marker name it ("itera quantize"). */
  command: string;
  /** The option that names the path ("--out"), for messages. */
  option: string;
  /** Paths the command reads: the output may not be one, contain one or lie inside one. */
  inputs?: readonly string[];
  /** Whether --force was given; undefined when the command has no --force (messages never offer it). */
  force?: boolean;
}

export interface DirSpec extends OutputSpec {
  /**
   * The files (relative paths) of an earlier output of this command in `dir`, or undefined when the
   * folder is not one. Default: the files its marker lists. Commands with their own signature
   * (bundles: manifest.json) pass it here and `marker: false`.
   */
  owned?: (dir: string) => Promise<string[] | undefined>;
  /** Write the marker into the output (default true). */
  marker?: boolean;
}

/** A checked folder output: what `writeDirAtomic` may replace there. */
export interface DirTarget {
  readonly dir: string;
  readonly command: string;
  readonly option: string;
  /** Files of the command's earlier output in the folder (relative paths): replaced. */
  readonly own: readonly string[];
  /** --force with other files present: write the command's files into the folder and keep the rest. */
  readonly merge: boolean;
  readonly marker: boolean;
  /** Runs right after the move, in the same synchronous step (a file that belongs with the folder). */
  readonly alsoSync?: () => void;
}

const exists = (p: string) =>
  lstat(p).then(
    (s) => s,
    () => undefined,
  );

/** The real path of `p`, resolving symbolic links in its existing part (the rest may not exist yet). */
async function realish(p: string): Promise<string> {
  const abs = resolve(p);
  const parts: string[] = [];
  let at = abs;
  for (;;) {
    try {
      return join(await realpath(at), ...parts.reverse());
    } catch {
      const up = dirname(at);
      if (up === at) return abs;
      parts.push(basename(at));
      at = up;
    }
  }
}

const inside = (child: string, parent: string) =>
  child.startsWith(parent.endsWith(sep) ? parent : parent + sep);

/** Refuse an output that is an input, contains one or lies inside one. */
export async function checkNotInput(path: string, spec: OutputSpec): Promise<void> {
  const out = await realish(path);
  for (const input of spec.inputs ?? []) {
    const inp = await realish(input);
    const how =
      out === inp ? "is" : inside(inp, out) ? "contains" : inside(out, inp) ? "lies inside" : undefined;
    if (how) {
      throw new IteraError(
        `${spec.option} ${how} the input ${input}: ${spec.command} never writes over its input`,
        {
          where: resolve(path),
          fix: `give ${spec.option} a path outside ${input}`,
        },
      );
    }
  }
}

/** The parent a new output goes into must be (or become) a writable folder. */
async function checkParent(path: string, spec: OutputSpec): Promise<void> {
  let at = dirname(path);
  for (;;) {
    const st = await stat(at).catch(() => undefined);
    if (st) {
      if (!st.isDirectory()) {
        throw new IteraError(`${spec.option}: ${at} is a file, not a folder`, {
          where: path,
          fix: `give ${spec.option} a path whose parent folders are folders`,
        });
      }
      try {
        await access(at, constants.W_OK | constants.X_OK);
      } catch {
        throw new IteraError(`${spec.option}: cannot write into ${at} (permission denied)`, {
          where: path,
          fix: `give ${spec.option} a path in a writable folder`,
        });
      }
      return;
    }
    const up = dirname(at);
    if (up === at) return;
    at = up;
  }
}

/** Every file (and link, and anything not a folder) under `dir`, as relative paths with '/'. */
async function listFiles(dir: string, base = dir): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await listFiles(p, base)));
    else out.push(relative(base, p).split(sep).join("/"));
  }
  return out;
}

function listFilesSync(dir: string, base = dir): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...listFilesSync(p, base));
    else out.push(relative(base, p).split(sep).join("/"));
  }
  return out;
}

/** The files an earlier output's marker lists, when it is one of `command`'s. */
export async function markerOwned(dir: string, command: string): Promise<string[] | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, OUTPUT_MARKER), "utf8")) as {
      schema?: unknown;
      command?: unknown;
      files?: unknown;
    };
    if (m.schema !== MARKER_SCHEMA || m.command !== command || !Array.isArray(m.files)) return undefined;
    const files = m.files.filter((f): f is string => typeof f === "string");
    return [...new Set([...files, OUTPUT_MARKER])];
  } catch {
    return undefined;
  }
}

const few = (names: string[]) =>
  names.length <= 5 ? names.join(", ") : `${names.slice(0, 5).join(", ")} and ${names.length - 5} more`;

/** Check a folder output before the work starts (the rule at the top of this file). */
export async function checkOutputDir(path: string, spec: DirSpec): Promise<DirTarget> {
  const dir = resolve(path);
  await checkNotInput(dir, spec);
  const target = (own: string[], merge: boolean): DirTarget => ({
    dir,
    command: spec.command,
    option: spec.option,
    own,
    merge,
    marker: spec.marker ?? true,
  });
  const st = await exists(dir);
  if (!st) {
    await checkParent(dir, spec);
    return target([], false);
  }
  if (st.isSymbolicLink()) {
    throw new IteraError(`${spec.option} is a symbolic link; ${spec.command} does not write through one`, {
      where: dir,
      fix: `give ${spec.option} the folder the link points to, or a new folder`,
    });
  }
  if (!st.isDirectory()) {
    throw new IteraError(`${spec.option} is a file, not a folder; ${spec.command} does not replace it`, {
      where: dir,
      fix: `give ${spec.option} a new or empty folder, or move the file away`,
    });
  }
  await checkParent(dir, spec);
  const files = await listFiles(dir);
  if (files.length === 0) return target([], false);
  const owned = await (spec.owned ?? ((d: string) => markerOwned(d, spec.command)))(dir);
  const ownSet = new Set(owned ?? []);
  const foreign = files.filter((f) => !ownSet.has(f));
  const own = files.filter((f) => ownSet.has(f));
  if (foreign.length === 0) return target(own, false);
  if (spec.force) return target(own, true);
  const forceHint =
    spec.force === undefined
      ? ""
      : `, or pass --force to replace only ${spec.command}'s own files and keep the rest`;
  throw new IteraError(
    owned
      ? `${spec.option} is an earlier output of ${spec.command} but also holds ${foreign.length} file(s) it did not write (${few(foreign)}); ${spec.command} does not delete them`
      : `${spec.option} is not empty and is not an earlier output of ${spec.command} (${few(foreign)}); ${spec.command} does not overwrite it`,
    {
      where: dir,
      fix: `give ${spec.option} a new or empty folder, or move those files away${forceHint}`,
    },
  );
}

export interface FileSpec extends OutputSpec {
  /** Whether the existing file at the path is the command's own earlier output. */
  owned?: (path: string) => Promise<boolean>;
}

/** Check a file output before the work starts; returns its absolute path. */
export async function checkOutputFile(path: string, spec: FileSpec): Promise<string> {
  const file = resolve(path);
  await checkNotInput(file, spec);
  await checkParent(file, spec);
  const st = await exists(file);
  if (!st) return file;
  if (st.isDirectory()) {
    throw new IteraError(`${spec.option} is a folder, not a file`, {
      where: file,
      fix: `give ${spec.option} a file path (e.g. ${join(path, "results.txt")})`,
    });
  }
  if (!st.isFile()) {
    throw new IteraError(`${spec.option} is not a regular file; ${spec.command} does not replace it`, {
      where: file,
      fix: `give ${spec.option} a new file path`,
    });
  }
  if (st.size === 0 || spec.force || (await spec.owned?.(file))) return file;
  throw new IteraError(
    `${spec.option} exists and is not an earlier output of ${spec.command}; it is not overwritten`,
    {
      where: file,
      fix: `give ${spec.option} a new file path, or move the file away${spec.force === undefined ? "" : ", or pass --force"}`,
    },
  );
}

function markerText(command: string, files: string[]): string {
  const marker = { schema: MARKER_SCHEMA, command, files: [...new Set([...files, OUTPUT_MARKER])].sort() };
  return `${JSON.stringify(marker, null, 2)}\n`;
}

/** Remove the folders `mkdir -p` made for the output (from `parent` up to `created`) when empty. */
function removeEmptyParents(parent: string, created: string | undefined): void {
  if (created === undefined) return;
  for (let d = parent; inside(d, created) || d === created; d = dirname(d)) {
    try {
      rmdirSync(d);
    } catch {
      return; // not empty: someone else's files, or ours still being written
    }
    if (d === created) return;
  }
}

const lstatOrUndefined = (p: string) => {
  try {
    return lstatSync(p);
  } catch {
    return undefined;
  }
};

/** Remove `rel`'s now-empty parent folders inside `dir`. */
function pruneEmpty(dir: string, rel: string): void {
  for (let d = dirname(join(dir, rel)); inside(d, dir); d = dirname(d)) {
    try {
      rmdirSync(d);
    } catch {
      return;
    }
  }
}

/** Move the filled temp folder into place; synchronous so that no signal lands between the steps. */
function commit(tmp: string, target: DirTarget): void {
  const { dir } = target;
  const st = lstatOrUndefined(dir);
  // Absent, or an empty folder: rename(2) replaces an empty folder atomically.
  if (!st || (st.isDirectory() && readdirSync(dir).length === 0)) {
    renameSync(tmp, dir);
    return;
  }
  if (!st.isDirectory()) {
    throw new IteraError(`${target.option} became a file while ${target.command} ran; it is not replaced`, {
      where: dir,
      fix: `move the file away and run ${target.command} again`,
    });
  }
  const own = new Set(target.own);
  const foreign = listFilesSync(dir).filter((f) => !own.has(f));
  if (!target.merge) {
    if (foreign.length > 0) {
      throw new IteraError(
        `files appeared in ${target.option} while ${target.command} ran (${few(foreign)}); nothing was replaced`,
        { where: dir, fix: `move them away and run ${target.command} again` },
      );
    }
    // Only the command's own files are there: swap the whole folder.
    const old = tempPathFor(dir);
    renameSync(dir, old);
    try {
      renameSync(tmp, dir);
    } catch (e) {
      renameSync(old, dir);
      throw e;
    }
    rmSync(old, { recursive: true, force: true });
    return;
  }
  // --force with other files present: the command's files replace their namesakes, the rest stays.
  const fresh = listFilesSync(tmp);
  for (const f of fresh) {
    const parts = f.split("/");
    const blocked = parts.findIndex((_, i) => {
      const at = lstatOrUndefined(join(dir, ...parts.slice(0, i + 1)));
      return i < parts.length - 1 ? at !== undefined && !at.isDirectory() : at?.isDirectory() === true;
    });
    if (blocked >= 0) {
      const name = parts.slice(0, blocked + 1).join("/");
      throw new IteraError(`${target.option} holds ${name}, where ${target.command} writes ${f}`, {
        where: join(dir, name),
        fix: `move that folder away, or give ${target.option} another folder`,
      });
    }
  }
  const freshSet = new Set(fresh);
  for (const f of target.own) {
    if (freshSet.has(f)) continue;
    rmSync(join(dir, f), { force: true });
    pruneEmpty(dir, f);
  }
  for (const f of fresh) {
    mkdirSync(dirname(join(dir, f)), { recursive: true });
    renameSync(join(tmp, f), join(dir, f));
  }
  rmSync(tmp, { recursive: true, force: true });
}

/**
 * Fill a folder under a temp name beside `target.dir`, then move it into place (see the rule above):
 * a failed or interrupted `fill` leaves nothing behind, and nothing but the command's own files is
 * ever replaced. The move is synchronous, so a signal cannot land between its steps.
 */
export async function writeDirAtomic(
  target: DirTarget,
  fill: (tmpDir: string) => Promise<void>,
): Promise<void> {
  const parent = dirname(target.dir);
  // Registered before anything exists, and made synchronously: no signal lands in between.
  let created: string | undefined;
  const releaseParents = onInterrupt(() => removeEmptyParents(parent, created));
  const tmp = tempPathFor(target.dir);
  const releaseTmp = removeOnInterrupt(tmp);
  try {
    created = mkdirSync(parent, { recursive: true });
  } catch (e) {
    releaseTmp();
    releaseParents();
    throw e;
  }
  try {
    await mkdir(tmp);
    await fill(tmp);
    if (target.marker)
      await writeFile(join(tmp, OUTPUT_MARKER), markerText(target.command, await listFiles(tmp)));
    commit(tmp, target);
    target.alsoSync?.();
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    removeEmptyParents(parent, created);
    throw e;
  } finally {
    releaseTmp();
    releaseParents();
  }
}
