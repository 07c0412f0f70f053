import { execFile } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, relative, sep } from "node:path";
import { promisify } from "node:util";
import { type Manifest, manifestSchema, verifyManifestSignature } from "../bundle/manifest.js";
import { IteraError } from "../errors.js";
import { sha256File } from "../util/fs.js";

const run = promisify(execFile);

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
  problems: string[];
}

export async function verifyBundle(dir: string, trustedKey?: string): Promise<VerifyReport> {
  const manifestPath = join(dir, "manifest.json");
  const manifest = await readManifest(manifestPath);
  const problems: string[] = [];
  const files: VerifyReport["files"] = [];
  for (const [file, want] of Object.entries(manifest.files)) {
    const path = join(dir, file);
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
  // Unsigned bundles pass on integrity alone only when no trusted key was asked for.
  const ok =
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
    problems:
      ok && signature === "absent" ? ["the manifest is not signed (integrity checked only)"] : problems,
  };
}

/**
 * Verify a bundle archive (the `.tar.gz` beside the folder): it must hold exactly one top-level
 * folder, which is extracted to a temp folder, verified as a folder, and removed again.
 */
export async function verifyBundleArchive(archive: string, trustedKey?: string): Promise<VerifyReport> {
  const tmp = await mkdtemp(join(tmpdir(), "itera-verify-"));
  try {
    try {
      // GNU tar refuses member names with '..' and strips leading '/': nothing lands outside tmp.
      await run("tar", ["-xzf", archive, "-C", tmp, "--no-same-owner"]);
    } catch (e) {
      throw new IteraError("the bundle archive cannot be extracted", {
        where: archive,
        fix: `pass the .tar.gz made by \`itera build\` (tar said: ${((e as { stderr?: string }).stderr ?? "").trim()})`,
      });
    }
    const top = await readdir(tmp);
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
  }
}

async function readManifest(path: string): Promise<Manifest> {
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
