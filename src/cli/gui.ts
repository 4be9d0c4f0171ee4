// `agent gui user add NAME | list | del NAME`: the web GUI's users (src/gui/users.ts), kept in
// the daemon's state dir. The password comes from stdin, never the command line (ps shows argv).
// No daemon is asked: the file is read at each login, so a change counts at once.
import { NotFoundError, UsageError } from "../errors.ts";
import { checkUserName, UserStore } from "../gui/users.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configArgs, configFromArgs } from "./common.ts";

const stateDir = { "state-dir": { type: "string", valueHint: "dir", description: "the daemon's state dir, where the users are kept (default: the config's state_dir)" } } as const;
const json = { json: { type: "boolean", description: "print JSON" } } as const;

async function store(args: Record<string, unknown>): Promise<UserStore> {
  const cfg = await configFromArgs(args as never);
  return new UserStore(cfg.state_dir);
}

const add = defineAgentCommand({
  meta: { name: "add", description: "Add a GUI user (or set a new password): the password is read from stdin, one line, at least 8 characters" },
  args: { ...configArgs, ...stateDir, name: { type: "positional", valueHint: "name", description: "user name" } },
  async exec(args, { io }) {
    const name = checkUserName(str(args, "name") ?? "");
    const text = await new Response(Bun.stdin.stream()).text();
    const password = text.replace(/\r?\n$/, "");
    if (password === "") throw new UsageError("no password on stdin", "printf '%s\\n' 'a long password' | agent gui user add NAME");
    const s = await store(args);
    const created = await s.add(name, password);
    io.out(`${created ? "added" : "changed the password of"} GUI user ${name} (${s.file})\n`);
    return 0;
  },
});

const list = defineAgentCommand({
  meta: { name: "list", description: "List the GUI users" },
  args: { ...configArgs, ...stateDir, ...json },
  async exec(args, { io }) {
    const users = (await store(args)).list().map((u) => ({ name: u.name, created: u.created }));
    if (flag(args, "json")) io.out(JSON.stringify(users, null, 2) + "\n");
    else if (users.length === 0) io.out("no GUI user: add one with `agent gui user add NAME` (password on stdin)\n");
    else for (const u of users) io.out(`${u.name}\t${u.created}\n`);
    return 0;
  },
});

const del = defineAgentCommand({
  meta: { name: "del", description: "Delete a GUI user; its open logins end at their next request" },
  args: { ...configArgs, ...stateDir, name: { type: "positional", valueHint: "name", description: "user name" } },
  async exec(args, { io }) {
    const name = checkUserName(str(args, "name") ?? "");
    const s = await store(args);
    if (!s.del(name)) throw new NotFoundError(`no GUI user ${name}`, "`agent gui user list` lists them");
    io.out(`deleted GUI user ${name}\n`);
    return 0;
  },
});

const user = defineAgentCommand({
  meta: { name: "user", description: "The web GUI's users: add, list, del" },
  subCommands: { add, list, del },
});

export const guiCommand = defineAgentCommand({
  meta: { name: "gui", description: "The web GUI of a master or relay (gui = \"ADDR:PORT\"): its users" },
  subCommands: { user },
});
