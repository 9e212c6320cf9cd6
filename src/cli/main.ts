// Command dispatch. Each command module is imported lazily so that `netroot init` on a node loads
// only the node-side code.
import { UserError } from "../errors.ts";

export type Command = (args: string[]) => Promise<number>;

const commands: Record<string, { summary: string; load: () => Promise<Command> }> = {
  serve: {
    summary: "run the server (HTTP API, dashboard, DHCP, TFTP, NFS exports, virtual nodes)",
    load: async () => (await import("./serve.ts")).run,
  },
  image: {
    summary: "import, list, show, rename and remove OS images",
    load: async () => (await import("./image.ts")).run,
  },
  node: {
    summary: "list, add, configure, deploy (boot), reboot and inspect nodes",
    load: async () => (await import("./node.ts")).run,
  },
  deploy: {
    summary: "alias of `node boot NODE[,NODE…] IMAGE`",
    load: async () => (await import("./node.ts")).deploy,
  },
  vnode: {
    summary: "create, list and remove virtual nodes (qemu)",
    load: async () => (await import("./vnode.ts")).run,
  },
  initramfs: {
    summary: "build the node initramfs for an image",
    load: async () => (await import("./initramfs.ts")).run,
  },
  init: {
    summary: "node side: run as the initramfs /init (network or hybrid boot mode)",
    load: async () => (await import("../../overlay/init.ts")).run,
  },
  demo: {
    summary: "one virtual node booting end to end in a private network namespace",
    load: async () => (await import("./demo.ts")).run,
  },
  bench: {
    summary: "load generators (e.g. `bench storm --clients N`)",
    load: async () => (await import("./bench.ts")).run,
  },
  help: {
    summary: "this help; `help show boot-modes` prints the boot-modes guide",
    load: () => Promise.resolve(help),
  },
};

export function usage(): string {
  const w = Math.max(...Object.keys(commands).map((k) => k.length));
  return [
    "usage: netroot COMMAND [ARGS…]   (netroot COMMAND --help for details)",
    "",
    ...Object.entries(commands).map(([k, c]) => `  ${k.padEnd(w)}  ${c.summary}`),
    "",
    "Management commands talk to the running server: --server URL or NETROOT_SERVER",
    "(default http://127.0.0.1:8080); the write token comes from the data dir or NETROOT_TOKEN.",
  ].join("\n");
}

async function help(args: string[]): Promise<number> {
  if (args[0] === "show") {
    const topic = args[1];
    if (topic === "boot-modes") {
      console.log((await import("../docs/boot-modes.ts")).default);
      return 0;
    }
    throw new UserError(`unknown help topic ${topic ?? "(none)"}; topics: boot-modes`);
  }
  if (args[0] && commands[args[0]] && args[0] !== "help") {
    return await (await commands[args[0]].load())(["--help"]);
  }
  console.log(usage());
  return 0;
}

export async function main(args: string[]): Promise<number> {
  // As the initramfs /init the kernel starts us as PID 1, possibly without arguments.
  if (Deno.pid === 1 && args[0] !== "init") args = ["init", ...args];
  const [name, ...rest] = args;
  if (!name || name === "--help" || name === "-h") {
    console.log(usage());
    return name ? 0 : 2;
  }
  const cmd = commands[name];
  if (!cmd) {
    console.error(`netroot: unknown command ${name} (try netroot help)`);
    return 2;
  }
  try {
    return await (await cmd.load())(rest);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (e instanceof UserError || err.code?.startsWith("ERR_PARSE_ARGS")) {
      console.error(`netroot ${name}: ${err.message}`);
      return 1;
    }
    console.error(`netroot ${name}: ${err.stack ?? err.message}`);
    return 1;
  }
}
