import { expect, test } from "bun:test";
import { createLogger } from "../src/log.ts";

function capture(json: boolean, level: "info" | "debug" = "info") {
  const lines: string[] = [];
  const log = createLogger({ json, level, write: (l) => lines.push(l) });
  return { log, lines };
}

test("JSON logs: one object per line with tag and fields", () => {
  const { log, lines } = capture(true);
  log.withTag("relay").info("device connected", { id: "site-1", addr: "203.0.113.5:4242" });
  log.warn("plain", new Error("outer", { cause: new Error("inner") }));
  expect(lines).toHaveLength(2);
  const a = JSON.parse(lines[0]!);
  expect(a).toMatchObject({ level: "info", tag: "relay", msg: "device connected", id: "site-1", addr: "203.0.113.5:4242" });
  expect(Date.parse(a.time)).not.toBeNaN();
  expect(JSON.parse(lines[1]!).msg).toBe("plain outer: inner");
  for (const l of lines) expect(l.endsWith("\n") && !l.slice(0, -1).includes("\n")).toBe(true);
});

test("levels filter", () => {
  const { log, lines } = capture(true, "info");
  log.debug("hidden");
  log.info("shown");
  expect(lines.map((l) => JSON.parse(l).msg)).toEqual(["shown"]);
});

test("plain reporter: time LEVEL [tag] message key=value", () => {
  const { log, lines } = capture(false);
  log.withTag("nat").warn("rule expired", { id: "r1", left: 0 });
  expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\S+ WARN \[nat\] rule expired id=r1 left=0\n$/);
});
