// Which image version a Raspberry Pi's boot is served from. The Pi's firmware fetches a dozen
// files by TFTP under names that carry no version (start4.elf, config.txt, the device tree,
// overlays, cmdline.txt, then the kernel and initramfs config.txt names); read through the node's
// deploy link at each fetch, a deploy (or a commit the node's name follows) landing mid-boot gave
// the Pi the firmware of one version and the device tree and command line of another. So the
// version is fixed at the boot's first fetch and kept for the fetches that follow (a pin), as an
// iPXE script pins its kernel and initramfs by URL.
//
// A pin ends when it is PIN_MS old, from its first fetch: never lengthened, so a fetch forged with
// the node's address (UDP: anyone on the boot network can send one) holds a deploy back by at most
// PIN_MS; a pin opened after the deploy is of the new version. It also ends when the boot its
// cmdline.txt opened is heard from (the node's init reported), and when the Pi starts over: once
// cmdline.txt was served, the firmware fetches only what config.txt names (kernel,
// initramfs; a Pi 4 also asks for armstub8-gic.bin), so a fetch of a file a boot begins with
// (bootcode.bin on a 3B+, start*.elf on a 4, config.txt on a 5, whose firmware is in its EEPROM)
// is the next boot. Before cmdline.txt the same names come again within one boot (a Pi 4 fetches
// start4.elf and config.txt twice; a firmware retries a file or restarts its sequence): they keep
// the pin. Pins live in memory: after a server restart a Pi's next fetch opens a new one.

/** How long a Pi boot's version is kept from its first fetch. A Pi reaches cmdline.txt within
 *  seconds of its first fetch (the firmware files are ~3 MB); the boot cmdline.txt opens then
 *  pins the kernel and initramfs for as long again (src/boots.ts unheardBootImage). */
export const PIN_MS = 60_000;

/** The files a Pi boot begins with (any model): fetched after cmdline.txt, a new boot. */
const BOOT_START = /^(bootcode\.bin|start[0-9a-z_]*\.elf|config\.txt)$/;

interface Pin {
  imageId: string;
  openedAt: number;
  /** The token of the boot cmdline.txt opened under this pin: the firmware's own files are
   *  done. */
  token?: string;
}

export class PiBootVersions {
  #pins = new Map<string, Pin>();

  /** `now`: milliseconds on a clock that does not jump with the wall clock's settings. */
  constructor(private readonly now: () => number = () => performance.now()) {}

  /**
   * The version node `mac`'s fetch of `file` (its name under the image's /boot, the serial
   * directory dropped) is served from: its boot's pin while it holds, else `current` (the node's
   * version now), which a new pin then fixes. A pin `keeps` refuses gives way to `current`: its
   * version can no longer be served (removed, its tree pruned), or the boot its cmdline.txt opened
   * (`token`) was heard from. Null: the node has no version.
   */
  version(
    mac: string,
    file: string,
    current: string | null,
    keeps: (imageId: string, token?: string) => boolean,
  ): string | null {
    const now = this.now();
    const pin = this.#pins.get(mac);
    const holds = pin && now - pin.openedAt < PIN_MS && now >= pin.openedAt &&
      !(pin.token && BOOT_START.test(file)) && keeps(pin.imageId, pin.token);
    if (holds) return pin.imageId;
    if (current === null) {
      this.#pins.delete(mac);
      return null;
    }
    this.#forgetEnded(now);
    this.#pins.set(mac, { imageId: current, openedAt: now });
    return current;
  }

  /** cmdline.txt of `imageId`, opening boot `token`, was served to `mac`: the next fetch a boot
   *  begins with is a new boot. */
  cmdlineServed(mac: string, imageId: string, token: string): void {
    const pin = this.#pins.get(mac);
    if (pin?.imageId === imageId) pin.token = token;
  }

  /** Ended pins are dropped as new ones open: the map holds at most one per node that fetched
   *  in the last PIN_MS. */
  #forgetEnded(now: number) {
    for (const [mac, pin] of this.#pins) {
      if (now - pin.openedAt >= PIN_MS || now < pin.openedAt) this.#pins.delete(mac);
    }
  }
}
