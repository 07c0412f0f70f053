import { generateKeyPairSync } from "node:crypto";
import { rename, stat, writeFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Command } from "commander";
import { IteraError } from "../../errors.js";
import { tempPathFor, writeFileAtomic } from "../../util/fs.js";
import { checkOutputFile } from "../../util/output.js";
import { action, printJson } from "../run.js";

export function registerKeygen(program: Command): void {
  program
    .command("keygen")
    .description("make an Ed25519 key pair for signing bundles (itera build --sign, itera verify --key)")
    .option("--out <dir>", "where to write <name>.key (private, mode 600) and <name>.pub", ".")
    .option("--name <name>", "file name stem", "itera-signing")
    .option("--force", "overwrite an existing key pair")
    .option("--json", "machine-readable output")
    .action(
      action(async (opts: { out: string; name: string; force?: boolean; json?: boolean }) => {
        const priv = resolve(join(opts.out, `${opts.name}.key`));
        const pub = resolve(join(opts.out, `${opts.name}.pub`));
        if (
          !opts.force &&
          (await stat(priv).then(
            () => true,
            () => false,
          ))
        ) {
          throw new IteraError("a signing key already exists there", {
            where: priv,
            fix: "keep it (losing it means devices cannot verify new bundles), pass --out elsewhere, or --force",
          });
        }
        // The same rule as every output (src/util/output.ts): no folder, no other file replaced.
        for (const path of [priv, pub]) {
          await checkOutputFile(path, {
            command: "itera keygen",
            option: "--out",
            force: opts.force === true,
          });
        }
        const { privateKey, publicKey } = generateKeyPairSync("ed25519");
        const pubPem = publicKey.export({ type: "spki", format: "pem" }).toString();
        await writeFileAtomic(pub, pubPem);
        // Created with mode 600 under a temp name: the private key is never readable by others.
        const tmp = tempPathFor(priv);
        await writeFile(tmp, privateKey.export({ type: "pkcs8", format: "pem" }).toString(), { mode: 0o600 });
        await rename(tmp, priv);
        const fingerprint = publicKey.export({ type: "spki", format: "der" }).toString("base64");
        if (opts.json)
          return printJson({ private_key: priv, public_key: pub, public_key_base64: fingerprint });
        console.log(`private key ${priv} (keep it secret)\npublic key  ${pub}\n            ${fingerprint}`);
      }),
    );
}
