// The web GUI's users: STATE_DIR/gui-users.json (mode 0600), a name and an argon2id hash
// (Bun.password) each. There are none until `agent gui user add NAME` makes one: no default
// credentials. The daemon reads the file on every login, so a user added or deleted while it
// runs counts at once (a deleted user's open sessions end at their next request).
import { existsSync, mkdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { UsageError } from "../errors.ts";
import { writeFileAtomic } from "../os/atomic.ts";

export const USERS_FILE = "gui-users.json";

export interface GuiUser {
  name: string;
  hash: string;
  created: string;
}

/** A user name: 1-32 of letters, digits, `._-`, starting with a letter or digit. */
export function checkUserName(name: unknown): string {
  if (typeof name !== "string" || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/.test(name)) {
    throw new UsageError(`user name: expected 1-32 letters, digits, '.', '_' or '-', got ${typeof name === "string" ? JSON.stringify(name.slice(0, 40)) : String(name)}`);
  }
  return name;
}

/** A password: 8 to 1024 characters, one line. */
export function checkPassword(pw: string): string {
  if (pw.length < 8) throw new UsageError(`password: expected at least 8 characters, got ${pw.length}`, "agent gui user add NAME reads the password from stdin: printf '%s\\n' 'the password' | agent gui user add NAME");
  if (pw.length > 1024 || /[\r\n]/.test(pw)) throw new UsageError("password: expected one line of at most 1024 characters");
  return pw;
}

export class UserStore {
  readonly file: string;
  /** A hash to verify against when the user does not exist: the answer takes as long either way. */
  private dummy: string | undefined;

  constructor(stateDir: string) {
    this.file = join(stateDir, USERS_FILE);
  }

  list(): GuiUser[] {
    if (!existsSync(this.file)) return [];
    let data: unknown;
    try {
      data = JSON.parse(readFileSync(this.file, "utf8"));
    } catch (e) {
      throw new UsageError(`${this.file}: not the GUI's user list (${(e as Error).message})`, `remove it and add the users again with \`agent gui user add NAME\``);
    }
    const users = (data as { users?: unknown }).users;
    if (!Array.isArray(users)) throw new UsageError(`${this.file}: expected {"users": [...]}`);
    return users.filter((u): u is GuiUser => typeof u?.name === "string" && typeof u?.hash === "string");
  }

  has(): boolean {
    return this.list().length > 0;
  }

  /** Adds NAME, or replaces its password. Answers whether it was new. */
  async add(name: string, password: string, now = new Date()): Promise<boolean> {
    checkUserName(name);
    checkPassword(password);
    const hash = await Bun.password.hash(password, { algorithm: "argon2id" });
    const users = this.list();
    const i = users.findIndex((u) => u.name === name);
    const user = { name, hash, created: now.toISOString() };
    if (i >= 0) users[i] = user;
    else users.push(user);
    this.write(users);
    return i < 0;
  }

  del(name: string): boolean {
    const users = this.list();
    const left = users.filter((u) => u.name !== name);
    if (left.length === users.length) return false;
    this.write(left);
    return true;
  }

  /** Whether NAME exists and PASSWORD is its password. */
  async verify(name: string, password: string): Promise<boolean> {
    const u = this.list().find((x) => x.name === name);
    if (!u) {
      this.dummy ??= await Bun.password.hash("not a password of anyone", { algorithm: "argon2id" });
      await Bun.password.verify(password, this.dummy);
      return false;
    }
    try {
      return await Bun.password.verify(password, u.hash);
    } catch {
      return false;
    }
  }

  /** The file's mode bits, for a check that it is still 0600. */
  mode(): number | null {
    return existsSync(this.file) ? statSync(this.file).mode & 0o777 : null;
  }

  private write(users: GuiUser[]): void {
    mkdirSync(dirname(this.file), { recursive: true, mode: 0o700 });
    writeFileAtomic(this.file, JSON.stringify({ users }, null, 2) + "\n", { mode: 0o600 });
  }
}
