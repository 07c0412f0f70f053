/**
 * Quoting for the one place a command line is parsed by a shell: ssh sends its command as a single
 * string that the device's login shell splits again. Every argument is wrapped in single quotes
 * (inside which a POSIX shell interprets nothing); a single quote itself becomes '\'' .
 */
export function shellQuote(arg: string): string {
  if (arg.includes("\0")) throw new Error("a shell argument cannot contain a NUL byte");
  if (/^[A-Za-z0-9_\-./=:@%+,]+$/.test(arg)) return arg;
  return `'${arg.replaceAll("'", `'\\''`)}'`;
}

/** An argv turned into the one string ssh passes to the remote shell, each argument quoted. */
export function remoteCommand(argv: readonly string[]): string {
  return argv.map(shellQuote).join(" ");
}
