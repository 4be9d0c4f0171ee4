// Issue 19, item 5: no hint may suggest overwriting the CA, and `pki issue` refuses an --out
// inside the CA directory or over a CA certificate, even with --force.
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { UsageError } from "../src/errors.ts";
import { initCa, issueToFile, readBundleReport, loadBundle } from "../src/pki.ts";

const tmp = mkdtempSync(join(tmpdir(), "ux-pki-"));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));
const ca = join(tmp, "ca");
await initCa(ca);
const caCert = readFileSync(join(ca, "ca.crt"), "utf8");

async function refusal(p: Promise<unknown>): Promise<UsageError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    return e as UsageError;
  }
  throw new Error("expected a refusal");
}

describe("pki issue refuses to write over the CA", () => {
  test.each([
    ["ca/ca.crt itself, with --force", () => join(ca, "ca.crt")],
    ["ca/ca.key, with --force", () => join(ca, "ca.key")],
    ["a new file inside the CA directory", () => join(ca, "site-1.bundle")],
    ["a new file in a subdirectory of the CA directory", () => join(ca, "certs", "site-1.bundle")],
    ["the CA directory through a relative path", () => join(ca, "..", "ca", "x.bundle")],
  ])("%s", async (_name, outOf) => {
    const out = outOf();
    const e = await refusal(issueToFile(ca, { role: "onsite", id: "site-1", out, force: true }));
    expect(e.message).toContain("CA directory");
    expect(e.hint ?? "").not.toContain(out);
    expect(readFileSync(join(ca, "ca.crt"), "utf8")).toBe(caCert);
  });

  test("through a symlink to the CA directory", async () => {
    const link = join(tmp, "link-to-ca");
    symlinkSync(ca, link);
    const e = await refusal(issueToFile(ca, { role: "onsite", id: "site-1", out: join(link, "ca.crt"), force: true }));
    expect(e.message).toContain("CA directory");
    expect(readFileSync(join(ca, "ca.crt"), "utf8")).toBe(caCert);
  });

  test("a copy of the CA certificate elsewhere is not replaced, even with --force", async () => {
    const elsewhere = join(tmp, "elsewhere");
    mkdirSync(elsewhere);
    const copy = join(elsewhere, "fleet-ca.crt");
    copyFileSync(join(ca, "ca.crt"), copy);
    const e = await refusal(issueToFile(ca, { role: "onsite", id: "site-1", out: copy, force: true }));
    expect(e.message).toContain("CA certificate");
    expect(readFileSync(copy, "utf8")).toBe(caCert);
  });

  test("an ordinary bundle is still replaced with --force", async () => {
    const out = join(tmp, "site-2.bundle");
    await issueToFile(ca, { role: "onsite", id: "site-2", out });
    const r = await issueToFile(ca, { role: "onsite", id: "site-2", out, force: true });
    expect(r.superseded.length).toBe(1);
    expect((await loadBundle(out)).serial).toBe(r.record.serial);
  });
});

describe("no hint suggests overwriting the CA", () => {
  test("pki show ca/ca.crt says it is the CA certificate, and its hint does not name it as --out", async () => {
    const file = join(ca, "ca.crt");
    let err: UsageError | undefined;
    try {
      await readBundleReport(file);
    } catch (e) {
      err = e as UsageError;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect(err!.message).toContain("CA certificate");
    expect(err!.hint ?? "").not.toContain("--force");
    expect(err!.hint ?? "").not.toMatch(/--out \S*ca\.crt/);
  });

  test("a damaged file inside a CA directory gets no --force --out hint naming it", async () => {
    const file = join(ca, "junk.bundle");
    await Bun.write(file, "not a bundle\n");
    let err: UsageError | undefined;
    try {
      await readBundleReport(file);
    } catch (e) {
      err = e as UsageError;
    }
    expect(err).toBeInstanceOf(UsageError);
    expect(err!.hint ?? "").not.toContain(`--out ${file}`);
    rmSync(file);
  });

  test("a damaged bundle elsewhere still gets the replace hint", async () => {
    const file = join(tmp, "damaged.bundle");
    await Bun.write(file, "not a bundle\n");
    let err: UsageError | undefined;
    try {
      await readBundleReport(file);
    } catch (e) {
      err = e as UsageError;
    }
    expect(err!.hint ?? "").toContain(`--force --out ${file}`);
  });
});
