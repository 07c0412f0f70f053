import { createRequire } from "node:module";

/**
 * Stands in for better-sqlite3 inside a bundle (resolved by the esbuild plugin in
 * src/package/agent-script.ts). better-sqlite3 is a native add-on compiled for the build host
 * only, while the bundle's Node 24 has SQLite built in (`node:sqlite`, DatabaseSync): this class
 * gives that engine the part of better-sqlite3's API the agent uses: the constructor, pragma(),
 * exec(), prepare() (statements with run/get/all and positional or named parameters), transaction()
 * (BEGIN/COMMIT, ROLLBACK on throw; not nestable) and close().
 */
interface SqliteStatement {
  run(...params: unknown[]): { changes: number | bigint; lastInsertRowid: number | bigint };
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

interface SqliteDatabase {
  exec(sql: string): void;
  prepare(sql: string): SqliteStatement;
  close(): void;
}

export default class Database {
  private readonly db: SqliteDatabase;

  constructor(path: string) {
    // Through createRequire: the dev host's Node 20 has no node:sqlite (and no types for it).
    const { DatabaseSync } = createRequire(process.execPath)("node:sqlite") as {
      DatabaseSync: new (path: string) => SqliteDatabase;
    };
    this.db = new DatabaseSync(path);
  }

  pragma(text: string, options: { simple?: boolean } = {}): unknown {
    const rows = this.db.prepare(`PRAGMA ${text}`).all() as Record<string, unknown>[];
    return options.simple ? Object.values(rows[0] ?? {})[0] : rows;
  }

  exec(sql: string): this {
    this.db.exec(sql);
    return this;
  }

  prepare(sql: string): SqliteStatement {
    return this.db.prepare(sql);
  }

  transaction<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => R {
    return (...args: A) => {
      this.db.exec("BEGIN");
      try {
        const result = fn(...args);
        this.db.exec("COMMIT");
        return result;
      } catch (e) {
        this.db.exec("ROLLBACK");
        throw e;
      }
    };
  }

  close(): void {
    this.db.close();
  }
}
