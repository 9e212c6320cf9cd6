// `netroot image shell|cp|build`: changing images. The server owns the versions (a session is an
// overlay on a version, src/images/session.ts); the shell's container runs here, on the server
// machine, as root: systemd-nspawn (Debian systemd-container) on the session's merged tree, with
// the server's network and its /etc/resolv.conf bind-mounted.
import { dirname, resolve } from "node:path";
import { UserError } from "../errors.ts";
import { nspawnArgs, type Session, thisProcess } from "../images/session.ts";
import type { Commit } from "../images/store.ts";
import { type Published, publishedText } from "../images/versions.ts";
import { type ApiClient, ndjsonLines } from "./client.ts";
import { print } from "./output.ts";

type Values = Record<string, string | string[] | boolean | undefined>;

export async function run(
  sub: string,
  client: ApiClient,
  positionals: string[],
  values: Values,
  command: string[] | undefined,
  json: boolean,
): Promise<number> {
  const rebootNodes = values["reboot-nodes"] === true;
  const line = ["netroot", "image", sub, ...Deno.args.slice(2)].join(" ");
  switch (sub) {
    case "shell":
      return await shell(client, positionals[0], values, command, rebootNodes, json);
    case "cp":
      return await cp(client, positionals, values, rebootNodes, line, json);
    case "build": {
      const build = await import("./imagebuild.ts");
      return await build.run(client, positionals, values, rebootNodes, json);
    }
  }
  throw new UserError(`unknown image command ${sub}`);
}

function ask(question: string): boolean {
  const answer = prompt(question);
  return /^y(es)?$/i.test(answer?.trim() ?? "");
}

/** Whether the server's overlay of a session is mounted here: its merged directory is a mount
 *  point (a device of its own). A server in another mount namespace (`ip netns exec` makes one)
 *  leaves us an empty directory, and nspawn's own complaint ("doesn't look like it has an OS
 *  tree"), then "the command exited with 1", said nothing of why. */
function mountedHere(merged: string): boolean {
  try {
    return Deno.statSync(merged).dev !== Deno.statSync(dirname(merged)).dev;
  } catch {
    return false;
  }
}

async function shell(
  client: ApiClient,
  image: string,
  values: Values,
  command: string[] | undefined,
  rebootNodes: boolean,
  json: boolean,
): Promise<number> {
  if (values.commit && values.discard) throw new UserError("--commit or --discard, not both");
  if (command && !command.length) throw new UserError("image shell IMAGE -- CMD: CMD is missing");
  // Our pid: if we are killed before we discard it, the server does (this runs on its machine).
  const s = await client.post<Session>("/images/-/sessions", {
    image,
    new: values.new,
    holder: thisProcess(),
  });
  const discard = () => client.delete(`/images/-/sessions/${s.id}`).catch(() => {});
  if (!mountedHere(s.merged)) {
    await discard();
    throw new UserError(
      `the session's tree ${s.merged} is not mounted in this mount namespace: the server runs in ` +
        "another one (started with `ip netns exec`, which makes one? start it with " +
        "`nsenter --net=/run/netns/NAME` instead, or run image shell in its namespace)",
    );
  }
  // A shell interrupted or killed by a signal commits nothing: the container is stopped and the
  // session goes (Ctrl-C in an interactive shell goes to the container, not to us: the terminal
  // is nspawn's).
  let child: Deno.ChildProcess | undefined;
  let signalled = false;
  const onSignal = () => {
    signalled = true;
    try {
      child?.kill("SIGTERM");
    } catch { /* gone */ }
    (child?.status ?? Promise.resolve()).then(discard).finally(() => Deno.exit(130));
  };
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const sig of signals) Deno.addSignalListener(sig, onSignal);
  let code: number;
  try {
    const tty = Deno.stdin.isTerminal();
    try {
      child = new Deno.Command("systemd-nspawn", {
        args: nspawnArgs(s.merged, command, tty),
        stdin: "inherit",
        stdout: "inherit",
        stderr: "inherit",
      }).spawn();
    } catch (e) {
      throw new UserError(
        `cannot run systemd-nspawn (Debian package systemd-container): ${(e as Error).message}`,
      );
    }
    code = (await child.status).code;
  } catch (e) {
    await discard();
    throw e;
  } finally {
    for (const sig of signals) Deno.removeSignalListener(sig, onSignal);
  }
  // Stopped by a signal: its handler discards the session and exits 130 once the server has
  // dropped it (answering here too would race it to the exit).
  if (signalled) return await new Promise<number>(() => {});
  let keep: boolean;
  if (command && code !== 0) keep = false;
  else if (values.commit) keep = true;
  else if (values.discard) keep = false;
  else if (Deno.stdin.isTerminal()) {
    keep = ask(`commit the changes as a new version of ${s.name}? [y/N]`);
  } else keep = command !== undefined;
  if (!keep) {
    await discard();
    const why = command && code !== 0 ? `the command exited with ${code}` : "discarded";
    if (!json) console.error(`${why}: nothing committed`);
    else print(json, { committed: false, exitCode: code }, () => "");
    return code || (command ? 0 : 0);
  }
  const r = await commitSession(client, s, {
    madeBy: "shell",
    command: command ? command.join(" ") : "interactive shell",
    rebootNodes,
  }, discard);
  print(json, r, () => committedText(r));
  return code;
}

/** The session's commit; when the server has no room for it (507, the session kept), at a
 *  terminal the admin makes room and commits again, or gives up (the changes discarded). */
async function commitSession(
  client: ApiClient,
  s: Session,
  body: Record<string, unknown>,
  discard: () => Promise<unknown>,
): Promise<Commit & Published> {
  for (;;) {
    try {
      return await client.post<Commit & Published>(`/images/-/sessions/${s.id}/commit`, body);
    } catch (e) {
      if (!(e instanceof UserError && e.status === 507)) throw e;
      if (!Deno.stdin.isTerminal()) {
        await discard();
        throw new UserError(`${e.message}; nothing committed`);
      }
      console.error(`${e.message}; the changes are kept meanwhile`);
      if (!ask(`commit again? (no: the changes are discarded) [y/N]`)) {
        await discard();
        throw new UserError("discarded: nothing committed");
      }
    }
  }
}

/** What a commit did, for people: the version, an outdated base, the nodes; for a node save,
 *  what of the machine's own state it left out. */
export function committedText(r: Commit & Published & { leftOut?: string[] }): string {
  const leftOut = r.leftOut?.length
    ? `left out per-machine state: ${r.leftOut.join(", ")} (--keep-machine-state saves it)`
    : "";
  if (r.existed) {
    return [
      r.current
        ? `no changes: ${r.name} stays at ${r.id.slice(0, 12)}`
        : `identical to ${r.name}@${r.id.slice(0, 12)} (not current): nothing committed; ` +
          `netroot image rollback ${r.name} ${r.id.slice(0, 12)} points the name at it`,
      leftOut,
    ].filter(Boolean).join("\n");
  }
  return [
    `committed ${r.name}@${r.id.slice(0, 12)}${
      r.previous ? ` (was ${r.previous.slice(0, 12)})` : " (new image)"
    }`,
    leftOut,
    // (not "meanwhile": a save or session committed to another image's name is made on a
    // version of its own image, and does not contain what that name had either)
    r.outdated
      ? `warning: made on ${r.parent?.slice(0, 12)}, not on ${r.outdated.slice(0, 12)} (the ` +
        `version of ${r.name} then): this version does not contain its changes`
      : "",
    publishedText(r.name, r),
  ].filter(Boolean).join("\n");
}

/** The {image} (or {error}) an NDJSON answer ends with, its {log} lines given to `onLog` as they
 *  come; a plain answer (an error) as it is. `what` names the job in a cut answer's error. */
export async function streamedResult<T>(
  res: Response,
  what: string,
  onLog?: (line: string) => void,
): Promise<T> {
  if (!(res.headers.get("content-type") ?? "").includes("ndjson")) {
    const text = await res.text();
    let data: { error?: string } | undefined;
    try {
      data = JSON.parse(text);
    } catch { /* not JSON: said below */ }
    if (!res.ok) {
      throw new UserError(
        data?.error ?? `HTTP ${res.status} ${text.slice(0, 200)}`,
        res.status as 400,
      );
    }
    return data as T;
  }
  let final: { image?: T; error?: string } | undefined;
  for await (const m of ndjsonLines(res.body!)) {
    if (m.log !== undefined) onLog?.(String(m.log));
    else if (m.image || m.error) final = m;
  }
  if (!final) throw new UserError(`the server closed the connection before the ${what} finished`);
  if (final.error) throw new UserError(final.error);
  return final.image!;
}

/** "IMAGE:PATH" → [IMAGE, PATH]; a plain path → undefined. Image paths are absolute. */
function imagePath(arg: string): [string, string] | undefined {
  const i = arg.indexOf(":/");
  if (i <= 0 || arg.startsWith("/") || arg.startsWith(".")) return undefined;
  return [arg.slice(0, i), arg.slice(i + 1)];
}

async function cp(
  client: ApiClient,
  args: string[],
  values: Values,
  rebootNodes: boolean,
  line: string,
  json: boolean,
): Promise<number> {
  const last = args.at(-1)!;
  const into = imagePath(last);
  if (into) {
    const sources = args.slice(0, -1);
    if (sources.some((s) => imagePath(s))) {
      throw new UserError("image cp copies between an image and host paths, not two images");
    }
    // As a stream: this process's end (Ctrl-C) cancels it, and with it the copy (nothing
    // committed); a plain answer's request went on without its client.
    const res = await client.fetch("POST", "/images/-/cp", {
      sources: sources.map((s) => resolve(s)),
      image: into[0],
      path: into[1],
      new: values.new,
      rebootNodes,
      command: line,
    }, { accept: "application/x-ndjson" });
    const r = await streamedResult<Commit & Published>(res, "image cp");
    print(json, r, () => committedText(r));
    return 0;
  }
  const from = imagePath(args[0]);
  if (!from || args.length !== 2) {
    throw new UserError("expected image cp SRC… IMAGE:/PATH or image cp IMAGE:/PATH DEST");
  }
  if (values.new || rebootNodes) throw new UserError("--new and --reboot-nodes copy into images");
  const r = await client.post<{ copied: number; dest: string }>("/images/-/cp-out", {
    image: from[0],
    path: from[1],
    dest: resolve(args[1]),
  });
  print(json, r, () => `copied ${r.copied} entries to ${r.dest}`);
  return 0;
}
