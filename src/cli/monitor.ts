// `agent monitor [--json] [--type T,...]`: the daemon's events as they happen (src/events.ts),
// streamed over its control socket until the daemon stops or the user interrupts.
import { controlStream } from "../control.ts";
import { UsageError } from "../errors.ts";
import { EVENT_TYPES, parseEventTypes, type AgentEvent } from "../events.ts";
import { defineAgentCommand, flag, str } from "./args.ts";
import { configArgs, configFromArgs } from "./common.ts";

/** One event as a line for a person: time, type, then its fields as key=value. Pure. */
export function formatEvent(e: AgentEvent): string {
  const time = typeof e.time === "string" ? e.time.replace(/^.*T/, "").replace(/\.\d+Z$/, "Z") : "?";
  const fields = Object.entries(e)
    .filter(([k, v]) => k !== "time" && k !== "type" && v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === "string" && !/[\s"]/.test(v) ? v : JSON.stringify(v)}`);
  return `${time} ${e.type.padEnd(13)} ${fields.join(" ")}`.trimEnd();
}

export const monitorCommand = defineAgentCommand({
  meta: { name: "monitor", description: `Stream the daemon's events as they happen: ${EVENT_TYPES.filter((t) => t !== "dropped").join(", ")}. Runs until interrupted` },
  args: {
    ...configArgs,
    json: { type: "boolean", description: "one JSON object per line" },
    type: { type: "string", valueHint: "types", description: "only these event types, comma-separated" },
  },
  runsOn: ["relay", "onsite", "master"],
  async exec(args, ctx) {
    let types: string[] | null;
    try {
      types = parseEventTypes(str(args, "type"));
    } catch (e) {
      throw new UsageError(`--type: ${(e as Error).message}`);
    }
    const cfg = await configFromArgs(args);
    const json = flag(args, "json");
    const stream = await controlStream(cfg.control, "monitor", {}, (v) => {
      const e = v as AgentEvent;
      if (types && !types.includes(e.type) && e.type !== "dropped") return;
      ctx.io.out((json ? JSON.stringify(e) : formatEvent(e)) + "\n");
    });
    if (!json) ctx.io.err(`watching ${cfg.control} (interrupt to stop)\n`);
    await stream.done;
    return 0;
  },
});
