import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdir, readFile, rm, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { type Manifest, manifestSchema, signManifest } from "../src/bundle/manifest.js";
import { registerKeygen } from "../src/cli/commands/keygen.js";
import { registerProfiles } from "../src/cli/commands/profiles.js";
import { registerVerify } from "../src/cli/commands/verify.js";
import { sha256 } from "../src/util/fs.js";
import { run } from "./package-helpers.js";
import { inProcessCli } from "./cli-helpers.js";
import { tempDir } from "./temp-dir.js";

/** `itera keygen`, `itera verify` and `itera profiles --detect` through commander, as a user runs them. */
const cli = inProcessCli(
  (program) => {
    registerKeygen(program);
    registerVerify(program);
    registerProfiles(program);
  },
  { captureConsoleLog: true },
);

let work: string;
let keys: string;

beforeAll(async () => {
  work = await tempDir("itera-pkg-cli-");
  keys = join(work, "keys");
});

/** A small signed bundle folder (two files), enough for everything `verify` checks. */
async function fakeBundle(name: string): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir, { recursive: true });
  const files: Manifest["files"] = {};
  for (const [f, text] of [
    ["itera-agent", "an executable"],
    ["README.txt", "hello"],
  ] as const) {
    await writeFile(join(dir, f), text);
    files[f] = { sha256: sha256(text), bytes: Buffer.byteLength(text) };
  }
  const manifest = manifestSchema.parse({
    schema: "itera.bundle/v1",
    bundle_id: name,
    version: "1.0.0",
    model: { id: "m", quant: "fp32", card: {} },
    profile: "rpi4",
    target: { platform: "linux", arch: "arm64", node: "24.21.0" },
    files,
    assets: {},
    build: { itera_version: "0.1.0", built_at: "2026-01-01T00:00:00Z", host: "test" },
  });
  const signed = signManifest(manifest, readFileSync(join(keys, "itera-signing.key"), "utf8"));
  await writeFile(join(dir, "manifest.json"), JSON.stringify(signed, null, 2));
  return dir;
}

describe("itera keygen", () => {
  it("writes a private key only its owner can read, and refuses to overwrite it", async () => {
    const first = await cli("keygen", "--out", keys, "--json");
    expect(first.code).toBe(0);
    const made = JSON.parse(first.stdout);
    expect((await stat(made.private_key)).mode & 0o777).toBe(0o600);
    expect(await readFile(made.public_key, "utf8")).toMatch(/BEGIN PUBLIC KEY/);
    const again = await cli("keygen", "--out", keys);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/a signing key already exists there/);
  });
});

describe("itera verify", () => {
  it("passes a signed bundle for its key, exit 3 for a changed or added file and for another key", async () => {
    const pub = join(keys, "itera-signing.pub");
    const dir = await fakeBundle("ok-bundle");
    const ok = await cli("verify", dir, "--key", pub, "--json");
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, signature: "valid", trusted_key: true });

    await writeFile(join(dir, "README.txt"), "hellO");
    await writeFile(join(dir, "extra.sh"), "echo pwned");
    const bad = await cli("verify", dir, "--key", pub);
    expect(bad.code).toBe(3);
    expect(bad.stdout).toMatch(/^FAILED ok-bundle/);
    expect(bad.stdout).toMatch(/README\.txt has sha256/);
    expect(bad.stdout).toMatch(/extra\.sh is not in the manifest/);

    await cli("keygen", "--out", join(work, "other"), "--json");
    const other = await cli(
      "verify",
      await fakeBundle("other-key"),
      "--key",
      join(work, "other", "itera-signing.pub"),
    );
    expect(other.code).toBe(3);
    expect(other.stdout).toMatch(/signed by a different key/);

    const noKey = await cli("verify", dir, "--key", join(work, "missing.pub"));
    expect(noKey.code).toBe(1);
    expect(noKey.stderr).toMatch(/cannot read the public key/);
  });

  it("says plainly that the signer is not pinned when no --key is given, even for a re-signed bundle", async () => {
    const pub = join(keys, "itera-signing.pub");
    const dir = await fakeBundle("re-signed");
    const plain = await cli("verify", dir);
    expect(plain.code).toBe(0);
    expect(plain.stdout).toMatch(
      /^OK re-signed \(signature: valid, signer not pinned\)\n {2}the signer is not pinned: /,
    );
    expect((await cli("verify", dir, "--key", pub)).stdout).toBe(
      "OK re-signed (signature: valid, by the trusted key)\n",
    );
    // An attacker changes a file, fixes its hash and signs with their own key.
    const pwned = "#!/bin/sh\necho pwned\n";
    await writeFile(join(dir, "itera-agent"), pwned);
    const m = manifestSchema.parse(JSON.parse(await readFile(join(dir, "manifest.json"), "utf8")));
    m.files["itera-agent"] = { sha256: sha256(pwned), bytes: Buffer.byteLength(pwned) };
    const theirs = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" });
    await writeFile(join(dir, "manifest.json"), JSON.stringify(signManifest(m, theirs.toString()), null, 2));
    const r = await cli("verify", dir, "--json");
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({
      ok: true,
      signature: "valid",
      trusted_key: null,
      problems: [expect.stringMatching(/^the signer is not pinned: .*pass --key/)],
    });
    const pinned = await cli("verify", dir, "--key", pub);
    expect(pinned.code).toBe(3);
    expect(pinned.stdout).toMatch(
      /^FAILED re-signed \(signature: untrusted-key\)\n.*signed by a different key/,
    );
  });

  it("refuses a --key that is not an Ed25519 public key, saying so (not 'signed by a different key')", async () => {
    const dir = await fakeBundle("key-check");
    const passwd = join(work, "passwd");
    await writeFile(passwd, "root:x:0:0:root:/root:/bin/bash\n");
    const ec = join(work, "ec.pub");
    await writeFile(
      ec,
      generateKeyPairSync("ec", { namedCurve: "prime256v1" }).publicKey.export({
        type: "spki",
        format: "pem",
      }),
    );
    const cases: [string, string][] = [
      [passwd, `${passwd} is not an Ed25519 public key (neither a PEM public key nor base64 SPKI)`],
      [ec, `${ec} is not an Ed25519 public key (it is a ec key)`],
      [
        join(keys, "itera-signing.key"),
        `${join(keys, "itera-signing.key")} is a private key, not a public key`,
      ],
    ];
    for (const [key, what] of cases) {
      const r = await cli("verify", dir, "--key", key);
      expect(r.code, key).toBe(1);
      expect(r.stdout, key).toBe("");
      expect(r.stderr, key).toContain(`error: ${what}\n  where: ${key}\n  fix:   give the`);
      expect(r.stderr).not.toMatch(/different key/);
    }
  });

  it("fails a bundle whose listed file is a symbolic link, even to a file with the right content", async () => {
    const dir = await fakeBundle("linked-file");
    const outside = join(work, "outside-readme.txt");
    await writeFile(outside, "hello");
    await rm(join(dir, "README.txt"));
    await symlink(outside, join(dir, "README.txt"));
    const r = await cli("verify", dir);
    expect(r.code).toBe(3);
    expect(r.stdout).toContain(`README.txt is a symbolic link (to ${outside}), not a file`);
  });
});

describe("itera verify on an archive", () => {
  it("verifies the one folder inside a .tar.gz and refuses other archives", async () => {
    const pub = join(keys, "itera-signing.pub");
    await fakeBundle("archived");
    const good = join(work, "archived.tar.gz");
    await run("tar", ["-czf", good, "-C", work, "archived"]);
    expect((await cli("verify", good, "--key", pub)).code).toBe(0);
    const two = join(work, "two.tar.gz");
    await run("tar", ["-czf", two, "-C", work, "archived", "keys"]);
    const r = await cli("verify", two);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/holds 2 top-level entries/);
    const junk = join(work, "junk.tar.gz");
    await writeFile(junk, "not gzip");
    expect((await cli("verify", junk)).stderr).toMatch(/cannot be extracted/);
  });

  it("refuses an archive whose only member is a symlink to a bundle folder on this machine", async () => {
    const onHost = await fakeBundle("on-host");
    expect((await cli("verify", onHost)).code).toBe(0);
    const staging = join(work, "evil-staging");
    await mkdir(staging);
    await symlink(onHost, join(staging, "evil"));
    const evil = join(work, "evil.tar.gz");
    await run("tar", ["-czf", evil, "-C", staging, "evil"]);
    const r = await cli("verify", evil);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    expect(r.stderr).toBe(
      `error: the bundle archive's one entry, evil, is a symbolic link (to ${onHost}), not a bundle folder\n  where: ${evil}\n  fix:   pass the .tar.gz made by \`itera build\`\n`,
    );
  });
});

describe("itera profiles --detect", () => {
  it("names a profile for this machine's platform and architecture, with the hardware seen", async () => {
    const r = await cli("profiles", "--detect", "--json");
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.hardware).toMatchObject({ platform: process.platform, arch: process.arch });
    expect(out.ranking.length).toBeGreaterThan(0);
    expect(out.profile).toBe(out.ranking[0].profile);
  });
});
