import { readFile, stat } from "node:fs/promises";
import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { verifyBundle, verifyBundleArchive } from "../../package/verify.js";
import { action, printJson } from "../run.js";

export function registerVerify(program: Command): void {
  program
    .command("verify <bundle>")
    .description(
      "check a bundle folder (or its .tar.gz): every file's sha256 and the Ed25519 signature of its manifest",
    )
    .option("--key <pub>", "trusted public key file (itera keygen's .pub): the bundle must be signed by it")
    .option("--json", "machine-readable output")
    .action(
      action(async (bundle: string, opts: { key?: string; json?: boolean }) => {
        let key: string | undefined;
        if (opts.key !== undefined) {
          key = await readFile(opts.key, "utf8").catch(() => {
            throw new IteraError("cannot read the public key", {
              where: opts.key,
              fix: "pass the .pub file made by `itera keygen`",
            });
          });
        }
        const isArchive =
          /\.(tar\.gz|tgz)$/.test(bundle) && (await stat(bundle).catch(() => null))?.isFile() === true;
        const r = isArchive ? await verifyBundleArchive(bundle, key) : await verifyBundle(bundle, key);
        if (opts.json) printJson(r);
        else {
          console.log(`${r.ok ? "OK" : "FAILED"} ${r.bundle_id} (signature: ${r.signature})`);
          for (const p of r.problems) console.log(`  ${p}`);
        }
        if (!r.ok) process.exitCode = 3;
      }),
    );
}
