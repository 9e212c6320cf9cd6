// The child processes the server owns (ganesha.nfsd, the qemu of each virtual node), in one place:
// how they start (stdin closed, stdout discarded, stderr appended to a log or discarded), how one
// left running by a server that died (kill -9) is found through its pid file and ended, how they
// stop (SIGTERM, then SIGKILL after a grace), how a start waits until the program serves, how an
// exit nobody asked for is reported, and (Supervisor) how a crashed one is started again.
import { existsSync, readFileSync } from "node:fs";

export interface ProcessSpec {
  /** Program (looked up on PATH) and arguments. */
  argv: string[];
  /** The process's stderr is appended to this file (rotated: stderrLogBytes); without it, it is
   *  discarded. */
  stderrFile?: string;
  /** stop(): SIGTERM, then SIGKILL after this many ms. */
  stopGraceMs: number;
  /** The process's working directory (default: the server's). */
  cwd?: string;
}

/** Why a start did not come up: the process exited first (`exit`), or it did not get ready in
 *  time (`exit` undefined; `cause` is the readiness check's last error, if it threw). */
export class StartFailure extends Error {
  constructor(readonly exit: Deno.CommandStatus | undefined, cause?: unknown) {
    super(exit ? `exited at start (code ${exit.code})` : "not ready in time", { cause });
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A started child. */
export class ManagedProcess {
  readonly pid: number;
  /** Resolves with the exit status, however the process ended. */
  readonly exited: Promise<Deno.CommandStatus>;
  #child: Deno.ChildProcess;
  #stopping = false;

  constructor(child: Deno.ChildProcess, readonly spec: ProcessSpec) {
    this.#child = child;
    this.pid = child.pid;
    this.exited = child.status;
  }

  /** True once stop() was called: the exit that follows is expected. */
  get stopping(): boolean {
    return this.#stopping;
  }

  /** `fn` runs when the process exits without stop() having been called. */
  onExit(fn: (status: Deno.CommandStatus) => void): void {
    this.exited.then((s) => {
      if (!this.#stopping) fn(s);
    });
  }

  /** Sends `sig`; false when the process is already gone. */
  signal(sig: Deno.Signal): boolean {
    try {
      this.#child.kill(sig);
      return true;
    } catch {
      return false;
    }
  }

  /** SIGTERM, SIGKILL after the grace; resolves when the process is gone. */
  async stop(): Promise<Deno.CommandStatus> {
    this.#stopping = true;
    if (!this.signal("SIGTERM")) return await this.exited;
    const timer = setTimeout(() => this.signal("SIGKILL"), this.spec.stopGraceMs);
    try {
      return await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Polls `check` every `pollMs` until it returns true (a throw counts as "not yet"). Throws
   * StartFailure when the process exits first or `timeoutMs` passes; the process is left as it is
   * (the caller decides whether a slow start is stopped).
   */
  async waitReady(
    check: () => boolean | Promise<boolean>,
    timeoutMs: number,
    pollMs = 100,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastError: unknown;
    for (;;) {
      const exit = await Promise.race([this.exited, sleep(pollMs).then(() => undefined)]);
      if (exit) throw new StartFailure(exit);
      try {
        if (await check()) return;
      } catch (e) {
        lastError = e;
      }
      if (Date.now() > deadline) throw new StartFailure(undefined, lastError);
    }
  }
}

/** A child's stderr log holds at most this much, and its `.1` as much again: appended at every
 *  start of the child, for the life of the server, it grew for ever (a vnode's qemu.log). */
export const stderrLogBytes = 1 << 20;

/** Appends to `path`; a write that would take it past `stderrLogBytes` first moves it to
 *  `path.1` (replacing it). */
function rotatedLog(path: string): WritableStream<Uint8Array> {
  const open = () => Deno.openSync(path, { write: true, create: true, append: true });
  let file = open();
  let size = file.statSync().size;
  return new WritableStream({
    async write(chunk) {
      const part = chunk.subarray(Math.max(0, chunk.length - stderrLogBytes));
      if (size > 0 && size + part.length > stderrLogBytes) {
        file.close();
        Deno.renameSync(path, `${path}.1`);
        file = open();
        size = 0;
      }
      for (let at = 0; at < part.length;) at += await file.write(part.subarray(at));
      size += part.length;
    },
    close: () => file.close(),
    abort: () => file.close(),
  });
}

/** Spawns `spec.argv`. A missing program throws Deno.errors.NotFound (callers name the package). */
export function startProcess(spec: ProcessSpec): ManagedProcess {
  const log = spec.stderrFile ? rotatedLog(spec.stderrFile) : undefined;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(spec.argv[0], {
      args: spec.argv.slice(1),
      cwd: spec.cwd,
      stdin: "null", // CI has no stdin; a daemon must never read one
      stdout: "null",
      stderr: log ? "piped" : "null",
    }).spawn();
  } catch (e) {
    log?.abort();
    throw e;
  }
  if (log) child.stderr.pipeTo(log).catch(() => {});
  return new ManagedProcess(child, spec);
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/**
 * A process named by `pidFile` that is still running and whose command line `owns` accepts is a
 * copy left by a previous server run (it holds a port, a tap, disks): SIGTERM, SIGKILL after
 * `graceMs`, and wait (≤ 5 s more) until it is gone. The pid file is removed. Returns the PID it
 * stopped. A PID reused by an unrelated process is never touched (`owns` checks the command line).
 */
export async function stopStale(
  pidFile: string,
  owns: (cmdline: string[]) => boolean,
  graceMs: number,
  onStale?: (pid: number) => void,
): Promise<number | undefined> {
  const pid = Number(readText(pidFile).trim());
  let stopped: number | undefined;
  if (Number.isInteger(pid) && pid > 1) {
    const cmdline = readText(`/proc/${pid}/cmdline`).split("\0");
    if (cmdline[0] && owns(cmdline)) {
      onStale?.(pid);
      const alive = () => existsSync(`/proc/${pid}`);
      const signal = (sig: Deno.Signal) => {
        try {
          Deno.kill(pid, sig);
        } catch { /* gone meanwhile */ }
      };
      signal("SIGTERM");
      for (let t = 0; t < graceMs && alive(); t += 100) await sleep(100);
      if (alive()) signal("SIGKILL");
      for (let i = 0; i < 50 && alive(); i++) await sleep(100);
      stopped = pid;
    }
  }
  await Deno.remove(pidFile).catch(() => {});
  return stopped;
}

export interface SupervisedProgram {
  /** Spawns the process (startProcess). */
  spawn(): ManagedProcess;
  /** Resolves when the process serves; throws when it cannot (a start failure). */
  ready(proc: ManagedProcess): Promise<void>;
  /** An exit nobody asked for; a restart follows in `restartInMs`. */
  onExit(status: Deno.CommandStatus, restartInMs: number): void;
  /** A restart that failed: supervision ends there. */
  onRestartFailed(error: Error): void;
}

/**
 * Keeps one program running: a crash is followed by a restart after a backoff (doubling from
 * `firstMs` up to `maxMs`, back to `firstMs` after each successful start). A process that does not
 * get ready is stopped. stop() also ends a start in progress.
 */
export class Supervisor {
  #proc?: ManagedProcess;
  #stopped = false;
  #delay: number;
  #timer?: ReturnType<typeof setTimeout>;

  constructor(
    readonly program: SupervisedProgram,
    readonly backoff = { firstMs: 1000, maxMs: 30_000 },
  ) {
    this.#delay = backoff.firstMs;
  }

  /** The current process (undefined while waiting for a restart). */
  get process(): ManagedProcess | undefined {
    return this.#proc;
  }

  /** Starts the program and resolves once it serves; throws a start failure. */
  async start(): Promise<void> {
    const proc = this.program.spawn();
    this.#proc = proc;
    try {
      await this.program.ready(proc);
    } catch (e) {
      if (this.#proc === proc) this.#proc = undefined;
      if (this.#stopped) return; // stop() ended it while it was starting
      await proc.stop();
      throw e;
    }
    if (this.#stopped) return;
    this.#delay = this.backoff.firstMs;
    proc.onExit((status) => {
      if (this.#proc !== proc || this.#stopped) return;
      this.#proc = undefined;
      const inMs = this.#delay;
      this.#delay = Math.min(this.#delay * 2, this.backoff.maxMs);
      this.program.onExit(status, inMs);
      this.#timer = setTimeout(() => {
        this.start().catch((e) => this.program.onRestartFailed(e as Error));
      }, inMs);
    });
  }

  /** Stops supervision and the process (SIGTERM, then SIGKILL after its grace). */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    const proc = this.#proc;
    this.#proc = undefined;
    await proc?.stop();
  }
}
