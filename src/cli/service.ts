// `netroot install-service` and `netroot uninstall-service`.
import { parseArgs } from "node:util";
import { UserError } from "../errors.ts";
import { installService, uninstallService } from "../service/install.ts";

const installHelp = `usage: netroot install-service [--data DIR] [--no-start] [--root DIR]

Installs the running program as the systemd service netroot.service (Type=notify, watchdog,
restarted on failure), as root:
  /usr/local/lib/netroot/                the program: deno + netroot.js + netroot-init.js (or the
                                         compiled executable); from a checkout it is bundled first
  /usr/local/bin/netroot                 the netroot command, same program, same data dir
  /etc/systemd/system/netroot.service    the unit (changes go in drop-ins: systemctl edit netroot)
  /etc/netroot/config.json               the settings (\`serve --config\`), created empty if missing
  /var/lib/netroot                       the data dir (--data DIR for another one)
  bash and zsh completions under /usr/local/share
then enables and (re)starts the service. Running it again upgrades: the program and the unit are
replaced (the data dir it names, the settings and drop-ins stay) and the service restarts on the
new program, which migrates the database (take a netroot backup first).
  --no-start   do not enable or start it (later: \`systemctl enable --now netroot\`)
  --root DIR   install into the tree DIR (an image being built) instead of /; no systemctl`;

const uninstallHelp = `usage: netroot uninstall-service [--root DIR]

Stops and disables netroot.service, removes the unit, /usr/local/lib/netroot, the netroot command
and the completions. Keeps /etc/netroot and the data dir.`;

export async function install(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: {
      data: { type: "string" },
      root: { type: "string" },
      "no-start": { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(installHelp);
    return 0;
  }
  if (positionals.length) throw new UserError(`unexpected argument ${positionals[0]}`);
  await installService({ data: values.data, root: values.root, noStart: values["no-start"] });
  return 0;
}

export async function uninstall(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    options: { root: { type: "string" }, help: { type: "boolean", short: "h" } },
    allowPositionals: true,
  });
  if (values.help) {
    console.log(uninstallHelp);
    return 0;
  }
  if (positionals.length) throw new UserError(`unexpected argument ${positionals[0]}`);
  await uninstallService({ root: values.root });
  return 0;
}
