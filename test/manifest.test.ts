import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  canonicalJson,
  type Manifest,
  signManifest,
  verifyManifestSignature,
} from "../src/bundle/manifest.js";

const base: Manifest = {
  schema: "itera.bundle/v1",
  bundle_id: "m-0.1.0-rpi4",
  version: "0.1.0",
  model: { id: "m", quant: "int8", card: { params: 1 } },
  profile: "rpi4",
  target: { platform: "linux", arch: "arm64", node: "24.21.0" },
  files: { "itera-agent": { sha256: "a".repeat(64), bytes: 10 } },
  assets: {},
  build: { itera_version: "0.1.0", built_at: "2026-11-26T00:00:00Z", host: "x" },
};

describe("bundle manifest signatures", () => {
  const keys = generateKeyPairSync("ed25519");
  const pem = keys.privateKey.export({ type: "pkcs8", format: "pem" }).toString();

  it("canonical JSON sorts keys at every level", () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { f: 1, e: 0 }], c: null } })).toBe(
      '{"a":{"c":null,"d":[2,{"e":0,"f":1}]},"b":1}',
    );
  });

  it("verifies its own signature and refuses any change", () => {
    const signed = signManifest(base, pem);
    expect(verifyManifestSignature(signed)).toBe(true);
    const pub = keys.publicKey.export({ type: "spki", format: "pem" }).toString();
    expect(verifyManifestSignature(signed, pub)).toBe(true);
    const tampered = { ...signed, files: { "itera-agent": { sha256: "b".repeat(64), bytes: 10 } } };
    expect(verifyManifestSignature(tampered)).toBe(false);
    const other = generateKeyPairSync("ed25519").publicKey.export({ type: "spki", format: "pem" }).toString();
    expect(verifyManifestSignature(signed, other)).toBe(false);
    expect(verifyManifestSignature(base)).toBe(false);
  });
});
