import { createPublicKey } from "node:crypto";
import { lstat, readdir, readFile, readlink, realpath, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, sep } from "node:path";
import { type Manifest, manifestSchema, verifyManifestSignature } from "../bundle/manifest.js";
import { IteraError } from "../errors.js";
import { sha256File } from "../util/fs.js";
import { execTracked, tempDirRemovedOnInterrupt } from "../util/interrupt.js";
import { checkModelPack } from "./model-pack.js";

/**
 * `itera verify`: is a bundle folder exactly what was built and signed? Every file listed in the
 * manifest must be there with its sha256 and size (the executable's hash covers every embedded
 * asset), no file may be added, and the Ed25519 signature must hold, for the trusted key when one
 * is given.
 */
export interface VerifyReport {
  ok: boolean;
  bundle_id: string | null;
  signed: boolean;
  signature: "valid" | "invalid" | "absent" | "untrusted-key";
  /** Present when --key was given: whether the signer is that key. */
  trusted_key: boolean | null;
  files: { file: string; status: "ok" | "missing" | "changed" | "unexpected" }[];
  /**
   * A v2 bundle's two parts (null for a v1 bundle): the runtime (the executable's hash is the one the
   * manifest's part names) and the model pack (its own signature, by the bundle's signer, and files).
   */
  parts: {
    runtime: { id: string; ok: boolean };
    model_pack: { id: string; quant: string; signature: string; ok: boolean };
  } | null;
  problems: string[];
}

export async function verifyBundle(dir: string, trustedKey?: string): Promise<VerifyReport> {
  const manifestPath = join(dir, "manifest.json");
  const manifest = await readManifest(manifestPath);
  const problems: string[] = [];
  const files: VerifyReport["files"] = [];
  const realDir = await realpath(dir);
  for (const [file, want] of Object.entries(manifest.files)) {
    const path = join(dir, file);
    const link = await linkOnTheWay(realDir, file);
    if (link) {
      // A link's target is outside what was signed (in an archive: anywhere on this machine).
      files.push({ file, status: "changed" });
      problems.push(`${file} ${link}, not a file: a bundle holds plain files only`);
      continue;
    }
    const st = await stat(path).catch(() => null);
    if (!st?.isFile()) {
      files.push({ file, status: "missing" });
      problems.push(`${file} is missing`);
      continue;
    }
    const got = await sha256File(path);
    if (got !== want.sha256 || st.size !== want.bytes) {
      files.push({ file, status: "changed" });
      problems.push(
        `${file} has sha256 ${got} (${st.size} bytes), the manifest says ${want.sha256} (${want.bytes} bytes)`,
      );
    } else {
      files.push({ file, status: "ok" });
    }
  }
  for (const file of await listFiles(dir)) {
    if (file !== "manifest.json" && !(file in manifest.files)) {
      files.push({ file, status: "unexpected" });
      problems.push(`${file} is not in the manifest`);
    }
  }
  let signature: VerifyReport["signature"] = "absent";
  let trusted: boolean | null = null;
  if (manifest.signature) {
    signature = verifyManifestSignature(manifest) ? "valid" : "invalid";
    if (signature === "invalid")
      problems.push("the signature does not match the manifest (it was changed after signing)");
  } else {
    problems.push("the manifest is not signed");
  }
  if (trustedKey !== undefined) {
    trusted = manifest.signature !== undefined && verifyManifestSignature(manifest, trustedKey);
    if (!trusted && signature === "valid") {
      signature = "untrusted-key";
      problems.push("the bundle is signed by a different key than the one given with --key");
    }
  }
  let parts: VerifyReport["parts"] = null;
  if (manifest.parts) {
    const r = manifest.parts.runtime;
    const runtimeOk =
      manifest.files[r.file]?.sha256 === r.sha256 && manifest.files[r.file]?.bytes === r.bytes;
    if (!runtimeOk) problems.push(`the runtime part names another executable than ${r.file}`);
    const pack = await checkModelPack(dir, manifest, trustedKey);
    problems.push(...pack.problems.map((p) => `model pack: ${p}`));
    parts = {
      runtime: { id: r.id, ok: runtimeOk },
      model_pack: {
        id: manifest.parts.model_pack.id,
        quant: manifest.parts.model_pack.quant,
        signature: pack.signature,
        ok: pack.ok,
      },
    };
  }
  // Unsigned bundles pass on integrity alone only when no trusted key was asked for.
  const ok =
    (parts === null || (parts.runtime.ok && parts.model_pack.ok)) &&
    files.every((f) => f.status === "ok") &&
    signature !== "invalid" &&
    signature !== "untrusted-key" &&
    (trustedKey === undefined || trusted === true);
  return {
    ok,
    bundle_id: manifest.bundle_id,
    signed: manifest.signature !== undefined,
    signature,
    trusted_key: trusted,
    files,
    parts,
    problems: !ok
      ? problems
      : signature === "absent"
        ? ["the manifest is not signed (integrity checked only)"]
        : trusted === null
          ? [NOT_PINNED]
          : [],
  };
}

/** Said whenever a valid signature was checked with the manifest's own key only. */
export const NOT_PINNED =
  "the signer is not pinned: the signature was checked with the public key inside the manifest, which whoever re-signs the bundle can swap; pass --key with the signer's .pub to check who signed it";

/** How `file` (relative to the real bundle folder) is a symbolic link or reached through one, if it is. */
async function linkOnTheWay(realDir: string, file: string): Promise<string | undefined> {
  const path = join(realDir, file);
  const st = await lstat(path).catch(() => null);
  if (st?.isSymbolicLink()) return `is a symbolic link (to ${await readlink(path)})`;
  if (st && (await realpath(path)) !== path) return "is reached through a symbolic link";
  return undefined;
}

/**
 * Read a trusted public key file for --key: an Ed25519 public key as PEM (`itera keygen`'s .pub) or
 * base64 SPKI DER. Anything else is refused here, so that a wrong file never reads as "signed by a
 * different key".
 */
export async function readTrustedKeyFile(path: string): Promise<string> {
  let text: string;
  try {
    text = (await readFile(path, "utf8")).trim();
  } catch {
    throw new IteraError(`cannot read the public key ${path}`, {
      where: path,
      fix: "give the signer's public key file: the .pub that `itera keygen` made",
    });
  }
  if (text.includes("PRIVATE KEY")) {
    throw new IteraError(`${path} is a private key, not a public key`, {
      where: path,
      fix: "give the .pub beside it (keep the .key secret: a verify never needs it)",
    });
  }
  let type: string | undefined;
  try {
    const key = text.includes("BEGIN")
      ? createPublicKey(text)
      : createPublicKey({ key: Buffer.from(text, "base64"), format: "der", type: "spki" });
    type = key.asymmetricKeyType;
  } catch {
    type = undefined;
  }
  if (type !== "ed25519") {
    throw new IteraError(
      `${path} is not an Ed25519 public key (${type ? `it is a ${type} key` : "neither a PEM public key nor base64 SPKI"})`,
      { where: path, fix: "give the signer's public key file: the .pub that `itera keygen` made" },
    );
  }
  return text;
}

/**
 * Verify a bundle archive (the `.tar.gz` beside the folder): it must hold exactly one top-level
 * folder, which is extracted to a temp folder, verified as a folder, and removed again.
 */
export async function verifyBundleArchive(archive: string, trustedKey?: string): Promise<VerifyReport> {
  // Removed on Ctrl-C too (src/util/interrupt.ts): an unpacked bundle is tens of MB.
  const { path: tmp, release } = tempDirRemovedOnInterrupt(join(tmpdir(), "itera-verify-"));
  try {
    try {
      // GNU tar refuses member names with '..' and strips leading '/': nothing lands outside tmp.
      // Tracked: on SIGINT tar is killed and reaped before tmp is removed, or it would write on into it.
      await execTracked("tar", ["-xzf", archive, "-C", tmp, "--no-same-owner"]);
    } catch (e) {
      throw new IteraError("the bundle archive cannot be extracted", {
        where: archive,
        fix: `pass the .tar.gz made by \`itera build\` (tar said: ${((e as { stderr?: string }).stderr ?? "").trim()})`,
      });
    }
    const top = await readdir(tmp);
    const only = top.length === 1 ? await lstat(join(tmp, top[0]!)) : undefined;
    if (only && !only.isDirectory()) {
      // A symlink here would have the host folder it names verified in the bundle's place.
      throw new IteraError(
        `the bundle archive's one entry, ${top[0]}, is ${
          only.isSymbolicLink() ? `a symbolic link (to ${await readlink(join(tmp, top[0]!))})` : "a file"
        }, not a bundle folder`,
        { where: archive, fix: "pass the .tar.gz made by `itera build`" },
      );
    }
    if (top.length !== 1) {
      throw new IteraError(
        `the bundle archive holds ${top.length} top-level entries, not one bundle folder`,
        {
          where: archive,
          fix: "pass the .tar.gz made by `itera build`",
        },
      );
    }
    return await verifyBundle(join(tmp, top[0]!), trustedKey);
  } finally {
    await rm(tmp, { recursive: true, force: true });
    release();
  }
}

async function readManifest(path: string): Promise<Manifest> {
  if ((await lstat(path).catch(() => null))?.isSymbolicLink()) {
    throw new IteraError("manifest.json is a symbolic link, not a file", {
      where: path,
      fix: "the bundle is damaged or was tampered with; build or download it again",
    });
  }
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new IteraError("not a bundle: manifest.json is missing", {
      where: path,
      fix: "pass a bundle folder made by `itera build` (firmware-bundles/<model>-<version>-<profile>/)",
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new IteraError(`manifest.json is not JSON: ${(e as Error).message}`, {
      where: path,
      fix: "the bundle is damaged; build or download it again",
    });
  }
  const r = manifestSchema.safeParse(json);
  if (!r.success) {
    const issue = r.error.issues[0]!;
    throw new IteraError(
      `invalid manifest.json: field '${issue.path.join(".") || "(top)"}': ${issue.message}`,
      {
        where: path,
        fix: "the bundle is damaged or was edited; build or download it again",
      },
    );
  }
  return r.data;
}

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile() || e.isSymbolicLink())
    .map((e) => relative(dir, join(e.parentPath, e.name)).split(sep).join("/"));
}
