import { copyFile, mkdir, readFile, readlink, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { signManifest } from "../src/bundle/manifest.js";
import { flashOverSsh, type SshFlashOptions } from "../src/deploy/flash-ssh.js";
import { flashRootfs } from "../src/deploy/rootfs.js";
import { IteraError } from "../src/errors.js";
import { sha256 } from "../src/util/fs.js";
import { signingKeys } from "./fixtures/deploy/bundle.js";
import { newDevice as newTestDevice, sshFlashOptions } from "./fixtures/deploy/device.js";
import { makePartsBundle } from "./fixtures/deploy/parts-bundle.js";
import { startSshd, type TestSshd } from "./fixtures/deploy/sshd.js";
import { tempDir } from "./temp-dir.js";

/**
 * Issue #18: a bundle's runtime and model pack are separate, signed parts. When the device's current
 * release has the same runtime, `itera flash` (ssh and --rootfs) sends only what changed (the model
 * pack and the new manifest), links the runtime on the device, still checks every file there, and
 * rolls back as before; a tampered model pack, or one whose own signature fails, is refused.
 */
let sshd: TestSshd;
let work: string;
const keys = signingKeys();
const other = signingKeys();
const b: Record<string, string> = {};
const RUNTIME_PAD = 600_000;

beforeAll(async () => {
  work = await tempDir("itera-flash-parts-");
  const out = join(work, "bundles");
  const [server] = await Promise.all([
    startSshd(),
    (async () => {
      const common = { signWith: keys.privatePem, runtimePad: RUNTIME_PAD };
      b.v1 = await makePartsBundle(join(out, "1"), {
        ...common,
        version: "0.1.0",
        model: "model one ".repeat(3000),
      });
      b.v2 = await makePartsBundle(join(out, "2"), {
        ...common,
        version: "0.2.0",
        model: "model two ".repeat(2000),
      });
      b.broken = await makePartsBundle(join(out, "3"), {
        ...common,
        version: "0.3.0",
        model: "BROKEN model",
      });
      b.newRuntime = await makePartsBundle(join(out, "4"), {
        ...common,
        version: "0.4.0",
        model: "model two ".repeat(2000),
        runtimeFlavour: "b",
      });
      // A byte of the model changed after signing.
      b.tampered = await makePartsBundle(join(out, "5"), {
        ...common,
        version: "0.5.0",
        model: "model five",
      });
      await writeFile(join(b.tampered, "model", "model.onnx"), "model fivE");
      // The pack's own signature broken (its card edited), while the bundle manifest is re-signed to
      // match the edited file: only the model pack's signature catches it.
      b.packSig = await makePartsBundle(join(out, "6"), { ...common, version: "0.6.0", model: "model six" });
      const packPath = join(b.packSig, "model-pack.json");
      const pack = JSON.parse(await readFile(packPath, "utf8"));
      pack.model.card = { note: "edited after signing" };
      const text = `${JSON.stringify(pack, null, 2)}\n`;
      await writeFile(packPath, text);
      const mPath = join(b.packSig, "manifest.json");
      const m = JSON.parse(await readFile(mPath, "utf8"));
      m.files["model-pack.json"] = { sha256: sha256(text), bytes: Buffer.byteLength(text) };
      m.parts.model_pack.sha256 = sha256(text);
      m.parts.model_pack.bytes = Object.entries(m.files as Record<string, { bytes: number }>)
        .filter(([f]) => f.startsWith("model/") || f === "model-pack.json")
        .reduce((n, [, f]) => n + f.bytes, 0);
      await writeFile(mPath, JSON.stringify(signManifest(m, keys.privatePem), null, 2));
      // A model pack signed by another key than the bundle.
      b.packKey = await makePartsBundle(join(out, "7"), {
        ...common,
        version: "0.7.0",
        model: "model seven",
      });
      const mixed = await makePartsBundle(join(out, "7o"), {
        version: "0.7.0",
        model: "model seven",
        signWith: other.privatePem,
        runtimePad: RUNTIME_PAD,
      });
      await copyFile(join(mixed, "model-pack.json"), join(b.packKey, "model-pack.json"));
      const m7Path = join(b.packKey, "manifest.json");
      const m7 = JSON.parse(await readFile(m7Path, "utf8"));
      const t7 = await readFile(join(b.packKey, "model-pack.json"));
      m7.files["model-pack.json"] = { sha256: sha256(t7), bytes: t7.length };
      m7.parts.model_pack.sha256 = sha256(t7);
      delete m7.signature;
      await writeFile(m7Path, JSON.stringify(signManifest(m7, keys.privatePem), null, 2));
    })(),
  ]);
  sshd = server;
});

afterAll(async () => {
  await sshd?.stop();
});

const newDevice = (name: string) => newTestDevice(work, name);

function options(bundle: string, dev: { prefix: string; systemctl: string }): SshFlashOptions {
  return sshFlashOptions(sshd, bundle, dev, { trustedKey: keys.publicPem });
}

/**
 * What a model-only update must send: the model pack's files that changed (model.onnx and the pack's
 * manifest; genai_config.json is the same in every fixture version, so it is linked too) and the
 * new manifest.json.
 */
async function changedPackBytes(dir: string): Promise<number> {
  const size = async (f: string) => (await stat(join(dir, f))).size;
  return (await size("model/model.onnx")) + (await size("model-pack.json")) + (await size("manifest.json"));
}

const UNCHANGED = [
  "README.txt",
  "install.sh",
  "itera-agent",
  "itera-agent.service",
  "model/genai_config.json",
];

const release = (prefix: string, v: string, f: string) => join(prefix, "opt/itera/releases", v, f);

describe("itera flash with runtime and model pack as separate parts", () => {
  it("over ssh: the first flash sends everything, a model-only update sends the model pack and links the runtime", async () => {
    const dev = await newDevice("ssh");
    const r1 = await flashOverSsh(options(b.v1!, dev));
    expect(r1).toMatchObject({
      ok: true,
      result: "installed",
      current: "0.1.0",
      parts: { runtime: true, model_pack: true },
    });
    expect(r1.copy).toMatchObject({ bytes_linked: 0, linked: [] });
    expect(r1.copy!.bytes_sent).toBe(r1.copy!.bytes_total);

    const r2 = await flashOverSsh(options(b.v2!, dev));
    expect(r2).toMatchObject({
      ok: true,
      result: "installed",
      previous: "0.1.0",
      current: "0.2.0",
      parts: { runtime: false, model_pack: true },
    });
    expect(r2.copy!.linked).toEqual(UNCHANGED);
    expect(r2.copy!.bytes_sent).toBe(await changedPackBytes(b.v2!));
    expect(r2.copy!.bytes_sent).toBeLessThan(RUNTIME_PAD / 10);
    expect(r2.copy!.bytes_sent + r2.copy!.bytes_linked).toBe(r2.copy!.bytes_total);
    expect(r2.steps.map((s) => s.id)).toContain("link");
    // One runtime on the device, two names: the new release's is a hard link to the old one's.
    const a = await stat(release(dev.prefix, "0.1.0", "itera-agent"));
    const c = await stat(release(dev.prefix, "0.2.0", "itera-agent"));
    expect(c.ino).toBe(a.ino);
    expect(await readFile(release(dev.prefix, "0.2.0", "model/model.onnx"), "utf8")).toBe(
      "model two ".repeat(2000),
    );
    expect(r2.health).toMatchObject({ ok: true, info: { manifest: { version: "0.2.0" } } });
    expect(await readlink(join(dev.prefix, "opt/itera/previous"))).toBe("releases/0.1.0");

    // A bad model pack on the same runtime: only the pack travels, the health check fails, rollback.
    const r3 = await flashOverSsh(options(b.broken!, dev));
    expect(r3).toMatchObject({
      ok: false,
      result: "rolled-back",
      current: "0.2.0",
      rollback: { to: "0.2.0", healthy: true },
      parts: { runtime: false, model_pack: true },
    });
    expect(r3.copy!.linked).toContain("itera-agent");
    expect(await readlink(join(dev.prefix, "opt/itera/current"))).toBe("releases/0.2.0");
    await expect(stat(join(dev.prefix, "opt/itera/releases/0.3.0"))).rejects.toThrow();
    // Removing the failed release removed a name, not the runtime the current release runs.
    expect((await stat(release(dev.prefix, "0.2.0", "itera-agent"))).ino).toBe(a.ino);

    // Another runtime: everything travels again.
    const r4 = await flashOverSsh(options(b.newRuntime!, dev));
    expect(r4).toMatchObject({ ok: true, current: "0.4.0", parts: { runtime: true, model_pack: false } });
    expect(r4.copy!.linked).toContain("model/model.onnx");
    expect(r4.copy!.linked).not.toContain("itera-agent");
    expect(r4.copy!.bytes_sent).toBeGreaterThan(RUNTIME_PAD);
  });

  it("over ssh: a linked runtime that is damaged on the device is caught by the device-side check and sent again", async () => {
    const dev = await newDevice("ssh-damaged");
    await flashOverSsh(options(b.v1!, dev));
    // The installed runtime changed on the device after its install (same size).
    const exe = release(dev.prefix, "0.1.0", "itera-agent");
    const bytes = await readFile(exe);
    bytes[bytes.length - 3] = bytes[bytes.length - 3]! ^ 1;
    await writeFile(exe, bytes);
    const r = await flashOverSsh(options(b.v2!, dev));
    expect(r).toMatchObject({ ok: true, current: "0.2.0" });
    // Linked, found wrong by sha256sum on the device, and sent once more from this machine.
    expect(r.copy!.bytes_sent).toBeGreaterThan(RUNTIME_PAD);
    expect(sha256(await readFile(release(dev.prefix, "0.2.0", "itera-agent")))).toBe(
      sha256(await readFile(join(b.v2!, "itera-agent"))),
    );
  });

  it("refuses a tampered model pack and a model pack whose own signature fails, before contacting the device", async () => {
    const dev = await newDevice("refused");
    for (const [bundle, why] of [
      [b.tampered!, /model\/model\.onnx has sha256/],
      [b.packSig!, /model-pack\.json's signature does not match it/],
      [b.packKey!, /model-pack\.json is signed by another key than the bundle/],
    ] as const) {
      const e = await flashOverSsh(options(bundle, dev)).catch((err: unknown) => err);
      expect(e).toBeInstanceOf(IteraError);
      expect((e as IteraError).message).toMatch(why);
      await expect(stat(join(dev.prefix, "opt"))).rejects.toThrow();
    }
  });

  it("--rootfs: a model-only update writes the model pack and links the runtime on the card", async () => {
    const root = join(work, "card");
    await mkdir(join(root, "etc"), { recursive: true });
    await mkdir(join(root, "usr/bin"), { recursive: true });
    await copyFile("/bin/dash", join(root, "usr/bin/dash"));
    await symlink("usr/bin", join(root, "bin"));
    await symlink("dash", join(root, "usr/bin/sh"));
    const r1 = await flashRootfs({ bundle: b.v1!, rootfs: root, trustedKey: keys.publicPem });
    expect(r1.copy).toMatchObject({ bytes_linked: 0 });
    expect(r1.copy!.bytes_sent).toBe(r1.copy!.bytes_total);
    const r2 = await flashRootfs({ bundle: b.v2!, rootfs: root, trustedKey: keys.publicPem });
    expect(r2).toMatchObject({
      ok: true,
      current: "0.2.0",
      previous: "0.1.0",
      parts: { runtime: false, model_pack: true },
    });
    expect(r2.copy!.linked).toEqual(UNCHANGED);
    expect(r2.copy!.bytes_sent).toBe(await changedPackBytes(b.v2!));
    expect((await stat(release(root, "0.2.0", "itera-agent"))).ino).toBe(
      (await stat(release(root, "0.1.0", "itera-agent"))).ino,
    );
    expect(await readlink(join(root, "opt/itera/current"))).toBe("releases/0.2.0");
    const e = await flashRootfs({ bundle: b.packSig!, rootfs: root, trustedKey: keys.publicPem }).catch(
      (err: unknown) => err,
    );
    expect((e as IteraError).message).toMatch(/model-pack\.json's signature does not match it/);
    expect(await readlink(join(root, "opt/itera/current"))).toBe("releases/0.2.0");
  });
});
