// The command table: `netroot --help` lists it and `netroot completion bash|zsh` is generated
// from it. Each command module is imported lazily so that `netroot init` on a node loads only the
// node-side code. tests/cli_completion_test.ts checks that every command's flags here are the
// ones its --help texts name.

export type Command = (args: string[]) => Promise<number>;

export interface CommandSpec {
  summary: string;
  load: () => Promise<Command>;
  subcommands?: readonly string[];
  /** Flags without "--": "" for a switch, else the value's name as --help writes it; "DIR" and
   *  "FILE" complete paths, "a|b|c" the choices, any other name nothing. */
  flags?: Readonly<Record<string, string>>;
}

const client = { server: "URL", json: "", help: "" } as const;
const nodeFlags = {
  ...client,
  name: "NAME",
  model: "MODEL",
  image: "IMAGE",
  follow: "",
  limit: "N",
  cause: "TEXT",
  "no-reboot": "",
  force: "",
  state: "off|booting|booted|down|failed",
  timeout: "SECONDS",
  hard: "",
  upper: "FILE",
  "keep-machine-state": "",
  "reboot-nodes": "",
  source: "serial|netconsole",
} as const;

export const commands: Record<string, CommandSpec> = {
  serve: {
    summary: "run the server (HTTP API, dashboard, DHCP, TFTP, NFS exports, virtual nodes)",
    load: async () => (await import("./serve.ts")).run,
    flags: {
      data: "DIR",
      http: "HOST:PORT",
      config: "FILE",
      "check-config": "",
      interface: "IF",
      bridge: "NAME",
      address: "A.B.C.D/NN",
      "dhcp-mode": "full|proxy|off",
      "dhcp-range": "START-END",
      "lease-time": "SECONDS",
      "dhcp-router": "A.B.C.D",
      "proxy-strategy": "option43|port4011",
      "offer-time": "SECONDS",
      "register-unknown": "true|false",
      "register-rate": "PER-MINUTE",
      "register-max": "N",
      "register-ttl": "SECONDS",
      "api-auth": "writes|all",
      "tftp-port": "N",
      "netconsole-port": "N",
      "ipxe-dir": "DIR",
      nfs: "kernel|ganesha|off",
      "nfs-version": "3|4",
      "nfs-reserve": "SIZE",
      ra: "true|false",
      accel: "auto|kvm|tcg",
      "log-format": "text|json",
      help: "",
    },
  },
  image: {
    summary: "import, change (shell, cp, build), version, list and remove OS images",
    load: async () => (await import("./image.ts")).run,
    subcommands: [
      "import",
      "ls",
      "show",
      "history",
      "rollback",
      "diff",
      "shell",
      "cp",
      "build",
      "rm",
      "rename",
      "gc",
    ],
    flags: {
      ...client,
      name: "NAME",
      all: "",
      keep: "N",
      "reboot-nodes": "",
      new: "NAME",
      commit: "",
      discard: "",
      from: "IMAGE",
      file: "FILE",
      "build-arg": "NAME=VALUE",
    },
  },
  node: {
    summary: "list, add, configure, deploy (boot), reboot and inspect nodes",
    load: async () => (await import("./node.ts")).run,
    subcommands: [
      "add",
      "ls",
      "show",
      "rename",
      "forget",
      "config",
      "boot",
      "reboot",
      "run",
      "shell",
      "power",
      "wait",
      "save",
      "log",
      "console",
    ],
    flags: nodeFlags,
  },
  deploy: {
    summary: "alias of `node boot NODE[,NODE…] IMAGE`",
    load: async () => (await import("./node.ts")).deploy,
    flags: { ...client, "no-reboot": "", force: "", hard: "" },
  },
  vnode: {
    summary: "create, list and remove virtual nodes (qemu)",
    load: async () => (await import("./vnode.ts")).run,
    subcommands: ["create", "ls", "rm"],
    flags: {
      ...client,
      ram: "SIZE",
      cpus: "N",
      disk: "SIZE",
      image: "IMAGE",
      firmware: "bios|uefi|uefi-http",
      arch: "x86_64|aarch64",
    },
  },
  initramfs: {
    summary: "build the node initramfs for an image",
    load: async () => (await import("./initramfs.ts")).run,
    subcommands: ["build"],
    flags: { out: "FILE", data: "DIR", json: "", help: "" },
  },
  init: {
    summary: "node side: run as the initramfs /init (network or hybrid boot mode)",
    load: async () => (await import("../../overlay/init.ts")).run,
  },
  demo: {
    summary: "one virtual node booting end to end in a private network namespace",
    load: async () => (await import("./demo.ts")).run,
    flags: { "stand-in": "", keep: "", timeout: "SECONDS", help: "" },
  },
  bench: {
    summary: "load generators (e.g. `bench storm --clients N`)",
    load: async () => (await import("./bench.ts")).run,
    subcommands: ["storm"],
    flags: {
      interface: "IF",
      clients: "N",
      concurrency: "C",
      timeout: "MS",
      "first-index": "I",
      "no-tftp": "",
      "no-http": "",
      json: "",
      help: "",
    },
  },
  "install-service": {
    summary: "install this program as the systemd service netroot.service and start it",
    load: async () => (await import("./service.ts")).install,
    flags: { data: "DIR", root: "DIR", "no-start": "", help: "" },
  },
  "uninstall-service": {
    summary: "stop and remove the service (settings and data are kept)",
    load: async () => (await import("./service.ts")).uninstall,
    flags: { root: "DIR", help: "" },
  },
  backup: {
    summary: "save the database, token, power scripts and settings to a file (while serving)",
    load: async () => (await import("./backup.ts")).backup,
    flags: { data: "DIR", config: "FILE", help: "" },
  },
  restore: {
    summary: "put a backup back into the data dir (the server must be stopped)",
    load: async () => (await import("./backup.ts")).restore,
    flags: { data: "DIR", config: "FILE", help: "" },
  },
  completion: {
    summary: "print the shell completion script: completion bash|zsh",
    load: async () => (await import("./completion.ts")).run,
    subcommands: ["bash", "zsh"],
    flags: { help: "" },
  },
  help: {
    summary: "this help; `help show boot-modes` prints the boot-modes guide",
    load: async () => (await import("./main.ts")).help,
    subcommands: ["show"],
  },
};
