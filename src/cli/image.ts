// `netroot image import|ls|show|rm|rename`: talks to the running server's /api/v1/images.
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import type { ImageInfo } from "../images/store.ts";
import { ApiClient, clientOptions } from "./client.ts";
import { humanBytes, keyValues, print, table } from "./output.ts";

const help: Record<string, string> = {
  "": `usage: netroot image COMMAND [ARGS…] [--server URL] [--json]

  import PATH --name NAME   import an OS image: a rootfs tarball (.tar, .tar.gz, .tar.xz, .tar.zst,
                            .tar.bz2), a directory, or an OCI/Docker image archive (docker save,
                            OCI layout); PATH is read by the server
  ls                        list images
  show IMAGE                details of one image
  rm IMAGE                  remove an image (refused while a node boots it)
  rename IMAGE NEW          give an image another name

IMAGE is a name, a full id or an id prefix of at least 6 characters.
netroot image COMMAND --help for details.`,
  import: `usage: netroot image import PATH --name NAME [--server URL] [--json]

Imports a rootfs tarball (.tar, .tar.gz, .tar.xz, .tar.zst, .tar.bz2), a directory, or an
OCI/Docker image archive (docker save, OCI layout tar or directory; layers applied in order with
whiteouts). Owners, modes, symlinks, hardlinks, device nodes, xattrs and mtimes are kept. PATH is
resolved here and read by the server (same machine, or a path valid on the server).
The image id is the sha256 of its content manifest: importing the same content again copies
nothing and reports the image it already is (under its existing name).
Progress shows on stderr; interrupting the command (Ctrl-C) cancels the import on the server.
An image without a kernel (/boot/vmlinuz-*, /vmlinuz) is imported but marked not bootable.`,
  ls: `usage: netroot image ls [--server URL] [--json]

Lists images: name, id, size, files, kernel version, bootable.`,
  show: `usage: netroot image show IMAGE [--server URL] [--json]

Shows one image: id, size, kernel/initrd found inside, and why it is not bootable if it is not.`,
  rm: `usage: netroot image rm IMAGE [--server URL] [--json]

Removes an image and its files. Refused while a node is set to boot it (the nodes are named).`,
  rename: `usage: netroot image rename IMAGE NEW [--server URL] [--json]

Renames an image (its id does not change).`,
};

const enc = (ref: string) => encodeURIComponent(ref);

function bootableText(i: ImageInfo): string {
  return i.bootable ? `yes (kernel ${i.kernelVersion})` : `no: ${i.reason}`;
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

async function importImage(client: ApiClient, path: string, name: string, json: boolean) {
  const abs = resolve(path);
  let res: Response;
  try {
    res = await fetch(`${client.base}/api/v1/images`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        accept: "application/x-ndjson",
        ...(client.token ? { authorization: `Bearer ${client.token}` } : {}),
      },
      body: JSON.stringify({ path: abs, name }),
    });
  } catch (e) {
    throw new UserError(
      `cannot reach the netroot server at ${client.base} (${(e as Error).message}); ` +
        "is `netroot serve` running? (set --server or NETROOT_SERVER)",
      503,
    );
  }
  let result: ImageInfo & { existed: boolean };
  if (!(res.headers.get("content-type") ?? "").includes("ndjson")) {
    const text = await res.text();
    let data: { error?: string } & Partial<ImageInfo & { existed: boolean }>;
    try {
      data = JSON.parse(text);
    } catch {
      throw new UserError(`HTTP ${res.status} ${text.slice(0, 200)}`);
    }
    if (!res.ok) throw new UserError(data.error ?? `HTTP ${res.status}`, res.status as 400);
    result = data as ImageInfo & { existed: boolean };
  } else {
    const bar = progressPrinter(Deno.stderr.isTerminal() && !json);
    let final: { image?: ImageInfo & { existed: boolean }; error?: string } | undefined;
    let rest = "";
    try {
      for await (const chunk of res.body!.pipeThrough(new TextDecoderStream())) {
        const lines = (rest + chunk).split("\n");
        rest = lines.pop()!;
        for (const line of lines) {
          if (!line) continue;
          const m = JSON.parse(line);
          if (m.image || m.error) final = m;
          else if (!json) bar.update(m);
        }
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
    return `imported ${result.name} (id ${id}): ${result.files} files, ${
      humanBytes(result.size)
    }\nbootable: ${bootableText(result)}`;
  });
}

export async function run(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (!sub || sub === "--help" || sub === "-h" || sub === "help") {
    console.log(help[""]);
    return sub ? 0 : 2;
  }
  if (!(sub in help) || sub === "") {
    throw new UserError(`unknown image command ${sub} (import, ls, show, rm, rename)`);
  }
  const { values, positionals } = parseArgs({
    args: rest,
    options: { ...clientOptions, name: { type: "string", short: "n" } },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(help[sub]);
    return 0;
  }
  const want = { import: 1, ls: 0, show: 1, rm: 1, rename: 2 }[sub]!;
  if (positionals.length !== want) {
    throw new UserError(`expected ${help[sub].split("\n")[0].replace("usage: ", "")}`);
  }
  if (values.name !== undefined && sub !== "import") {
    throw new UserError(`--name is only for image import`);
  }
  const client = ApiClient.fromEnv(values.server);
  const json = values.json ?? false;
  switch (sub) {
    case "import": {
      if (!values.name) throw new UserError("image import needs --name NAME");
      await importImage(client, positionals[0], values.name, json);
      break;
    }
    case "ls": {
      const images = await client.get<ImageInfo[]>("/images");
      print(
        json,
        images,
        () =>
          images.length === 0 ? "no images (netroot image import PATH --name NAME)" : table(
            images.map((i) => ({
              name: i.name,
              id: i.id.slice(0, 12),
              size: humanBytes(i.size),
              files: i.files,
              kernel: i.kernelVersion,
              bootable: i.bootable ? "yes" : "no",
              created: i.createdAt.slice(0, 19).replace("T", " "),
            })),
            ["name", "id", "size", "files", "kernel", "bootable", "created"],
          ),
      );
      break;
    }
    case "show": {
      const i = await client.get<ImageInfo>(`/images/${enc(positionals[0])}`);
      print(json, i, () => details(i));
      break;
    }
    case "rm": {
      const r = await client.delete<{ removed: string; name: string }>(
        `/images/${enc(positionals[0])}`,
      );
      print(json, r, () => `removed ${r.name} (id ${r.removed.slice(0, 12)})`);
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
