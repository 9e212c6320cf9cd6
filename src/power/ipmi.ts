// `power.driver=ipmi`: the node's BMC over IPMI v2 (RMCP+, `ipmitool -I lanplus`).
// Settings: power.host (BMC, port 623 unless :port), power.user, power.password (secret: passed in
// the IPMI_PASSWORD environment variable with -E, never on the command line where `ps` shows
// it), power.cipher (cipher suite, when the BMC does not negotiate one ipmitool accepts).
import {
  firstLine,
  parseHostPort,
  type PowerDriver,
  PowerError,
  type PowerState,
  type PowerTarget,
  required,
  runTool,
} from "./driver.ts";

/** What ipmitool -v says on stderr when a session fails, and what it means for the admin. */
const sessionFailures: [RegExp, (host: string, user: string) => string][] = [
  [/RAKP 2 HMAC is invalid/, () => "the BMC refused the password (power.password)"],
  [/unauthorized name/i, (_h, user) => `the BMC does not know user "${user}" (power.user)`],
  [
    /Get Auth Capabilities error|No response|Error issuing Get Channel Authentication/i,
    (host) => `no answer from the BMC at ${host}`,
  ],
];

async function ipmitool(t: PowerTarget, args: string[]): Promise<string> {
  const { host, port } = parseHostPort(required(t, "power.host", "the BMC address"), 623);
  const user = required(t, "power.user", "the BMC user");
  const password = required(t, "power.password", "the BMC password");
  const cipher = t.settings["power.cipher"];
  const argv = [
    "ipmitool",
    ...["-I", "lanplus", "-H", host, "-p", String(port), "-U", user, "-E"],
    ...(cipher ? ["-C", cipher] : []),
    // Per-request timeout and retries: an absent BMC fails in a few seconds, not 20.
    ...["-N", "2", "-R", "1"],
    "-v", // the session errors say which credential is wrong only in verbose mode
    ...args,
  ];
  const r = await t.ctx.power.toDevice(
    `${host.toLowerCase()}:${port}`,
    () => runTool(argv, { env: { IPMI_PASSWORD: password }, timeoutMs: t.timeoutMs }),
  );
  if (r.code !== 0) {
    const bmc = `${host}:${port}`;
    const known = sessionFailures.find(([re]) => re.test(r.stderr));
    // Cut as firstLine cuts (what a BMC makes ipmitool print goes into events).
    const errorLine = firstLine(
      r.stderr.split("\n").map((l) => l.trim()).filter((l) => /error/i.test(l)).at(-1) ??
        r.stderr,
    );
    throw new PowerError(
      `ipmitool ${args.join(" ")} (BMC ${bmc}) failed: ` +
        (known ? `${known[1](bmc, user)} — ${errorLine}` : errorLine || `exit ${r.code}`),
    );
  }
  return r.stdout;
}

async function status(t: PowerTarget): Promise<PowerState> {
  const out = await ipmitool(t, ["chassis", "power", "status"]);
  const m = /Chassis Power is (on|off)/i.exec(out);
  if (!m) throw new PowerError(`ipmitool chassis power status said "${firstLine(out)}"`);
  return m[1].toLowerCase() as PowerState;
}

export const ipmiDriver: PowerDriver = {
  name: "ipmi",
  on: async (t) => void await ipmitool(t, ["chassis", "power", "on"]),
  off: async (t) => void await ipmitool(t, ["chassis", "power", "off"]),
  // A BMC ignores (or refuses) "cycle" while the chassis is off: power it on instead.
  cycle: async (t) =>
    void await ipmitool(t, ["chassis", "power", (await status(t)) === "on" ? "cycle" : "on"]),
  status,
};
