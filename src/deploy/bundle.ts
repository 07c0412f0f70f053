import { execFile } from "node:child_process";
import { readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { promisify } from "node:util";
import { join, resolve } from "node:path";
import { type Manifest, manifestSchema } from "../bundle/manifest.js";
import { IteraError } from "../errors.js";
import { readTrustedKeyFile, verifyBundle } from "../package/verify.js";
import { sha256 } from "../util/fs.js";
import { tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { AGENT_FILE, MANIFEST_FILE, UNIT_NAME } from "./layout.js";
import type { StepLog } from "./steps.js";

const run = promisify(execFile);

/** A bundle folder whose signature and every file hash were checked on this machine. */
export interface VerifiedBundle {
  dir: string;
  manifest: Manifest;
  /** sha256 of manifest.json exactly as on disk: what the device's copy must match. */
  manifestSha256: string;
  manifestBytes: number;
  /** Files to send, manifest.json last (so a staged manifest means everything before it was sent). */
  files: { name: string; sha256: string; bytes: number }[];
  totalBytes: number;
  /** True when the signer was pinned with a trusted key; false when only the embedded key was used. */
  signerPinned: boolean;
  /** Remove what opening the bundle made (a .tar.gz unpacked into a temp folder). */
  dispose(): Promise<void>;
}

/** Manifest file names become paths on the device: plain relative names only. */
const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*(\/[A-Za-z0-9_][A-Za-z0-9._-]*)*$/;

/**
 * Resolve BUNDLE: the folder itself, or a .tar.gz (DESIGN.md §5): the folder beside it when there is
 * one, else the archive unpacked into a temp folder (its one top-level folder is the bundle).
 */
async function openBundle(path: string): Promise<{ dir: string; temp?: string; release?: () => void }> {
  const abs = resolve(path);
  const archive = abs.endsWith(".tar.gz");
  const dir = archive ? abs.slice(0, -".tar.gz".length) : abs;
  if ((await stat(dir).catch(() => undefined))?.isDirectory()) return { dir };
  if (archive && (await stat(abs).catch(() => undefined))?.isFile()) {
    // Removed on Ctrl-C too (src/util/interrupt.ts), and by dispose() when the flash is done.
    const { path: temp, release } = tempDirRemovedOnInterrupt(join(tmpdir(), "itera-bundle-"));
    try {
      // GNU tar drops leading '/' and refuses '..' members, so the archive stays inside temp.
      await run("tar", ["-xzf", abs, "-C", temp, "--no-same-owner"]);
      const top = await readdir(temp, { withFileTypes: true });
      if (top.length !== 1 || !top[0]!.isDirectory()) throw new Error("not one top-level folder");
      return { dir: join(temp, top[0]!.name), temp, release };
    } catch (e) {
      await rm(temp, { recursive: true, force: true });
      release();
      throw new IteraError(`cannot unpack the bundle archive: ${(e as Error).message.split("\n")[0]}`, {
        where: abs,
        fix: "give the .tar.gz made by `itera build` (one folder inside), or the bundle folder",
      });
    }
  }
  throw new IteraError(`no bundle folder at ${dir}`, {
    where: path,
    fix: archive
      ? "give an existing .tar.gz made by `itera build`, or the bundle folder beside it"
      : "give the bundle folder made by `itera build` (firmware-bundles/<model>-<version>-<profile>/)",
  });
}

/** The first step of every flash: the bundle checked on this machine. */
export function verifyLocally(log: StepLog, path: string, trustedKey?: string): Promise<VerifiedBundle> {
  return log.run(
    "verify-local",
    "check the bundle's signature and file hashes here",
    () => loadVerifiedBundle(path, trustedKey),
    (b) =>
      `${b.manifest.bundle_id}: ${b.files.length} files, ${b.totalBytes} bytes, signature ok${
        b.signerPinned ? " (trusted key)" : " (embedded key only: pass --key to pin the signer)"
      }`,
  );
}

/**
 * Read and check a bundle before anything touches a device: `itera verify`'s checks (every listed
 * file with its size and sha256, no file added, the signature valid, by `trustedKey` when given),
 * and what a flash needs on top: a signature at all, a Linux target, names safe as device paths.
 */
export async function loadVerifiedBundle(path: string, trustedKey?: string): Promise<VerifiedBundle> {
  const { dir, temp, release } = await openBundle(path);
  const dispose = async () => {
    if (temp) await rm(temp, { recursive: true, force: true });
    release?.();
  };
  try {
    return { ...(await checkBundle(dir, trustedKey)), dispose };
  } catch (e) {
    await dispose();
    throw e;
  }
}

async function checkBundle(dir: string, trustedKey?: string): Promise<Omit<VerifiedBundle, "dispose">> {
  const manifestPath = join(dir, MANIFEST_FILE);
  const check = await verifyBundle(dir, trustedKey);
  if (!check.signed) {
    throw new IteraError("the bundle is not signed", {
      where: manifestPath,
      fix: "sign it when building: `itera build ... --sign KEY` (make a key with `itera keygen`)",
    });
  }
  if (!check.ok) {
    const untrusted = check.signature === "untrusted-key";
    throw new IteraError(
      untrusted
        ? "the bundle is not signed by the trusted key given with --key"
        : `the bundle does not match its manifest (tampered or corrupted): ${check.problems.join("; ")}`,
      {
        where: dir,
        fix: untrusted
          ? "pass the signer's public key with --key, or flash a bundle signed with yours"
          : "rebuild the bundle, or copy it again from where it was built",
      },
    );
  }
  // verifyBundle has validated this manifest; the exact bytes are what the device's copy must match.
  const raw = await readFile(manifestPath);
  const manifest = manifestSchema.parse(JSON.parse(raw.toString("utf8")));
  if (manifest.target.platform !== "linux") {
    throw new IteraError(
      `the bundle targets ${manifest.target.platform}; flash installs Linux bundles only`,
      {
        where: manifestPath,
        fix: "build for a Linux profile (e.g. rpi4, rpi5, embedded-arm64-2c)",
      },
    );
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]*$/.test(manifest.version)) {
    throw new IteraError(`the bundle version '${manifest.version}' cannot name a release folder`, {
      where: manifestPath,
      fix: "use a plain version such as 0.2.0",
    });
  }
  for (const required of [AGENT_FILE, UNIT_NAME]) {
    if (!(required in manifest.files)) {
      throw new IteraError(`the bundle's manifest does not list ${required}`, {
        where: manifestPath,
        fix: "rebuild the bundle with `itera build`",
      });
    }
  }
  const files: VerifiedBundle["files"] = [];
  for (const [name, entry] of Object.entries(manifest.files).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!SAFE_NAME.test(name) || name.split("/").includes("..")) {
      throw new IteraError(`the manifest lists an unsafe file name '${name}'`, {
        where: manifestPath,
        fix: "rebuild the bundle with `itera build`",
      });
    }
    files.push({ name, sha256: entry.sha256, bytes: entry.bytes });
  }
  const manifestSha256 = sha256(raw);
  files.push({ name: MANIFEST_FILE, sha256: manifestSha256, bytes: raw.length });
  return {
    dir,
    manifest,
    manifestSha256,
    manifestBytes: raw.length,
    files,
    totalBytes: files.reduce((n, f) => n + f.bytes, 0),
    signerPinned: trustedKey !== undefined,
  };
}

/** Read a trusted public key file (PEM or base64 SPKI DER) for --key: an Ed25519 public key or refused. */
export function readTrustedKey(path: string): Promise<string> {
  return readTrustedKeyFile(path);
}
