// Who is asking, and what boots it (protocols.md §1–3, §7). Pure: packet in, decision out.
import type { DhcpPacket } from "./packet.ts";
import { Opt, readText, readU16 } from "./options.ts";
import { macFromBytes } from "../../contract/mac.ts";

export type Firmware =
  | "bios"
  | "uefi32"
  | "uefi64"
  | "arm32"
  | "arm64"
  | "uefi-http"
  | "ipxe"
  | "rpi"
  | "linux";

/** iPXE binaries (under config.ipxeDir) per firmware, fetched by TFTP. The Debian package `ipxe`
 *  ships the x86 ones, and from trixie on the arm64 UEFI one too (ipxe-arm64.efi, its name there;
 *  the release bundle carries it for servers whose package has none). 32-bit UEFI (x86, ARM) is
 *  rare and has no Debian build. */
export const IPXE_BINARY: Partial<Record<Firmware, string>> = {
  bios: "undionly.kpxe",
  uefi32: "ipxe-i386.efi",
  uefi64: "ipxe.efi",
  arm32: "snp-arm32.efi",
  arm64: "ipxe-arm64.efi",
};
/** The files whose absence is worth a start-up warning (what the Debian amd64 package ships). */
export const REQUIRED_IPXE_FILES = ["undionly.kpxe", "ipxe.efi"];

/** Raspberry Pi Foundation / Raspberry Pi Trading OUIs (WALT server/tools.py, LTSP). */
export const RPI_OUIS = new Set([
  "28:cd:c1",
  "b8:27:eb",
  "d8:3a:dd",
  "dc:a6:32",
  "e4:5f:01",
  "2c:cf:67",
  "88:a2:9e",
]);

export interface Classification {
  mac: string;
  firmware: Firmware;
  /** Option 93 value, when sent. */
  arch?: number;
  vendorClass?: string;
  userClass?: string;
  /** A PXE ROM or UEFI HTTP client (echo option 60, answer in proxy mode). */
  netboot: boolean;
  /** TFTP file name or http:// URL to boot; undefined = plain lease (Linux DHCP, Pi ROM). */
  bootfile?: string;
  /** A Raspberry Pi boot ROM/EEPROM: what its DHCP request says of it (rpiIdentity). */
  rpi?: RpiIdentity;
}

/** What a Pi tells in its DHCP request. Informative only: the serial names the TFTP directory the
 *  Pi asks for, but anyone can send any serial; nothing is granted on it (docs/firmware.md). */
export interface RpiIdentity {
  /** "3" for the BCM2837 ROM (3B, 3B+: OUI b8:27:eb), "4" or "5" from option 97's fourcc. */
  model?: "3" | "4" | "5";
  /** The board serial as the TFTP prefix spells it (8 lower-case hex digits), when sent. */
  serial?: string;
}

/** Option 97 of a Pi: 0 then four little-endian 32-bit words. The Pi 4/5 EEPROM sends fourcc
 *  "RPi4" (0x34695052), board revision, the MAC's low 4 bytes and the serial (Raspberry Pi docs,
 *  bcm2711 bootloader DHCP_OPTION97); the 3B/3B+ ROM and older EEPROMs send the serial 4 times
 *  (captures: gh:raspberrypi/firmware#1362, #1605). On a 3B/3B+ the MAC is b8:27:eb + the serial's
 *  low 3 bytes. */
export function rpiIdentity(mac: string, guid: Uint8Array | undefined): RpiIdentity {
  const le = (o: number) =>
    [...guid!.subarray(o, o + 4)].reverse().map((x) => x.toString(16).padStart(2, "0")).join("");
  const pi3 = mac.startsWith("b8:27:eb");
  if (guid?.length === 17 && guid[0] === 0) {
    const fourcc = String.fromCharCode(...guid.subarray(1, 5));
    if (fourcc === "RPi4" || fourcc === "RPi5") {
      return { model: fourcc === "RPi4" ? "4" : "5", serial: le(13) };
    }
    if ([5, 9, 13].every((o) => le(o) === le(1))) {
      return { ...(pi3 ? { model: "3" as const } : {}), serial: le(1) };
    }
  }
  return pi3 ? { model: "3" } : {};
}

export interface ClassifyEnv {
  /** Base URL of the HTTP server nodes use, e.g. http://10.77.0.1:8080. */
  nodeUrl?: string;
}

const IPXE_RAW = "iPXE";

function firmwareFromArch(arch: number | undefined): Firmware {
  switch (arch) {
    case 6:
      return "uefi32";
    case 7:
    case 9: // RFC 4578 swaps 7 and 9 (errata); firmware uses both for x64 UEFI
      return "uefi64";
    case 10:
      return "arm32";
    case 11:
      return "arm64";
    default:
      return "bios";
  }
}

export function classify(p: DhcpPacket, env: ClassifyEnv): Classification {
  const mac = macFromBytes(p.chaddr);
  const vendorClass = readText(p.options.get(Opt.vendorClass));
  const userClass = readText(p.options.get(Opt.userClass));
  const arch = readU16(p.options.get(Opt.clientArch));
  const base = { mac, arch, vendorClass, userClass };
  const pxe = vendorClass?.startsWith("PXEClient") ?? false;
  const http = vendorClass?.startsWith("HTTPClient") ?? false;
  // 1. iPXE itself (raw option 77 or its encapsulated 175): give it the per-node script, not
  //    another iPXE binary — this is what breaks the chain-load loop.
  if (userClass === IPXE_RAW || p.options.has(Opt.ipxe)) {
    return {
      ...base,
      firmware: "ipxe",
      netboot: pxe || http,
      bootfile: env.nodeUrl ? `${env.nodeUrl}/boot/${mac}.ipxe` : undefined,
    };
  }
  // 2. Raspberry Pi boot ROM (the Pi 5 says arch 0 like a PC BIOS: test the OUI first). It needs
  //    option 43 "Raspberry Pi Boot" and fetches its files by TFTP by itself; no file name.
  if (RPI_OUIS.has(mac.slice(0, 8)) && pxe) {
    const rpi = rpiIdentity(mac, p.options.get(Opt.clientUuid));
    return { ...base, firmware: "rpi", netboot: true, rpi };
  }
  // 3. UEFI HTTP boot: the firmware fetches an EFI binary by URL.
  if (http || arch === 15 || arch === 16 || arch === 18 || arch === 19) {
    const file = arch === 18 || arch === 19 ? IPXE_BINARY.arm64! : IPXE_BINARY.uefi64!;
    return {
      ...base,
      firmware: "uefi-http",
      netboot: true,
      bootfile: env.nodeUrl ? `${env.nodeUrl}/boot/ipxe/${file}` : undefined,
    };
  }
  // 4. A PXE ROM: send the iPXE binary for its architecture, by TFTP.
  if (pxe || arch !== undefined) {
    const firmware = firmwareFromArch(arch);
    return { ...base, firmware, netboot: pxe, bootfile: IPXE_BINARY[firmware] };
  }
  // 5. Anything else (udhcpc in the initramfs, an OS): a plain lease.
  return { ...base, firmware: "linux", netboot: false };
}
