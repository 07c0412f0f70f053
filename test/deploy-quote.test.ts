import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { remoteCommand, shellQuote } from "../src/deploy/shell-quote.js";

/** What a real POSIX shell makes of a command line: each argument on its own, NUL-separated. */
function shellSplit(line: string): string[] {
  const out = execFileSync("sh", ["-c", `printf '%s\\0' ${line}`]);
  return out.toString("utf8").split("\0").slice(0, -1);
}

describe("shellQuote", () => {
  it("survives a real shell unchanged for hostile arguments", () => {
    const hostile = [
      "",
      " ",
      "plain",
      "two words",
      "it's",
      "'''",
      '"double"',
      "$(touch /tmp/itera-pwned)",
      "`id`",
      // biome-ignore lint/suspicious/noTemplateCurlyInString: a literal shell parameter expansion
      "${HOME}",
      "a;b|c&d>e<f",
      "new\nline",
      "tab\there",
      "back\\slash",
      "*",
      "~",
      "-rf",
      "#comment",
      "héllo ünïcode",
    ];
    expect(shellSplit(remoteCommand(hostile))).toEqual(hostile);
  });

  it("survives a real shell for random printable strings", () => {
    const args = Array.from({ length: 200 }, () =>
      Array.from(randomBytes(12), (b) => String.fromCharCode(32 + (b % 95))).join(""),
    );
    expect(shellSplit(remoteCommand(args))).toEqual(args);
  });

  it("leaves plain words readable and refuses NUL", () => {
    expect(shellQuote("/opt/itera/releases/0.1.0")).toBe("/opt/itera/releases/0.1.0");
    expect(shellQuote("a b")).toBe("'a b'");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
    expect(() => shellQuote("a\0b")).toThrow(/NUL/);
  });
});
