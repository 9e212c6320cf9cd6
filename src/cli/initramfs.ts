// `netroot initramfs build IMAGE [--out FILE]`: builds (or finds in the cache) the node initramfs
// of an image. Runs on the server host against the data dir — the same cache the HTTP boot route
// serves from, so a build here is the one nodes get.
import { existsSync } from "node:fs";
import { parseArgs } from "node:util";
import { DataDir, defaultDataDir } from "../datadir.ts";
import { openDatabase } from "../db.ts";
import { UserError } from "../errors.ts";
import { ImageStore } from "../images/store.ts";
import { ensureInitramfs } from "../initramfs/build.ts";
import { humanBytes, keyValues, print } from "./output.ts";

const usage = `usage: netroot initramfs build IMAGE [--out FILE] [--data DIR] [--json]

Builds the node initramfs of IMAGE (name, id or id prefix): the /init launcher, deno and the
bundled program, the shared libraries deno needs, and the image kernel's network, NFS, overlay,
ext4 and common NIC/disk modules with their dependencies. zstd-compressed when the image kernel
supports it (CONFIG_RD_ZSTD), else gzip. Cached in <data>/initramfs/ per image, kernel and program
version; the server also builds it after an import and at first boot.

  --out FILE   also copy the result to FILE
  --data DIR   the server's data dir (default: NETROOT_DATA, ./netroot-data in a checkout,
               else /var/lib/netroot)
  --json       machine-readable output`;

export async function run(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      out: { type: "string" },
      data: { type: "string" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  const [sub, ref, ...extra] = positionals;
  if (sub !== "build" || !ref || extra.length) {
    console.error(usage);
    return 2;
  }
  const data = new DataDir(values.data ?? defaultDataDir());
  if (!existsSync(data.db)) {
    throw new UserError(`no netroot data dir at ${data.root} (give --data DIR or NETROOT_DATA)`);
  }
  const db = openDatabase(data.db);
  try {
    const images = new ImageStore(data, db);
    const image = images.get(ref);
    const t0 = performance.now();
    const file = await ensureInitramfs({ data, images }, image.id);
    const seconds = Math.round(performance.now() - t0) / 1000;
    if (values.out) await Deno.copyFile(file, values.out);
    const bytes = (await Deno.stat(file)).size;
    const result = { image: image.name, id: image.id, file, out: values.out, bytes, seconds };
    print(values.json, result, () =>
      keyValues({
        image: `${image.name} (${image.id.slice(0, 12)})`,
        file,
        out: values.out,
        size: `${humanBytes(bytes)} (${bytes} bytes)`,
        time: `${seconds} s${seconds < 0.5 ? " (cached)" : ""}`,
      }));
    return 0;
  } finally {
    db.close();
  }
}
