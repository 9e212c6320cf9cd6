// `netroot image …`: talks to the running server's /api/v1/images (shell, cp and build:
// src/cli/imagework.ts).
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import type { Commit, ImageInfo } from "../images/store.ts";
import { type Published, publishedText } from "../images/versions.ts";
import { ApiClient, clientOptions, ndjsonLines } from "./client.ts";
import { humanBytes, keyValues, print, table, visible } from "./output.ts";

const common = "[--server URL] [--json]";
const help: Record<string, string> = {
  "": `usage: netroot image COMMAND [ARGS…] ${common}

  import PATH --name NAME   import an OS image (a new image, or the next version of NAME): a
                            rootfs tarball (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2), a
                            directory, or an OCI/Docker image archive; PATH is read by the server
  ls [--all]                list images (--all: every version)
  show IMAGE                details of one image or version
  history IMAGE             the versions of an image: id, date, how each was made
  rollback IMAGE [VERSION]  point the name back at an older version (default: the one before)
  diff A B                  files added, removed and changed between two versions
  shell IMAGE [--new NAME] [-- CMD…]   a root shell (or CMD) in a copy of the image; commit or
                            discard the changes as a new version
  cp SRC… IMAGE:PATH        copy files into an image (a new version); cp IMAGE:PATH DEST: out
  build NAME --from IMAGE [-f FILE] [CONTEXT]   build a version from a Dockerfile subset
  rm IMAGE | IMAGE@VERSION  remove an image with all its versions, or one version
  rename IMAGE NEW          give an image (all its versions) another name
  gc [--keep N]             free the space of files no version uses (--keep N: also remove the
                            versions older than the N newest of each image, unused by nodes)

IMAGE is a name (its current version), NAME@ID (one version), a full id or an id prefix of at
least 6 characters. Commands that commit a new version of an image nodes boot move those nodes to
it (at their next boot) and name them; --reboot-nodes reboots them now.
netroot image COMMAND --help for details.`,
  import: `usage: netroot image import PATH --name NAME [--reboot-nodes] ${common}

Imports a rootfs tarball (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2), a directory, or an
OCI/Docker image archive (docker save, OCI layout tar or directory; layers applied in order with
whiteouts). Owners, modes, symlinks, hardlinks, device nodes, xattrs and mtimes are kept. PATH is
resolved here and read by the server, as root: on the server machine only (from another host it
would read any of the server's files into an image).
An existing NAME gets a new version (the name points at it; the old one stays, see image history).
The image id is the sha256 of its content manifest: importing the same content again copies
nothing and reports the image it already is (under its existing name). Every file is stored once
across all images and versions (hard links into the server's object store).
Progress shows on stderr; interrupting the command (Ctrl-C) cancels the import on the server.
An image without a kernel (/boot/vmlinuz-*, /vmlinuz) is imported but marked not bootable.
--reboot-nodes reboots the nodes that follow NAME onto the new version.`,
  ls: `usage: netroot image ls [--all] ${common}

Lists images: name, id (of the current version), size, unique size (the bytes no other version
shares: what removing it would free), files, kernel version, bootable. --all lists every version.`,
  show: `usage: netroot image show IMAGE ${common}

Shows one image or version: id, size, kernel/initrd found inside, how it was made, and why it is
not bootable if it is not.`,
  history: `usage: netroot image history IMAGE ${common}

The versions of an image, oldest first: id, date, how it was made (import, shell, cp, build,
save) and the command; * marks the version the name points at.`,
  rollback: `usage: netroot image rollback IMAGE [VERSION] [--reboot-nodes] ${common}

Points the image name at VERSION (an id or id prefix of one of its versions; default: the version
before the current one). Nodes deployed on the name boot it at their next boot (--reboot-nodes:
now); nodes deployed on a version id stay on it. A rollback that finds the name already at that
version (another one landed first) succeeds; one that finds it moved elsewhere says to try again.`,
  diff: `usage: netroot image diff A B ${common}

Files added, removed and changed from version A to version B (from their manifests: instant).`,
  shell: `usage: netroot image shell IMAGE [--new NAME] [--commit|--discard] [--reboot-nodes]
       netroot image shell IMAGE [options] -- CMD [ARG…]

Runs a root shell (or CMD) inside a copy of IMAGE with systemd-nspawn (Debian package
systemd-container), on the server's network (apt-get works where the lab has a mirror). The copy is
an overlay on the image: the image itself never changes. When the shell exits you are asked whether
to commit the changes as a new version of IMAGE (or of NAME with --new); --commit or --discard
answer in advance (without a terminal the default is --discard for a shell, --commit for CMD).
A CMD that fails commits nothing. CMD is run as its words (no shell, unlike node run): for
redirections or &&, run one: -- sh -c 'apt-get update && apt-get install -y htop'. Runs on the
server machine, as root.`,
  cp: `usage: netroot image cp SRC… IMAGE:PATH [--new NAME] [--reboot-nodes] ${common}
       netroot image cp IMAGE:PATH DEST ${common}

Copies files and trees (owners, modes, symlinks, xattrs kept) into an image, committing a new
version, or out of an image. Every IMAGE:PATH is resolved inside the image as if chrooted: a
symlink in the image never leads outside it. A PATH that is itself a symlink is copied as the
symlink (cp -P), not what it names: Debian's /etc/os-release is a link to ../usr/lib/os-release, so
copy that one out. Paths are read and written by the server.`,
  build:
    `usage: netroot image build NAME --from IMAGE [-f Buildfile] [CONTEXT] [--build-arg NAME[=VALUE]…] [--reboot-nodes] ${common}

Builds a new version of NAME (-f is short for --file) from a Dockerfile subset: FROM (an image name, or scratch), RUN, COPY,
ADD (local files and tarballs), ENV, WORKDIR, ARG, comments and line continuations. --from
replaces the Buildfile's FROM image. --build-arg sets an ARG the Buildfile declares, as
docker build does (NAME alone: its value in this environment). ENV and ARG values reach the RUN steps that follow, not the
booted system (its environment is its init's: write /etc/environment in a RUN for that). RUN
steps run in systemd-nspawn with the server's network;
COPY and ADD sources are read from CONTEXT (default: the Buildfile's directory, or . without -f)
and may not leave it. Without -f, CONTEXT's Buildfile is built, else its Dockerfile. The log is streamed; a failing step is reported with its line number and nothing is committed.`,
  rm: `usage: netroot image rm IMAGE | IMAGE@VERSION ${common}

Removes an image with all its versions (its name), or one version (NAME@ID or an id; the current
version only when it is the last). Refused while a node is set to boot a version it removes, or
still runs one (booted it last and is not off), or an image session is open on one (the nodes are
named). The files go at the next image gc.`,
  rename: `usage: netroot image rename IMAGE NEW ${common}

Renames an image: all its versions (their ids do not change). Refused while an import, an image
session (shell, cp, build) or a node save on IMAGE or on NEW is under way: its commit lands on the
name it started on.`,
  gc: `usage: netroot image gc [--keep N] ${common}

Removes the stored files no image version uses any more. --keep N also removes, for each image, the
versions older than its N newest, except the current one and any version a node is set to boot or
booted last or an image session is open on.`,
};

const enc = (ref: string) => encodeURIComponent(ref);

/** Why an image is not bootable names its own paths and link targets: its author's text. */
function bootableText(i: ImageInfo): string {
  return i.bootable
    ? `yes (kernel ${visible(i.kernelVersion ?? "?")})`
    : `no: ${visible(i.reason ?? "?")}`;
}

function details(i: ImageInfo): string {
  return keyValues({
    name: i.name,
    id: i.id,
    created: i.createdAt,
    size: `${humanBytes(i.size)} (${i.size} bytes)`,
    files: i.files,
    kernel: i.kernel,
    initrd: i.initrd,
    "kernel version": i.kernelVersion,
    bootable: i.bootable ? "yes" : "no",
    ...(i.bootable ? {} : { reason: i.reason }),
    version: i.current ? "current" : `old (netroot image rollback ${i.name} ${i.id.slice(0, 12)})`,
    "made by": i.madeBy,
    command: i.command,
    parent: i.parent,
  });
}

/** Progress: a redrawn bar on a terminal, a few plain lines otherwise. */
function progressPrinter(tty: boolean) {
  const out = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s));
  let phase = "", step = -1, drawn = false;
  const describe = (p: { phase: string; done: number; total?: number }) => {
    if (!p.total) return p.phase;
    const pct = Math.min(100, Math.floor(p.done * 100 / p.total));
    const amount = p.phase === "extract" || p.phase === "hash"
      ? `${humanBytes(p.done)} / ${humanBytes(p.total)}`
      : `${p.done} / ${p.total}`;
    return `${p.phase.padEnd(8)} ${pct.toString().padStart(3)}%  ${amount}`;
  };
  return {
    update(p: { phase: string; done: number; total?: number }) {
      if (tty) {
        const pct = p.total ? Math.min(1, p.done / p.total) : 0;
        const width = 30, fill = Math.round(pct * width);
        out(`\r\x1b[K[${"#".repeat(fill)}${" ".repeat(width - fill)}] ${describe(p)}`);
        drawn = true;
        return;
      }
      const s = p.total ? Math.floor(p.done * 4 / p.total) : 0; // lines at 0, 25, 50, 75, 100 %
      if (p.phase !== phase || s > step) {
        phase = p.phase;
        step = s;
        out(describe(p) + "\n");
      }
    },
    end() {
      if (tty && drawn) out("\r\x1b[K");
    },
  };
}

async function importImage(
  client: ApiClient,
  path: string,
  name: string,
  rebootNodes: boolean,
  json: boolean,
) {
  const abs = resolve(path);
  const res = await client.fetch("POST", "/images", { path: abs, name, rebootNodes }, {
    accept: "application/x-ndjson",
  });
  let result: Commit & Published;
  if (!(res.headers.get("content-type") ?? "").includes("ndjson")) {
    const text = await res.text();
    let data: { error?: string } & Partial<Commit & Published>;
    try {
      data = JSON.parse(text);
    } catch {
      throw new UserError(`HTTP ${res.status} ${text.slice(0, 200)}`);
    }
    if (!res.ok) throw new UserError(data.error ?? `HTTP ${res.status}`, res.status as 400);
    result = data as Commit & Published;
  } else {
    const bar = progressPrinter(Deno.stderr.isTerminal() && !json);
    let final: { image?: Commit & Published; error?: string } | undefined;
    try {
      for await (const m of ndjsonLines(res.body!)) {
        if (m.image || m.error) final = m;
        else if (!json) bar.update(m as { phase: string; done: number; total?: number });
      }
    } finally {
      bar.end();
    }
    if (!final) throw new UserError("the server closed the connection before the import finished");
    if (final.error) throw new UserError(final.error);
    result = final.image!;
  }
  print(json, result, () => {
    const id = result.id.slice(0, 12);
    if (result.existed) {
      return `already imported as ${result.name} (id ${id}); nothing copied`;
    }
    return [
      `${
        result.previous ? "new version of" : "imported"
      } ${result.name} (id ${id}): ${result.files} files, ${humanBytes(result.size)}`,
      `bootable: ${bootableText(result)}`,
      publishedText(result.name, result),
    ].filter(Boolean).join("\n");
  });
}

const options = {
  ...clientOptions,
  name: { type: "string", short: "n" },
  all: { type: "boolean" },
  keep: { type: "string" },
  "reboot-nodes": { type: "boolean" },
  new: { type: "string" },
  commit: { type: "boolean" },
  discard: { type: "boolean" },
  from: { type: "string" },
  file: { type: "string", short: "f" },
  "build-arg": { type: "string", multiple: true },
} as const;

/** Positional counts: [min, max]. */
const arity: Record<string, [number, number]> = {
  import: [1, 1],
  ls: [0, 0],
  show: [1, 1],
  history: [1, 1],
  rollback: [1, 2],
  diff: [2, 2],
  shell: [1, 1],
  cp: [2, Infinity],
  build: [1, 2],
  rm: [1, 1],
  rename: [2, 2],
  gc: [0, 0],
};

/** Which flags each command takes (besides --server, --json, --help). */
const flagsOf: Record<string, string[]> = {
  import: ["name", "reboot-nodes"],
  ls: ["all"],
  rollback: ["reboot-nodes"],
  shell: ["new", "commit", "discard", "reboot-nodes"],
  cp: ["new", "reboot-nodes"],
  build: ["from", "file", "build-arg", "reboot-nodes"],
  gc: ["keep"],
};

export async function run(args: string[]): Promise<number> {
  const [sub, ...all] = args;
  if (!sub || sub === "--help" || sub === "-h" || sub === "help") {
    console.log(help[""]);
    return sub ? 0 : 2;
  }
  if (!(sub in help) || sub === "") {
    throw new UserError(`unknown image command ${sub} (${Object.keys(arity).join(", ")})`);
  }
  // `image shell IMAGE -- CMD…`: everything after "--" is the command, untouched.
  const dash = all.indexOf("--");
  const rest = dash < 0 ? all : all.slice(0, dash);
  const command = dash < 0 ? undefined : all.slice(dash + 1);
  const { values, positionals } = parseArgs({ args: rest, options, allowPositionals: true });
  if (values.help) {
    console.log(help[sub]);
    return 0;
  }
  const [min, max] = arity[sub];
  if (positionals.length < min || positionals.length > max) {
    throw new UserError(`expected ${help[sub].split("\n")[0].replace("usage: ", "")}`);
  }
  for (const [flag, v] of Object.entries(values)) {
    if (v === undefined || flag in clientOptions) continue;
    if (!(flagsOf[sub] ?? []).includes(flag)) {
      throw new UserError(`--${flag} is not an option of image ${sub}`);
    }
  }
  if (command !== undefined && sub !== "shell") {
    throw new UserError(`"--" (a command) is only for image shell`);
  }
  const client = ApiClient.fromEnv(values.server);
  const json = values.json ?? false;
  const rebootNodes = values["reboot-nodes"] ?? false;
  switch (sub) {
    case "import": {
      if (!values.name) throw new UserError("image import needs --name NAME");
      await importImage(client, positionals[0], values.name, rebootNodes, json);
      break;
    }
    case "ls": {
      const images = await client.get<ImageInfo[]>(values.all ? "/images?all=1" : "/images");
      print(
        json,
        images,
        () =>
          images.length === 0 ? "no images (netroot image import PATH --name NAME)" : table(
            images.map((i) => ({
              name: values.all && !i.current ? `${i.name}@${i.id.slice(0, 12)}` : i.name,
              id: i.id.slice(0, 12),
              size: humanBytes(i.size),
              unique: i.uniqueSize === undefined ? undefined : humanBytes(i.uniqueSize),
              files: i.files,
              kernel: i.kernelVersion,
              bootable: i.bootable ? "yes" : "no",
              tree: treeText(i),
              created: i.createdAt.slice(0, 19).replace("T", " "),
            })),
            ["name", "id", "size", "unique", "files", "kernel", "bootable", "tree", "created"],
          ),
      );
      break;
    }
    case "show": {
      const i = await client.get<ImageInfo>(`/images/${enc(positionals[0])}`);
      print(json, i, () => details(i));
      break;
    }
    case "history": {
      const versions = await client.get<ImageInfo[]>(`/images/-/history/${enc(positionals[0])}`);
      print(json, versions, () =>
        table(
          versions.map((v) => ({
            " ": v.current ? "*" : "",
            id: v.id.slice(0, 12),
            created: v.createdAt.slice(0, 19).replace("T", " "),
            "made by": v.madeBy,
            size: humanBytes(v.size),
            unique: humanBytes(v.uniqueSize ?? 0),
            tree: treeText(v),
            command: v.command,
          })),
          [" ", "id", "created", "made by", "size", "unique", "tree", "command"],
        ));
      break;
    }
    case "rollback": {
      const r = await client.post<{ image: ImageInfo; previous: string } & Published>(
        "/images/-/rollback",
        { image: positionals[0], version: positionals[1], rebootNodes },
      );
      print(json, r, () =>
        [
          r.previous === r.image.id
            ? `${r.image.name} already points at ${r.image.id.slice(0, 12)}`
            : `${r.image.name} now points at ${r.image.id.slice(0, 12)} (was ${
              r.previous.slice(0, 12)
            })`,
          publishedText(r.image.name, r),
        ].filter(Boolean).join("\n"));
      break;
    }
    case "diff": {
      const d = await client.get<{ added: string[]; removed: string[]; changed: string[] }>(
        `/images/-/diff?a=${enc(positionals[0])}&b=${enc(positionals[1])}`,
      );
      print(json, d, () =>
        [
          // the image author's file names: one line each, no escape sequence sent
          ...d.added.map((p) => `+ ${visible(p)}`),
          ...d.removed.map((p) => `- ${visible(p)}`),
          ...d.changed.map((p) => `M ${visible(p)}`),
        ].join("\n") || "no differences");
      break;
    }
    case "gc": {
      const keep = values.keep === undefined ? undefined : Number(values.keep);
      const r = await client.post<{ versions: string[]; objects: number; bytes: number }>(
        "/images/-/gc",
        { keep },
      );
      print(
        json,
        r,
        () =>
          `removed ${r.versions.length} old versions and ${r.objects} unused files (${
            humanBytes(r.bytes)
          })`,
      );
      break;
    }
    case "shell":
    case "cp":
    case "build": {
      const work = await import("./imagework.ts");
      return await work.run(sub, client, positionals, values, command, json);
    }
    case "rm": {
      const r = await client.delete<{ removed: string; name: string; versions: string[] }>(
        `/images/${enc(positionals[0])}`,
      );
      print(
        json,
        r,
        () =>
          r.versions.length > 1
            ? `removed ${r.name} and its ${r.versions.length} versions`
            : `removed ${r.name} (id ${r.removed.slice(0, 12)})`,
      );
      break;
    }
    case "rename": {
      const i = await client.patch<ImageInfo>(`/images/${enc(positionals[0])}`, {
        name: positionals[1],
      });
      print(json, i, () => `renamed to ${i.name} (id ${i.id.slice(0, 12)})`);
      break;
    }
  }
  return 0;
}

/** The tree column of `image ls` / `image history`: "yes" when the version's hard-link tree is
 *  on disk, "thin" when it is kept as its manifest + objects only (written again when a
 *  rollback, deploy, session or boot needs it). */
function treeText(i: ImageInfo): string | undefined {
  return i.tree === undefined ? undefined : i.tree ? "yes" : "thin";
}
