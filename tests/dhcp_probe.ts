// Sends one DHCP request as a simulated client from UDP port 68 on an interface and prints every
// reply seen within --wait ms as JSON (tests/dhcp_proxy_test.ts runs it in the client namespace).
import { parseArgs } from "node:util";
import { clientPacket, DhcpClientPort, msgType } from "../netboot/storm.ts";
import { MessageType, Opt, readIp, readText } from "../netboot/dhcp4/options.ts";
import type { DhcpPacket } from "../netboot/dhcp4/packet.ts";

const { values: a } = parseArgs({
  args: Deno.args,
  options: {
    device: { type: "string" },
    mac: { type: "string" },
    kind: { type: "string", default: "pxe" },
    type: { type: "string", default: "discover" },
    to: { type: "string" },
    port: { type: "string", default: "67" },
    ciaddr: { type: "string" },
    wait: { type: "string", default: "1500" },
  },
});
const mac = new Uint8Array(a.mac!.split(":").map((h) => parseInt(h, 16)));
const port = DhcpClientPort.open(a.device!);
const seen: DhcpPacket[] = [];
const type = a.type === "request" ? MessageType.Request : MessageType.Discover;
const req = clientPacket({ mac, kind: a.kind as "pxe" }, port.xid(), type, { ciaddr: a.ciaddr });
await port.exchange(req, () => false, {
  to: a.to,
  port: Number(a.port),
  timeoutMs: Number(a.wait),
  retries: 0,
  seen,
}).catch(() => {});
await port.close();
const hex = (v?: Uint8Array) => v && Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("");
console.log(JSON.stringify(seen.map((p) => ({
  type: MessageType[msgType(p)!],
  yiaddr: p.yiaddr,
  siaddr: p.siaddr,
  file: p.file,
  serverId: readIp(p.options.get(Opt.serverId)),
  vendorClass: readText(p.options.get(Opt.vendorClass)),
  bootfile: readText(p.options.get(Opt.bootfile)),
  opt43: hex(p.options.get(Opt.vendorSpecific)),
  opt175: hex(p.options.get(Opt.ipxe)),
}))));
