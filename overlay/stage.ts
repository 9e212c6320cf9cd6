// One boot stage of the node init: its duration on the console and in a report to the server, and
// any error turned into the fatal failure of that stage, saying what a human should check.
import { CmdlineError } from "../contract/cmdline.ts";
import type { StageReport } from "../contract/report.ts";
import type { RunStage } from "../contract/rootmode.ts";
import { fmtMs, type InitConsole } from "./console.ts";
import { readNfsBytes, type Reporter } from "./report.ts";

/** A fatal failure: where, what, and what a human should check. */
export class InitFailure extends Error {
  constructor(
    readonly stage: string,
    message: string,
    readonly hint: string,
    readonly details: string[] = [],
  ) {
    super(message);
  }
}

export const errText = (e: unknown) => e instanceof Error ? e.message : String(e);

/** The stages of one boot: when it started, and where reports go once the command line is read. */
export class Stages {
  readonly t0 = performance.now();
  reporter?: Reporter;

  constructor(private readonly out: InitConsole) {}

  /** Every report carries the NFS bytes read so far (0 before the root is mounted). */
  readonly report = (r: StageReport): void => {
    this.reporter?.send({ ...r, nfsReadBytes: readNfsBytes() });
  };

  readonly run: RunStage = async <T>(
    stage: string,
    hint: string,
    fn: () => T | Promise<T>,
    describe?: (result: T) => string,
  ): Promise<T> => {
    const ts = performance.now();
    let v: T;
    try {
      v = await fn();
    } catch (e) {
      if (e instanceof InitFailure) throw e;
      throw new InitFailure(stage, errText(e), hint, e instanceof CmdlineError ? e.problems : []);
    }
    if (describe) {
      const ms = performance.now() - ts;
      const d = describe(v);
      this.out.line(`${stage}: ${d} (${fmtMs(ms)})`);
      this.report({ stage, ms: Math.round(ms), ok: true, detail: d });
    }
    return v;
  };
}
