// `netroot backup FILE` and `netroot restore FILE`: run on the server host, against the data dir.
import { parseArgs } from "node:util";
import { defaultDataDir } from "../datadir.ts";
import { UserError } from "../errors.ts";
import { backupTo, restoreFrom } from "../service/backup.ts";
import { humanBytes } from "./output.ts";

const dataHelp =
  `  --data DIR     the server's data dir (default: NETROOT_DATA, ./netroot-data in a checkout,
                 else /var/lib/netroot)`;

const backupHelp = `usage: netroot backup FILE [--data DIR] [--config FILE]

Saves the server's state to FILE (a tar; .tar.gz, .tar.zst, .tar.xz compress): the database (an
online SQLite backup: consistent while the server runs and writes), the API token, the power
programs (<data>/power/), the server's ssh key (the one the nodes accept) and the settings file.
Not the image trees, the nodes' /persist or the initramfs cache: copy <data>/images,
<data>/objects (old versions are only their objects) and <data>/nodes in one
\`rsync -aHAX --numeric-ids\` (hard links, owners by number, xattrs), or a file-system snapshot.
FILE is written mode 0600 (it holds the token, the power passwords and the ssh key).
${dataHelp}
  --config FILE  the settings file to save (default: /etc/netroot/config.* when present)`;

const restoreHelp = `usage: netroot restore FILE [--data DIR] [--config FILE]

Puts a backup back: refused while a server uses the data dir (stop it first: systemctl stop
netroot). The whole backup is checked first (members, token, database integrity, a schema this
netroot knows); then the current database, token, power programs and ssh key move to
<data>/replaced-<time>/ and the backup's take their place. A backup from an older netroot is
migrated here. Images the database names but the data dir lacks are listed: re-import them or
copy their trees back.
${dataHelp}
  --config FILE  where the backup's settings file goes (default: into /etc/netroot when it
                 exists; the file replaced stays beside it as NAME.replaced-<time>)`;

function parse(args: string[], help: string): { file: string; data: string; config?: string } {
  const { values, positionals } = parseArgs({ // --help is answered before
    args,
    options: {
      data: { type: "string" },
      config: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (positionals.length !== 1) throw new UserError(help.split("\n")[0]);
  return { file: positionals[0], data: values.data ?? defaultDataDir(), config: values.config };
}

export async function backup(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) return (console.log(backupHelp), 0);
  const o = parse(args, backupHelp);
  const r = await backupTo(o.file, { dataDir: o.data, config: o.config });
  const extra = [
    r.manifest.power.length ? `${r.manifest.power.length} power program(s)` : "",
    r.manifest.config.length ? `settings ${r.manifest.config.join(", ")}` : "",
    r.manifest.ssh ? "ssh key" : "",
  ].filter(Boolean);
  console.log(
    `backup of ${o.data} (schema ${r.manifest.schemaVersion}) written to ${r.file}, ` +
      `${humanBytes(r.bytes)}: database, token${extra.map((e) => `, ${e}`).join("")}`,
  );
  return 0;
}

export async function restore(args: string[]): Promise<number> {
  if (args.includes("--help") || args.includes("-h")) return (console.log(restoreHelp), 0);
  const o = parse(args, restoreHelp);
  const r = await restoreFrom(o.file, { dataDir: o.data, config: o.config });
  console.log(`restored ${o.file} (made ${r.manifest.createdAt}) into ${o.data}`);
  if (r.replaced) console.log(`the files it replaced: ${r.replaced}`);
  for (const c of r.config) console.log(`settings: ${c}`);
  if (r.missingImages.length) {
    console.log(
      `images without their files in ${o.data} (not bootable until re-imported): ` +
        r.missingImages.join(", "),
    );
  }
  return 0;
}
