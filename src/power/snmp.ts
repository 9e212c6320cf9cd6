// `power.driver=snmp-poe`: the PoE switch port that feeds the node, through POWER-ETHERNET-MIB
// (RFC 3621) pethPsePortAdminEnable.<group>.<port> — true(1) powers the port, false(2) cuts it;
// cycle is off, 2 s, on (WalT's PoE reboot). Status is the port's admin state.
// Settings: power.host (switch, port 161 unless :port), power.poe.port (`N` or `GROUP.N`, group 1
// by default), and either power.community (SNMP v2c) or power.user (SNMP v3) with
// power.auth.protocol/power.auth.key and power.priv.protocol/power.priv.key. Community and keys
// reach snmpget/snmpset through a private snmp.conf (SNMPCONFPATH), never on the command line.
import {
  firstLine,
  parseHostPort,
  type PowerDriver,
  PowerError,
  type PowerTarget,
  required,
  runTool,
} from "./driver.ts";

/** pethPsePortAdminEnable (POWER-ETHERNET-MIB::pethPsePortEntry.3). */
export const pethPsePortAdminEnable = "1.3.6.1.2.1.105.1.1.1.3";
/** How long the port stays off in a cycle (WalT: 2 s). */
const cycleOffMs = 2000;

/** A value as snmp.conf reads it back as is: net-snmp takes a value that begins with `"` as a
 *  quoted word (a community `"lab"rw` was sent as `lab`, and read as a wrong community), and
 *  inside quotes a backslash escapes the next character. */
const confWord = (v: string) => `"${v.replace(/["\\]/g, (c) => `\\${c}`)}"`;

/** snmp.conf lines for the node's credentials: v3 when power.user is set, else v2c. */
function clientConfig(t: PowerTarget): string {
  const s = t.settings;
  if (!s["power.user"]) {
    const community = required(t, "power.community", "SNMP v2c community, or power.user for v3");
    return `defVersion 2c\ndefCommunity ${confWord(community)}\n`;
  }
  const lines = ["defVersion 3", `defSecurityName ${confWord(s["power.user"])}`];
  if (s["power.auth.key"]) {
    lines.push(`defAuthType ${s["power.auth.protocol"] ?? "SHA"}`);
    lines.push(`defAuthPassphrase ${confWord(s["power.auth.key"])}`);
    if (s["power.priv.key"]) {
      lines.push(`defPrivType ${s["power.priv.protocol"] ?? "AES"}`);
      lines.push(`defPrivPassphrase ${confWord(s["power.priv.key"])}`);
      lines.push("defSecurityLevel authPriv");
    } else lines.push("defSecurityLevel authNoPriv");
  } else {
    if (s["power.priv.key"]) {
      throw new PowerError("power.priv.key needs power.auth.key too (SNMP v3 has no privNoAuth)");
    }
    lines.push("defSecurityLevel noAuthNoPriv");
  }
  return lines.join("\n") + "\n";
}

/** The most telling line of a net-snmp error: its "Reason:" line, else the first one (its
 *  note about creating the persistent dir, which is our fresh temp dir, aside). */
function snmpError(text: string): string {
  const stderr = text.replace(/^Created directory: .*\n?/gm, "");
  const reason = /^Reason: (.*)$/m.exec(stderr)?.[1];
  const first = firstLine(stderr);
  if (/^Timeout/.test(first)) return `${first} (switch unreachable, or wrong community/user)`;
  return reason ?? first;
}

async function snmp(t: PowerTarget, tool: "snmpget" | "snmpset", value?: 1 | 2): Promise<string> {
  const { host, port } = parseHostPort(required(t, "power.host", "the switch address"), 161);
  const portRef = required(t, "power.poe.port", "the switch's PoE port index, e.g. 4 or 1.4");
  const oid = `${pethPsePortAdminEnable}.${portRef.includes(".") ? portRef : `1.${portRef}`}`;
  const agent = host.includes(":") ? `udp6:[${host}]:${port}` : `udp:${host}:${port}`;
  const dir = await Deno.makeTempDir({ prefix: "netroot-snmp-" }); // mode 0700
  try {
    await Deno.writeTextFile(`${dir}/snmp.conf`, clientConfig(t), { mode: 0o600 });
    const r = await t.ctx.power.toDevice(`${host.toLowerCase()}:${port}`, () =>
      runTool(
        [
          tool,
          // No MIB files: numeric OIDs and values, each answer as "OID VALUE".
          ...["-m", "", "-Oqne", "-t", "2", "-r", "1"],
          agent,
          oid,
          ...(value === undefined ? [] : ["i", String(value)]),
        ],
        {
          // Only our snmp.conf is read, and nothing is written outside the temp dir.
          env: { SNMPCONFPATH: dir, SNMP_PERSISTENT_DIR: dir },
          timeoutMs: t.timeoutMs,
        },
      ));
    if (r.code !== 0) {
      throw new PowerError(`${tool} of ${oid} on ${host}:${port} failed: ${snmpError(r.stderr)}`);
    }
    const out = r.stdout.trim();
    const gap = out.indexOf(" ");
    const [answeredOid, answer] = gap < 0 ? [out, ""] : [out.slice(0, gap), out.slice(gap + 1)];
    const portName = `pethPsePortAdminEnable.${portRef.includes(".") ? portRef : `1.${portRef}`}`;
    // The port the answer is for: a switch that answers another port's state (its firmware's
    // index off by one, a hostile agent) would have the node taken for on, or off, by its
    // neighbour's.
    if (answeredOid !== `.${oid}`) {
      throw new PowerError(
        `${host}:${port} answered for ${firstLine(answeredOid)}, not ${portName} (.${oid}): ` +
          "not taken (a switch answering for another port)",
      );
    }
    if (answer !== "1" && answer !== "2") {
      throw new PowerError(
        `${host}:${port} answered "${firstLine(answer)}" for ${portName} ` +
          "(no such PoE port? see power.poe.port)",
      );
    }
    return answer;
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

export const snmpPoeDriver: PowerDriver = {
  name: "snmp-poe",
  on: async (t) => void await snmp(t, "snmpset", 1),
  off: async (t) => void await snmp(t, "snmpset", 2),
  async cycle(t) {
    await snmp(t, "snmpset", 2);
    await new Promise((r) => setTimeout(r, cycleOffMs));
    try {
      await snmp(t, "snmpset", 1);
    } catch (e) {
      // The port is off now: the node must not stay shown as running (src/power/power.ts).
      if (e instanceof PowerError) {
        throw new PowerError(
          `switched the port off, then not on again: ${e.message} ` +
            `(netroot node power ${t.node.name} on)`,
          { leftOff: true },
        );
      }
      throw e;
    }
  },
  status: async (t) => (await snmp(t, "snmpget")) === "1" ? "on" : "off",
};
