// Flash-and-run enrollment from the command line (issue 14 §8):
//   agent enroll pending | list | approve ID | deny ID | revoke ID          (relay's control socket)
//   agent enroll token add [--uses N] [--expires D] [--manual] [--note T] | token list | token del ID
//   agent pki issue-enroller --dir DIR --id ID --out FILE [--days N] [--force]   (CA host)
// Parses flags and prints; the relay's part is src/roles/enroll.ts, the certificates src/pki-enroll.ts.
import { defineAgentCommand, flag, line, str } from "./args.ts";
import { configArgs, configFromArgs, daemonClient } from "./common.ts";
import { UsageError } from "../errors.ts";
import { parseDuration } from "../duration.ts";
import { formatTable } from "../table.ts";
import type { EnrollmentView, TokenView } from "../tunnel/relay/enroll-service.ts";

const json = { type: "boolean", description: "print JSON" } as const;
const idArg = { type: "positional", valueHint: "id", description: "the device id (see `agent enroll pending`)" } as const;

type EnrollClientApi = Record<string, (req?: unknown) => unknown>;

async function call<T>(args: Parameters<typeof configFromArgs>[0], ctx: Parameters<NonNullable<ReturnType<typeof defineAgentCommand>["exec"]>>[1], method: string, req: unknown = {}): Promise<T> {
  const cfg = await configFromArgs(args);
  return (await daemonClient<EnrollClientApi>(ctx, cfg.control).call(method as never, req as never)) as T;
}

function enrollmentTable(rows: readonly EnrollmentView[]): string {
  if (rows.length === 0) return "";
  return formatTable(
    ["ID", "STATE", "TOKEN", "ADDRESS", "HOSTNAME", "REQUESTED", "SERIAL"],
    rows.map((r) => [r.id, r.state, r.token, r.address, r.hostname || "-", r.requested.replace(/\.\d{3}Z$/, "Z"), r.serial ?? "-"]),
  );
}

/** `pending` and `list`: one relay call, its rows as a table (or JSON), a line when there are none. */
function enrollmentRows(name: string, description: string, method: string, none: string) {
  return defineAgentCommand({
    meta: { name, description },
    args: { ...configArgs, json },
    runsOn: ["relay"],
    async exec(args, ctx) {
      const rows = await call<EnrollmentView[]>(args, ctx, method);
      ctx.io.out(flag(args, "json") ? JSON.stringify(rows, null, 2) + "\n" : rows.length ? enrollmentTable(rows) : none);
      return 0;
    },
  });
}

const pending = enrollmentRows("pending", "Devices whose enrollment waits for approval (relay)", "enrollPending", "no enrollment waits for approval\n");
const list = enrollmentRows("list", "Every device that asked to enroll: pending, signed, denied, revoked (relay)", "enrollList", "no device has enrolled\n");

function decision(name: "approve" | "deny" | "revoke", method: string, description: string, said: string) {
  return defineAgentCommand({
    meta: { name, description },
    args: { ...configArgs, id: idArg, json },
    runsOn: ["relay"],
    async exec(args, ctx) {
      const id = str(args, "id");
      if (!id) throw new UsageError(`\`agent enroll ${name}\` needs the device id`, "see `agent enroll pending` or `agent enroll list`");
      const r = await call<EnrollmentView>(args, ctx, method, { id });
      ctx.io.out(flag(args, "json") ? JSON.stringify(r, null, 2) + "\n" : line(`${r.id} ${said}${r.serial ? ` (serial ${r.serial})` : ""}`));
      return 0;
    },
  });
}

const tokenAdd = defineAgentCommand({
  meta: { name: "add", description: "Make an enrollment token for the devices' image; printed once, stored hashed (relay)" },
  args: {
    ...configArgs,
    uses: { type: "string", valueHint: "N", description: "how many devices may enroll with it (default: no limit)" },
    expires: { type: "string", valueHint: "DURATION", description: "it stops working after this long, e.g. 7d (default: never)" },
    manual: { type: "boolean", description: "each device waits for `agent enroll approve ID` (default: signed at once)" },
    note: { type: "string", valueHint: "text", description: "a note shown by `token list`" },
    json,
  },
  runsOn: ["relay"],
  async exec(args, ctx) {
    const expiresText = str(args, "expires");
    let expires: number | undefined;
    if (expiresText !== undefined) {
      try {
        expires = parseDuration(expiresText);
      } catch (e) {
        throw new UsageError(`--expires: ${(e as Error).message}`, "for example --expires 7d");
      }
    }
    const t = await call<TokenView & { token: string }>(args, ctx, "enrollTokenAdd", { uses: str(args, "uses"), expires, approval: flag(args, "manual") ? "manual" : "auto", note: str(args, "note") });
    if (flag(args, "json")) ctx.io.out(JSON.stringify(t, null, 2) + "\n");
    else {
      ctx.io.out(`${t.token}\n`);
      ctx.io.err(`token ${t.id}: ${t.uses ?? "unlimited"} use(s), ${t.expires ? `expires ${t.expires}` : "no expiry"}, ${t.approval} approval. Put it in the image's [enroll] token_file; it is not shown again.\n`);
    }
    return 0;
  },
});

const tokenList = defineAgentCommand({
  meta: { name: "list", description: "Enrollment tokens with their uses, expiry and approval mode (relay)" },
  args: { ...configArgs, json },
  runsOn: ["relay"],
  async exec(args, ctx) {
    const rows = await call<TokenView[]>(args, ctx, "enrollTokenList");
    if (flag(args, "json")) ctx.io.out(JSON.stringify(rows, null, 2) + "\n");
    else if (rows.length === 0) ctx.io.out("no enrollment tokens; make one with `agent enroll token add`\n");
    else ctx.io.out(formatTable(["ID", "USED", "EXPIRES", "APPROVAL", "STATE", "NOTE"], rows.map((t) => [t.id, `${t.used}/${t.uses ?? "∞"}`, t.expires ?? "never", t.approval, t.state, t.note])));
    return 0;
  },
});

const tokenDel = defineAgentCommand({
  meta: { name: "del", description: "Delete an enrollment token: devices not yet enrolled with it are refused (relay)" },
  args: { ...configArgs, id: { type: "positional", valueHint: "id", description: "the token's id (see `agent enroll token list`)" }, json },
  runsOn: ["relay"],
  async exec(args, ctx) {
    const id = str(args, "id");
    if (!id) throw new UsageError("`agent enroll token del` needs the token id", "see `agent enroll token list`");
    const r = await call<{ deleted: string }>(args, ctx, "enrollTokenDel", { id });
    ctx.io.out(flag(args, "json") ? JSON.stringify(r) + "\n" : `deleted enrollment token ${r.deleted}\n`);
    return 0;
  },
});

export const enrollCommand = defineAgentCommand({
  meta: { name: "enroll", description: "Flash-and-run enrollment on the relay: pending requests, approve, deny, revoke, tokens" },
  subCommands: {
    pending,
    list,
    approve: decision("approve", "enrollApprove", "Sign a waiting device's certificate; it fetches it at its next try (relay)", "approved"),
    deny: decision("deny", "enrollDeny", "Refuse a waiting device for good (relay)", "denied"),
    revoke: decision("revoke", "enrollRevoke", "Revoke an enrolled device's certificate: its connection closes and it cannot enroll again (relay)", "revoked"),
    token: defineAgentCommand({ meta: { name: "token", description: "Enrollment tokens: add, list, del (relay)" }, subCommands: { add: tokenAdd, list: tokenList, del: tokenDel } }),
  },
});

export const issueEnrollerCommand = defineAgentCommand({
  meta: { name: "issue-enroller", description: "Issue the relay's enroller certificate (CA:true, pathlen 0, constrained to onsite identities) into an enroller file" },
  args: {
    dir: { type: "string", description: "CA directory (mode 0700; holds ca.key)", valueHint: "DIR", required: true },
    id: { type: "string", description: "the enroller's name, e.g. enroll-eu-1", valueHint: "ID", required: true },
    out: { type: "string", description: "the enroller file to write (mode 0600), for the relay's [enroll] enroller", valueHint: "FILE", required: true },
    days: { type: "string", description: "validity in days, 1-3650 (default 1825; never beyond the CA)", valueHint: "N" },
    force: { type: "boolean", description: "overwrite an existing --out" },
  },
  async exec(args, { io }) {
    const { issueEnrollerToFile } = await import("../pki-enroll.ts");
    const { parseDays } = await import("../pki.ts");
    const days = str(args, "days");
    const r = await issueEnrollerToFile(str(args, "dir") ?? "", {
      id: str(args, "id") ?? "",
      out: str(args, "out") ?? "",
      force: flag(args, "force"),
      ...(days !== undefined ? { days: parseDays(days, 1, 3650) } : {}),
    });
    io.out(line(`issued enroller ${str(args, "id")} (serial ${r.serial}, until ${r.notAfter.toISOString()}) to ${r.out}: copy it to the relay and set [enroll] enroller = "${r.out}"`));
    return 0;
  },
});
