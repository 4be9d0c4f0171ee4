import { describe, expect, test } from "bun:test";
import { parseStrict, type AgentCommand } from "../src/cli/args.ts";
import { UsageError } from "../src/errors.ts";

const cmd: AgentCommand = {
  meta: { name: "t" },
  args: {
    id: { type: "positional", description: "id" },
    host: { type: "string" },
    days: { type: "string", default: "30" },
    mode: { type: "enum", options: ["a", "b"] },
    json: { type: "boolean" },
    need: { type: "string", required: true },
  },
  repeatable: ["host"],
};

describe("parseStrict", () => {
  test("values, repeatables, defaults, positionals", () => {
    const a = parseStrict(cmd, ["x1", "--host", "a", "--host=b", "--json", "--need", "n", "--mode", "b"], "t");
    expect(a.id).toBe("x1");
    expect(a.host).toEqual(["a", "b"]);
    expect(a.days).toBe("30");
    expect(a.json).toBe(true);
    expect(a.mode).toBe("b");
  });
  test.each([
    [["x", "--need", "n", "--nope"], "unknown option --nope"],
    [["x", "--need"], "--need needs a value"],
    [["x", "--need", "n", "--mode", "c"], "--mode: expected one of a, b"],
    [["x"], "--need is required"],
    [["--need", "n"], "missing argument ID"],
    [["x", "y", "--need", "n"], 'unexpected argument "y"'],
    [["x", "--need", "n", "--need", "m"], "--need given more than once"],
    [["x", "--need", "n", "--json=maybe"], "--json takes no value"],
  ])("%p → %s", (argv, msg) => {
    expect(() => parseStrict(cmd, argv, "t")).toThrow(msg);
    expect(() => parseStrict(cmd, argv, "t")).toThrow(UsageError);
  });
  test("-- ends options", () => {
    expect(parseStrict(cmd, ["--need", "n", "--", "--weird-id"], "t").id).toBe("--weird-id");
  });
});
