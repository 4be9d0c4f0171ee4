// `agent pki init|issue|revoke|list|show`: the fleet CA from the command line. Parses flags,
// calls src/pki.ts and prints results on stdout; never prints a private key.
import { defineAgentCommand, flag, line, str, strs, type ParsedArgs } from "./args.ts";
import { UsageError } from "../errors.ts";
import { formatPairs, formatTable } from "../table.ts";
import {
  certStatus,
  DEFAULT_CA_DAYS,
  DEFAULT_CA_NAME,
  DEFAULT_DEVICE_DAYS,
  formatMode,
  ID_RULE,
  initCa,
  isoSeconds,
  issueToFile,
  listCerts,
  MAX_CA_DAYS,
  MAX_DEVICE_DAYS,
  parseDays,
  readBundleReport,
  revokeId,
  validateRole,
  type CertRecord,
} from "../pki.ts";

const dirArg = {
  dir: { type: "string", description: "CA directory (mode 0700; holds ca.key)", valueHint: "DIR", required: true },
} as const;

function required(args: ParsedArgs, name: string): string {
  const v = str(args, name);
  if (v === undefined || v === "") throw new UsageError(`--${name} needs a value`, "see `agent pki --help`");
  return v;
}


const init = defineAgentCommand({
  meta: { name: "init", description: "Create the fleet CA in DIR (refuses to overwrite an existing one)" },
  args: {
    ...dirArg,
    name: { type: "string", description: `CA common name (default "${DEFAULT_CA_NAME}")`, valueHint: "NAME" },
    days: { type: "string", description: `CA validity in days, 1-${MAX_CA_DAYS} (default ${DEFAULT_CA_DAYS})`, valueHint: "N" },
  },
  async exec(args, { io }) {
    const out = (text: string) => io.out(line(text));
    const dir = required(args, "dir");
    const daysText = str(args, "days");
    const name = str(args, "name");
    const r = await initCa(dir, {
      ...(name !== undefined ? { name } : {}),
      ...(daysText !== undefined ? { days: parseDays(daysText, 1, MAX_CA_DAYS) } : {}),
    });
    out(
      [
        `created fleet CA "${r.name}" in ${dir} (valid until ${isoSeconds(r.notAfter)})`,
        `  certificate   ${r.paths.cert}`,
        `  private key   ${r.paths.key} (mode 0600; keep it off the devices and back it up)`,
        `  revocations   ${r.paths.revoked} (copy it to the relay's STATE_DIR/revoked, or its --revocations file)`,
        `  SHA-256       ${r.fingerprint}`,
      ].join("\n"),
    );
  },
});

const issue = defineAgentCommand({
  meta: { name: "issue", description: "Issue a device certificate and write its bundle (mode 0600)" },
  args: {
    ...dirArg,
    role: { type: "enum", options: ["relay", "onsite", "master"], description: "role carried in the certificate", valueHint: "ROLE", required: true },
    id: { type: "string", description: `device id: ${ID_RULE}`, valueHint: "ID", required: true },
    host: { type: "string", description: "relay only, repeatable, at least one: DNS name or IP address devices dial", valueHint: "NAME" },
    days: { type: "string", description: `validity in days, 1-${MAX_DEVICE_DAYS} (default ${DEFAULT_DEVICE_DAYS})`, valueHint: "N" },
    force: { type: "boolean", description: "replace the id's valid certificate (it is revoked) and an existing --out file" },
    out: { type: "string", description: "bundle file to write", valueHint: "FILE.bundle", required: true },
  },
  repeatable: ["host"],
  async exec(args, { io }) {
    const out = (text: string) => io.out(line(text));
    const dir = required(args, "dir");
    const daysText = str(args, "days");
    const r = await issueToFile(dir, {
      role: validateRole(required(args, "role")),
      id: required(args, "id"),
      hosts: strs(args, "host"),
      ...(daysText !== undefined ? { days: parseDays(daysText, 1, MAX_DEVICE_DAYS) } : {}),
      force: flag(args, "force"),
      out: required(args, "out"),
    });
    const lines = [
      `issued ${r.record.role} certificate for ${r.record.id} (serial ${r.record.serial}, valid until ${r.record.notAfter})`,
      ...(r.record.hosts.length > 0 ? [`  hosts    ${r.record.hosts.join(", ")}`] : []),
      `  bundle   ${r.out} (mode 0600: certificate, private key and CA certificate)`,
    ];
    for (const s of r.superseded) lines.push(`revoked the previous certificate ${s.serial} of ${s.id}; give the relay the updated ${dir}/revoked`);
    out(lines.join("\n"));
  },
});

const revoke = defineAgentCommand({
  meta: { name: "revoke", description: "Revoke every certificate of an id and update DIR/revoked" },
  args: {
    ...dirArg,
    id: { type: "string", description: "device id to revoke", valueHint: "ID", required: true },
  },
  async exec(args, { io }) {
    const out = (text: string) => io.out(line(text));
    const dir = required(args, "dir");
    const id = required(args, "id");
    const r = await revokeId(dir, id);
    if (r.revoked.length === 0) {
      out(`nothing to do: every certificate of ${id} was already revoked (${r.alreadyRevoked.map((c) => c.serial).join(", ")})`);
      return;
    }
    out(
      [
        `revoked ${r.revoked.length} certificate${r.revoked.length === 1 ? "" : "s"} of ${id}: ${r.revoked.map((c) => c.serial).join(", ")}`,
        `updated ${r.revocationsFile}; copy it to the relay's STATE_DIR/revoked (or its --revocations file): it takes effect within a second`,
      ].join("\n"),
    );
  },
});

function statusText(r: CertRecord, now: Date): string {
  const s = certStatus(r, now);
  return s === "revoked" ? `revoked ${r.revoked}` : s;
}

const list = defineAgentCommand({
  meta: { name: "list", description: "List issued certificates" },
  args: {
    ...dirArg,
    json: { type: "boolean", description: "print JSON" },
  },
  async exec(args, { io }) {
    const out = (text: string) => io.out(line(text));
    const dir = required(args, "dir");
    const records = await listCerts(dir);
    const now = new Date();
    if (flag(args, "json")) {
      out(JSON.stringify(records.map((r) => ({ ...r, status: certStatus(r, now) })), null, 2));
      return;
    }
    if (records.length === 0) {
      out(`no certificates issued yet in ${dir}`);
      return;
    }
    out(
      formatTable(
        ["ID", "ROLE", "SERIAL", "NOT AFTER", "STATUS", "HOSTS"],
        records.map((r) => [r.id, r.role, r.serial, r.notAfter, statusText(r, now), r.hosts.join(",")]),
      ),
    );
  },
});

const show = defineAgentCommand({
  meta: { name: "show", description: "Show what a bundle holds and check it (exit 1 when it has a problem)" },
  args: {
    bundle: { type: "positional", description: "bundle file", valueHint: "FILE.bundle" },
    json: { type: "boolean", description: "print JSON" },
  },
  async exec(args, { io }) {
    const out = (text: string) => io.out(line(text));
    const file = required(args, "bundle");
    const r = await readBundleReport(file);
    const now = new Date();
    const id = r.identity;
    const status = id ? certStatus({ notBefore: isoSeconds(id.notBefore), notAfter: isoSeconds(id.notAfter), revoked: null }, now) : undefined;
    if (flag(args, "json")) {
      out(
        JSON.stringify(
          {
            path: r.path,
            mode: r.mode !== undefined ? formatMode(r.mode) : null,
            id: id?.id ?? r.header.id ?? null,
            role: id?.role ?? r.header.role ?? null,
            subject: id?.subject ?? null,
            sans: id?.sans ?? [],
            serial: id?.serial ?? null,
            notBefore: id ? isoSeconds(id.notBefore) : null,
            notAfter: id ? isoSeconds(id.notAfter) : null,
            status: status ?? null,
            issuer: id?.issuer ?? null,
            ca: r.caSubject,
            caNotAfter: isoSeconds(r.caNotAfter),
            verified: r.verified,
            problems: r.problems,
          },
          null,
          2,
        ),
      );
    } else {
      const rows: Array<[string, string]> = [
        ["bundle", `${r.path}${r.mode !== undefined ? ` (mode ${formatMode(r.mode)})` : ""}`],
        ["id", id?.id ?? `${r.header.id ?? "?"} (header only)`],
        ["role", id?.role ?? `${r.header.role ?? "?"} (header only)`],
      ];
      if (id) {
        rows.push(
          ["subject", id.subject],
          ["SANs", id.sans.join(", ")],
          ["serial", id.serial],
          ["not before", isoSeconds(id.notBefore)],
          ["not after", `${isoSeconds(id.notAfter)}${status === "valid" ? "" : ` (${status})`}`],
          ["issuer", id.issuer],
        );
      }
      rows.push(["CA", `${r.caSubject} (until ${isoSeconds(r.caNotAfter)})`]);
      rows.push(["verified", r.verified ? "yes: signed by the bundle's CA" : "NO: not signed by the bundle's CA"]);
      out(formatPairs(rows) + r.problems.map((p) => `problem: ${p}\n`).join(""));
    }
    return r.problems.length > 0 || status !== "valid" ? 1 : 0;
  },
});

export const pkiCommand = defineAgentCommand({
  meta: { name: "pki", description: "Fleet certificate authority: create it, issue device bundles, revoke, list, show" },
  subCommands: { init, issue, revoke, list, show, "issue-enroller": () => import("./enroll.ts").then((m) => m.issueEnrollerCommand) },
});
