import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The run's own TMPDIR, listed and removed at the end (test/global-setup-tmpdir.ts).
    globalSetup: ["test/global-setup-tmpdir.ts"],
    // Real ONNX Runtime sessions, brokers and qemu are slow to start on a 2-core machine.
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: "forks",
    maxWorkers: 2,
  },
});
